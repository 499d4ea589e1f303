/*
 * MicroPython configuration for the microtrain host port (Linux x86-64).
 *
 * The port is deliberately small: it is the "board" that runs on the
 * development host, and its REPL/HAL layout mirrors what a bare-metal
 * port needs so that the same code can later back an emulated board.
 */

#include <stdint.h>
#include <alloca.h>

// Start from the "extra features" feature set and adjust below.
#define MICROPY_CONFIG_ROM_LEVEL                (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

// Compiler and emitters: bytecode only (no native/viper emitters).
#define MICROPY_ENABLE_COMPILER                 (1)
#define MICROPY_EMIT_X64                        (0)
#define MICROPY_PERSISTENT_CODE_LOAD            (1)

// Memory management: one fixed heap block managed by the GC.
#define MICROPY_ENABLE_GC                       (1)
#define MICROPY_MEM_STATS                       (1)
#define MICROPY_MALLOC_USES_ALLOCATED_SIZE      (1)
#define MICROPY_GC_SPLIT_HEAP                   (0)
#define MICROPY_STACK_CHECK                     (1)
#define MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF  (1)
#define MICROPY_EMERGENCY_EXCEPTION_BUF_SIZE    (256)
#define MICROPY_ALLOC_PATH_MAX                  (1024)

// Error reporting and tracebacks.
#define MICROPY_ERROR_REPORTING                 (MICROPY_ERROR_REPORTING_DETAILED)
#define MICROPY_ENABLE_SOURCE_LINE              (1)
#define MICROPY_WARNINGS                        (1)
#define MICROPY_ERROR_PRINTER                   (&mp_stderr_print)

// Numbers.
#define MICROPY_LONGINT_IMPL                    (MICROPY_LONGINT_IMPL_MPZ)
#define MICROPY_FLOAT_IMPL                      (MICROPY_FLOAT_IMPL_DOUBLE)

// Importing .py (and .mpy) files from the host file system.
#define MICROPY_READER_POSIX                    (1)
#define MICROPY_ENABLE_EXTERNAL_IMPORT          (1)

// REPL (shared/runtime/pyexec.c + shared/readline).
#define MICROPY_HELPER_REPL                     (1)
#define MICROPY_REPL_AUTO_INDENT                (1)
#define MICROPY_REPL_EMACS_KEYS                 (1)
#define MICROPY_KBD_EXCEPTION                   (1)
#define MICROPY_ENABLE_SCHEDULER                (1)
#define MICROPY_READLINE_HISTORY_SIZE           (8)
#define MICROPY_USE_INTERNAL_PRINTF             (0)
#define MICROPY_USE_INTERNAL_ERRNO              (0)

// Modules and builtins.
#define MICROPY_PY_SYS                          (1)
#define MICROPY_PY_SYS_PATH                     (1)
#define MICROPY_PY_SYS_ARGV                     (1)
#define MICROPY_PY_SYS_EXIT                     (1)
#define MICROPY_PY_SYS_MAXSIZE                  (1)
#define MICROPY_PY_SYS_EXC_INFO                 (1)
#define MICROPY_PY_SYS_STDFILES                 (1)
#define MICROPY_PY_SYS_STDIO_BUFFER             (1)
#define MICROPY_PY_SYS_PLATFORM                 "linux"
#define MICROPY_PY_GC                           (1)
#define MICROPY_PY_MICROPYTHON                  (1)
#define MICROPY_PY_MICROPYTHON_MEM_INFO         (1)
#define MICROPY_PY_ARRAY                        (1)
#define MICROPY_PY_STRUCT                       (1)
#define MICROPY_PY_MATH                         (1)
#define MICROPY_PY_COLLECTIONS                  (1)
#define MICROPY_PY_IO                           (1)
#define MICROPY_PY_BUILTINS_INPUT               (1)
#define MICROPY_PY_BUILTINS_HELP                (1)
#define MICROPY_PY_BUILTINS_HELP_MODULES        (1)

// Modules that live in extmod/ (not part of this source tree): disabled.
// (`time` is provided by this port's own modtime.c instead.)
#define MICROPY_PY_ASYNCIO                      (0)
#define MICROPY_PY_BINASCII                     (0)
#define MICROPY_PY_DEFLATE                      (0)
#define MICROPY_PY_FRAMEBUF                     (0)
#define MICROPY_PY_HASHLIB                      (0)
#define MICROPY_PY_HEAPQ                        (0)
#define MICROPY_PY_JSON                         (0)
#define MICROPY_PY_MACHINE                      (0)
#define MICROPY_PY_OS                           (0)
#define MICROPY_PY_OS_DUPTERM                   (0)
#define MICROPY_PY_PLATFORM                     (0)
#define MICROPY_PY_RANDOM                       (0)
#define MICROPY_PY_RE                           (0)
#define MICROPY_PY_SELECT                       (0)
#define MICROPY_PY_TIME                         (0)
#define MICROPY_PY_UCTYPES                      (0)
#define MICROPY_PY_VFS                          (0)
#define MICROPY_VFS                             (0)

// Identification (used in the REPL banner).
#define MICROPY_HW_BOARD_NAME                   "microtrain-host"
#define MICROPY_HW_MCU_NAME                     "x86_64"

// Types.
typedef intptr_t mp_int_t;   // must be pointer size
typedef uintptr_t mp_uint_t; // must be pointer size
typedef long mp_off_t;

#define MP_STATE_PORT MP_STATE_VM

// Printer used for uncaught exceptions of scripts and for warnings.
extern const struct _mp_print_t mp_stderr_print;

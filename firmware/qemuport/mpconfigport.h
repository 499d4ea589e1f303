/*
 * MicroPython configuration of the microtrain emulated board (qemu-system-arm:
 * -M microbit with 256 KB SRAM, Cortex-M0; or -M mps2-an385, Cortex-M3).
 *
 * Feature set of a small RP2040-class board: compiler and REPL, native code
 * emitter (so .mpy native modules load), single-precision floats, a flash file
 * system with open()/os, time, gc, micropython.mem_peak.  Only py/ and shared/
 * of MicroPython 1.23 are used: os, time and the file system are this port's.
 */

#include <stdint.h>
#include <alloca.h>

#define MICROPY_CONFIG_ROM_LEVEL                (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

// Compiler, emitters, .mpy loading.
#define MICROPY_ENABLE_COMPILER                 (1)
#define MICROPY_EMIT_THUMB                      (1)
#if defined(__ARM_ARCH_7M__) || defined(__ARM_ARCH_7EM__)
#define MICROPY_EMIT_THUMB_ARMV7M               (1)
#define MICROPY_EMIT_INLINE_THUMB               (1)
#else
#define MICROPY_EMIT_THUMB_ARMV7M               (0)
#define MICROPY_EMIT_INLINE_THUMB               (0)
#endif
#define MICROPY_PERSISTENT_CODE_LOAD            (1)
// Native code (emitted, or loaded from a .mpy) is Thumb: calls need the low address bit.
#define MICROPY_MAKE_POINTER_CALLABLE(p)        ((void *)((mp_uint_t)(p) | 1))
#define MICROPY_READER_VFS                      (1)   // mp_reader_new_file() is flashfs.c's

// Memory: one GC heap between the end of .bss and the stack (see the linker script).
#define MICROPY_ENABLE_GC                       (1)
#define MICROPY_ENABLE_FINALISER                (1)
#define MICROPY_MEM_STATS                       (1)
#define MICROPY_MALLOC_USES_ALLOCATED_SIZE      (1)
#define MICROPY_STACK_CHECK                     (1)
#define MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF  (1)
#define MICROPY_EMERGENCY_EXCEPTION_BUF_SIZE    (256)
#define MICROPY_ALLOC_PATH_MAX                  (128)
#define MICROPY_GC_ALLOC_THRESHOLD              (1)

// Errors.
#define MICROPY_ERROR_REPORTING                 (MICROPY_ERROR_REPORTING_DETAILED)
#define MICROPY_ENABLE_SOURCE_LINE              (1)
#define MICROPY_WARNINGS                        (1)

// Numbers.
#define MICROPY_LONGINT_IMPL                    (MICROPY_LONGINT_IMPL_MPZ)
#define MICROPY_FLOAT_IMPL                      (MICROPY_FLOAT_IMPL_FLOAT)

// REPL (shared/runtime/pyexec.c + shared/readline), Ctrl-C.
#define MICROPY_HELPER_REPL                     (1)
#define MICROPY_REPL_AUTO_INDENT                (1)
#define MICROPY_REPL_EMACS_KEYS                 (1)
#define MICROPY_KBD_EXCEPTION                   (1)
#define MICROPY_ENABLE_SCHEDULER                (1)
#define MICROPY_READLINE_HISTORY_SIZE           (8)
#define MICROPY_USE_INTERNAL_PRINTF             (1)
#define MICROPY_USE_INTERNAL_ERRNO              (1)

// Modules and builtins.
#define MICROPY_PY_SYS                          (1)
#define MICROPY_PY_SYS_PATH                     (1)
#define MICROPY_PY_SYS_ARGV                     (1)
#define MICROPY_PY_SYS_EXIT                     (1)
#define MICROPY_PY_SYS_MAXSIZE                  (1)
#define MICROPY_PY_SYS_EXC_INFO                 (1)
#define MICROPY_PY_SYS_STDFILES                 (1)
#define MICROPY_PY_SYS_STDIO_BUFFER             (1)
#define MICROPY_PY_SYS_PLATFORM                 "qemu"
#define MICROPY_PY_GC                           (1)
#define MICROPY_PY_MICROPYTHON                  (1)
#define MICROPY_PY_MICROPYTHON_MEM_INFO         (1)
#define MICROPY_PY_ARRAY                        (1)
#define MICROPY_PY_STRUCT                       (1)
#define MICROPY_PY_MATH                         (1)
#define MICROPY_PY_CMATH                        (0)
#define MICROPY_PY_COLLECTIONS                  (1)
#define MICROPY_PY_IO                           (1)
#define MICROPY_PY_IO_IOBASE                    (0)
#define MICROPY_PY_BUILTINS_INPUT               (1)
#define MICROPY_PY_BUILTINS_HELP                (1)
#define MICROPY_PY_BUILTINS_HELP_MODULES        (1)

// Modules of extmod/ (not in the 1.23 sdist): off.  `os` and `time` are this port's own
// (modos.c, modtime.c), so their extmod switches stay off too.
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

// Identification (REPL banner, sys.implementation._machine).
#if defined(MICROTRAIN_BOARD_mps2_an385)
#define MICROPY_HW_BOARD_NAME                   "microtrain qemu mps2-an385"
#define MICROPY_HW_MCU_NAME                     "Cortex-M3"
#else
#define MICROPY_HW_BOARD_NAME                   "microtrain qemu microbit-256K"
#define MICROPY_HW_MCU_NAME                     "Cortex-M0"
#endif

// Types.
typedef intptr_t mp_int_t;   // must be pointer size
typedef uintptr_t mp_uint_t; // must be pointer size
typedef long mp_off_t;
#define MP_SSIZE_MAX (0x7fffffff)

#define MP_STATE_PORT MP_STATE_VM

// Interrupt masking for the scheduler.
static inline uint32_t qemuport_disable_irq(void) {
    uint32_t state;
    __asm volatile ("mrs %0, primask\n cpsid i" : "=r" (state) : : "memory");
    return state;
}
static inline void qemuport_enable_irq(uint32_t state) {
    __asm volatile ("msr primask, %0" : : "r" (state) : "memory");
}
#define MICROPY_BEGIN_ATOMIC_SECTION()     qemuport_disable_irq()
#define MICROPY_END_ATOMIC_SECTION(state)  qemuport_enable_irq(state)

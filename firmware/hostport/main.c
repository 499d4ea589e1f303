/*
 * microtrain host port of MicroPython: entry point.
 *
 *   micropython-host [-X heapsize=N[K|M]] [script.py [args...]]
 *
 * With a script: run it, print an uncaught exception with its traceback on
 * stderr and exit with status 1 (sys.exit(n) exits with status n).
 * Without a script: run the pyexec REPL (friendly and raw) on stdin/stdout.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "py/builtin.h"
#include "py/compile.h"
#include "py/gc.h"
#include "py/mperrno.h"
#include "py/mphal.h"
#include "py/runtime.h"
#include "py/stackctrl.h"
#include "shared/readline/readline.h"
#include "shared/runtime/gchelper.h"
#include "shared/runtime/pyexec.h"

#define PROG_NAME "micropython-host"
#define DEFAULT_HEAP_SIZE (256 * 1024)
#define MIN_HEAP_SIZE (16 * 1024)
// Space kept free at the end of the C stack for stack-check slack.
#define STACK_MARGIN (128 * 1024)
#define STACK_MAX (8 * 1024 * 1024)

/******************************************************************************/
// Port hooks required by the core.

void gc_collect(void) {
    gc_collect_start();
    // Scans callee-saved registers and the C stack up to stack_top.
    gc_helper_collect_regs_and_stack();
    gc_collect_end();
}

mp_import_stat_t mp_import_stat(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            return MP_IMPORT_STAT_DIR;
        } else if (S_ISREG(st.st_mode)) {
            return MP_IMPORT_STAT_FILE;
        }
    }
    return MP_IMPORT_STAT_NO_EXIST;
}

// There is no file system object model in this port; `open` (referenced by
// builtins when MICROPY_PY_IO is enabled) always fails.
mp_obj_t mp_builtin_open(size_t n_args, const mp_obj_t *args, mp_map_t *kwargs) {
    (void)n_args;
    (void)args;
    (void)kwargs;
    mp_raise_OSError(MP_ENODEV);
}
MP_DEFINE_CONST_FUN_OBJ_KW(mp_builtin_open_obj, 1, mp_builtin_open);

void nlr_jump_fail(void *val) {
    fprintf(stderr, PROG_NAME ": FATAL: uncaught exception %p\n", val);
    mp_hal_stdio_deinit();
    exit(1);
}

/******************************************************************************/
// Helpers.

static void usage(void) {
    fprintf(stderr,
        "usage: " PROG_NAME " [-X heapsize=N[K|M]] [script.py [args...]]\n"
        "  -X heapsize=N  size of the MicroPython heap in bytes (suffix K or M),\n"
        "                 default %uK\n"
        "Without a script an interactive (friendly/raw) REPL runs on stdin.\n"
        "MICROPYPATH: colon-separated directories appended to sys.path.\n",
        DEFAULT_HEAP_SIZE / 1024);
}

static bool parse_size(const char *str, size_t *size_out) {
    char *end;
    errno = 0;
    unsigned long long size = strtoull(str, &end, 10);
    if (end == str || errno != 0 || str[0] == '-') {
        return false;
    }
    unsigned long long mult = 1;
    if (*end == 'k' || *end == 'K') {
        mult = 1024;
        ++end;
    } else if (*end == 'm' || *end == 'M') {
        mult = 1024 * 1024;
        ++end;
    }
    if (*end != '\0' || size > SIZE_MAX / mult) {
        return false;
    }
    *size_out = size * mult;
    return true;
}

static void set_stack_limit(void) {
    size_t stack = STACK_MAX;
    struct rlimit rl;
    if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < stack) {
        stack = rl.rlim_cur;
    }
    mp_stack_set_limit(stack > 2 * STACK_MARGIN ? stack - STACK_MARGIN : stack / 2);
}

static void sys_path_append(const char *str, size_t len) {
    mp_obj_list_append(mp_sys_path, MP_OBJ_NEW_QSTR(qstr_from_strn(str, len)));
}

// sys.path = [<script dir, or "" for the REPL>] + $MICROPYPATH entries
// sys.argv = [script, args...]
static void init_sys(const char *script, int argc, char **argv) {
    mp_sys_path = mp_obj_new_list(0, NULL);
    if (script != NULL) {
        const char *slash = strrchr(script, '/');
        if (slash == NULL) {
            sys_path_append("", 0);
        } else if (slash == script) {
            sys_path_append("/", 1);
        } else {
            sys_path_append(script, slash - script);
        }
    } else {
        sys_path_append("", 0);
    }

    const char *path = getenv("MICROPYPATH");
    while (path != NULL && *path != '\0') {
        const char *colon = strchr(path, ':');
        size_t len = colon != NULL ? (size_t)(colon - path) : strlen(path);
        if (len > 0) {
            sys_path_append(path, len);
        }
        path = colon != NULL ? colon + 1 : NULL;
    }

    mp_obj_list_init(MP_OBJ_TO_PTR(mp_sys_argv), 0);
    for (int i = 0; i < argc; ++i) {
        mp_obj_list_append(mp_sys_argv, MP_OBJ_NEW_QSTR(qstr_from_str(argv[i])));
    }
}

// Returns the process exit status for an uncaught exception.
static int handle_uncaught_exception(mp_obj_base_t *exc) {
    if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(exc->type), MP_OBJ_FROM_PTR(&mp_type_SystemExit))) {
        mp_obj_t value = mp_obj_exception_get_value(MP_OBJ_FROM_PTR(exc));
        mp_int_t code;
        if (value == mp_const_none) {
            return 0;
        } else if (mp_obj_get_int_maybe(value, &code)) {
            return code & 0xff;
        }
        // sys.exit("message"): print the message, exit status 1.
        mp_obj_print_helper(&mp_stderr_print, value, PRINT_STR);
        mp_print_str(&mp_stderr_print, "\n");
        return 1;
    }
    mp_obj_print_exception(&mp_stderr_print, MP_OBJ_FROM_PTR(exc));
    return 1;
}

static int run_script(const char *filename) {
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        qstr source_name = qstr_from_str(filename);
        mp_lexer_t *lex = mp_lexer_new_from_file(source_name);
        mp_parse_tree_t parse_tree = mp_parse(lex, MP_PARSE_FILE_INPUT);
        mp_obj_t module_fun = mp_compile(&parse_tree, source_name, false);
        mp_store_global(MP_QSTR___file__, MP_OBJ_NEW_QSTR(source_name));
        mp_hal_set_interrupt_char(CHAR_CTRL_C);
        mp_call_function_0(module_fun);
        mp_hal_set_interrupt_char(-1);
        mp_handle_pending(true);
        nlr_pop();
        return 0;
    } else {
        mp_hal_set_interrupt_char(-1);
        mp_handle_pending(false);
        return handle_uncaught_exception(nlr.ret_val);
    }
}

static void run_repl(void) {
    for (;;) {
        int ret;
        if (pyexec_mode_kind == PYEXEC_MODE_RAW_REPL) {
            ret = pyexec_raw_repl();
        } else {
            ret = pyexec_friendly_repl();
        }
        if (ret & PYEXEC_FORCED_EXIT) {
            return;
        }
    }
}

/******************************************************************************/
// Main.

MP_NOINLINE static int main_(int argc, char **argv) {
    size_t heap_size = DEFAULT_HEAP_SIZE;

    int arg = 1;
    for (; arg < argc && argv[arg][0] == '-' && argv[arg][1] != '\0'; ++arg) {
        const char *opt = argv[arg];
        if (strcmp(opt, "-h") == 0 || strcmp(opt, "--help") == 0) {
            usage();
            return 0;
        } else if (strncmp(opt, "-X", 2) == 0) {
            const char *xopt = opt[2] != '\0' ? opt + 2 : (++arg < argc ? argv[arg] : NULL);
            if (xopt != NULL && strncmp(xopt, "heapsize=", 9) == 0
                && parse_size(xopt + 9, &heap_size) && heap_size >= MIN_HEAP_SIZE) {
                continue;
            }
            fprintf(stderr, PROG_NAME ": invalid -X option (need heapsize=N[K|M], N >= %uK)\n",
                MIN_HEAP_SIZE / 1024);
            usage();
            return 2;
        } else {
            fprintf(stderr, PROG_NAME ": unknown option %s\n", opt);
            usage();
            return 2;
        }
    }
    const char *script = arg < argc ? argv[arg] : NULL;

    if (script != NULL) {
        struct stat st;
        if (stat(script, &st) != 0 || !S_ISREG(st.st_mode)) {
            fprintf(stderr, PROG_NAME ": can't open file '%s': [Errno %d] %s\n",
                script, errno ? errno : EISDIR, strerror(errno ? errno : EISDIR));
            return 2;
        }
    }

    char *heap = malloc(heap_size);
    if (heap == NULL) {
        fprintf(stderr, PROG_NAME ": can't allocate %zu byte heap\n", heap_size);
        return 1;
    }

    mp_hal_stdio_init(script == NULL);

    int status = 0;
    for (;;) {
        gc_init(heap, heap + heap_size);
        mp_init();
        readline_init0();
        if (script != NULL) {
            init_sys(script, argc - arg, argv + arg);
            status = run_script(script);
            break;
        }
        init_sys(NULL, 0, NULL);
        run_repl();
        // Ctrl-D at the friendly REPL exits; in the raw REPL it is a soft
        // reset (as on a board) unless stdin has been closed.
        if (pyexec_mode_kind != PYEXEC_MODE_RAW_REPL || mp_hal_stdin_closed()) {
            break;
        }
        gc_sweep_all();
        mp_deinit();
        mp_hal_stdout_tx_str("MPY: soft reboot\r\n");
    }

    gc_sweep_all();
    mp_deinit();
    mp_hal_stdio_deinit();
    free(heap);
    return status;
}

int main(int argc, char **argv) {
    // The GC scans the C stack from the current position up to here, so set
    // the top in this frame and keep all interpreter state in main_().
    mp_stack_ctrl_init();
    set_stack_limit();
    return main_(argc, argv);
}

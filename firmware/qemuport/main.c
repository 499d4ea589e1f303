/*
 * microtrain emulated board: MicroPython entry point.
 *
 * Reset -> board and file system set-up -> (soft-reset loop) heap, interpreter,
 * sys.path = ['', '.frozen', '/lib'], boot.py and main.py from the file system if
 * present, then the REPL of shared/runtime/pyexec.c (friendly, raw, raw-paste) on
 * the UART.  Ctrl-D at the raw REPL (or at an empty friendly prompt) soft-resets.
 */

#include <string.h>

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

#include "board.h"
#include "flashfs.h"

extern uint32_t _heap_start, _heap_end, _estack, _sstack;

void gc_collect(void) {
    gc_collect_start();
    gc_helper_collect_regs_and_stack();
    gc_collect_end();
}

void nlr_jump_fail(void *val) {
    mp_hal_stdout_tx_str("FATAL: uncaught NLR\r\n");
    for (;;) {
        __asm volatile ("wfi");
    }
}

void NORETURN __fatal_error(const char *msg) {
    mp_hal_stdout_tx_str("FATAL: ");
    mp_hal_stdout_tx_str(msg);
    mp_hal_stdout_tx_str("\r\n");
    for (;;) {
        __asm volatile ("wfi");
    }
}

#ifndef NDEBUG
void MP_WEAK __assert_func(const char *file, int line, const char *func, const char *expr) {
    mp_printf(&mp_plat_print, "Assertion '%s' failed, at file %s:%d\n", expr, file, line);
    __fatal_error("assertion failed");
}
#endif

static void init_sys_path(void) {
    mp_obj_list_init(MP_OBJ_TO_PTR(mp_sys_path), 0);
    mp_obj_list_append(mp_sys_path, MP_OBJ_NEW_QSTR(MP_QSTR_));
    #if MICROPY_MODULE_FROZEN
    mp_obj_list_append(mp_sys_path, MP_OBJ_NEW_QSTR(MP_QSTR__dot_frozen));
    #endif
    mp_obj_list_append(mp_sys_path, mp_obj_new_str("/lib", 4));
    mp_obj_list_init(MP_OBJ_TO_PTR(mp_sys_argv), 0);
}

int main(void) {
    board_init();
    mp_stack_set_top(&_estack);
    // keep 1 KB of the stack as slack for the stack check
    mp_stack_set_limit((char *)&_estack - (char *)&_sstack - 1024);

    int fs_state = flashfs_mount();

    for (;;) {
        gc_init(&_heap_start, &_heap_end);
        mp_init();
        init_sys_path();
        readline_init0();
        flashfs_reset_cwd();
        if (fs_state == FLASHFS_FORMATTED) {
            mp_hal_stdout_tx_str("flashfs: formatted a new file system\r\n");
            fs_state = FLASHFS_OK;
        }

        int ret = pyexec_file_if_exists("boot.py");
        if (!(ret & PYEXEC_FORCED_EXIT) && pyexec_mode_kind == PYEXEC_MODE_FRIENDLY_REPL) {
            ret = pyexec_file_if_exists("main.py");
        }
        if (!(ret & PYEXEC_FORCED_EXIT)) {
            for (;;) {
                if (pyexec_mode_kind == PYEXEC_MODE_RAW_REPL) {
                    if (pyexec_raw_repl() != 0) {
                        break;
                    }
                } else {
                    if (pyexec_friendly_repl() != 0) {
                        break;
                    }
                }
            }
        }

        gc_sweep_all();
        mp_deinit();
        mp_hal_stdout_tx_str("MPY: soft reboot\r\n");
    }
    return 0;
}

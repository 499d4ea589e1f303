/*
 * HAL interface of the microtrain host port.
 *
 * The core HAL functions (mp_hal_stdin_rx_chr, mp_hal_stdout_tx_strn,
 * mp_hal_stdout_tx_strn_cooked, mp_hal_ticks_ms/us, mp_hal_delay_ms/us,
 * mp_hal_time_ns, mp_hal_stdio_poll) are declared by py/mphal.h.  They are
 * all implemented in hal_posix.c; a bare-metal HAL replaces that one file.
 */
#ifndef MICROPY_INCLUDED_HOSTPORT_MPHALPORT_H
#define MICROPY_INCLUDED_HOSTPORT_MPHALPORT_H

#include <stdbool.h>

// The host has no GPIO pins.  Defining the pin type stops py/mphal.h from
// pulling in the generic virtual-pin API (extmod/virtpin.h).
#define mp_hal_pin_obj_t int

// Set the character that raises KeyboardInterrupt while code runs
// (-1 disables it).  Called by shared/runtime/pyexec.c.
void mp_hal_set_interrupt_char(int c);

// Prepare stdio.  With repl=true, stdin is put in raw mode (if it is a
// tty) and "\n" is written as "\r\n", like a board's UART REPL.
void mp_hal_stdio_init(bool repl);

// Restore stdio to the state it had before mp_hal_stdio_init().
void mp_hal_stdio_deinit(void);

// True once stdin has reached end-of-file (always false on a board).
bool mp_hal_stdin_closed(void);

#endif // MICROPY_INCLUDED_HOSTPORT_MPHALPORT_H

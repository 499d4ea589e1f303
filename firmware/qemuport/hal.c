/*
 * The MicroPython HAL of the emulated board, on top of board.h: stdin from a ring
 * buffer filled by the UART interrupt (Ctrl-C raises KeyboardInterrupt), stdout to
 * the UART, ticks and delays from the board's virtual-time clock.
 */

#include "py/mphal.h"
#include "py/mpstate.h"
#include "py/runtime.h"
#include "py/stream.h"
#include "shared/runtime/interrupt_char.h"

#include "board.h"

/******************************************************************************/
// Receive buffer (single producer: the UART interrupt; single consumer: the VM).

#define RX_BUF_SIZE (1024)  // power of two; > MICROPY_REPL_STDIN_BUFFER_MAX (raw paste window)

static uint8_t rx_buf[RX_BUF_SIZE];
static volatile uint32_t rx_head;   // written by the interrupt
static volatile uint32_t rx_tail;   // written by the reader

bool hal_uart_rx_full(void) {
    return rx_head - rx_tail >= RX_BUF_SIZE;
}

void hal_uart_rx_push(uint8_t c) {
    #if MICROPY_KBD_EXCEPTION
    if (c == mp_interrupt_char) {
        // Ctrl-C while code runs (pyexec sets the interrupt char only then): raise
        // KeyboardInterrupt instead of buffering the byte.
        mp_sched_keyboard_interrupt();
        return;
    }
    #endif
    rx_buf[rx_head & (RX_BUF_SIZE - 1)] = c;
    rx_head = rx_head + 1;
}

static bool rx_any(void) {
    return rx_head != rx_tail;
}

int mp_hal_stdin_rx_chr(void) {
    for (;;) {
        if (rx_any()) {
            uint8_t c = rx_buf[rx_tail & (RX_BUF_SIZE - 1)];
            rx_tail = rx_tail + 1;
            board_uart_rx_resume();
            return c;
        }
        // Sleep until a byte (or any interrupt) arrives.  Interrupts are masked around
        // the check so a byte landing between the check and WFI still wakes the core.
        uint32_t state = MICROPY_BEGIN_ATOMIC_SECTION();
        if (!rx_any()) {
            board_wait(UINT64_MAX);
        }
        MICROPY_END_ATOMIC_SECTION(state);
        mp_handle_pending(true);
    }
}

mp_uint_t mp_hal_stdout_tx_strn(const char *str, size_t len) {
    board_uart_write(str, len);
    return len;
}

uintptr_t mp_hal_stdio_poll(uintptr_t poll_flags) {
    uintptr_t ret = 0;
    if ((poll_flags & MP_STREAM_POLL_RD) && rx_any()) {
        ret |= MP_STREAM_POLL_RD;
    }
    if (poll_flags & MP_STREAM_POLL_WR) {
        ret |= MP_STREAM_POLL_WR;
    }
    return ret;
}

/******************************************************************************/
// Time.  Under `-icount shift=0` one virtual ns is one instruction.

uint64_t mp_hal_time_ns(void) {
    return board_time_ns();
}

mp_uint_t mp_hal_ticks_ms(void) {
    return (mp_uint_t)(board_time_ns() / 1000000u);
}

mp_uint_t mp_hal_ticks_us(void) {
    return (mp_uint_t)(board_time_ns() / 1000u);
}

mp_uint_t mp_hal_ticks_cpu(void) {
    return (mp_uint_t)board_time_ns();
}

static void delay_ns(uint64_t ns) {
    uint64_t deadline = board_time_ns() + ns;
    for (;;) {
        mp_handle_pending(true);
        if (board_time_ns() >= deadline) {
            return;
        }
        uint32_t state = MICROPY_BEGIN_ATOMIC_SECTION();
        board_wait(deadline);
        MICROPY_END_ATOMIC_SECTION(state);
    }
}

void mp_hal_delay_ms(mp_uint_t ms) {
    delay_ns((uint64_t)ms * 1000000u);
}

void mp_hal_delay_us(mp_uint_t us) {
    delay_ns((uint64_t)us * 1000u);
}

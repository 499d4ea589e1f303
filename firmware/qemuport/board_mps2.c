/*
 * qemu's `-M mps2-an385` (ARM MPS2 with the AN385 FPGA image: Cortex-M3, 25 MHz), the second
 * target.  The firmware is linked into the same memory map as on the microbit: code in the
 * first MB of SSRAM1 at 0x00000000, the file system in its second MB, and .data/.bss/heap/stack
 * in 256 KB at 0x20000000 (the machine has 4 MB there; the firmware uses 256 KB).
 *
 * UART0 (CMSDK APB UART, 0x40004000, RX IRQ 0): one-byte receive buffer; qemu takes a byte
 *   from the pty only when it is empty, so pausing the receive interrupt back-pressures the host.
 * TIMER0 (CMSDK APB timer, 0x40000000, IRQ 8): 32-bit down counter at 25 MHz from 0xFFFFFFFF,
 *   interrupting at each wrap (every 172 s) to extend the count to 64 bits.
 * TIMER1 (0x40001000, IRQ 9): wakes the core from WFI at a deadline.
 * "Flash": SSRAM1 is RAM; erase and program emulate NOR flash (erase sets 0xFF, programming
 *   ANDs) so that flashfs behaves as on the microbit.
 */

#include <string.h>

#include "board.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART_BASE       0x40004000u
#define UART_DATA       REG(UART_BASE + 0x00)
#define UART_STATE      REG(UART_BASE + 0x04)
#define UART_CTRL       REG(UART_BASE + 0x08)
#define UART_INTSTATUS  REG(UART_BASE + 0x0C)
#define UART_BAUDDIV    REG(UART_BASE + 0x10)
#define UART_STATE_TXFULL   (1u << 0)
#define UART_STATE_RXFULL   (1u << 1)
#define UART_CTRL_TX_EN     (1u << 0)
#define UART_CTRL_RX_EN     (1u << 1)
#define UART_CTRL_RX_INTEN  (1u << 3)
#define UART_INT_RX         (1u << 1)
#define UART_RX_IRQ 0

#define TIMER_CTRL(b)       REG((b) + 0x00)
#define TIMER_VALUE(b)      REG((b) + 0x04)
#define TIMER_RELOAD(b)     REG((b) + 0x08)
#define TIMER_INTSTATUS(b)  REG((b) + 0x0C)
#define TIMER_CTRL_EN       (1u << 0)
#define TIMER_CTRL_IRQEN    (1u << 3)
#define TIMER0 0x40000000u
#define TIMER1 0x40001000u
#define TIMER0_IRQ 8
#define TIMER1_IRQ 9

#define NVIC_ISER REG(0xE000E100u)
#define NVIC_ISPR REG(0xE000E200u)

const uint32_t board_flash_page_size = 1024;
const uint32_t board_time_res_ns = 40;  // one tick at 25 MHz

extern uint32_t _fs_start, _fs_end;     // linker script

static volatile uint32_t timer_high;

void board_init(void) {
    TIMER_CTRL(TIMER0) = 0;
    TIMER_RELOAD(TIMER0) = 0xFFFFFFFFu;
    TIMER_INTSTATUS(TIMER0) = 1;
    TIMER_CTRL(TIMER0) = TIMER_CTRL_EN | TIMER_CTRL_IRQEN;
    TIMER_CTRL(TIMER1) = 0;
    TIMER_INTSTATUS(TIMER1) = 1;

    UART_BAUDDIV = 16;      // qemu ignores the UART below 16
    UART_CTRL = UART_CTRL_TX_EN | UART_CTRL_RX_EN | UART_CTRL_RX_INTEN;

    NVIC_ISER = (1u << UART_RX_IRQ) | (1u << TIMER0_IRQ) | (1u << TIMER1_IRQ);
}

/******************************************************************************/
// UART

void board_uart_write(const char *buf, size_t len) {
    while (len--) {
        while (UART_STATE & UART_STATE_TXFULL) {
        }
        UART_DATA = (uint8_t)*buf++;
    }
    while (UART_STATE & UART_STATE_TXFULL) {
    }
}

static void uart_irq(void) {
    UART_INTSTATUS = UART_INT_RX;
    while (UART_STATE & UART_STATE_RXFULL) {
        if (hal_uart_rx_full()) {
            UART_CTRL &= ~UART_CTRL_RX_INTEN;   // leave the byte in the UART until there is room
            return;
        }
        hal_uart_rx_push((uint8_t)UART_DATA);
    }
}

void board_uart_rx_resume(void) {
    if (!(UART_CTRL & UART_CTRL_RX_INTEN)) {
        UART_CTRL |= UART_CTRL_RX_INTEN;
        if (UART_STATE & UART_STATE_RXFULL) {
            NVIC_ISPR = 1u << UART_RX_IRQ;      // a byte arrived while paused: no edge, pend it
        }
    }
}

/******************************************************************************/
// Time

static uint64_t ticks(void) {
    uint32_t primask;
    __asm volatile ("mrs %0, primask\n cpsid i" : "=r" (primask) : : "memory");
    uint32_t lo = 0xFFFFFFFFu - TIMER_VALUE(TIMER0);
    uint32_t hi = timer_high;
    if ((TIMER_INTSTATUS(TIMER0) & 1) && lo < 0x80000000u) {
        ++hi;   // wrapped, the interrupt has not run yet
    }
    __asm volatile ("msr primask, %0" : : "r" (primask) : "memory");
    return ((uint64_t)hi << 32) | lo;
}

uint64_t board_time_ns(void) {
    return ticks() * 40u;
}

void board_irq(uint32_t irq) {
    if (irq == UART_RX_IRQ) {
        uart_irq();
    } else if (irq == TIMER0_IRQ) {
        if (TIMER_INTSTATUS(TIMER0) & 1) {
            TIMER_INTSTATUS(TIMER0) = 1;
            ++timer_high;
        }
    } else if (irq == TIMER1_IRQ) {
        TIMER_CTRL(TIMER1) = 0;
        TIMER_INTSTATUS(TIMER1) = 1;
    }
}

void board_wait(uint64_t deadline_ns) {
    if (deadline_ns != UINT64_MAX) {
        uint64_t now = ticks();
        uint64_t target = (deadline_ns + 39) / 40;
        if (target <= now + 2) {
            return;
        }
        uint64_t delta = target - now;
        TIMER_CTRL(TIMER1) = 0;
        TIMER_INTSTATUS(TIMER1) = 1;
        TIMER_RELOAD(TIMER1) = delta > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)delta;
        TIMER_CTRL(TIMER1) = TIMER_CTRL_EN | TIMER_CTRL_IRQEN;
    }
    __asm volatile ("wfi");
}

/******************************************************************************/
// "Flash" in SSRAM1, with NOR semantics

void board_flash_erase_page(uint32_t addr) {
    memset((void *)(uintptr_t)addr, 0xFF, board_flash_page_size);
}

void board_flash_program(uint32_t addr, const uint32_t *words, size_t n_words) {
    volatile uint32_t *dst = (volatile uint32_t *)(uintptr_t)addr;
    for (size_t i = 0; i < n_words; ++i) {
        dst[i] &= words[i];
    }
}

uintptr_t board_fs_start(void) {
    return (uintptr_t)&_fs_start;
}

uintptr_t board_fs_end(void) {
    return (uintptr_t)&_fs_end;
}

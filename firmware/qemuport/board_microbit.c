/*
 * The nRF51 of qemu's `-M microbit` machine, with 256 KB SRAM and 2 MB flash:
 *   -M microbit -global nrf51-soc.sram-size=262144 -global nrf51-soc.flash-size=2097152
 *
 * UART0 (0x40002000, IRQ 2): RX interrupt into the HAL's ring buffer.  qemu's model has a
 *   6-byte RX FIFO and only accepts bytes from the pty while the FIFO has room, so a board
 *   that stops reading back-pressures the host instead of losing bytes.
 * TIMER0 (0x40008000, IRQ 8): 32-bit, 16 MHz, free running.  CC[1] = 0 interrupts at each
 *   wrap (every 268 s) to extend the count to 64 bits; CC[2] wakes the core from WFI at a
 *   deadline; CC[0] takes captures for reading the count.
 * NVMC (0x4001E000): page erase (1 KB pages) and word programming of the flash, used by
 *   the file system in the upper megabyte of flash.
 */

#include "board.h"

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART_BASE           0x40002000u
#define UART_STARTRX        REG(UART_BASE + 0x000)
#define UART_STARTTX        REG(UART_BASE + 0x008)
#define UART_EVENTS_RXDRDY  REG(UART_BASE + 0x108)
#define UART_EVENTS_TXDRDY  REG(UART_BASE + 0x11C)
#define UART_EVENTS_ERROR   REG(UART_BASE + 0x124)
#define UART_INTENSET       REG(UART_BASE + 0x304)
#define UART_INTENCLR       REG(UART_BASE + 0x308)
#define UART_ERRORSRC       REG(UART_BASE + 0x480)
#define UART_ENABLE         REG(UART_BASE + 0x500)
#define UART_RXD            REG(UART_BASE + 0x518)
#define UART_TXD            REG(UART_BASE + 0x51C)
#define UART_INT_RXDRDY     (1u << 2)
#define UART_INT_ERROR      (1u << 9)

#define TIMER_BASE          0x40008000u
#define TIMER_START         REG(TIMER_BASE + 0x000)
#define TIMER_CLEAR         REG(TIMER_BASE + 0x00C)
#define TIMER_CAPTURE(n)    REG(TIMER_BASE + 0x040 + 4 * (n))
#define TIMER_EVENTS_COMPARE(n) REG(TIMER_BASE + 0x140 + 4 * (n))
#define TIMER_INTENSET      REG(TIMER_BASE + 0x304)
#define TIMER_INTENCLR      REG(TIMER_BASE + 0x308)
#define TIMER_MODE          REG(TIMER_BASE + 0x504)
#define TIMER_BITMODE       REG(TIMER_BASE + 0x508)
#define TIMER_PRESCALER     REG(TIMER_BASE + 0x510)
#define TIMER_CC(n)         REG(TIMER_BASE + 0x540 + 4 * (n))
#define TIMER_INT_COMPARE(n) (1u << (16 + (n)))

#define NVMC_BASE           0x4001E000u
#define NVMC_READY          REG(NVMC_BASE + 0x400)
#define NVMC_CONFIG         REG(NVMC_BASE + 0x504)
#define NVMC_ERASEPAGE      REG(NVMC_BASE + 0x508)
#define NVMC_CONFIG_REN     0u
#define NVMC_CONFIG_WEN     1u
#define NVMC_CONFIG_EEN     2u

#define NVIC_ISER           REG(0xE000E100u)

#define UART_IRQ 2
#define TIMER_IRQ 8

const uint32_t board_flash_page_size = 1024;
const uint32_t board_time_res_ns = 63;  // 62.5 ns: one tick of a 16 MHz timer

extern uint32_t _fs_start, _fs_end;     // linker script

// High word of the 64-bit tick count (incremented at each wrap of the 32-bit timer).
static volatile uint32_t timer_high;

void board_init(void) {
    // Timer: 32-bit, 16 MHz (prescaler 0), free running from 0.
    TIMER_MODE = 0;
    TIMER_BITMODE = 3;
    TIMER_PRESCALER = 0;
    TIMER_CLEAR = 1;
    TIMER_CC(1) = 0;
    TIMER_CC(2) = 0;
    TIMER_EVENTS_COMPARE(1) = 0;
    TIMER_EVENTS_COMPARE(2) = 0;
    TIMER_INTENCLR = TIMER_INT_COMPARE(0) | TIMER_INT_COMPARE(2) | TIMER_INT_COMPARE(3);
    TIMER_INTENSET = TIMER_INT_COMPARE(1);
    TIMER_START = 1;

    // UART: 8N1 (the baud rate is irrelevant under emulation), RX interrupt.
    UART_ENABLE = 4;
    UART_EVENTS_RXDRDY = 0;
    UART_EVENTS_TXDRDY = 0;
    UART_EVENTS_ERROR = 0;
    UART_STARTTX = 1;
    UART_STARTRX = 1;
    UART_INTENSET = UART_INT_RXDRDY | UART_INT_ERROR;

    NVIC_ISER = (1u << UART_IRQ) | (1u << TIMER_IRQ);
}

/******************************************************************************/
// UART

void board_uart_write(const char *buf, size_t len) {
    while (len--) {
        UART_EVENTS_TXDRDY = 0;
        UART_TXD = (uint8_t)*buf++;
        // qemu sets TXDRDY once the host side took the byte (at once unless the pty's
        // buffer is full).
        while (!UART_EVENTS_TXDRDY) {
        }
    }
}

static void uart_irq(void) {
    if (UART_EVENTS_ERROR) {
        UART_EVENTS_ERROR = 0;
        UART_ERRORSRC = 0xF;
    }
    while (UART_EVENTS_RXDRDY) {
        if (hal_uart_rx_full()) {
            // Leave the bytes in qemu's FIFO (which then stops taking bytes from the
            // pty) until the HAL has made room and calls board_uart_rx_resume().
            UART_INTENCLR = UART_INT_RXDRDY;
            break;
        }
        // The event must be cleared before reading RXD: qemu raises it again if the
        // FIFO still holds bytes after the read.
        UART_EVENTS_RXDRDY = 0;
        hal_uart_rx_push((uint8_t)UART_RXD);
    }
}

void board_uart_rx_resume(void) {
    UART_INTENSET = UART_INT_RXDRDY;
}

/******************************************************************************/
// Time

static uint64_t ticks(void) {
    uint32_t primask;
    __asm volatile ("mrs %0, primask\n cpsid i" : "=r" (primask) : : "memory");
    TIMER_CAPTURE(0) = 1;
    uint32_t lo = TIMER_CC(0);
    uint32_t hi = timer_high;
    if (TIMER_EVENTS_COMPARE(1) && lo < 0x80000000u) {
        // wrapped, the interrupt has not run yet
        ++hi;
    }
    __asm volatile ("msr primask, %0" : : "r" (primask) : "memory");
    return ((uint64_t)hi << 32) | lo;
}

uint64_t board_time_ns(void) {
    // 16 MHz: 62.5 ns per tick
    return (ticks() * 125u) >> 1;
}

static void timer_irq(void) {
    if (TIMER_EVENTS_COMPARE(1)) {
        TIMER_EVENTS_COMPARE(1) = 0;
        ++timer_high;
    }
    if (TIMER_EVENTS_COMPARE(2)) {
        TIMER_EVENTS_COMPARE(2) = 0;
        TIMER_INTENCLR = TIMER_INT_COMPARE(2);
    }
}

void board_irq(uint32_t irq) {
    if (irq == UART_IRQ) {
        uart_irq();
    } else if (irq == TIMER_IRQ) {
        timer_irq();
    }
}

void board_wait(uint64_t deadline_ns) {
    if (deadline_ns != UINT64_MAX) {
        uint64_t now = ticks();
        uint64_t target = (deadline_ns * 2 + 124) / 125;     // in ticks, rounded up
        if (target <= now + 2) {
            return;     // too close to arm a compare safely: let the caller spin
        }
        if (target - now < 0x80000000u) {
            TIMER_EVENTS_COMPARE(2) = 0;
            TIMER_CC(2) = (uint32_t)target;
            TIMER_INTENSET = TIMER_INT_COMPARE(2);
        }
        // (a deadline further away than 134 s: the next wrap interrupt wakes us first)
    }
    __asm volatile ("wfi");
}

/******************************************************************************/
// Flash

void board_flash_erase_page(uint32_t addr) {
    NVMC_CONFIG = NVMC_CONFIG_EEN;
    while (!NVMC_READY) {
    }
    NVMC_ERASEPAGE = addr;
    while (!NVMC_READY) {
    }
    NVMC_CONFIG = NVMC_CONFIG_REN;
}

void board_flash_program(uint32_t addr, const uint32_t *words, size_t n_words) {
    NVMC_CONFIG = NVMC_CONFIG_WEN;
    while (!NVMC_READY) {
    }
    volatile uint32_t *dst = (volatile uint32_t *)addr;
    for (size_t i = 0; i < n_words; ++i) {
        if (words[i] != 0xFFFFFFFFu) {
            dst[i] = words[i];
        }
    }
    while (!NVMC_READY) {
    }
    NVMC_CONFIG = NVMC_CONFIG_REN;
}

uintptr_t board_fs_start(void) {
    return (uintptr_t)&_fs_start;
}

uintptr_t board_fs_end(void) {
    return (uintptr_t)&_fs_end;
}

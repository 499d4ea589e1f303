/*
 * The emulated board's hardware, as the rest of the port sees it.  One file per
 * qemu machine implements it: board_microbit.c (nRF51: UART, TIMER0, NVMC flash)
 * and board_mps2.c (CMSDK UART and timer, RAM as "flash").
 */
#ifndef MICROPY_INCLUDED_QEMUPORT_BOARD_H
#define MICROPY_INCLUDED_QEMUPORT_BOARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Set up clocks, UART (with its receive interrupt) and the timer.
void board_init(void);

// Blocking write of bytes to the UART (waits while the host side is busy).
void board_uart_write(const char *buf, size_t len);

// The HAL's receive buffer, filled from the UART interrupt.  When it is full the board
// stops reading the UART, which back-pressures the host through qemu's character
// device: no byte is ever dropped.
bool hal_uart_rx_full(void);
void hal_uart_rx_push(uint8_t c);
// Called by the HAL after it has made room in the receive buffer.
void board_uart_rx_resume(void);

// Virtual time since reset, in nanoseconds.  Under `-icount shift=0` qemu advances
// virtual time by exactly 1 ns per executed instruction, so this counts instructions
// (in steps of the timer's resolution: 62.5 ns on the nRF51 at 16 MHz).
uint64_t board_time_ns(void);
// Resolution of board_time_ns, in ns (reported by qemu.clock_info()).
extern const uint32_t board_time_res_ns;

// Sleep until an interrupt arrives or the virtual time reaches deadline_ns
// (whichever comes first).  Must be called with interrupts masked (PRIMASK=1): the
// core wakes from WFI on a pending interrupt even when masked, so a byte that arrived
// just before the call is not slept through.
void board_wait(uint64_t deadline_ns);

// The file system's storage: a memory-mapped region erased in pages of
// board_flash_page_size bytes (erased = all 0xFF) and programmed a word at a time
// (NOR semantics: programming only clears bits).
extern const uint32_t board_flash_page_size;
void board_flash_erase_page(uint32_t addr);
void board_flash_program(uint32_t addr, const uint32_t *words, size_t n_words);
uintptr_t board_fs_start(void);
uintptr_t board_fs_end(void);

// Called by the vector table (startup.c) for external interrupt `irq` (0-31).
void board_irq(uint32_t irq);

#endif // MICROPY_INCLUDED_QEMUPORT_BOARD_H

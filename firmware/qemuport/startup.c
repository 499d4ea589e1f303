/*
 * Reset and exception handling of the emulated board: the vector table, .data/.bss
 * initialisation, and a HardFault handler that reports the faulting state on the UART.
 */

#include <stdint.h>
#include <string.h>

#include "board.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);

void Reset_Handler(void) __attribute__((naked, noreturn));
void Default_Handler(void);
void HardFault_Handler(void) __attribute__((naked));

static void irq_dispatch(void);

// 16 system exceptions + 32 interrupts (the nRF51 and the MPS2 AN385 have 32).
__attribute__((section(".isr_vector"), used))
const void *const isr_vector[16 + 32] = {
    &_estack,
    Reset_Handler,
    Default_Handler,     // NMI
    HardFault_Handler,
    HardFault_Handler,   // MemManage (M3)
    HardFault_Handler,   // BusFault (M3)
    HardFault_Handler,   // UsageFault (M3)
    0, 0, 0, 0,
    Default_Handler,     // SVCall
    Default_Handler,     // DebugMon
    0,
    Default_Handler,     // PendSV
    Default_Handler,     // SysTick
    [16 ... 16 + 31] = irq_dispatch,
};

static void irq_dispatch(void) {
    uint32_t ipsr;
    __asm volatile ("mrs %0, ipsr" : "=r" (ipsr));
    board_irq((ipsr & 0x1FF) - 16);
}

void Default_Handler(void) {
    for (;;) {
    }
}

static void fault_puts(const char *s) {
    board_uart_write(s, strlen(s));
}

static void fault_hex(const char *name, uint32_t v) {
    char buf[20];
    static const char hex[] = "0123456789abcdef";
    fault_puts(name);
    buf[0] = '0';
    buf[1] = 'x';
    for (int i = 0; i < 8; ++i) {
        buf[2 + i] = hex[(v >> (28 - 4 * i)) & 0xF];
    }
    buf[10] = '\r';
    buf[11] = '\n';
    board_uart_write(buf, 12);
}

__attribute__((used)) static void hard_fault_report(uint32_t *frame) {
    fault_puts("\r\nFATAL: HardFault\r\n");
    fault_hex("  r0  = ", frame[0]);
    fault_hex("  r1  = ", frame[1]);
    fault_hex("  r2  = ", frame[2]);
    fault_hex("  r3  = ", frame[3]);
    fault_hex("  r12 = ", frame[4]);
    fault_hex("  lr  = ", frame[5]);
    fault_hex("  pc  = ", frame[6]);
    fault_hex("  psr = ", frame[7]);
    for (;;) {
        __asm volatile ("wfi");
    }
}

void HardFault_Handler(void) {
    __asm volatile (
        "mov r0, sp\n"
        "ldr r1, =hard_fault_report\n"
        "bx r1\n"
        ".ltorg\n"
        );
}

static __attribute__((noreturn, used)) void reset_c(void) {
    // .data from flash, .bss zeroed
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
    main();
    for (;;) {
    }
}

void Reset_Handler(void) {
    __asm volatile (
        "ldr r0, =_estack\n"
        "mov sp, r0\n"
        "ldr r1, =reset_c\n"
        "bx r1\n"
        ".ltorg\n"
        );
}

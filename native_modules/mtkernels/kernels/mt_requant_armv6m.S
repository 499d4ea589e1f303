/*
 * Requantization run for ARMv6-M (Cortex-M0/M0+, Thumb-1), replacing mt_requant_run of
 * mt_requant.c when the module is built with -DMT_ARMV6M_ASM.  Same name, C ABI and results.
 *
 *   uint32_t mt_requant_run(const int32_t *acc, int32_t n, int8_t *y, const int32_t *par)
 *
 *   par = zy, act_min, act_max, then per output (mult, r) with r = -2 - shift in [0, 29]:
 *   y[j] = clamp((((acc[j] * mult) >> 32 >> r) + 1) >> 1) + zy, act_min, act_max)
 *   returns bit j set iff y[j] was not clamped (n <= 32; n may be 0).
 *
 * The high word of the 64-bit product comes from four 16x16 products (MUL_HI32_HALVES in
 * mt_armv6m.h).  36 instructions per output on the pass-through path; the constants live in high
 * registers (ADD/CMP accept them).
 *
 * r0 acc (LDM)  r1 (mult, r) pairs (LDM)  r2 y  r3-r7 work
 * r8 acc end  r9 zy  r10 act_min  r11 act_max  r12 bits  lr bit
 */
    .syntax unified
    .cpu cortex-m0
    .thumb

#include "mt_armv6m.h"

    .section .text.mt_requant_run,"ax",%progbits
    .global mt_requant_run
    .type   mt_requant_run, %function
    .thumb_func
    .p2align 2
mt_requant_run:
    push    {r4-r7, lr}
    mov     r4, r8
    mov     r5, r9
    mov     r6, r10
    mov     r7, r11
    push    {r4-r7}
    lsls    r1, r1, #2
    adds    r4, r0, r1
    mov     r8, r4              @ acc end
    ldm     r3!, {r4-r6}
    mov     r9, r4              @ zy
    mov     r10, r5             @ act_min
    mov     r11, r6             @ act_max
    mov     r1, r3              @ the (mult, r) pairs
    movs    r4, #0
    mov     r12, r4             @ bits
    movs    r4, #1
    mov     lr, r4              @ bit of this output
    cmp     r0, r8
    beq     4f
1:  ldm     r0!, {r3}           @ a = acc[j]
    ldm     r1!, {r4}           @ m = mult
    uxth    r5, r3              @ al
    asrs    r3, r3, #16         @ ah
    uxth    r6, r4              @ ml
    asrs    r4, r4, #16         @ mh
    MUL_HI32_HALVES             @ r3 = hi
    ldm     r1!, {r4}           @ r
    asrs    r3, r4
    adds    r3, #1
    asrs    r3, r3, #1          @ rounded, ties upward
    add     r3, r9              @ + zy
    cmp     r3, r10
    blt     5f
    cmp     r3, r11
    bgt     6f
    add     r12, lr             @ not clamped
2:  strb    r3, [r2]
    adds    r2, #1
    add     lr, lr
    cmp     r0, r8
    bne     1b
4:  mov     r0, r12
    pop     {r4-r7}
    mov     r8, r4
    mov     r9, r5
    mov     r10, r6
    mov     r11, r7
    pop     {r4-r7, pc}
5:  mov     r3, r10
    b       2b
6:  mov     r3, r11
    b       2b
    .size   mt_requant_run, . - mt_requant_run

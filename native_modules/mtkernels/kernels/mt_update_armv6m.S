/*
 * SGD step deltas for ARMv6-M (Cortex-M0/M0+, Thumb-1), replacing mt_sgd_deltas of mt_update.c
 * when the module is built with -DMT_ARMV6M_ASM.  Same name, C ABI and results.
 *
 *   uint32_t mt_sgd_deltas(int32_t *g, int32_t n, int32_t mult, uint32_t r_state[2])
 *
 *   for each of the n gradients, in order: state = xorshift32(state) (13, 17, 5), then
 *   g[i] = (((((g[i] * mult) >> 32 >> r) + 1) >> 1) + (state >> 16)) >> 16
 *   (mt_sgd_delta's fast path: shift16 <= -2, r = -2 - shift16 in [0, 29]); r_state = {r, state};
 *   returns the new state (also stored back).  n may be 0.
 *
 * The high word of the product: MUL_HI32_HALVES (mt_armv6m.h).  38 instructions per step.
 *
 * r0 g (LDR, STM)  r1 r  r2 state  r3-r7 work   r8 g end  r9 mult & 0xffff  r10 mult >> 16
 */
    .syntax unified
    .cpu cortex-m0
    .thumb

#include "mt_armv6m.h"

    .section .text.mt_sgd_deltas,"ax",%progbits
    .global mt_sgd_deltas
    .type   mt_sgd_deltas, %function
    .thumb_func
    .p2align 2
mt_sgd_deltas:
    ENTER_R10
    mov     lr, r3              @ r_state
    lsls    r1, r1, #2
    adds    r1, r0, r1
    mov     r8, r1              @ g end
    uxth    r4, r2
    mov     r9, r4              @ ml
    asrs    r4, r2, #16
    mov     r10, r4             @ mh
    ldm     r3!, {r1, r2}       @ r, state
    cmp     r0, r8
    beq     2f
1:  ldr     r3, [r0]            @ a = G
    uxth    r5, r3              @ al
    asrs    r3, r3, #16         @ ah
    mov     r6, r9              @ ml
    mov     r4, r10             @ mh
    MUL_HI32_HALVES             @ r3 = hi = floor(G*mult / 2^32)
    asrs    r3, r1
    adds    r3, #1
    asrs    r3, r3, #1          @ the step in Q16, rounded
    lsls    r4, r2, #13         @ state = xorshift32(state)
    eors    r2, r4
    lsrs    r4, r2, #17
    eors    r2, r4
    lsls    r4, r2, #5
    eors    r2, r4
    lsrs    r4, r2, #16
    adds    r3, r4
    asrs    r3, r3, #16         @ floor(step + u)
    stm     r0!, {r3}
    cmp     r0, r8
    bne     1b
2:  mov     r3, lr
    str     r2, [r3, #4]
    movs    r0, r2
    RETURN_R10
    .size   mt_sgd_deltas, . - mt_sgd_deltas

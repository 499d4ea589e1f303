/*
 * Shared pieces of the ARMv6-M (Cortex-M0/M0+, Thumb-1) assembly kernels, included by the
 * *_armv6m.S files: assembler macros only.
 */
#ifndef MT_ARMV6M_H
#define MT_ARMV6M_H

/* Frame of a kernel that uses r4-r10: saves r4-r7, lr and r8-r10 (32 bytes). */
    .macro  ENTER_R10
    push    {r4-r7, lr}
    mov     r4, r8
    mov     r5, r9
    mov     r6, r10
    push    {r4-r6}
    .endm

/* Restores what ENTER_R10 saved (the stack back where ENTER_R10 left it) and returns. */
    .macro  RETURN_R10
    pop     {r4-r6}
    mov     r8, r4
    mov     r9, r5
    mov     r10, r6
    pop     {r4-r7, pc}
    .endm

/* The four accumulators of a 2x2 kernel, r8, r9, r12 and lr, set to 0 (clobbers r4). */
    .macro  ZERO_ACC4
    movs    r4, #0
    mov     r8, r4
    mov     r9, r4
    mov     r12, r4
    mov     lr, r4
    .endm

/* r3 = floor(a * m / 2^32), the high word of the signed 64-bit product, from its 16-bit halves:
 * in r5 = a & 0xffff, r3 = a >> 16, r6 = m & 0xffff, r4 = m >> 16 (arithmetic shifts).  Four
 * 16x16 products; mt_mul_hi32 in mt_fixedpoint.h is the C form and says why the partial sums
 * cannot overflow.  Clobbers r4-r7; 16 instructions. */
    .macro  MUL_HI32_HALVES
    movs    r7, r5
    muls    r7, r6              @ ll = al*ml (unsigned)
    muls    r6, r3              @ t1 = ah*ml
    muls    r5, r4              @ t2 = al*mh
    muls    r3, r4              @ hh = ah*mh
    lsrs    r7, r7, #16
    adds    r5, r7              @ s = t2 + (ll >> 16)
    uxth    r7, r6
    asrs    r6, r6, #16
    adds    r3, r6              @ hh + (t1 >> 16)
    uxth    r6, r5
    asrs    r5, r5, #16
    adds    r3, r5              @ ... + (s >> 16)
    adds    r7, r6
    lsrs    r7, r7, #16
    adds    r3, r7              @ ... + the carry of the two low halves
    .endm

#endif /* MT_ARMV6M_H */

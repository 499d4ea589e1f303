/*
 * Dot-product micro-kernels for ARMv6-M (Cortex-M0/M0+, Thumb-1), replacing mt_dot.c when the
 * module is built with -DMT_ARMV6M_ASM.  Same names, C ABI and exact integer results as mt_dot.c
 * (int32 accumulation; callers bound len so that nothing overflows).
 *
 * Position-independent leaf code: no literal pools, no calls, no data.  r4-r11 are preserved.
 *
 * Cortex-M0+ costs: load 2 cycles, LDM 1+N, MULS 1, ALU 1, taken branch 2.  Thumb-1 has no
 * sign-extending load with an immediate offset, so every signed element load needs its own
 * [Rn, Rm] register pair; the kernels keep that to one pointer update per step:
 *   - "[R, R]" addressing: with R = a/2 + t, ldrsh [R, R] reads a[t] (2-byte stride) while
 *     ldrsb [R, S] with S = b - a/2 reads b[t] (1-byte stride): one `adds R, #1` advances
 *     three streams at once.
 *   - the second int16 row is read two (or four) elements at a time with LDM (pointer
 *     post-increment for free) and split with SXTH / ASRS #16; its row start is aligned to
 *     4 bytes by peeling one element when needed.
 *   - every MULS destroys one operand, so one value per step is materialized twice (the
 *     cheap one: a re-extraction from the LDM word, or a MOV copy).
 *   - accumulators live in high registers (ADD hi, lo is 1 cycle): r12 and lr first, so
 *     only r8-r10 need saving; the 2x2 s16s8 inner step is 17 cycles for 4 MACs plus 0.75
 *     cycle of LDM; loops are unrolled 8x, leftovers (peel, odd last element, pairs) first.
 *
 * len may be 0 or any positive value (a negative len is not supported); int16 arrays are 2-byte aligned, int8 arrays have no
 * alignment, out is 4-byte aligned.  Nothing is read outside a[0..len-1] / b[0..len-1]
 * (b[t*stride + 0..1] for the _col variants).
 */
    .syntax unified
    .cpu cortex-m0
    .thumb

#include "mt_armv6m.h"

/* x = low (hi=0) or high (hi=1) signed halfword of word register w, into r6 */
    .macro  XHALF w, hi
    .if \hi
    asrs    r6, \w, #16
    .else
    sxth    r6, \w
    .endif
    .endm

/* ------------------------------------------------------------------------------------------
 * void mt_dot2x2_s16s8(const int16_t *a0, const int16_t *a1, const int8_t *b0, const int8_t *b1,
 *                      int32_t len, int32_t *out)
 * r0 R = a0/2 + t   r1 &a1[t] (LDM)   r2 S0 = b0 - a0/2   r3 S1 = b1 - a0/2
 * r4, r5 a1 words   r6, r7 work   r8 c00  r9 c01  r12 c10  lr c11   r10 R at the end
 * ------------------------------------------------------------------------------------------ */
    .macro  ST22 w, hi
    XHALF   \w, \hi             @ r6 = x1
    ldrsb   r7, [r0, r2]        @ r7 = w0 = b0[t]
    muls    r6, r7              @ r6 = x1*w0
    add     r12, r6
    ldrsh   r6, [r0, r0]        @ r6 = x0 = a0[t]
    muls    r7, r6              @ r7 = x0*w0
    add     r8, r7
    ldrsb   r7, [r0, r3]        @ r7 = w1 = b1[t]
    muls    r6, r7              @ r6 = x0*w1
    add     r9, r6
    XHALF   \w, \hi             @ r6 = x1 again
    muls    r6, r7              @ r6 = x1*w1
    add     lr, r6
    adds    r0, #1
    .endm

/* The 2x2 run shared by mt_dot2x2_s16s8, mt_dot2xn_s16s8 (st = ST22) and mt_dot2x2_s16s8_col
 * (st = ST22C, col = 1: r2 is Bq, r3 stride - 1): in r0 R, r1 a1, r2, r3 as the step macro wants
 * them, r5 len, accumulators preset; out: the sums of len more steps in r8, r9, r12, lr.
 * Leftovers first (a1 alignment peel, odd last element, up to three pairs), then 8x. */
    .macro  DOT22_RUN st, col=0
    lsls    r4, r1, #30         @ a1 not 4-byte aligned: element 0 first
    bpl     1f
    cmp     r5, #0
    beq     1f
    ldrh    r4, [r1]
    adds    r1, #2
    \st     r4, 0
    subs    r5, #1
1:  lsrs    r4, r5, #1          @ odd count: the last element now
    bcc     2f
    subs    r5, #1              @ d = n - 1
    adds    r6, r5, r5
    ldrh    r4, [r1, r6]        @ a1[d]
    .if \col
    mov     r6, r3
    muls    r6, r5
    adds    r2, r2, r6          @ Bq + d*(stride - 1)
    .endif
    adds    r0, r0, r5          @ R + d
    \st     r4, 0
    subs    r0, r0, r5
    subs    r0, #1
    .if \col
    adds    r6, r5, #1
    muls    r6, r3
    subs    r2, r2, r6          @ Bq back where it was
    .endif
2:  adds    r4, r0, r5
    mov     r10, r4             @ final R
    lsls    r5, r5, #29
    lsrs    r5, r5, #30         @ (n >> 1) & 3 pairs before the 8x loop
    beq     6f
3:  ldm     r1!, {r4}
    \st     r4, 0
    \st     r4, 1
    subs    r5, #1
    bne     3b
6:  b       7f
4:  ldm     r1!, {r4, r5}
    \st     r4, 0
    \st     r4, 1
    \st     r5, 0
    \st     r5, 1
    ldm     r1!, {r4, r5}
    \st     r4, 0
    \st     r4, 1
    \st     r5, 0
    \st     r5, 1
7:  cmp     r0, r10
    bne     4b
    .endm

/* out[0..3] = r8, r9, r12, lr (out: the stack argument at [sp, #off]), then RETURN_R10. */
    .macro  STORE_ACC4_RETURN off
    ldr     r4, [sp, #\off]     @ out
    mov     r0, r8
    mov     r1, r9
    mov     r2, r12
    mov     r3, lr
    stm     r4!, {r0-r3}
    RETURN_R10
    .endm

    .section .text.mt_dot2x2_s16s8,"ax",%progbits
    .global mt_dot2x2_s16s8
    .type   mt_dot2x2_s16s8, %function
    .thumb_func
    .p2align 2
mt_dot2x2_s16s8:
    ENTER_R10
    lsrs    r0, r0, #1          @ R = a0/2
    subs    r2, r2, r0          @ S0
    subs    r3, r3, r0          @ S1
    ZERO_ACC4
    ldr     r5, [sp, #32]       @ n = len
    DOT22_RUN ST22
    STORE_ACC4_RETURN 36
    .size   mt_dot2x2_s16s8, . - mt_dot2x2_s16s8

/* ------------------------------------------------------------------------------------------
 * void mt_dot2xn_s16s8(const int16_t *a0, const int16_t *a1, const int8_t *w, int32_t K,
 *                      int32_t N, const int32_t *bias, int32_t *out0, int32_t *out1)
 * out_i[n] = bias[n] + sum_{t<K} a_i[t] * w[n*K + t] for n < N (N even; bias NULL: 0).
 * The column pairs in one call; the loop state lives in the frame:
 *   [sp] a0/2  [sp+4] a1  [sp+8] w of the next pair  [sp+12] K
 *   [sp+48] pairs left (x2)  [sp+52] bias  [sp+56] out0  [sp+60] out1 (the stack arguments)
 * ------------------------------------------------------------------------------------------ */
    .section .text.mt_dot2xn_s16s8,"ax",%progbits
    .global mt_dot2xn_s16s8
    .type   mt_dot2xn_s16s8, %function
    .thumb_func
    .p2align 2
mt_dot2xn_s16s8:
    ENTER_R10
    lsrs    r0, r0, #1
    push    {r0-r3}
    ldr     r4, [sp, #48]
    cmp     r4, #0
    bne     10f
    b       19f                 @ (conditional branches do not reach over the run)
10: ldr     r0, [sp]            @ R = a0/2
    ldr     r1, [sp, #4]        @ a1
    ldr     r2, [sp, #8]        @ w0
    ldr     r5, [sp, #12]       @ K (the run length)
    adds    r3, r2, r5          @ w1 = w0 + K
    adds    r4, r3, r5
    str     r4, [sp, #8]        @ the next pair
    subs    r2, r2, r0          @ S0
    subs    r3, r3, r0          @ S1
    ldr     r4, [sp, #52]       @ bias
    cmp     r4, #0
    beq     11f
    ldm     r4!, {r6, r7}
    str     r4, [sp, #52]
    b       12f
11: movs    r6, #0
    movs    r7, #0
12: mov     r8, r6
    mov     r12, r6
    mov     r9, r7
    mov     lr, r7
    DOT22_RUN ST22
    ldr     r4, [sp, #56]
    mov     r6, r8
    mov     r7, r9
    stm     r4!, {r6, r7}
    str     r4, [sp, #56]
    ldr     r4, [sp, #60]
    mov     r6, r12
    mov     r7, lr
    stm     r4!, {r6, r7}
    str     r4, [sp, #60]
    ldr     r4, [sp, #48]
    subs    r4, #2
    str     r4, [sp, #48]
    beq     19f
    b       10b
19: add     sp, #16
    RETURN_R10
    .size   mt_dot2xn_s16s8, . - mt_dot2xn_s16s8

/* ------------------------------------------------------------------------------------------
 * void mt_dot1x2_s16s8(const int16_t *a0, const int8_t *b0, const int8_t *b1, int32_t len,
 *                      int32_t *out)
 * r0 &a0[t] (LDM)  r1 S0 = b0 end  r2 S1 = b1 end  r3 i = t - n (counts up to 0)
 * r4, r5 a0 words  r6 x  r7 work  r12 c0  lr c1
 * ------------------------------------------------------------------------------------------ */
    .macro  ST12 w, hi
    XHALF   \w, \hi             @ r6 = x
    ldrsb   r7, [r1, r3]
    muls    r7, r6
    add     r12, r7
    ldrsb   r7, [r2, r3]
    muls    r7, r6
    add     lr, r7
    adds    r3, #1
    .endm

    .section .text.mt_dot1x2_s16s8,"ax",%progbits
    .global mt_dot1x2_s16s8
    .type   mt_dot1x2_s16s8, %function
    .thumb_func
    .p2align 2
mt_dot1x2_s16s8:
    push    {r4-r7, lr}
    movs    r7, #0
    mov     r12, r7
    mov     lr, r7
    cmp     r3, #0
    beq     9f
    lsls    r4, r0, #30         @ a0 not 4-byte aligned: element 0 first
    bpl     1f
    ldrsh   r6, [r0, r7]        @ r7 = 0
    ldrsb   r5, [r1, r7]
    muls    r5, r6
    mov     r12, r5
    ldrsb   r5, [r2, r7]
    muls    r5, r6
    mov     lr, r5
    adds    r0, #2
    adds    r1, #1
    adds    r2, #1
    subs    r3, #1
1:  lsrs    r4, r3, #1          @ odd count: last element first
    bcc     2f
    subs    r3, #1
    adds    r4, r3, r3
    ldrsh   r6, [r0, r4]
    ldrsb   r7, [r1, r3]
    muls    r7, r6
    add     r12, r7
    ldrsb   r7, [r2, r3]
    muls    r7, r6
    add     lr, r7
2:  adds    r1, r1, r3          @ even count n: S0 = b0 + n, S1 = b1 + n, i = -n
    adds    r2, r2, r3
    lsls    r5, r3, #29
    lsrs    r5, r5, #30         @ (n >> 1) & 3 pairs first
    rsbs    r3, r3, #0
    beq     9f
    cmp     r5, #0
    beq     4f
3:  ldm     r0!, {r4}
    ST12    r4, 0
    ST12    r4, 1
    subs    r5, #1
    bne     3b
    cmp     r3, #0
    beq     9f
4:  ldm     r0!, {r4, r5}
    ST12    r4, 0
    ST12    r4, 1
    ST12    r5, 0
    ST12    r5, 1
    ldm     r0!, {r4, r5}
    ST12    r4, 0
    ST12    r4, 1
    ST12    r5, 0
    ST12    r5, 1
    bne     4b
9:  ldr     r0, [sp, #20]       @ out
    mov     r1, r12
    mov     r2, lr
    str     r1, [r0]
    str     r2, [r0, #4]
    pop     {r4-r7, pc}
    .size   mt_dot1x2_s16s8, . - mt_dot1x2_s16s8

/* ------------------------------------------------------------------------------------------
 * void mt_dot2x2_s16s8_col(const int16_t *a0, const int16_t *a1, const int8_t *b, int32_t stride,
 *                          int32_t len, int32_t *out)
 * r0 R = a0/2 + t (incremented between the two b loads)   r1 &a1[t] (LDM)
 * r2 Bq = b + t*stride - R   r3 stride - 1   r4, r5 a1 words   r6, r7 work
 * r8 c00  r9 c01  r12 c10  lr c11   r10 R at the end
 * ------------------------------------------------------------------------------------------ */
    .macro  ST22C w, hi
    XHALF   \w, \hi             @ r6 = x1
    ldrsb   r7, [r2, r0]        @ r7 = w0 = b[t*stride]
    muls    r6, r7
    add     r12, r6
    ldrsh   r6, [r0, r0]        @ r6 = x0
    muls    r7, r6
    add     r8, r7
    adds    r0, #1
    ldrsb   r7, [r2, r0]        @ r7 = w1 = b[t*stride + 1]
    muls    r6, r7
    add     r9, r6
    XHALF   \w, \hi
    muls    r6, r7
    add     lr, r6
    adds    r2, r2, r3
    .endm

    .section .text.mt_dot2x2_s16s8_col,"ax",%progbits
    .global mt_dot2x2_s16s8_col
    .type   mt_dot2x2_s16s8_col, %function
    .thumb_func
    .p2align 2
mt_dot2x2_s16s8_col:
    ENTER_R10
    lsrs    r0, r0, #1          @ R = a0/2
    subs    r2, r2, r0          @ Bq = b - R
    subs    r3, #1              @ stride - 1
    ZERO_ACC4
    ldr     r5, [sp, #32]       @ n = len
    DOT22_RUN ST22C, 1
    STORE_ACC4_RETURN 36
    .size   mt_dot2x2_s16s8_col, . - mt_dot2x2_s16s8_col

/* ------------------------------------------------------------------------------------------
 * void mt_dot1x2_s16s8_col(const int16_t *a0, const int8_t *b, int32_t stride, int32_t len,
 *                          int32_t *out)
 * r0 &a0[t] (LDM)  r1 Bq = b + t*stride - i  r2 c0  r3 i (counts up to 0, +1 between the two
 * b loads)  r4, r5 a0 words  r6 x  r7 work  r12 stride - 1  lr c1
 * ------------------------------------------------------------------------------------------ */
    .macro  ST12C w, hi
    XHALF   \w, \hi
    ldrsb   r7, [r1, r3]        @ b[t*stride]
    muls    r7, r6
    adds    r2, r2, r7
    adds    r3, #1
    ldrsb   r7, [r1, r3]        @ b[t*stride + 1]
    muls    r7, r6
    add     lr, r7
    add     r1, r12
    .endm

    .section .text.mt_dot1x2_s16s8_col,"ax",%progbits
    .global mt_dot1x2_s16s8_col
    .type   mt_dot1x2_s16s8_col, %function
    .thumb_func
    .p2align 2
mt_dot1x2_s16s8_col:
    push    {r4-r7, lr}
    subs    r2, #1
    mov     r12, r2             @ stride - 1
    movs    r2, #0              @ c0
    mov     lr, r2              @ c1
    cmp     r3, #0
    beq     8f
    lsls    r4, r0, #30         @ a0 not 4-byte aligned: element 0 first
    bpl     1f
    movs    r5, #0
    ldrsh   r6, [r0, r5]
    ldrsb   r7, [r1, r5]
    muls    r7, r6
    adds    r2, r2, r7
    movs    r5, #1
    ldrsb   r7, [r1, r5]
    muls    r7, r6
    add     lr, r7
    add     r1, r12
    adds    r1, #1              @ b += stride
    adds    r0, #2
    subs    r3, #1
    beq     8f
1:  lsrs    r4, r3, #1          @ odd count: last element first
    bcc     2f
    subs    r3, #1              @ t = n - 1
    mov     r5, r12
    adds    r5, #1
    muls    r5, r3
    adds    r5, r5, r1          @ &b[t*stride]
    adds    r4, r3, r3
    ldrsh   r6, [r0, r4]
    movs    r4, #0
    ldrsb   r7, [r5, r4]
    muls    r7, r6
    adds    r2, r2, r7
    movs    r4, #1
    ldrsb   r7, [r5, r4]
    muls    r7, r6
    add     lr, r7
2:  adds    r1, r1, r3          @ even count n: Bq = b + n, i = -n
    lsls    r5, r3, #29
    lsrs    r5, r5, #30         @ (n >> 1) & 3 pairs first
    rsbs    r3, r3, #0
    beq     8f
    cmp     r5, #0
    beq     4f
3:  ldm     r0!, {r4}
    ST12C   r4, 0
    ST12C   r4, 1
    subs    r5, #1
    bne     3b
    cmp     r3, #0
    bne     4f
8:  b       9f
4:  ldm     r0!, {r4, r5}
    ST12C   r4, 0
    ST12C   r4, 1
    ST12C   r5, 0
    ST12C   r5, 1
    ldm     r0!, {r4, r5}
    ST12C   r4, 0
    ST12C   r4, 1
    ST12C   r5, 0
    ST12C   r5, 1
    cmp     r3, #0              @ (MULS sets N and Z)
    bne     4b
9:  ldr     r0, [sp, #20]
    mov     r1, lr
    str     r2, [r0]
    str     r1, [r0, #4]
    pop     {r4-r7, pc}
    .size   mt_dot1x2_s16s8_col, . - mt_dot1x2_s16s8_col

/* ------------------------------------------------------------------------------------------
 * void mt_dot2x2_s16s16(const int16_t *a0, const int16_t *a1, const int16_t *b0,
 *                       const int16_t *b1, int32_t len, int32_t *out)
 * r0-r3 row ends  r4 j = 2*(t - len) (counts up to 0)  r5-r7 work  r8 c00 r9 c01 r12 c10 lr c11
 * ------------------------------------------------------------------------------------------ */
    .macro  ST16
    ldrsh   r5, [r0, r4]        @ x0
    ldrsh   r6, [r2, r4]        @ w0
    mov     r7, r5
    muls    r7, r6              @ x0*w0
    add     r8, r7
    ldrsh   r7, [r1, r4]        @ x1
    muls    r6, r7              @ x1*w0
    add     r12, r6
    ldrsh   r6, [r3, r4]        @ w1
    muls    r5, r6              @ x0*w1
    add     r9, r5
    muls    r7, r6              @ x1*w1
    add     lr, r7
    adds    r4, #2
    .endm

    .section .text.mt_dot2x2_s16s16,"ax",%progbits
    .global mt_dot2x2_s16s16
    .type   mt_dot2x2_s16s16, %function
    .thumb_func
    .p2align 2
mt_dot2x2_s16s16:
    push    {r4-r7, lr}
    mov     r4, r8
    mov     r5, r9
    push    {r4, r5}
    ldr     r4, [sp, #28]       @ len
    movs    r5, #0
    mov     r8, r5
    mov     r9, r5
    mov     r12, r5
    mov     lr, r5
    adds    r4, r4, r4          @ 2*len (len == 0 falls through every step below)
    adds    r0, r0, r4
    adds    r1, r1, r4
    adds    r2, r2, r4
    adds    r3, r3, r4
    rsbs    r4, r4, #0          @ j = -2*len; its bits 1, 2, 3 are those of len, len', len''
    lsls    r5, r4, #30         @ N = len & 1
    bpl     1f
    ST16
1:  lsls    r5, r4, #29         @ N = len & 2
    bpl     2f
    ST16
    ST16
2:  lsls    r5, r4, #28         @ N = len & 4
    bpl     3f
    ST16
    ST16
    ST16
    ST16
3:  cmp     r4, #0
    beq     9f
4:  ST16
    ST16
    ST16
    ST16
    ST16
    ST16
    ST16
    ST16
    bne     4b
9:  ldr     r4, [sp, #32]       @ out
    mov     r0, r8
    mov     r1, r9
    mov     r2, r12
    mov     r3, lr
    stm     r4!, {r0-r3}
    pop     {r4, r5}
    mov     r8, r4
    mov     r9, r5
    pop     {r4-r7, pc}
    .size   mt_dot2x2_s16s16, . - mt_dot2x2_s16s16

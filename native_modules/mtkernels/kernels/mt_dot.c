/*
 * Dot-product micro-kernels: the inner loops of every product in microtrain.
 * Blocking 2 rows x 2 columns reuses each loaded operand twice.  The caller bounds `len` so
 * that the int32 sums cannot overflow (see mt_conv.c).  On ARMv6-M, mt_dot_armv6m.S replaces
 * all of them (build with -DMT_ARMV6M_ASM); both are tested against the same reference.
 */
#include "mt_kernels.h"

#ifndef MT_ARMV6M_ASM

void mt_dot2x2_s16s8(const int16_t *a0, const int16_t *a1, const int8_t *b0, const int8_t *b1,
    int32_t len, int32_t *out) {
    int32_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    for (int32_t t = 0; t < len; t++) {
        int32_t x0 = a0[t], x1 = a1[t];
        int32_t w0 = b0[t], w1 = b1[t];
        c00 += x0 * w0;
        c01 += x0 * w1;
        c10 += x1 * w0;
        c11 += x1 * w1;
    }
    out[0] = c00;
    out[1] = c01;
    out[2] = c10;
    out[3] = c11;
}

void mt_dot2xn_s16s8(const int16_t *a0, const int16_t *a1, const int8_t *w, int32_t K, int32_t N,
    const int32_t *bias, int32_t *out0, int32_t *out1) {
    int32_t acc[4];
    for (int32_t n = 0; n < N; n += 2, w += 2 * K) {
        mt_dot2x2_s16s8(a0, a1, w, w + K, K, acc);
        int32_t b0 = bias ? bias[n] : 0, b1 = bias ? bias[n + 1] : 0;
        out0[n] = (int32_t)((uint32_t)acc[0] + (uint32_t)b0);
        out0[n + 1] = (int32_t)((uint32_t)acc[1] + (uint32_t)b1);
        out1[n] = (int32_t)((uint32_t)acc[2] + (uint32_t)b0);
        out1[n + 1] = (int32_t)((uint32_t)acc[3] + (uint32_t)b1);
    }
}

void mt_dot1x2_s16s8(const int16_t *a0, const int8_t *b0, const int8_t *b1, int32_t len, int32_t *out) {
    int32_t c00 = 0, c01 = 0;
    for (int32_t t = 0; t < len; t++) {
        int32_t x0 = a0[t];
        c00 += x0 * b0[t];
        c01 += x0 * b1[t];
    }
    out[0] = c00;
    out[1] = c01;
}

void mt_dot2x2_s16s8_col(const int16_t *a0, const int16_t *a1, const int8_t *b, int32_t stride,
    int32_t len, int32_t *out) {
    int32_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    for (int32_t t = 0; t < len; t++) {
        int32_t x0 = a0[t], x1 = a1[t];
        int32_t w0 = b[0], w1 = b[1];
        b += stride;
        c00 += x0 * w0;
        c01 += x0 * w1;
        c10 += x1 * w0;
        c11 += x1 * w1;
    }
    out[0] = c00;
    out[1] = c01;
    out[2] = c10;
    out[3] = c11;
}

void mt_dot1x2_s16s8_col(const int16_t *a0, const int8_t *b, int32_t stride, int32_t len, int32_t *out) {
    int32_t c00 = 0, c01 = 0;
    for (int32_t t = 0; t < len; t++) {
        int32_t x0 = a0[t];
        c00 += x0 * b[0];
        c01 += x0 * b[1];
        b += stride;
    }
    out[0] = c00;
    out[1] = c01;
}

void mt_dot2x2_s16s16(const int16_t *a0, const int16_t *a1, const int16_t *b0, const int16_t *b1,
    int32_t len, int32_t *out) {
    int32_t c00 = 0, c01 = 0, c10 = 0, c11 = 0;
    for (int32_t t = 0; t < len; t++) {
        int32_t x0 = a0[t], x1 = a1[t];
        int32_t w0 = b0[t], w1 = b1[t];
        c00 += x0 * w0;
        c01 += x0 * w1;
        c10 += x1 * w0;
        c11 += x1 * w1;
    }
    out[0] = c00;
    out[1] = c01;
    out[2] = c10;
    out[3] = c11;
}

#endif /* MT_ARMV6M_ASM */

/*
 * Fixed-point helpers without 64-bit types or division, so they need no libgcc on ARMv6-M.
 * mt_srdhm / mt_rdbpot are gemmlowp's SaturatingRoundingDoublingHighMul / RoundingDivideByPOT
 * (the integer softmax); mt_requantize is TFLite's MultiplyByQuantizedMultiplier in both roundings.
 */
#include "mt_kernels.h"
#include "mt_fixedpoint.h"

int32_t mt_mul_hi(int32_t a, int32_t b, uint32_t *lo) {
    return mt_mul_hi_inline(a, b, lo);
}

/* round(a * b / 2^31), ties upward, saturating the single overflow case (TFLite/gemmlowp). */
int32_t mt_srdhm(int32_t a, int32_t b) {
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    uint32_t lo;
    int32_t hi = mt_mul_hi_inline(a, b, &lo);
    uint32_t lo2 = lo + (1u << 30);
    hi += lo2 < lo;
    return (int32_t)(((uint32_t)hi << 1) | (lo2 >> 31));
}

int32_t mt_rdbpot(int32_t x, int32_t exponent) {
    return mt_rdbpot_inline(x, exponent);
}

int32_t mt_scale_round(int32_t x, int32_t mult, int32_t shift) {
    return mt_scale_round_inline(x, mult, shift);
}

/* Unsigned division by shift and subtract (the kernels may not call libgcc's divider), over the
 * quotient's significant bits only.  d > 0. */
uint32_t mt_udiv(uint32_t n, uint32_t d) {
    uint32_t bit = 1, q = 0;
    while (d <= (n >> 1) && !(d & 0x80000000u)) {
        d <<= 1;
        bit <<= 1;
    }
    while (bit) {
        if (n >= d) {
            n -= d;
            q |= bit;
        }
        d >>= 1;
        bit >>= 1;
    }
    return q;
}

/* TFLite average-pool rounding: (n +/- d/2) / d truncated toward zero. d > 0. */
int32_t mt_div_round_away(int32_t n, int32_t d) {
    int32_t half = (int32_t)((uint32_t)d >> 1);
    if (n > 0) {
        return (int32_t)mt_udiv((uint32_t)(n + half), (uint32_t)d);
    }
    return -(int32_t)mt_udiv((uint32_t)(half - n), (uint32_t)d);
}

/* Marsaglia xorshift32 (13, 17, 5); the state must not be 0. */
uint32_t mt_xorshift32(uint32_t *state) {
    uint32_t s = *state;
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    *state = s;
    return s;
}

int32_t mt_sat_add(int32_t a, int32_t b) {
    int32_t s = (int32_t)((uint32_t)a + (uint32_t)b);
    /* overflow iff a and b have the same sign and s has the other */
    if (((a ^ s) & (b ^ s)) < 0) {
        return a < 0 ? INT32_MIN : INT32_MAX;
    }
    return s;
}

/* Output requantization (mult in [0, 2^31), shift in [-31, 30]).  TFLite has two roundings and
 * ai-edge-litert's reference kernels use both: FULLY_CONNECTED rounds once (TFLITE_SINGLE_ROUNDING),
 * CONV_2D / DEPTHWISE_CONV_2D round twice (gemmlowp: SaturatingRoundingDoublingHighMul, then
 * RoundingDivideByPOT; also TFLite Micro's and CMSIS-NN's default).  The layer says which. */
int32_t mt_requantize(int32_t acc, int32_t mult, int32_t shift, int32_t double_rounding) {
    if (!double_rounding) {
        return mt_scale_round_inline(acc, mult, shift);
    }
    int32_t left = shift > 0 ? shift : 0;
    int32_t right = shift > 0 ? 0 : -shift;
    return mt_rdbpot(mt_srdhm((int32_t)((uint32_t)acc << left), mult), right);   /* wraps like TFLite */
}

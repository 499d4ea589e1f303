/*
 * Fixed-point helpers without 64-bit types or division, so they need no libgcc on ARMv6-M.
 * mt_srdhm / mt_rdbpot are gemmlowp's SaturatingRoundingDoublingHighMul / RoundingDivideByPOT
 * (the integer softmax); mt_requantize is TFLite's MultiplyByQuantizedMultiplier in both roundings.
 */
#include "mt_kernels.h"

/* Signed 32x32 -> 64 product: returns the high word, stores the low word. */
int32_t mt_mul_hi(int32_t a, int32_t b, uint32_t *lo) {
    uint32_t al = (uint32_t)a & 0xffffu, bl = (uint32_t)b & 0xffffu;
    int32_t ah = a >> 16, bh = b >> 16;
    uint32_t ll = al * bl;
    int32_t t1 = ah * (int32_t)bl;   /* |t1| < 2^31 */
    int32_t t2 = (int32_t)al * bh;
    uint32_t mid = (ll >> 16) + ((uint32_t)t1 & 0xffffu) + ((uint32_t)t2 & 0xffffu);
    *lo = (mid << 16) | (ll & 0xffffu);
    return ah * bh + (t1 >> 16) + (t2 >> 16) + (int32_t)(mid >> 16);
}

/* round(a * b / 2^31), ties upward, saturating the single overflow case (TFLite/gemmlowp). */
int32_t mt_srdhm(int32_t a, int32_t b) {
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    uint32_t lo;
    int32_t hi = mt_mul_hi(a, b, &lo);
    uint32_t lo2 = lo + (1u << 30);
    hi += lo2 < lo;
    return (int32_t)(((uint32_t)hi << 1) | (lo2 >> 31));
}

/* x / 2^exponent rounded to nearest, ties away from zero; exponent in [0, 31]. */
int32_t mt_rdbpot(int32_t x, int32_t exponent) {
    int32_t mask = (int32_t)((1u << exponent) - 1u);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0);
    return (x >> exponent) + (remainder > threshold);
}

/* round(x * mult * 2^(shift - 31)), ties upward, saturated to int32; shift clamped to [-31, 31].
 * One rounding of the exact 64-bit product: TFLite's MultiplyByQuantizedMultiplier as built
 * with TFLITE_SINGLE_ROUNDING, which ai-edge-litert's reference kernels use (where TFLite
 * asserts that the result fits, this saturates).  Also the gradient rescaling and SGD steps. */
int32_t mt_scale_round(int32_t x, int32_t mult, int32_t shift) {
    if (shift > 31) {
        shift = 31;
    } else if (shift < -31) {
        shift = -31;
    }
    uint32_t lo;
    int32_t hi = mt_mul_hi(x, mult, &lo);
    int32_t r = 31 - shift;   /* right shift in [0, 62] */
    int32_t res_hi;
    uint32_t res_lo;
    if (r == 0) {
        res_hi = hi;
        res_lo = lo;
    } else {
        if (r <= 32) {
            uint32_t add = 1u << (r - 1);
            uint32_t lo2 = lo + add;
            hi += lo2 < lo;
            lo = lo2;
        } else {
            hi += (int32_t)(1u << (r - 33));
        }
        if (r < 32) {
            res_lo = (lo >> r) | ((uint32_t)hi << (32 - r));
            res_hi = hi >> r;
        } else {
            res_lo = (uint32_t)(hi >> (r - 32));
            res_hi = hi >> 31;
        }
    }
    /* saturate the 64-bit (res_hi, res_lo) to int32 */
    if (res_hi != ((int32_t)res_lo >> 31)) {
        return res_hi < 0 ? INT32_MIN : INT32_MAX;
    }
    return (int32_t)res_lo;
}

/* Unsigned division by shift and subtract (the kernels may not call libgcc's divider). d > 0. */
uint32_t mt_udiv(uint32_t n, uint32_t d) {
    uint32_t q = 0, r = 0;
    for (int32_t i = 31; i >= 0; i--) {
        r = (r << 1) | ((n >> i) & 1u);
        if (r >= d) {
            r -= d;
            q |= 1u << i;
        }
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
        return mt_scale_round(acc, mult, shift);
    }
    int32_t left = shift > 0 ? shift : 0;
    int32_t right = shift > 0 ? 0 : -shift;
    return mt_rdbpot(mt_srdhm((int32_t)((uint32_t)acc << left), mult), right);   /* wraps like TFLite */
}

/*
 * Inline fixed-point primitives shared by the kernels' hot paths (requantization, SGD steps);
 * mt_fixedpoint.c exports the same functions for the binding and the tests.
 */
#ifndef MT_FIXEDPOINT_H
#define MT_FIXEDPOINT_H

#include <stdint.h>

/* Signed 32x32 -> 64 product: returns the high word, stores the low word. */
static inline int32_t mt_mul_hi_inline(int32_t a, int32_t b, uint32_t *lo) {
    uint32_t al = (uint32_t)a & 0xffffu, bl = (uint32_t)b & 0xffffu;
    int32_t ah = a >> 16, bh = b >> 16;
    uint32_t ll = al * bl;
    int32_t t1 = ah * (int32_t)bl;   /* |t1| < 2^31 */
    int32_t t2 = (int32_t)al * bh;
    uint32_t mid = (ll >> 16) + ((uint32_t)t1 & 0xffffu) + ((uint32_t)t2 & 0xffffu);
    *lo = (mid << 16) | (ll & 0xffffu);
    return ah * bh + (t1 >> 16) + (t2 >> 16) + (int32_t)(mid >> 16);
}

/* High word of the signed 32x32 -> 64 product, floor(a * b / 2^32), from four 16x16 products:
 * a*b = ah*bh 2^32 + (t1 + s) 2^16 + (ll mod 2^16) with s = t2 + (ll >> 16), which cannot
 * overflow (|t2| <= 2^31 - 2^16 - 2^15).  On ARMv6-M written out in Thumb-1 (19 instructions;
 * GCC spends about twice that and spills). */
static inline int32_t mt_mul_hi32(int32_t a, int32_t b) {
#if defined(__thumb__) && !defined(__thumb2__)
    int32_t al, ah, bl, bh, ll;
    __asm__ (
        ".syntax unified\n\t"           /* GCC's Thumb-1 output may still be in divided syntax */
        "uxth  %[al], %[a]\n\t"
        "asrs  %[ah], %[a], #16\n\t"
        "uxth  %[bl], %[b]\n\t"
        "asrs  %[bh], %[b], #16\n\t"
        "movs  %[ll], %[al]\n\t"
        "muls  %[ll], %[bl]\n\t"        /* ll = al*bl (unsigned) */
        "muls  %[bl], %[ah]\n\t"        /* t1 = ah*bl */
        "muls  %[al], %[bh]\n\t"        /* t2 = al*bh */
        "muls  %[ah], %[bh]\n\t"        /* hh = ah*bh */
        "lsrs  %[ll], %[ll], #16\n\t"
        "adds  %[al], %[ll]\n\t"        /* s = t2 + (ll >> 16) */
        "uxth  %[ll], %[bl]\n\t"
        "asrs  %[bl], %[bl], #16\n\t"
        "adds  %[ah], %[bl]\n\t"
        "uxth  %[bl], %[al]\n\t"
        "asrs  %[al], %[al], #16\n\t"
        "adds  %[ah], %[al]\n\t"
        "adds  %[ll], %[bl]\n\t"
        "lsrs  %[ll], %[ll], #16\n\t"
        "adds  %[ah], %[ll]\n\t"
        ".syntax divided\n\t"
        : [al] "=&l" (al), [ah] "=&l" (ah), [bl] "=&l" (bl), [bh] "=&l" (bh), [ll] "=&l" (ll)
        : [a] "l" (a), [b] "l" (b)
        : "cc");
    return ah;
#else
    uint32_t al = (uint32_t)a & 0xffffu, bl = (uint32_t)b & 0xffffu;
    int32_t ah = a >> 16, bh = b >> 16;
    uint32_t ll = al * bl;
    int32_t t1 = ah * (int32_t)bl;
    int32_t s = (int32_t)al * bh + (int32_t)(ll >> 16);
    return ah * bh + (t1 >> 16) + (s >> 16) + (int32_t)((((uint32_t)t1 & 0xffffu) + ((uint32_t)s & 0xffffu)) >> 16);
#endif
}

/* x / 2^exponent rounded to nearest, ties away from zero; exponent in [0, 31] (gemmlowp's
 * RoundingDivideByPOT). */
static inline int32_t mt_rdbpot_inline(int32_t x, int32_t exponent) {
    int32_t mask = (int32_t)((1u << exponent) - 1u);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0);
    return (x >> exponent) + (remainder > threshold);
}

/* round(x * mult * 2^(shift - 31)), ties upward, saturated to int32; shift clamped to [-31, 31].
 * One rounding of the exact 64-bit product: TFLite's MultiplyByQuantizedMultiplier as built
 * with TFLITE_SINGLE_ROUNDING, which ai-edge-litert's reference kernels use (where TFLite
 * asserts that the result fits, this saturates).  Also the gradient rescaling and SGD steps. */
static inline int32_t mt_scale_round_inline(int32_t x, int32_t mult, int32_t shift) {
    if (shift > 31) {
        shift = 31;
    } else if (shift < -31) {
        shift = -31;
    }
    uint32_t lo;
    int32_t hi = mt_mul_hi_inline(x, mult, &lo);
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

/* mt_scale_round with a fast path: for shift <= -2 (a right shift of at least 33 bits of the
 * 64-bit product) only the high word matters and nothing can saturate.  Same results. */
static inline int32_t mt_scale_round_fast(int32_t x, int32_t mult, int32_t shift) {
    if (shift <= -2) {
        if (shift < -31) {
            shift = -31;
        }
        int32_t r = -2 - shift;   /* 31 - shift - 32 - 1, in [0, 29] */
        return ((mt_mul_hi32(x, mult) >> r) + 1) >> 1;
    }
    return mt_scale_round_inline(x, mult, shift);
}

/* mt_scale_round for an int16 x (gradients): with shift in [-1, 14] (a right shift r = 31 - shift
 * of 17..32) the product x * mult = A 2^16 + B splits into two int32 products, A = x * (mult >> 16)
 * and B = x * (mult & 0xffff), and round(x * mult / 2^r) = (A + (B >> 16) + 2^(r-17)) >> (r - 16)
 * (the low 16 bits of B are below the rounding bit).  Other shifts take mt_scale_round_fast. */
static inline int32_t mt_scale_round_s16(int32_t x, int32_t mult, int32_t shift) {
    if (shift >= -1 && shift <= 14) {
        int32_t t = x * (mult >> 16) + ((x * (int32_t)((uint32_t)mult & 0xffffu)) >> 16);
        int32_t r = 31 - shift;
        return (t + (1 << (r - 17))) >> (r - 16);
    }
    return mt_scale_round_fast(x, mult, shift);
}

/* Marsaglia xorshift32 (13, 17, 5) on a local copy of the state. */
static inline uint32_t mt_xorshift32_step(uint32_t s) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
}

/* One SGD step of a parameter (see mt_update.c): grad * f * 2^g_exp in Q16, rounded down or up
 * with the next PRNG draw.  `shift16` is shift + g_exp + 16. */
static inline int32_t mt_sgd_delta(int32_t grad, int32_t mult, int32_t shift16, uint32_t draw) {
    int32_t v = mt_scale_round_fast(grad, mult, shift16);
    if (v > INT32_MAX - 0xffff) {
        v = INT32_MAX - 0xffff;
    }
    return (v + (int32_t)(draw >> 16)) >> 16;
}

#endif /* MT_FIXEDPOINT_H */

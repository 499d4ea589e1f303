/*
 * Output requantization of the forward kernels: accumulators -> int8 outputs and clamp masks.
 *
 *   y = clamp(MultiplyByQuantizedMultiplier(acc + bias, mult[c], shift[c]) + zy, act_min, act_max)
 *   mask bit = 1 iff the value was not clamped
 *
 * mt_store_outputs is the general epilogue (both TFLite roundings, any shift).  The usual case of
 * a layer that microtrain quantized itself, single rounding with a right shift of at least two,
 * has a faster form: mt_requant_prepare packs a chunk's per-channel constants once, and
 * mt_requant_run requantizes a run of accumulators with them (one 32x32 high-word product per
 * output, no 64-bit type; mt_requant_armv6m.S on the Cortex-M0+).  Both give identical results.
 */
#include "mt_kernels.h"
#include "mt_fixedpoint.h"

/* v clamped to [lo, hi]; bit j of *bits is set iff v was inside (not clamped). */
static inline int8_t clamp_bit(int32_t v, int32_t lo, int32_t hi, int32_t j, uint32_t *bits) {
    if (v < lo) {
        return (int8_t)lo;
    }
    if (v > hi) {
        return (int8_t)hi;
    }
    *bits |= 1u << j;
    return (int8_t)v;
}

/* Mask bits i0 .. i0+n-1 from bits 0 .. n-1 of `bits` (n <= 32), a byte at a time. */
void mt_put_mask_bits(uint8_t *mask, int32_t i0, uint32_t bits, int32_t n) {
    uint8_t *p = mask + (i0 >> 3);
    int32_t sh = i0 & 7;
    while (n > 0) {
        int32_t k = 8 - sh < n ? 8 - sh : n;
        uint32_t m = ((1u << k) - 1u) << sh;
        *p = (uint8_t)((*p & ~m) | ((bits << sh) & m));
        p++;
        bits >>= k;
        n -= k;
        sh = 0;
    }
}

/* Shared epilogue of the forward kernels: n consecutive channels c0.. of one position, acc[j] for
 * channel c0 + j: bias, requantize, clamp, y[i0 + j], and mask bit i0 + j set iff not clamped.
 * The per-call constants are hoisted; the usual case (single rounding, right shift >= 2) is one
 * high-word product (mt_scale_round_fast).  Runs of up to 32 collect the mask bits in a word. */
void mt_store_outputs(const mt_requant_t *rq, const int32_t *bias, int32_t c0, const int32_t *acc,
    int32_t n, int8_t *y, uint8_t *mask, int32_t i0) {
    int32_t step = rq->per_channel ? 1 : 0;
    const int32_t *mult = rq->mult + c0 * step, *shift = rq->shift + c0 * step;
    const int32_t zy = rq->zy, lo = rq->act_min, hi = rq->act_max, dbl = rq->double_rounding;
    if (bias) {
        bias += c0;
    }
    y += i0;
    while (n > 0) {
        int32_t run = n < 32 ? n : 32;
        uint32_t bits = 0;
        for (int32_t j = 0; j < run; j++) {
            int32_t a = acc[j];
            if (bias) {
                a = (int32_t)((uint32_t)a + (uint32_t)bias[j]);
            }
            int32_t m = *mult, s = *shift;
            mult += step;
            shift += step;
            int32_t r = dbl ? mt_requantize(a, m, s, 1) : mt_scale_round_fast(a, m, s);
            y[j] = clamp_bit((int32_t)((uint32_t)r + (uint32_t)zy), lo, hi, j, &bits);
        }
        if (mask) {
            mt_put_mask_bits(mask, i0, bits, run);
        }
        acc += run;
        if (bias) {
            bias += run;
        }
        y += run;
        i0 += run;
        n -= run;
    }
}

int32_t mt_requant_prepare(const mt_requant_t *rq, int32_t c0, int32_t n, int32_t *par) {
    int32_t step = rq->per_channel ? 1 : 0;
    int32_t fast = !rq->double_rounding;
    par[0] = rq->zy;
    par[1] = rq->act_min;
    par[2] = rq->act_max;
    for (int32_t j = 0; j < n; j++) {
        int32_t k = (c0 + j) * step;
        int32_t s = rq->shift[k];
        fast &= s <= -2;
        par[3 + 2 * j] = rq->mult[k];
        par[4 + 2 * j] = -2 - s;   /* in [0, 29] on the fast path */
    }
    return fast;
}

#ifndef MT_ARMV6M_ASM
uint32_t mt_requant_run(const int32_t *acc, int32_t n, int8_t *y, const int32_t *par) {
    int32_t zy = par[0], lo = par[1], hi = par[2];
    const int32_t *p = par + 3;
    uint32_t bits = 0;
    for (int32_t j = 0; j < n; j++, p += 2) {
        /* mt_scale_round_fast with r = -2 - shift */
        y[j] = clamp_bit((((mt_mul_hi32(acc[j], p[0]) >> p[1]) + 1) >> 1) + zy, lo, hi, j, &bits);
    }
    return bits;
}
#endif

void mt_store_run(const mt_requant_t *rq, int32_t fast, const int32_t *par, int32_t c0, const int32_t *acc,
    int32_t n, int8_t *y, uint8_t *mask, int32_t i0) {
    if (!fast) {
        mt_store_outputs(rq, NULL, c0, acc, n, y, mask, i0);
        return;
    }
    uint32_t bits = mt_requant_run(acc, n, y + i0, par);
    if (mask) {
        mt_put_mask_bits(mask, i0, bits, n);
    }
}

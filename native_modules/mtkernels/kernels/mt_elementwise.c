/*
 * Element-wise layers (residual add, clamp) and the integer softmax, bit-exact with TFLite's
 * reference int8 kernels, plus the gradient plumbing between layers: the gradient at the
 * logits, per-channel rescaling, power-of-two narrowing to int16 and the activation mask.
 */
#include "mt_kernels.h"
#include "mt_fixedpoint.h"

static inline int32_t mask_bit(const uint8_t *mask, int32_t i) {
    return (mask[i >> 3] >> (i & 7)) & 1;
}

static inline void put_mask_bit(uint8_t *mask, int32_t i, int32_t pass) {
    uint8_t bit = (uint8_t)(1u << (i & 7));
    mask[i >> 3] = pass ? (uint8_t)(mask[i >> 3] | bit) : (uint8_t)(mask[i >> 3] & ~bit);
}

static inline int32_t clamp_pass(int32_t v, int32_t lo, int32_t hi, int32_t *pass) {
    *pass = v >= lo && v <= hi;
    return v < lo ? lo : v > hi ? hi : v;
}

/* TFLite reference int8 ADD: both inputs shifted left, rescaled to a common scale, summed,
 * rescaled to the output (gemmlowp double rounding, MultiplyByQuantizedMultiplierSmallerThanOneExp). */
void mt_add_forward(int32_t n, const int8_t *x1, const int8_t *x2, const mt_add_params_t *p,
    int8_t *y, uint8_t *mask) {
    for (int32_t i = 0; i < n; i++) {
        int32_t a = (int32_t)((uint32_t)(x1[i] - p->z1) << p->left_shift);
        int32_t b = (int32_t)((uint32_t)(x2[i] - p->z2) << p->left_shift);
        a = mt_requantize(a, p->mult1, p->shift1, 1);
        b = mt_requantize(b, p->mult2, p->shift2, 1);
        int32_t s = mt_requantize(a + b, p->mult_y, p->shift_y, 1) + p->zy;
        int32_t pass;
        y[i] = (int8_t)clamp_pass(s, p->act_min, p->act_max, &pass);
        if (mask) {
            put_mask_bit(mask, i, pass);
        }
    }
}

/* ReLU / ReLU6 on int8 (lo/hi are the quantized bounds); y may be x. */
void mt_clamp_forward(int32_t n, const int8_t *x, int32_t lo, int32_t hi, int8_t *y, uint8_t *mask) {
    for (int32_t i = 0; i < n; i++) {
        int32_t pass;
        y[i] = (int8_t)clamp_pass(x[i], lo, hi, &pass);
        if (mask) {
            put_mask_bit(mask, i, pass);
        }
    }
}

/* ---- integer softmax (TFLite reference, gemmlowp fixed point) ---- */

/* Multiply by 2^e with saturation (e > 0) or rounding division (e < 0). */
static int32_t sat_mul_pot(int32_t x, int32_t e) {
    if (e > 0) {
        int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
        if (x > threshold) {
            return INT32_MAX;
        }
        if (x < -threshold) {
            return INT32_MIN;
        }
        return (int32_t)((uint32_t)x << e);
    }
    if (e < 0) {
        return mt_rdbpot(x, -e);
    }
    return x;
}

/* exp(a) for a in [-1/4, 0), Q0.31 in and out: Taylor series around -1/8. */
static int32_t exp_quarter(int32_t a) {
    const int32_t exp_m1_8 = 1895147668;   /* exp(-1/8) */
    const int32_t one_third = 715827883;
    int32_t x = a + (1 << 28);
    int32_t x2 = mt_srdhm(x, x);
    int32_t x3 = mt_srdhm(x2, x);
    int32_t x4 = mt_srdhm(x2, x2);
    int32_t x4_4 = sat_mul_pot(x4, -2);
    int32_t poly = sat_mul_pot(mt_srdhm(x4_4 + x3, one_third) + x2, -1);
    return exp_m1_8 + mt_srdhm(exp_m1_8, x + poly);
}

/* exp(a) for a <= 0 given in Q5.26, result Q0.31 (gemmlowp exp_on_negative_values). */
static int32_t exp_negative_q5_26(int32_t a) {
    static const int32_t mults[7] = {
        1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242
    };
    const int32_t quarter = 1 << 24;
    int32_t a_mod = (a & (quarter - 1)) - quarter;
    int32_t result = exp_quarter(sat_mul_pot(a_mod, 5));
    int32_t remainder = a_mod - a;
    for (int32_t i = 0; i < 7; i++) {
        /* bit 26 + (i - 2) of the remainder selects exp(-2^(i-2)) */
        if (remainder & (1 << (24 + i))) {
            result = mt_srdhm(result, mults[i]);
        }
    }
    if (a == 0) {
        result = INT32_MAX;
    }
    return result;
}

static int32_t count_leading_zeros(uint32_t x) {
    int32_t n = 0;
    if (x == 0) {
        return 32;
    }
    while (!(x & 0x80000000u)) {
        x <<= 1;
        n++;
    }
    return n;
}

/* 1 / (1 + x) for x in [0, 1), Q0.31 (Newton-Raphson, gemmlowp). */
static int32_t one_over_one_plus_x(int32_t a) {
    /* half_denominator = RoundingHalfSum(a, 1.0) = (a + INT32_MAX + 1) / 2 for a >= 0 */
    int32_t half_den = (int32_t)(((uint32_t)a >> 1) + 0x40000000u);
    const int32_t c48_17 = 1515870810, cm32_17 = -1010580540;   /* Q2.29 */
    int32_t x = c48_17 + mt_srdhm(half_den, cm32_17);
    for (int32_t i = 0; i < 3; i++) {
        int32_t hdx = mt_srdhm(half_den, x);
        int32_t one_minus = (1 << 29) - hdx;
        x = x + sat_mul_pot(mt_srdhm(x, one_minus), 2);
    }
    return sat_mul_pot(x, 1);
}

void mt_softmax_forward(int32_t rows, int32_t depth, const int8_t *x, int32_t beta_mult,
    int32_t beta_left_shift, int32_t diff_min, int8_t *y) {
    for (int32_t r = 0; r < rows; r++, x += depth, y += depth) {
        int32_t max = -128;
        for (int32_t c = 0; c < depth; c++) {
            if (x[c] > max) {
                max = x[c];
            }
        }
        int32_t sum = 0;   /* Q12.19 */
        for (int32_t c = 0; c < depth; c++) {
            int32_t diff = x[c] - max;
            if (diff >= diff_min) {
                int32_t scaled = mt_srdhm((int32_t)((uint32_t)diff << beta_left_shift), beta_mult);
                sum += mt_rdbpot(exp_negative_q5_26(scaled), 12);
            }
        }
        int32_t headroom = count_leading_zeros((uint32_t)sum);
        int32_t bits_over_unit = 12 - headroom;
        int32_t shifted = (int32_t)(((uint32_t)sum << headroom) - 0x80000000u);
        int32_t scale = one_over_one_plus_x(shifted);
        for (int32_t c = 0; c < depth; c++) {
            int32_t diff = x[c] - max;
            int32_t out = -128;
            if (diff >= diff_min) {
                int32_t scaled = mt_srdhm((int32_t)((uint32_t)diff << beta_left_shift), beta_mult);
                int32_t e = exp_negative_q5_26(scaled);
                out = mt_rdbpot(mt_srdhm(scale, e), bits_over_unit + 31 - 8) - 128;
                out = out > 127 ? 127 : out < -128 ? -128 : out;
            }
            y[c] = (int8_t)out;
        }
    }
}

/* Gradient of the cross-entropy at the logits: p - onehot with p = (y + 128) / 256 (TFLite's
 * int8 softmax output scale), as int16 with g_exp = -15. */
void mt_softmax_grad(int32_t depth, const int8_t *y, int32_t label, int16_t *gy) {
    for (int32_t c = 0; c < depth; c++) {
        int32_t v = (y[c] + 128) << 7;
        if (c == label) {
            v -= 1 << 15;
        }
        gy[c] = (int16_t)v;
    }
}

/* out[m][n] = saturate_int16(round(gy[m][n] * mult[n] * 2^(shift[n] - 31))). */
void mt_grad_rescale(int32_t m, int32_t n, const int16_t *gy, const int32_t *mult, const int32_t *shift,
    int16_t *out) {
    for (int32_t i = 0; i < m; i++) {
        for (int32_t c = 0; c < n; c++) {
            int32_t v = mt_scale_round_s16(gy[c], mult[c], shift[c]);
            out[c] = (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v);
        }
        gy += n;
        out += n;
    }
}

/* Narrow int32 gradients to int16 with a power-of-two scale: r = the smallest shift with
 * max|acc| >> r < 2^14 (one bit of headroom), out = round(acc / 2^r) (ties away from zero),
 * masked entries are 0 and do not count for the max.  Returns r: the caller's g_exp grows by r.
 * Both passes walk the mask a byte (eight entries) at a time. */
int32_t mt_grad_narrow(int32_t n, const int32_t *acc, const uint8_t *mask, int16_t *out) {
    uint32_t max = 0;
    for (int32_t i = 0; i < n; i += 8) {
        uint32_t bits = mask ? mask[i >> 3] : 0xffu;
        int32_t end = n - i < 8 ? n : i + 8;
        for (int32_t j = i; j < end; j++, bits >>= 1) {
            int32_t v = acc[j];
            uint32_t a = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
            if ((bits & 1u) && a > max) {
                max = a;
            }
        }
    }
    int32_t r = 0;
    while ((max >> r) >= (1u << 14)) {
        r++;
    }
    for (int32_t i = 0; i < n; i += 8) {
        uint32_t bits = mask ? mask[i >> 3] : 0xffu;
        int32_t end = n - i < 8 ? n : i + 8;
        for (int32_t j = i; j < end; j++, bits >>= 1) {
            out[j] = (bits & 1u) ? (int16_t)mt_rdbpot_inline(acc[j], r) : 0;
        }
    }
    return r;
}

void mt_grad_mask(int32_t n, int16_t *g, const uint8_t *mask) {
    for (int32_t i = 0; i < n; i++) {
        if (!mask_bit(mask, i)) {
            g[i] = 0;
        }
    }
}

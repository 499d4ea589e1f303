/*
 * microtrain int8 training kernels: portable C99, integer only, freestanding.
 *
 * Conventions (all kernels):
 *   - Activations are int8, channels last ([H][W][C]), real value s_x * (xq - zx).
 *   - Conv / fully connected weights are int8 [out_c][k_h][k_w][in_c] (TFLite OHWI), real value
 *     s_w[c] * wq with wq in [-127, 127].  Depthwise weights are [k_h][k_w][out_c] (TFLite 1HWO).
 *   - Biases are int32 with scale s_w[c] * s_x.
 *   - A fully connected layer over M rows is the 1x1 convolution with in_h = 1, in_w = M.
 *   - Gradients are int16 with a power-of-two scale: g_real = g * 2^g_exp.  The caller tracks g_exp.
 *   - Masks are bit arrays, bit i = byte[i >> 3] bit (i & 7); a set bit means "not clamped": the
 *     gradient passes (straight-through estimator of the activation clamp).
 *   - No kernel allocates, uses globals, calls the C library, divides with '/' or '%', uses 64-bit
 *     types, or reads/writes outside the buffers whose sizes the binding checks.
 *   - Products that could overflow int32 are split into chunks whose sums provably fit and the
 *     chunks are combined with saturating adds (bounds stated at each kernel).
 */
#ifndef MT_KERNELS_H
#define MT_KERNELS_H

#include <stdint.h>
#include <stddef.h>

/* Geometry of a convolution-like layer; also the layout of the int32[13] "geom" argument. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_t, pad_l;   /* padding before the first row / column (SAME: computed by the host) */
    int32_t depth_mult;     /* depthwise: out_c = in_c * depth_mult; 1 otherwise */
} mt_geom_t;

#define MT_GEOM_FIELDS 13

/* Output requantization: y = clamp(MBQM(acc, mult[c], shift[c]) + zy, act_min, act_max).
 * mult/shift have out_c entries if per_channel, else one.  shift > 0 is a left shift (TFLite).
 * double_rounding selects TFLite's gemmlowp-style rounding (see mt_requantize). */
typedef struct {
    const int32_t *mult;
    const int32_t *shift;
    int32_t per_channel;
    int32_t zy, act_min, act_max;
    int32_t double_rounding;
} mt_requant_t;

/* In-place SGD update of one layer (see mt_update.c for the exact integer semantics). */
typedef struct {
    const uint16_t *rows;   /* output channels to update, ascending, n_rows entries */
    int32_t n_rows;
    int32_t cin_lo, cin_hi; /* input channels [cin_lo, cin_hi) of every tap get weight updates;
                               cin_lo == cin_hi: weights frozen */
    const int32_t *w_mult, *w_shift; /* per out channel: eta * s_x / s_w[c] (QAS) as Q31 + shift */
    const int32_t *b_mult, *b_shift; /* per out channel: eta / (s_w[c] * s_x); NULL: bias frozen */
    uint32_t *rng;          /* xorshift32 state, advanced once per updated element */
} mt_update_t;

/* ---- fixed point (mt_fixedpoint.c) ---- */
int32_t mt_mul_hi(int32_t a, int32_t b, uint32_t *lo);
int32_t mt_srdhm(int32_t a, int32_t b);
int32_t mt_rdbpot(int32_t x, int32_t exponent);
int32_t mt_requantize(int32_t acc, int32_t mult, int32_t shift, int32_t double_rounding);
int32_t mt_scale_round(int32_t x, int32_t mult, int32_t shift);
uint32_t mt_udiv(uint32_t n, uint32_t d);
int32_t mt_div_round_away(int32_t n, int32_t d);
uint32_t mt_xorshift32(uint32_t *state);
int32_t mt_sat_add(int32_t a, int32_t b);

/* ---- shared by the layer kernels ---- */
/* ---- forward epilogue (mt_requant.c, mt_requant_armv6m.S) ---- */
/* Channels c0..c0+n-1 of one position: y[i0 + j] = clamp(requantize(acc[j] + bias[c0 + j]) + zy),
 * mask bit i0 + j = not clamped (mask may be NULL, bias may be NULL). */
void mt_store_outputs(const mt_requant_t *rq, const int32_t *bias, int32_t c0, const int32_t *acc,
    int32_t n, int8_t *y, uint8_t *mask, int32_t i0);
/* Mask bits i0..i0+n-1 = bits 0..n-1 of `bits` (n <= 32). */
void mt_put_mask_bits(uint8_t *mask, int32_t i0, uint32_t bits, int32_t n);
/* A chunk of at most MT_RUN_MAX channels: par = zy, act_min, act_max, then per channel
 * (mult, -2 - shift).  Returns 1 if mt_requant_run applies (single rounding, every shift <= -2). */
#define MT_RUN_MAX 16
#define MT_RUN_PARAMS (3 + 2 * MT_RUN_MAX)
int32_t mt_requant_prepare(const mt_requant_t *rq, int32_t c0, int32_t n, int32_t *par);
/* y[j] = clamp(round(acc[j] * mult_j * 2^(shift_j - 31)) + zy) for j < n <= 32 (bias already in
 * acc); returns bit j set iff output j was not clamped. */
uint32_t mt_requant_run(const int32_t *acc, int32_t n, int8_t *y, const int32_t *par);
/* mt_requant_run with its mask bits if `fast`, else mt_store_outputs (bias already in acc). */
void mt_store_run(const mt_requant_t *rq, int32_t fast, const int32_t *par, int32_t c0, const int32_t *acc,
    int32_t n, int8_t *y, uint8_t *mask, int32_t i0);
/* SGD step of one parameter (mt_update.c): stochastic rounding of grad * f * 2^g_exp. */
int32_t mt_sgd_step(int32_t grad, int32_t mult, int32_t shift, int32_t g_exp, uint32_t *rng);
/* The steps of n weight gradients in place, the PRNG advanced once each: r_state = {r, state} with
 * r = -2 - (shift + g_exp + 16) in [0, 29] (mt_sgd_delta's fast path); returns the new state. */
uint32_t mt_sgd_deltas(int32_t *g, int32_t n, int32_t mult, uint32_t *r_state);

/* ---- dot-product micro-kernels (mt_dot.c, or mt_dot_armv6m.S) ---- */
/* out[2*i + j] = sum_{t<len} a_i[t] * b_j[t]; a: int16 rows, b: int8 rows. */
void mt_dot2x2_s16s8(const int16_t *a0, const int16_t *a1, const int8_t *b0, const int8_t *b1,
    int32_t len, int32_t *out);
void mt_dot1x2_s16s8(const int16_t *a0, const int8_t *b0, const int8_t *b1, int32_t len, int32_t *out);
/* Two rows against N (even) int8 rows of w: out_i[n] = bias[n] + sum_{t<K} a_i[t] * w[n*K + t]
 * (bias may be NULL), all column pairs in one call. */
void mt_dot2xn_s16s8(const int16_t *a0, const int16_t *a1, const int8_t *w, int32_t K, int32_t N,
    const int32_t *bias, int32_t *out0, int32_t *out1);
/* out[2*i + j] = sum_{t<len} a_i[t] * b[t * stride + j] (a column pair of a row-major int8 matrix). */
void mt_dot2x2_s16s8_col(const int16_t *a0, const int16_t *a1, const int8_t *b, int32_t stride,
    int32_t len, int32_t *out);
void mt_dot1x2_s16s8_col(const int16_t *a0, const int8_t *b, int32_t stride, int32_t len, int32_t *out);
/* out[2*i + j] = sum_{t<len} a_i[t] * b_j[t]; all int16. */
void mt_dot2x2_s16s16(const int16_t *a0, const int16_t *a1, const int16_t *b0, const int16_t *b1,
    int32_t len, int32_t *out);

/* ---- convolution / fully connected (mt_conv.c) ---- */
/* Scratch sizes in bytes. */
int32_t mt_conv_scratch_forward(const mt_geom_t *g);
int32_t mt_conv_scratch_update(const mt_geom_t *g, const mt_update_t *u);

void mt_conv_forward(const mt_geom_t *g, const int8_t *x, int32_t zx, const int8_t *w,
    const int32_t *bias, const mt_requant_t *rq, int8_t *y, uint8_t *mask, int16_t *scratch);
void mt_conv_input_grad(const mt_geom_t *g, const int16_t *gy, const int8_t *w, int32_t *gx_acc);
void mt_conv_update(const mt_geom_t *g, const int8_t *x, int32_t zx, const int16_t *gy, int32_t g_exp,
    int8_t *w, int32_t *bias, const mt_update_t *u, void *scratch);

/* ---- depthwise convolution (mt_depthwise.c) ---- */
void mt_dwconv_forward(const mt_geom_t *g, const int8_t *x, int32_t zx, const int8_t *w,
    const int32_t *bias, const mt_requant_t *rq, int8_t *y, uint8_t *mask);
void mt_dwconv_input_grad(const mt_geom_t *g, const int16_t *gy, const int8_t *w, int32_t *gx_acc);
void mt_dwconv_update(const mt_geom_t *g, const int8_t *x, int32_t zx, const int16_t *gy,
    int32_t g_exp, int8_t *w, int32_t *bias, const mt_update_t *u, int32_t *scratch);

/* ---- pooling (mt_pool.c); in_c == out_c ---- */
void mt_maxpool_forward(const mt_geom_t *g, const int8_t *x, int8_t *y);
void mt_maxpool_input_grad(const mt_geom_t *g, const int8_t *x, const int16_t *gy, int32_t *gx_acc);
void mt_avgpool_forward(const mt_geom_t *g, const int8_t *x, int32_t act_min, int32_t act_max, int8_t *y);
void mt_avgpool_input_grad(const mt_geom_t *g, const int16_t *gy, int32_t *gx_acc);

/* ---- element-wise and gradient plumbing (mt_elementwise.c) ---- */
typedef struct {
    int32_t z1, z2, zy;             /* zero points of the inputs and the output */
    int32_t left_shift;             /* TFLite uses 20 for int8 */
    int32_t mult1, shift1, mult2, shift2, mult_y, shift_y;
    int32_t act_min, act_max;
} mt_add_params_t;
#define MT_ADD_FIELDS 12

void mt_add_forward(int32_t n, const int8_t *x1, const int8_t *x2, const mt_add_params_t *p,
    int8_t *y, uint8_t *mask);
void mt_clamp_forward(int32_t n, const int8_t *x, int32_t lo, int32_t hi, int8_t *y, uint8_t *mask);
void mt_softmax_forward(int32_t rows, int32_t depth, const int8_t *x, int32_t beta_mult,
    int32_t beta_left_shift, int32_t diff_min, int8_t *y);
void mt_softmax_grad(int32_t depth, const int8_t *y, int32_t label, int16_t *gy);
void mt_grad_rescale(int32_t m, int32_t n, const int16_t *gy, const int32_t *mult, const int32_t *shift,
    int16_t *out);
int32_t mt_grad_narrow(int32_t n, const int32_t *acc, const uint8_t *mask, int16_t *out);
void mt_grad_mask(int32_t n, int16_t *g, const uint8_t *mask);

/* ---- integrity (mt_crc32.c) ---- */
uint32_t mt_crc32(uint32_t crc, const uint8_t *data, int32_t n);

#endif /* MT_KERNELS_H */

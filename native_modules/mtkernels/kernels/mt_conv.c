/*
 * Convolution and fully connected layers (a fully connected layer over M rows is the 1x1
 * convolution with in_h = 1, in_w = M): forward, input gradient, fused weight/bias update.
 *
 * Every product runs through the mt_dot* micro-kernels on rows of an im2col matrix built two
 * output positions at a time: row m holds (x - zx) as int16 for each (kh, kw, ci), 0 for padding,
 * so the zero point costs nothing in the inner loop.
 *
 * Overflow bounds (checked by the binding, asserted by the reference):
 *   forward      K = k_h*k_w*in_c <= 65536:            |sum| <= 65536 * 255 * 128 < 2^31
 *   input grad   max|gy| * 128 * out_c * k_h * k_w < 2^31
 *   update       max|gy| * 255 * out_h * out_w     < 2^31   (bias: max|gy| * out_h * out_w)
 */
#include "mt_kernels.h"
#include "mt_fixedpoint.h"

static void im2col_row(const mt_geom_t *g, const int8_t *x, int32_t zx, int32_t oh, int32_t ow, int16_t *row) {
    int32_t ih0 = oh * g->stride_h - g->pad_t;
    int32_t iw0 = ow * g->stride_w - g->pad_l;
    int32_t c = g->in_c;
    for (int32_t kh = 0; kh < g->k_h; kh++) {
        int32_t ih = ih0 + kh;
        for (int32_t kw = 0; kw < g->k_w; kw++) {
            int32_t iw = iw0 + kw;
            if (ih < 0 || ih >= g->in_h || iw < 0 || iw >= g->in_w) {
                for (int32_t i = 0; i < c; i++) {
                    row[i] = 0;
                }
            } else {
                const int8_t *src = x + (ih * g->in_w + iw) * c;
                for (int32_t i = 0; i < c; i++) {
                    row[i] = (int16_t)(src[i] - zx);
                }
            }
            row += c;
        }
    }
}

static inline void next_position(const mt_geom_t *g, int32_t *oh, int32_t *ow) {
    if (++*ow == g->out_w) {
        *ow = 0;
        ++*oh;
    }
}

static inline void mt_set_mask(uint8_t *mask, int32_t i, int32_t pass) {
    uint8_t bit = (uint8_t)(1u << (i & 7));
    if (pass) {
        mask[i >> 3] |= bit;
    } else {
        mask[i >> 3] &= (uint8_t)~bit;
    }
}

/* Shared epilogue of the forward kernels: bias, requantize, clamp, record the mask bit. */
void mt_store_output(const mt_requant_t *rq, const int32_t *bias, int32_t c, int32_t acc,
    int8_t *y, uint8_t *mask, int32_t i) {
    if (bias) {
        acc = (int32_t)((uint32_t)acc + (uint32_t)bias[c]);
    }
    int32_t k = rq->per_channel ? c : 0;
    int32_t r = rq->double_rounding ? mt_requantize(acc, rq->mult[k], rq->shift[k], 1)
        : mt_scale_round_fast(acc, rq->mult[k], rq->shift[k]);
    int32_t v = (int32_t)((uint32_t)r + (uint32_t)rq->zy);
    int32_t pass = 1;
    if (v < rq->act_min) {
        v = rq->act_min;
        pass = 0;
    } else if (v > rq->act_max) {
        v = rq->act_max;
        pass = 0;
    }
    y[i] = (int8_t)v;
    if (mask) {
        mt_set_mask(mask, i, pass);
    }
}

int32_t mt_conv_scratch_forward(const mt_geom_t *g) {
    return 2 * 2 * g->k_h * g->k_w * g->in_c;
}

void mt_conv_forward(const mt_geom_t *g, const int8_t *x, int32_t zx, const int8_t *w,
    const int32_t *bias, const mt_requant_t *rq, int8_t *y, uint8_t *mask, int16_t *scratch) {
    int32_t K = g->k_h * g->k_w * g->in_c;
    int32_t N = g->out_c;
    int32_t M = g->out_h * g->out_w;
    int16_t *r0 = scratch, *r1 = scratch + K;
    int32_t oh = 0, ow = 0;
    int32_t acc[4];
    for (int32_t m = 0; m < M; m += 2) {
        int32_t two = m + 1 < M;
        im2col_row(g, x, zx, oh, ow, r0);
        next_position(g, &oh, &ow);
        if (two) {
            im2col_row(g, x, zx, oh, ow, r1);
            next_position(g, &oh, &ow);
        }
        int32_t i0 = m * N, i1 = i0 + N;
        for (int32_t n = 0; n < N; n += 2) {
            const int8_t *w0 = w + n * K;
            /* odd N: the last column is computed twice and stored once */
            const int8_t *w1 = n + 1 < N ? w0 + K : w0;
            if (two) {
                mt_dot2x2_s16s8(r0, r1, w0, w1, K, acc);
            } else {
                mt_dot1x2_s16s8(r0, w0, w1, K, acc);
            }
            mt_store_output(rq, bias, n, acc[0], y, mask, i0 + n);
            if (two) {
                mt_store_output(rq, bias, n, acc[2], y, mask, i1 + n);
            }
            if (n + 1 < N) {
                mt_store_output(rq, bias, n + 1, acc[1], y, mask, i0 + n + 1);
                if (two) {
                    mt_store_output(rq, bias, n + 1, acc[3], y, mask, i1 + n + 1);
                }
            }
        }
    }
}

/* Input index of im2col element (position with corner ih0/iw0, tap kh/kw, channel ci), or -1. */
static inline int32_t col_index(const mt_geom_t *g, int32_t ih0, int32_t iw0, int32_t kh, int32_t kw, int32_t ci) {
    int32_t ih = ih0 + kh, iw = iw0 + kw;
    if (ih < 0 || ih >= g->in_h || iw < 0 || iw >= g->in_w) {
        return -1;
    }
    return (ih * g->in_w + iw) * g->in_c + ci;
}

static inline void next_tap(const mt_geom_t *g, int32_t *kh, int32_t *kw, int32_t *ci) {
    if (++*ci == g->in_c) {
        *ci = 0;
        if (++*kw == g->k_w) {
            *kw = 0;
            ++*kh;
        }
    }
}

/* gx_acc[in_h*in_w*in_c] = col2im(gy[M x N] * W[N x K]); gy is the rescaled gradient. */
void mt_conv_input_grad(const mt_geom_t *g, const int16_t *gy, const int8_t *w, int32_t *gx_acc) {
    int32_t K = g->k_h * g->k_w * g->in_c;
    int32_t N = g->out_c;
    int32_t M = g->out_h * g->out_w;
    int32_t n_in = g->in_h * g->in_w * g->in_c;
    for (int32_t i = 0; i < n_in; i++) {
        gx_acc[i] = 0;
    }
    int32_t oh = 0, ow = 0;
    int32_t acc[4];
    for (int32_t m = 0; m < M; m += 2) {
        int32_t two = m + 1 < M;
        const int16_t *g0 = gy + m * N, *g1 = two ? g0 + N : g0;
        int32_t ih0 = oh * g->stride_h - g->pad_t, iw0 = ow * g->stride_w - g->pad_l;
        next_position(g, &oh, &ow);
        int32_t jh0 = oh * g->stride_h - g->pad_t, jw0 = ow * g->stride_w - g->pad_l;
        if (two) {
            next_position(g, &oh, &ow);
        }
        int32_t kh = 0, kw = 0, ci = 0;
        for (int32_t k = 0; k < K; k += 2) {
            if (k + 1 < K) {
                if (two) {
                    mt_dot2x2_s16s8_col(g0, g1, w + k, K, N, acc);
                } else {
                    mt_dot1x2_s16s8_col(g0, w + k, K, N, acc);
                }
            } else {
                /* odd K: the last column alone (a pair would read past W) */
                int32_t s0 = 0, s1 = 0;
                const int8_t *b = w + k;
                for (int32_t n = 0; n < N; n++) {
                    s0 += g0[n] * b[0];
                    s1 += g1[n] * b[0];
                    b += K;
                }
                acc[0] = s0;
                acc[2] = s1;
            }
            int32_t i = col_index(g, ih0, iw0, kh, kw, ci);
            if (i >= 0) {
                gx_acc[i] += acc[0];
            }
            if (two && (i = col_index(g, jh0, jw0, kh, kw, ci)) >= 0) {
                gx_acc[i] += acc[2];
            }
            if (k + 1 < K) {
                next_tap(g, &kh, &kw, &ci);
                i = col_index(g, ih0, iw0, kh, kw, ci);
                if (i >= 0) {
                    gx_acc[i] += acc[1];
                }
                if (two && (i = col_index(g, jh0, jw0, kh, kw, ci)) >= 0) {
                    gx_acc[i] += acc[3];
                }
                next_tap(g, &kh, &kw, &ci);
            }
        }
    }
}

/* ---- fused weight gradient + SGD update ---- */

static inline int32_t align4(int32_t n) {
    return (n + 3) & ~3;
}

int32_t mt_conv_scratch_update(const mt_geom_t *g, const mt_update_t *u) {
    int32_t kc = g->k_h * g->k_w * (u->cin_hi - u->cin_lo);
    int32_t M = g->out_h * g->out_w;
    return align4(2 * kc * M) + align4(2 * 2 * M) + 4 * 2 * kc;
}

/* Apply the steps of row c: weights of the updated columns (ascending), then the bias. */
static void update_row(const mt_geom_t *g, int32_t c, const int32_t *gw, int32_t g_sum, int32_t g_exp,
    int8_t *w, int32_t *bias, const mt_update_t *u) {
    int32_t taps = g->k_h * g->k_w;
    int32_t j = 0;
    if (u->cin_hi > u->cin_lo) {
        int8_t *row = w + c * taps * g->in_c;
        int32_t mult = u->w_mult[c], shift16 = u->w_shift[c] + g_exp + 16;
        uint32_t s = *u->rng;
        for (int32_t t = 0; t < taps; t++) {
            int8_t *p = row + t * g->in_c;
            for (int32_t ci = u->cin_lo; ci < u->cin_hi; ci++) {
                s = mt_xorshift32_step(s);
                int32_t v = p[ci] - mt_sgd_delta(gw[j++], mult, shift16, s);
                p[ci] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
            }
        }
        *u->rng = s;
    }
    if (u->b_mult && bias) {
        int32_t d = mt_sgd_step(g_sum, u->b_mult[c], u->b_shift[c], g_exp, u->rng);
        bias[c] = mt_sat_add(bias[c], -d);
    }
}

void mt_conv_update(const mt_geom_t *g, const int8_t *x, int32_t zx, const int16_t *gy, int32_t g_exp,
    int8_t *w, int32_t *bias, const mt_update_t *u, void *scratch) {
    int32_t M = g->out_h * g->out_w;
    int32_t N = g->out_c;
    int32_t nc = u->cin_hi - u->cin_lo;
    int32_t kc = g->k_h * g->k_w * nc;
    int16_t *xt = (int16_t *)scratch;                          /* kc x M: transposed im2col columns */
    int16_t *gt = (int16_t *)((uint8_t *)scratch + align4(2 * kc * M)); /* 2 x M: two gy columns */
    int32_t *gw = (int32_t *)((uint8_t *)gt + align4(2 * 2 * M));       /* 2 x kc: weight gradients */

    if (kc > 0) {
        int32_t oh = 0, ow = 0;
        for (int32_t m = 0; m < M; m++) {
            int32_t ih0 = oh * g->stride_h - g->pad_t, iw0 = ow * g->stride_w - g->pad_l;
            int16_t *dst = xt + m;
            for (int32_t kh = 0; kh < g->k_h; kh++) {
                int32_t ih = ih0 + kh;
                for (int32_t kw = 0; kw < g->k_w; kw++) {
                    int32_t iw = iw0 + kw;
                    int32_t valid = ih >= 0 && ih < g->in_h && iw >= 0 && iw < g->in_w;
                    const int8_t *src = valid ? x + (ih * g->in_w + iw) * g->in_c : x;
                    for (int32_t ci = u->cin_lo; ci < u->cin_hi; ci++) {
                        *dst = valid ? (int16_t)(src[ci] - zx) : 0;
                        dst += M;
                    }
                }
            }
            next_position(g, &oh, &ow);
        }
    }

    int32_t acc[4];
    for (int32_t r = 0; r < u->n_rows; r += 2) {
        int32_t two = r + 1 < u->n_rows;
        int32_t c0 = u->rows[r], c1 = two ? u->rows[r + 1] : c0;
        int32_t s0 = 0, s1 = 0;
        for (int32_t m = 0; m < M; m++) {
            int32_t v0 = gy[m * N + c0], v1 = gy[m * N + c1];
            gt[m] = (int16_t)v0;
            gt[M + m] = (int16_t)v1;
            s0 += v0;
            s1 += v1;
        }
        for (int32_t j = 0; j < kc; j += 2) {
            const int16_t *b0 = xt + j * M;
            const int16_t *b1 = j + 1 < kc ? b0 + M : b0;
            mt_dot2x2_s16s16(gt, gt + M, b0, b1, M, acc);
            gw[j] = acc[0];
            gw[kc + j] = acc[2];
            if (j + 1 < kc) {
                gw[j + 1] = acc[1];
                gw[kc + j + 1] = acc[3];
            }
        }
        update_row(g, c0, gw, s0, g_exp, w, bias, u);
        if (two) {
            update_row(g, c1, gw + kc, s1, g_exp, w, bias, u);
        }
    }
}

/*
 * Depthwise 2-D convolution with depth multiplier: output channel oc = ic * depth_mult + j sees
 * only input channel ic.  Weights [k_h][k_w][out_c].  Direct loops: a depthwise layer has few
 * MACs per weight, so im2col would cost more than it saves.
 *
 * Overflow bounds (checked by the binding): forward k_h*k_w <= 65536; input grad
 * max|gy| * 128 * k_h * k_w * depth_mult < 2^31; update max|gy| * 255 * out_h * out_w < 2^31.
 */
#include "mt_kernels.h"

/* acc[j] += (xp[j] - zx) * wp[j] for j < n: one tap of n channels (depth multiplier 1), four at a
 * time (the loop overhead of one Thumb-1 iteration is as much as a MAC). */
static inline void dw_tap(const int8_t *xp, const int8_t *wp, int32_t zx, int32_t *acc, int32_t n) {
    int32_t j = 0;
    for (; j + 4 <= n; j += 4) {
        acc[j] += (xp[j] - zx) * wp[j];
        acc[j + 1] += (xp[j + 1] - zx) * wp[j + 1];
        acc[j + 2] += (xp[j + 2] - zx) * wp[j + 2];
        acc[j + 3] += (xp[j + 3] - zx) * wp[j + 3];
    }
    for (; j < n; j++) {
        acc[j] += (xp[j] - zx) * wp[j];
    }
}

/* The same with a depth multiplier: output channel c0 + j reads input channel (c0 + j) / dm. */
static void dw_tap_mult(const int8_t *x, const int8_t *wp, int32_t zx, int32_t *acc, int32_t n, int32_t c0,
    int32_t dm) {
    int32_t ic = 0, r = c0;
    for (; r >= dm; r -= dm) {
        ic++;
    }
    for (int32_t j = 0; j < n; j++) {
        acc[j] += (x[ic] - zx) * wp[j];
        if (++r == dm) {
            r = 0;
            ic++;
        }
    }
}

/* Per output position, runs of up to MT_DW_RUN channels: the accumulators of a run stay in a
 * stack buffer while the window's taps inside the input add into them (channels are contiguous in
 * both x and w, so a tap is one pass over the run), then one epilogue requantizes the run.  The
 * window is clipped to the input once per position instead of testing every tap. */
#define MT_DW_RUN 32

void mt_dwconv_forward(const mt_geom_t *g, const int8_t *x, int32_t zx, const int8_t *w,
    const int32_t *bias, const mt_requant_t *rq, int8_t *y, uint8_t *mask) {
    const int32_t oc_n = g->out_c, in_c = g->in_c, dm = g->depth_mult, k_w = g->k_w;
    const int32_t row = g->in_w * in_c;
    int32_t acc[MT_DW_RUN];
    int32_t i = 0;
    for (int32_t oh = 0; oh < g->out_h; oh++) {
        int32_t ih0 = oh * g->stride_h - g->pad_t;
        int32_t kh0 = ih0 < 0 ? -ih0 : 0;
        int32_t kh1 = g->in_h - ih0 < g->k_h ? g->in_h - ih0 : g->k_h;
        for (int32_t ow = 0; ow < g->out_w; ow++, i += oc_n) {
            int32_t iw0 = ow * g->stride_w - g->pad_l;
            int32_t kw0 = iw0 < 0 ? -iw0 : 0;
            int32_t kw1 = g->in_w - iw0 < k_w ? g->in_w - iw0 : k_w;
            for (int32_t c0 = 0; c0 < oc_n; c0 += MT_DW_RUN) {
                int32_t n = oc_n - c0 < MT_DW_RUN ? oc_n - c0 : MT_DW_RUN;
                for (int32_t j = 0; j < n; j++) {
                    acc[j] = 0;
                }
                for (int32_t kh = kh0; kh < kh1; kh++) {
                    const int8_t *xp = x + (ih0 + kh) * row + (iw0 + kw0) * in_c;
                    const int8_t *wp = w + (kh * k_w + kw0) * oc_n + c0;
                    for (int32_t kw = kw0; kw < kw1; kw++, xp += in_c, wp += oc_n) {
                        if (dm == 1) {
                            dw_tap(xp + c0, wp, zx, acc, n);
                        } else {
                            dw_tap_mult(xp, wp, zx, acc, n, c0, dm);
                        }
                    }
                }
                mt_store_outputs(rq, bias, c0, acc, n, y, mask, i + c0);
            }
        }
    }
}

void mt_dwconv_input_grad(const mt_geom_t *g, const int16_t *gy, const int8_t *w, int32_t *gx_acc) {
    int32_t oc_n = g->out_c;
    int32_t n_in = g->in_h * g->in_w * g->in_c;
    for (int32_t i = 0; i < n_in; i++) {
        gx_acc[i] = 0;
    }
    const int16_t *gp = gy;
    for (int32_t oh = 0; oh < g->out_h; oh++) {
        for (int32_t ow = 0; ow < g->out_w; ow++, gp += oc_n) {
            int32_t ih0 = oh * g->stride_h - g->pad_t, iw0 = ow * g->stride_w - g->pad_l;
            for (int32_t kh = 0; kh < g->k_h; kh++) {
                int32_t ih = ih0 + kh;
                if (ih < 0 || ih >= g->in_h) {
                    continue;
                }
                for (int32_t kw = 0; kw < g->k_w; kw++) {
                    int32_t iw = iw0 + kw;
                    if (iw < 0 || iw >= g->in_w) {
                        continue;
                    }
                    const int8_t *wt = w + (kh * g->k_w + kw) * oc_n;
                    int32_t *dst = gx_acc + (ih * g->in_w + iw) * g->in_c;
                    int32_t oc = 0;
                    for (int32_t ic = 0; ic < g->in_c; ic++) {
                        int32_t s = 0;
                        for (int32_t j = 0; j < g->depth_mult; j++, oc++) {
                            s += gp[oc] * wt[oc];
                        }
                        dst[ic] += s;
                    }
                }
            }
        }
    }
}

/* scratch: k_h * k_w int32 (one channel's weight gradient). */
void mt_dwconv_update(const mt_geom_t *g, const int8_t *x, int32_t zx, const int16_t *gy,
    int32_t g_exp, int8_t *w, int32_t *bias, const mt_update_t *u, int32_t *scratch) {
    int32_t oc_n = g->out_c;
    int32_t taps = g->k_h * g->k_w;
    int32_t weights = u->cin_hi > u->cin_lo;
    for (int32_t r = 0; r < u->n_rows; r++) {
        int32_t oc = u->rows[r];
        /* ic = oc / depth_mult without a division */
        int32_t ic = 0;
        for (int32_t rem = oc; rem >= g->depth_mult; rem -= g->depth_mult) {
            ic++;
        }
        for (int32_t t = 0; t < taps; t++) {
            scratch[t] = 0;
        }
        int32_t gsum = 0;
        const int16_t *gp = gy + oc;
        for (int32_t oh = 0; oh < g->out_h; oh++) {
            for (int32_t ow = 0; ow < g->out_w; ow++, gp += oc_n) {
                int32_t gv = *gp;
                gsum += gv;
                if (!weights || gv == 0) {
                    continue;
                }
                int32_t ih0 = oh * g->stride_h - g->pad_t, iw0 = ow * g->stride_w - g->pad_l;
                for (int32_t kh = 0; kh < g->k_h; kh++) {
                    int32_t ih = ih0 + kh;
                    if (ih < 0 || ih >= g->in_h) {
                        continue;
                    }
                    for (int32_t kw = 0; kw < g->k_w; kw++) {
                        int32_t iw = iw0 + kw;
                        if (iw < 0 || iw >= g->in_w) {
                            continue;
                        }
                        scratch[kh * g->k_w + kw] += gv * (x[(ih * g->in_w + iw) * g->in_c + ic] - zx);
                    }
                }
            }
        }
        if (weights) {
            for (int32_t t = 0; t < taps; t++) {
                int32_t d = mt_sgd_step(scratch[t], u->w_mult[oc], u->w_shift[oc], g_exp, u->rng);
                int32_t v = w[t * oc_n + oc] - d;
                w[t * oc_n + oc] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
            }
        }
        if (u->b_mult && bias) {
            int32_t d = mt_sgd_step(gsum, u->b_mult[oc], u->b_shift[oc], g_exp, u->rng);
            bias[oc] = mt_sat_add(bias[oc], -d);
        }
    }
}

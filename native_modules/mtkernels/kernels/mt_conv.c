/*
 * Convolution and fully connected layers (a fully connected layer over M rows is the 1x1
 * convolution with in_h = 1, in_w = M): forward, input gradient, fused weight/bias update.
 *
 * Every product runs through the mt_dot* micro-kernels on rows of an im2col matrix taken two
 * output positions at a time: row m holds (x - zx) as int16 for each (kh, kw, ci), 0 for padding,
 * so the zero point costs nothing in the inner loop.  With k_h == 1 (1-D signals, dense layers) an
 * unpadded row is read in place from the input row widened once.  The forward pass goes through
 * the output channels in chunks of MT_RUN_MAX: one assembly call for all column pairs of a
 * position pair (mt_dot2xn_s16s8, from the bias), then the chunk's requantization run.
 *
 * Overflow bounds (checked by the binding, asserted by the reference):
 *   forward      K = k_h*k_w*in_c <= 65536:            |sum| <= 65536 * 255 * 128 < 2^31
 *   input grad   max|gy| * 128 * out_c * k_h * k_w < 2^31
 *   update       max|gy| * 255 * out_h * out_w     < 2^31   (bias: max|gy| * out_h * out_w)
 */
#include "mt_kernels.h"
#include "mt_fixedpoint.h"

/* dst[i] = src[i] - zx for i < n (int8 widened to int16), two at a time. */
static void widen_row(const int8_t *src, int32_t zx, int16_t *dst, int32_t n) {
    int32_t i = 0;
    for (; i + 1 < n; i += 2) {
        int32_t v0 = src[i], v1 = src[i + 1];
        dst[i] = (int16_t)(v0 - zx);
        dst[i + 1] = (int16_t)(v1 - zx);
    }
    if (i < n) {
        dst[i] = (int16_t)(src[i] - zx);
    }
}

static void zero_row(int16_t *dst, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        dst[i] = 0;
    }
}

/* One im2col row: for each kernel row kh, the k_w * in_c taps are one contiguous run of the
 * input, clipped at the left and right edges (padding taps are 0). */
static void im2col_row(const mt_geom_t *g, const int8_t *x, int32_t zx, int32_t oh, int32_t ow, int16_t *row) {
    int32_t ih0 = oh * g->stride_h - g->pad_t;
    int32_t iw0 = ow * g->stride_w - g->pad_l;
    int32_t c = g->in_c, run = g->k_w * c;
    int32_t w_lo = iw0 < 0 ? -iw0 : 0;                                  /* taps before the input */
    int32_t w_hi = iw0 + g->k_w > g->in_w ? g->in_w - iw0 : g->k_w;   /* taps up to the end */
    if (w_lo > g->k_w) {
        w_lo = g->k_w;
    }
    if (w_hi < w_lo) {
        w_hi = w_lo;   /* no tap inside the input */
    }
    for (int32_t kh = 0; kh < g->k_h; kh++, row += run) {
        int32_t ih = ih0 + kh;
        if (ih < 0 || ih >= g->in_h) {
            zero_row(row, run);
            continue;
        }
        zero_row(row, w_lo * c);
        widen_row(x + (ih * g->in_w + iw0 + w_lo) * c, zx, row + w_lo * c, (w_hi - w_lo) * c);
        zero_row(row + w_hi * c, run - w_hi * c);
    }
}

static inline void next_position(const mt_geom_t *g, int32_t *oh, int32_t *ow) {
    if (++*ow == g->out_w) {
        *ow = 0;
        ++*oh;
    }
}

/* Two im2col rows of K int16, then (k_h == 1) one widened input row of in_w * in_c int16. */
int32_t mt_conv_scratch_forward(const mt_geom_t *g) {
    return 2 * 2 * g->k_h * g->k_w * g->in_c + (g->k_h == 1 ? 2 * g->in_w * g->in_c : 0);
}

/* Row of the im2col matrix for output position (oh, ow).  With k_h == 1 a window without padding
 * is a contiguous run of one input row: that row is widened into `strip` once (*strip_ih says
 * which row it holds) and the run is returned in place.  Otherwise the row is built in `buf`, as
 * it is when `keep` says the strip is in use by the other row of the pair. */
static const int16_t *conv_row(const mt_geom_t *g, const int8_t *x, int32_t zx, int32_t oh, int32_t ow,
    int16_t *strip, int32_t *strip_ih, int32_t keep, int16_t *buf) {
    int32_t ih = oh * g->stride_h - g->pad_t, iw0 = ow * g->stride_w - g->pad_l;
    if (g->k_h == 1 && ih >= 0 && ih < g->in_h && iw0 >= 0 && iw0 + g->k_w <= g->in_w
        && (*strip_ih == ih || !keep)) {
        int32_t row = g->in_w * g->in_c;
        if (*strip_ih != ih) {
            widen_row(x + ih * row, zx, strip, row);
            *strip_ih = ih;
        }
        return strip + iw0 * g->in_c;
    }
    im2col_row(g, x, zx, oh, ow, buf);
    return buf;
}

void mt_conv_forward(const mt_geom_t *g, const int8_t *x, int32_t zx, const int8_t *w,
    const int32_t *bias, const mt_requant_t *rq, int8_t *y, uint8_t *mask, int16_t *scratch) {
    int32_t K = g->k_h * g->k_w * g->in_c;
    int32_t N = g->out_c;
    int32_t M = g->out_h * g->out_w;
    int16_t *strip = scratch + 2 * K;
    int32_t strip_ih = -1;
    int32_t acc[4], acc0[MT_RUN_MAX], acc1[MT_RUN_MAX];
    int32_t par[MT_RUN_PARAMS];
    /* channels in chunks of MT_RUN_MAX: each chunk's requantization is prepared once */
    for (int32_t n0 = 0; n0 < N; n0 += MT_RUN_MAX) {
        int32_t nc = N - n0 < MT_RUN_MAX ? N - n0 : MT_RUN_MAX;
        int32_t even = nc & ~1;
        int32_t fast = mt_requant_prepare(rq, n0, nc, par);
        const int8_t *wc = w + n0 * K;
        const int32_t *bc = bias ? bias + n0 : NULL;
        int32_t oh = 0, ow = 0;
        for (int32_t m = 0; m < M; m += 2) {
            int32_t two = m + 1 < M;
            const int16_t *r0 = conv_row(g, x, zx, oh, ow, strip, &strip_ih, 0, scratch), *r1 = r0;
            next_position(g, &oh, &ow);
            if (two) {
                r1 = conv_row(g, x, zx, oh, ow, strip, &strip_ih, r0 != scratch, scratch + K);
                next_position(g, &oh, &ow);
                mt_dot2xn_s16s8(r0, r1, wc, K, even, bc, acc0, acc1);
            } else {
                /* a lone last position (M odd: e.g. one sample through a dense layer) */
                for (int32_t j = 0; j < even; j += 2) {
                    mt_dot1x2_s16s8(r0, wc + j * K, wc + (j + 1) * K, K, acc);
                    acc0[j] = (int32_t)((uint32_t)acc[0] + (uint32_t)(bc ? bc[j] : 0));
                    acc0[j + 1] = (int32_t)((uint32_t)acc[1] + (uint32_t)(bc ? bc[j + 1] : 0));
                }
            }
            if (nc != even) {
                /* odd chunk: the last column alone */
                const int8_t *wl = wc + even * K;
                int32_t b = bc ? bc[even] : 0;
                mt_dot2x2_s16s8(r0, r1, wl, wl, K, acc);
                acc0[even] = (int32_t)((uint32_t)acc[0] + (uint32_t)b);
                acc1[even] = (int32_t)((uint32_t)acc[2] + (uint32_t)b);
            }
            mt_store_run(rq, fast, par, n0, acc0, nc, y, mask, m * N + n0);
            if (two) {
                mt_store_run(rq, fast, par, n0, acc1, nc, y, mask, (m + 1) * N + n0);
            }
        }
    }
}

/* col2im of a pair of output positions: walks the im2col columns k = 0, 1, ... (tap kh/kw,
 * channel ci) and adds column k's values of the two positions into the input gradient.  b0/b1
 * are the input indices of the current tap's channel 0 for each position, -1 in padding (and
 * for a missing second position); they change once per tap, not per column. */
typedef struct {
    int32_t ih0, iw0, jh0, jw0;   /* window corners of the two positions */
    int32_t kh, kw, ci;
    int32_t b0, b1;
    int32_t two;
} col2im_t;

static inline int32_t tap_base(const mt_geom_t *g, int32_t ih, int32_t iw) {
    return ih < 0 || ih >= g->in_h || iw < 0 || iw >= g->in_w ? -1 : (ih * g->in_w + iw) * g->in_c;
}

static inline void col2im_taps(const mt_geom_t *g, col2im_t *c) {
    c->b0 = tap_base(g, c->ih0 + c->kh, c->iw0 + c->kw);
    c->b1 = c->two ? tap_base(g, c->jh0 + c->kh, c->jw0 + c->kw) : -1;
}

static inline void col2im_add(const mt_geom_t *g, col2im_t *c, int32_t v0, int32_t v1, int32_t *gx_acc) {
    if (c->b0 >= 0) {
        gx_acc[c->b0 + c->ci] += v0;
    }
    if (c->b1 >= 0) {
        gx_acc[c->b1 + c->ci] += v1;
    }
    if (++c->ci == g->in_c) {
        c->ci = 0;
        if (++c->kw == g->k_w) {
            c->kw = 0;
            ++c->kh;
        }
        col2im_taps(g, c);
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
    col2im_t c;
    for (int32_t m = 0; m < M; m += 2) {
        c.two = m + 1 < M;
        const int16_t *g0 = gy + m * N, *g1 = c.two ? g0 + N : g0;
        c.ih0 = oh * g->stride_h - g->pad_t;
        c.iw0 = ow * g->stride_w - g->pad_l;
        next_position(g, &oh, &ow);
        c.jh0 = oh * g->stride_h - g->pad_t;
        c.jw0 = ow * g->stride_w - g->pad_l;
        if (c.two) {
            next_position(g, &oh, &ow);
        }
        c.kh = c.kw = c.ci = 0;
        col2im_taps(g, &c);
        for (int32_t k = 0; k < K; k += 2) {
            if (k + 1 < K) {
                if (c.two) {
                    mt_dot2x2_s16s8_col(g0, g1, w + k, K, N, acc);
                } else {
                    mt_dot1x2_s16s8_col(g0, w + k, K, N, acc);
                }
                col2im_add(g, &c, acc[0], acc[2], gx_acc);
                col2im_add(g, &c, acc[1], acc[3], gx_acc);
            } else {
                /* odd K: the last column alone (a pair would read past W) */
                int32_t s0 = 0, s1 = 0;
                const int8_t *b = w + k;
                for (int32_t n = 0; n < N; n++) {
                    s0 += g0[n] * b[0];
                    s1 += g1[n] * b[0];
                    b += K;
                }
                col2im_add(g, &c, s0, s1, gx_acc);
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

/* Apply the steps of row c: weights of the updated columns (ascending), then the bias.  gw is
 * the row's weight gradients (scratch: the fast path turns them into steps in place). */
static void update_row(const mt_geom_t *g, int32_t c, int32_t *gw, int32_t g_sum, int32_t g_exp,
    int8_t *w, int32_t *bias, const mt_update_t *u) {
    int32_t taps = g->k_h * g->k_w;
    int32_t nc = u->cin_hi - u->cin_lo;
    if (nc > 0) {
        int8_t *row = w + c * taps * g->in_c + u->cin_lo;
        int32_t mult = u->w_mult[c], shift16 = u->w_shift[c] + g_exp + 16;
        if (shift16 <= -2) {
            /* the steps of the whole row first (mt_sgd_deltas), then applied */
            uint32_t r_state[2] = {(uint32_t)(shift16 < -31 ? 29 : -2 - shift16), *u->rng};
            *u->rng = mt_sgd_deltas(gw, taps * nc, mult, r_state);
            for (int32_t t = 0, j = 0; t < taps; t++) {
                int8_t *p = row + t * g->in_c;
                for (int32_t ci = 0; ci < nc; ci++, j++) {
                    int32_t v = p[ci] - gw[j];
                    p[ci] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
                }
            }
        } else {
            uint32_t s = *u->rng;
            for (int32_t t = 0, j = 0; t < taps; t++) {
                int8_t *p = row + t * g->in_c;
                for (int32_t ci = 0; ci < nc; ci++, j++) {
                    s = mt_xorshift32_step(s);
                    int32_t v = p[ci] - mt_sgd_delta(gw[j], mult, shift16, s);
                    p[ci] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
                }
            }
            *u->rng = s;
        }
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

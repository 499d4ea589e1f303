/*
 * Max and average pooling over [H][W][C] (in_c == out_c), forward and input gradient.
 * Input and output share quantization parameters (TFLite's requirement), so the forward pass
 * needs no requantization.  Average pooling divides by the number of non-padding elements in the
 * window with TFLite's rounding ((sum +/- count/2) / count, truncated), using mt_udiv.
 *
 * Max pool gradient: each window's gradient goes to its first maximum (row-major window order),
 * recomputed from the kept input.  Average pool gradient: gy * round(2^13 / count) to every
 * element of the window, so gx_acc has scale 2^(g_exp - 13); with pad < kernel a sum never exceeds
 * 2^31 (each element is in at most k_h*k_w windows whose 1/count add up to less than 8).
 */
#include "mt_kernels.h"

#define MT_AVGPOOL_GRAD_BITS 13

/* Window of output (oh, ow) clipped to the input: [h0, h1) x [w0, w1). */
static void window(const mt_geom_t *g, int32_t oh, int32_t ow, int32_t *h0, int32_t *h1, int32_t *w0, int32_t *w1) {
    int32_t ih0 = oh * g->stride_h - g->pad_t, iw0 = ow * g->stride_w - g->pad_l;
    *h0 = ih0 < 0 ? 0 : ih0;
    *w0 = iw0 < 0 ? 0 : iw0;
    *h1 = ih0 + g->k_h > g->in_h ? g->in_h : ih0 + g->k_h;
    *w1 = iw0 + g->k_w > g->in_w ? g->in_w : iw0 + g->k_w;
}

void mt_maxpool_forward(const mt_geom_t *g, const int8_t *x, int8_t *y) {
    int32_t c_n = g->in_c;
    for (int32_t oh = 0; oh < g->out_h; oh++) {
        for (int32_t ow = 0; ow < g->out_w; ow++, y += c_n) {
            int32_t h0, h1, w0, w1;
            window(g, oh, ow, &h0, &h1, &w0, &w1);
            if (h0 >= h1 || w0 >= w1) {
                for (int32_t c = 0; c < c_n; c++) {
                    y[c] = -128;   /* a window that is all padding */
                }
                continue;
            }
            /* the first element, then the others: window elements outer, channels inner
             * (contiguous runs of in_c) */
            const int8_t *p0 = x + (h0 * g->in_w + w0) * c_n;
            for (int32_t c = 0; c < c_n; c++) {
                y[c] = p0[c];
            }
            for (int32_t ih = h0; ih < h1; ih++) {
                const int8_t *p = x + (ih * g->in_w + w0) * c_n;
                for (int32_t iw = w0; iw < w1; iw++, p += c_n) {
                    if (p == p0) {
                        continue;
                    }
                    for (int32_t c = 0; c < c_n; c++) {
                        if (p[c] > y[c]) {
                            y[c] = p[c];
                        }
                    }
                }
            }
        }
    }
}

void mt_maxpool_input_grad(const mt_geom_t *g, const int8_t *x, const int16_t *gy, int32_t *gx_acc) {
    int32_t c_n = g->in_c;
    int32_t n_in = g->in_h * g->in_w * c_n;
    for (int32_t i = 0; i < n_in; i++) {
        gx_acc[i] = 0;
    }
    for (int32_t oh = 0; oh < g->out_h; oh++) {
        for (int32_t ow = 0; ow < g->out_w; ow++, gy += c_n) {
            int32_t h0, h1, w0, w1;
            window(g, oh, ow, &h0, &h1, &w0, &w1);
            if (h0 >= h1 || w0 >= w1) {
                continue;
            }
            for (int32_t c = 0; c < c_n; c++) {
                /* the first maximum in row-major window order */
                int32_t best = -129, at = 0;
                for (int32_t ih = h0; ih < h1; ih++) {
                    int32_t i = (ih * g->in_w + w0) * c_n + c;
                    for (int32_t iw = w0; iw < w1; iw++, i += c_n) {
                        if (x[i] > best) {
                            best = x[i];
                            at = i;
                        }
                    }
                }
                gx_acc[at] += gy[c];
            }
        }
    }
}

void mt_avgpool_forward(const mt_geom_t *g, const int8_t *x, int32_t act_min, int32_t act_max, int8_t *y) {
    int32_t c_n = g->in_c;
    for (int32_t oh = 0; oh < g->out_h; oh++) {
        for (int32_t ow = 0; ow < g->out_w; ow++) {
            int32_t h0, h1, w0, w1;
            window(g, oh, ow, &h0, &h1, &w0, &w1);
            int32_t count = h1 > h0 && w1 > w0 ? (h1 - h0) * (w1 - w0) : 0;
            for (int32_t c = 0; c < c_n; c++) {
                int32_t sum = 0;
                for (int32_t ih = h0; ih < h1; ih++) {
                    const int8_t *p = x + (ih * g->in_w + w0) * c_n + c;
                    for (int32_t iw = w0; iw < w1; iw++, p += c_n) {
                        sum += *p;
                    }
                }
                int32_t v = count > 0 ? mt_div_round_away(sum, count) : 0;
                v = v < act_min ? act_min : v > act_max ? act_max : v;
                *y++ = (int8_t)v;
            }
        }
    }
}

void mt_avgpool_input_grad(const mt_geom_t *g, const int16_t *gy, int32_t *gx_acc) {
    int32_t c_n = g->in_c;
    int32_t n_in = g->in_h * g->in_w * c_n;
    for (int32_t i = 0; i < n_in; i++) {
        gx_acc[i] = 0;
    }
    for (int32_t oh = 0; oh < g->out_h; oh++) {
        for (int32_t ow = 0; ow < g->out_w; ow++) {
            int32_t h0, h1, w0, w1;
            window(g, oh, ow, &h0, &h1, &w0, &w1);
            int32_t count = (h1 - h0) * (w1 - w0);
            int32_t recip = count > 0 ? (int32_t)mt_udiv((1u << MT_AVGPOOL_GRAD_BITS) + ((uint32_t)count >> 1), (uint32_t)count) : 0;
            for (int32_t c = 0; c < c_n; c++) {
                int32_t v = *gy++ * recip;
                for (int32_t ih = h0; ih < h1; ih++) {
                    for (int32_t iw = w0; iw < w1; iw++) {
                        gx_acc[(ih * g->in_w + iw) * c_n + c] += v;
                    }
                }
            }
        }
    }
}

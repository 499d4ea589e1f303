/*
 * The SGD step shared by every trainable layer, expressed on the int8 weights / int32 biases.
 *
 * For a parameter with integer gradient G (real gradient s_g * s_x * G for a weight, s_g * G for
 * a bias, s_g = 2^g_exp) and a host-computed per-channel factor f = mult * 2^(shift - 31)
 * (QAS: f = eta * s_x / s_w[c] for weights, eta / (s_w[c] * s_x) for biases), the step is
 *
 *     d = G * f * 2^g_exp                  computed in Q16 with one rounding (mt_scale_round)
 *     step = floor(d + u),  u = (xorshift32(rng) >> 16) / 2^16 in [0, 1)
 *     w <- clamp(w - step, -127, 127)        b <- saturate_int32(b - step)
 *
 * Stochastic rounding keeps E[step] = d, so steps smaller than one int8 unit do not vanish; the
 * alternative (an int16/int32 shadow copy of the trainable weights) would triple their RAM.  The
 * PRNG is advanced exactly once per updated parameter, in plan order, and its state is part of
 * the training state (checkpointed and restored on rollback), so every port and the numpy
 * simulator take identical steps.  The hot loops inline the same arithmetic (mt_fixedpoint.h);
 * mt_sgd_deltas turns a row of weight gradients into their steps in place on the fast path (a
 * right shift of the Q16 product of at least two: the usual case), mt_update_armv6m.S on the M0.
 */
#include "mt_kernels.h"
#include "mt_fixedpoint.h"

#ifndef MT_ARMV6M_ASM
uint32_t mt_sgd_deltas(int32_t *g, int32_t n, int32_t mult, uint32_t *r_state) {
    int32_t r = (int32_t)r_state[0];
    uint32_t s = r_state[1];
    for (int32_t i = 0; i < n; i++) {
        s = mt_xorshift32_step(s);
        int32_t v = ((mt_mul_hi32(g[i], mult) >> r) + 1) >> 1;
        g[i] = (v + (int32_t)(s >> 16)) >> 16;
    }
    r_state[1] = s;
    return s;
}
#endif

int32_t mt_sgd_step(int32_t grad, int32_t mult, int32_t shift, int32_t g_exp, uint32_t *rng) {
    uint32_t s = mt_xorshift32_step(*rng);
    *rng = s;
    return mt_sgd_delta(grad, mult, shift + g_exp + 16, s);
}

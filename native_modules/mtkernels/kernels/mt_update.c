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
 * simulator take identical steps.  The hot loops inline the same arithmetic (mt_fixedpoint.h).
 */
#include "mt_kernels.h"
#include "mt_fixedpoint.h"

int32_t mt_sgd_step(int32_t grad, int32_t mult, int32_t shift, int32_t g_exp, uint32_t *rng) {
    uint32_t s = mt_xorshift32_step(*rng);
    *rng = s;
    return mt_sgd_delta(grad, mult, shift + g_exp + 16, s);
}

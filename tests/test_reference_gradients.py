"""Tier 1: the integer backward pass means what it says.  Dequantized, the integer input
gradients, weight steps and bias steps of the reference match float64 calculus on the same
layer (the C kernels are then held bit-exact to the reference by the other tiers)."""

import numpy as np
import pytest

from microtrain.sim import reference as ref
from microtrain.model.fixedpoint import quantize_multipliers


def float_conv_grads(g, x_real, w_real, g_real):
    """dL/dx and dL/dW of L = sum(g_real * conv(x_real, w_real)) in float64."""
    # im2col of the real input: the integer im2col on an exactly scaled copy
    scale = 1 << 20
    cols = ref.im2col(g, np.round(x_real * scale).astype(np.int64), 0).reshape(g.positions, -1) / scale
    G = g_real.reshape(g.positions, g.out_c)
    dW = G.T @ cols
    dcols = (G @ w_real.reshape(g.out_c, -1)).reshape(g.out_h, g.out_w, g.k_h, g.k_w, g.in_c)
    p = np.zeros((g.in_h + 2 * g.k_h + g.out_h * g.stride_h, g.in_w + 2 * g.k_w + g.out_w * g.stride_w, g.in_c))
    for kh in range(g.k_h):
        for kw in range(g.k_w):
            p[kh:kh + (g.out_h - 1) * g.stride_h + 1:g.stride_h, kw:kw + (g.out_w - 1) * g.stride_w + 1:g.stride_w] += \
                dcols[:, :, kh, kw]
    dx = p[g.pad_t:g.pad_t + g.in_h, g.pad_l:g.pad_l + g.in_w].ravel()
    return dx, dW


@pytest.mark.parametrize("seed", range(6))
def test_conv_input_gradient_and_qas_step_match_float(seed):
    rng = np.random.default_rng(seed)
    g = ref.Geom.conv(int(rng.integers(3, 9)), int(rng.integers(3, 9)), int(rng.integers(1, 6)),
                      int(rng.integers(1, 8)), 3, 3, int(rng.integers(1, 3)), "same")
    w_float = rng.normal(0, 0.3, (g.out_c, g.taps * g.in_c)) * np.exp2(rng.uniform(-2, 2, (g.out_c, 1)))
    s_w = np.abs(w_float).max(axis=1) / 127
    wq = np.clip(np.round(w_float / s_w[:, None]), -127, 127).astype(np.int8)
    s_x, z_x = 0.05, int(rng.integers(-20, 20))
    xq = rng.integers(-128, 128, g.in_h * g.in_w * g.in_c).astype(np.int8)
    x_real = s_x * (xq.astype(float) - z_x)
    g_exp = -15
    gy = rng.integers(-20000, 20000, g.positions * g.out_c).astype(np.int16)
    g_real = gy * 2.0 ** g_exp
    dx_f, dW_f = float_conv_grads(g, x_real, s_w[:, None] * wq, g_real)

    # input gradient: rescale by s_w[c] * 2^E (E: the power of two that brings max s_w to (1/2, 1]),
    # with headroom so that the int32 sum cannot overflow
    E = int(np.floor(-np.log2(s_w.max())))
    headroom = max(0, int(np.ceil(np.log2(128 * g.out_c * g.taps))) - 16)
    mult, shift = quantize_multipliers(s_w * 2.0 ** (E - headroom))
    gp = ref.grad_rescale(gy.reshape(-1, g.out_c), mult, shift)
    gx = ref.conv_input_grad(g, gp, wq)
    dx_int = gx * 2.0 ** (g_exp - E + headroom)
    assert np.abs(dx_int - dx_f).max() <= 2e-3 * np.abs(dx_f).max() + 1e-12

    # QAS weight step: dWq = -eta * dL/dW / s_w (float), taken by stochastic rounding
    eta = 0.02
    rows = np.arange(g.out_c, dtype=np.uint16)
    w_mult, w_shift = quantize_multipliers(eta * s_x / s_w)
    b_mult, b_shift = quantize_multipliers(eta / (s_w * s_x))
    bias = np.zeros(g.out_c, np.int32)
    w2, b2, _ = ref.conv_update(g, xq, z_x, gy, g_exp, wq, bias, rows, 0, g.in_c, w_mult, w_shift,
                                b_mult, b_shift, 12345)
    step = w2.astype(float).reshape(g.out_c, -1) - wq
    expect = -eta * dW_f / s_w[:, None]
    free = (np.abs(wq.astype(float) + expect) < 126)          # not clamped at +-127
    assert np.all(np.abs(step - expect)[free] < 1.0 + 1e-9)    # stochastic rounding: floor or ceil
    if free.sum() > 50:
        assert abs(np.mean((step - expect)[free])) < 0.2      # and unbiased on average
    # bias step in bias units (s_w * s_x): -eta * sum(g_real) / (s_w * s_x)^2 * (s_w * s_x)
    expect_b = -eta * g_real.reshape(-1, g.out_c).sum(axis=0) / (s_w * s_x)
    assert np.all(np.abs(b2 - expect_b) < 1.0 + 1e-6 * np.abs(expect_b))


def test_depthwise_and_pool_gradients_match_float():
    rng = np.random.default_rng(3)
    g = ref.Geom.depthwise(7, 6, 3, 2, 3, 3, stride=2, padding="same")
    wq = rng.integers(-127, 128, g.taps * g.out_c).astype(np.int8)
    gy = rng.integers(-3000, 3000, g.positions * g.out_c).astype(np.int16)
    gx = ref.dwconv_input_grad(g, gy, wq)
    # float: scatter gy * w over each tap
    ex = np.zeros((g.in_h, g.in_w, g.in_c))
    G = gy.reshape(g.out_h, g.out_w, g.in_c, g.depth_mult).astype(float)
    W = wq.reshape(g.k_h, g.k_w, g.in_c, g.depth_mult).astype(float)
    for oh in range(g.out_h):
        for ow in range(g.out_w):
            for kh in range(g.k_h):
                for kw in range(g.k_w):
                    ih, iw = oh * 2 - g.pad_t + kh, ow * 2 - g.pad_l + kw
                    if 0 <= ih < g.in_h and 0 <= iw < g.in_w:
                        ex[ih, iw] += (G[oh, ow] * W[kh, kw]).sum(axis=1)
    assert np.array_equal(gx, ex.ravel())

    p = ref.Geom.pool(6, 6, 2, 2, 2)
    gy = rng.integers(-3000, 3000, p.positions * p.out_c).astype(np.int16)
    acc = ref.avgpool_input_grad(p, gy) * 2.0 ** -ref.AVGPOOL_GRAD_BITS
    expect = np.repeat(np.repeat(gy.reshape(3, 3, 2) / 4.0, 2, axis=0), 2, axis=1).ravel()
    assert np.allclose(acc, expect, atol=1e-9)
    x = rng.integers(-128, 128, 72).astype(np.int8)
    gm = ref.maxpool_input_grad(p, x, gy)
    assert gm.sum() == gy.sum() and np.count_nonzero(gm) <= gy.size


def test_softmax_gradient_is_p_minus_onehot():
    y = np.array([-128, 0, 100, -50], np.int8)
    g = ref.softmax_grad(y, 2) * 2.0 ** ref.SOFTMAX_GRAD_EXP
    p = (y.astype(float) + 128) / 256
    assert np.allclose(g, p - np.eye(4)[2])


def test_grad_narrow_rule():
    acc = np.array([100000, -3, 2 ** 20, -(2 ** 20) - 5], np.int64)
    out, r = ref.grad_narrow(acc)
    assert r == 7 and np.abs(out).max() < 2 ** 14 and np.abs(out).max() >= 2 ** 13
    out, r = ref.grad_narrow(acc, mask=np.array([1, 1, 0, 0], bool))
    assert r == 3 and out[2] == 0 and out[3] == 0

"""Host-side quantization arithmetic: float scales -> the integer parameters the kernels take.

These are the only places where floats meet the integer pipeline; everything they produce is an
integer stored in the model file, so the board never needs a float.
"""

import math

import numpy as np


def quantize_multiplier(real):
    """TFLite QuantizeMultiplier: real = mult * 2^(shift - 31), mult in [2^30, 2^31) (0 for 0)."""
    if real == 0.0:
        return 0, 0
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"multiplier must be finite and >= 0, got {real}")
    frac, shift = math.frexp(real)
    mult = round(frac * (1 << 31))
    if mult == 1 << 31:
        mult //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(mult), int(shift)


def quantize_multipliers(reals):
    pairs = [quantize_multiplier(float(r)) for r in np.ravel(reals)]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))


def softmax_params(input_scale, beta=1.0, scaled_diff_integer_bits=5):
    """TFLite PreprocessSoftmaxScaling + CalculateInputRadius: (beta_mult, beta_left_shift, diff_min)."""
    real = min(beta * input_scale * (1 << (31 - scaled_diff_integer_bits)), (1 << 31) - 1.0)
    mult, shift = quantize_multiplier(real)
    if shift < 0:
        raise ValueError("softmax input scale too small for the integer softmax")
    radius = ((1 << scaled_diff_integer_bits) - 1) * (1 << (31 - scaled_diff_integer_bits)) / (1 << shift)
    return mult, shift, -int(math.floor(radius))

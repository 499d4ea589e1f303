"""Post-training quantization of a float network (floatnet.Net) to the int8 chain (QModel).

Weights: symmetric per output channel, [-127, 127].  Activations: asymmetric per tensor from
the min/max over calibration samples (always including 0, so ReLU outputs get zero point -128).
Pooling keeps its input quantization (TFLite's rule); a softmax with TFLite's output quantization
(1/256, -128) closes the classifier.  Every layer requantizes with one rounding of the exact
product (TFLite's single rounding): more accurate and cheaper on the M0+ than the double rounding
TFLite's convolution kernels use, which only models imported from TFLite keep.
"""

import numpy as np

from microtrain.convert import floatnet as fn
from microtrain.sim import reference as ref
from microtrain.model.qmodel import QLayer, QModel
from microtrain.model.fixedpoint import quantize_multipliers, softmax_params


def activation_qparams(lo, hi):
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    s = (hi - lo) / 255.0
    z = int(np.clip(np.round(-128 - lo / s), -128, 127))
    return s, z


def weight_scales(W):
    """Per output channel (axis 0 for conv/dense, last axis for depthwise) symmetric scales."""
    return np.maximum(np.abs(W).max(axis=tuple(range(1, W.ndim))), 1e-8) / 127.0


def quantize(net, X_calib, labels=(), name="model"):
    """Post-training int8 quantization of a float net on calibration samples.  A net whose
    weights or activations overflow float (inf / NaN ranges or scales) is a ValueError naming the
    layer, not a model with garbage parameters."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _quantize(net, X_calib, labels, name)


def _finite(i, what, *values):
    for v in values:
        if not np.all(np.isfinite(np.asarray(v, np.float64))):
            raise ValueError(f"layer {i}: its {what} is not finite (the float model's weights or activations "
                             "overflow): cannot quantize it")


def _quantize(net, X_calib, labels, name):
    X = np.asarray(X_calib, dtype=np.float32).reshape((-1,) + tuple(net.input_shape))
    _finite(0, "calibration input", X)
    acts = net.activations(X)
    s_in, z_in = activation_qparams(X.min(), X.max())
    s_x, z_x = s_in, z_in
    layers = []
    for i, (l, a) in enumerate(zip(net.layers, acts)):
        in_h, in_w, in_c = l.in_shape
        out_h, out_w, out_c = l.out_shape
        if isinstance(l, (fn.Conv, fn.DepthwiseConv, fn.Dense)):
            s_y, z_y = activation_qparams(a.min(), a.max())
            amin = max(-128, z_y) if l.relu else -128
            if isinstance(l, fn.Dense):
                g = ref.Geom.dense(1, in_h * in_w * in_c, out_c)
                s_w = weight_scales(l.W)
                wq = np.clip(np.round(l.W / s_w[:, None]), -127, 127).astype(np.int8)
                op, dr = "conv", False
            elif isinstance(l, fn.Conv):
                g = ref.Geom(in_h, in_w, in_c, out_h, out_w, out_c, l.k_h, l.k_w, *l.stride, l.pad_t, l.pad_l, 1)
                s_w = weight_scales(l.W)
                wq = np.clip(np.round(l.W / s_w[:, None, None, None]), -127, 127).astype(np.int8)
                op, dr = "conv", False
            else:
                g = ref.Geom(in_h, in_w, in_c, out_h, out_w, out_c, l.k_h, l.k_w, *l.stride, l.pad_t, l.pad_l,
                             l.depth_mult)
                s_w = np.maximum(np.abs(l.W).max(axis=(0, 1)), 1e-8) / 127.0
                wq = np.clip(np.round(l.W / s_w), -127, 127).astype(np.int8)
                op, dr = "dwconv", False
            _finite(i, "output range", a.min(), a.max(), s_y)
            _finite(i, "weight scale or bias", s_w, l.b, s_x * s_w / s_y, np.asarray(l.b, np.float64) / (s_w * s_x))
            bq = np.clip(np.round(np.asarray(l.b, np.float64) / (s_w * s_x)), -(1 << 31), (1 << 31) - 1).astype(np.int32)
            mult, shift = quantize_multipliers(s_x * s_w / s_y)
            q = QLayer(op, g, s_x, z_x, s_y, z_y, amin, 127, wq.ravel(), bq, s_w.astype(np.float64), mult, shift,
                       dr, name=f"{type(l).__name__.lower()}{i}")
        elif isinstance(l, (fn.MaxPool, fn.AvgPool)):
            g = ref.Geom(in_h, in_w, in_c, out_h, out_w, out_c, l.k_h, l.k_w, *l.stride, l.pad_t, l.pad_l, 1)
            q = QLayer("maxpool" if isinstance(l, fn.MaxPool) else "avgpool", g, s_x, z_x, s_x, z_x,
                       name=f"{type(l).__name__.lower()}{i}")
        elif isinstance(l, fn.GlobalAvgPool):
            g = ref.Geom.pool(in_h, in_w, in_c, in_h, in_w)
            q = QLayer("avgpool", g, s_x, z_x, s_x, z_x, name=f"globalavgpool{i}")
        else:
            raise TypeError(f"cannot quantize layer {i}: {type(l).__name__}")
        layers.append(q)
        s_x, z_x = q.s_y, q.z_y
    n = layers[-1].geom.out_c
    sm = QLayer("softmax", ref.Geom(1, 1, n, 1, 1, n), s_x, z_x, 1.0 / 256, -128, softmax=softmax_params(s_x),
                name="softmax")
    layers.append(sm)
    return QModel(layers, tuple(net.input_shape), s_in, z_in, list(labels), name)

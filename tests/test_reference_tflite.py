"""Tier 1: the numpy reference against TFLite's reference kernels (ai-edge-litert, BUILTIN_REF)
on the two real int8 models in ../shared/models: fully connected + ReLU (hello_world), depthwise
convolution with depth multiplier 8, stride 2, SAME padding, fully connected and the int8 softmax
(micro_speech).  Every intermediate tensor must match bit for bit."""

import os

import numpy as np
import pytest

from microtrain.sim import reference as ref
from microtrain.model.fixedpoint import quantize_multipliers, softmax_params
from tests.conftest import SHARED_MODELS

MODELS = SHARED_MODELS


def interpreter(name):
    lite = pytest.importorskip("ai_edge_litert.interpreter")
    path = os.path.join(MODELS, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} missing (shared/ models)")
    it = lite.Interpreter(model_path=path, experimental_op_resolver_type=lite.OpResolverType.BUILTIN_REF,
                          experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it


def qparams(it, i):
    q = it.get_tensor_details()[i]["quantization_parameters"]
    return q["scales"], q["zero_points"]


def fc_multiplier(s_in, s_w, s_out):
    """TFLite GetQuantizedConvolutionMultipler: float32 product, then double division."""
    return quantize_multipliers([float(np.float32(s_in) * np.float32(s_w)) / float(s_out)])


def relu_range(zy, fused_relu):
    return (max(-128, zy), 127) if fused_relu else (-128, 127)


def test_hello_world_fully_connected_bit_exact():
    it = interpreter("hello_world_int8.tflite")
    ops = it._get_ops_details()
    rng = np.random.default_rng(0)
    inputs = np.concatenate([np.arange(-128, 128), rng.integers(-128, 128, 200)]).astype(np.int8)
    for v in inputs:
        it.set_tensor(ops[0]["inputs"][0], np.array([[v]], np.int8))
        it.invoke()
        x = np.array([v], np.int8)
        for k, op in enumerate(ops):
            xi, wi, bi = op["inputs"]
            yi = op["outputs"][0]
            (s_x,), (z_x,) = qparams(it, xi)
            (s_w,), _ = qparams(it, wi)
            (s_y,), (z_y,) = qparams(it, yi)
            w = it.get_tensor(wi)
            b = it.get_tensor(bi)
            mult, shift = fc_multiplier(s_x, s_w, s_y)
            g = ref.Geom.dense(1, w.shape[1], w.shape[0])
            amin, amax = relu_range(int(z_y), k < 2)     # the first two layers have a fused ReLU
            y, _ = ref.conv_forward(g, x, int(z_x), w.ravel(), b, mult, shift, int(z_y), amin, amax)
            expected = it.get_tensor(yi).ravel()
            assert np.array_equal(y, expected), (v, k, y, expected)
            x = y


def test_micro_speech_depthwise_fc_softmax_bit_exact():
    it = interpreter("micro_speech_quantized.tflite")
    ops = {op["op_name"]: op for op in it._get_ops_details()}
    dw, fc, sm = ops["DEPTHWISE_CONV_2D"], ops["FULLY_CONNECTED"], ops["SOFTMAX"]
    rng = np.random.default_rng(1)
    in_idx = it.get_input_details()[0]["index"]
    for trial in range(6):
        # spectrogram-like inputs: mostly low energy with a few bright bands, and pure noise
        if trial % 2:
            spec = rng.integers(-128, 128, (1, 1960))
        else:
            spec = np.clip(rng.normal(-100, 25, (49, 40)) + 120 * (rng.random((49, 40)) < 0.05), -128, 127)
        spec = spec.astype(np.int8).reshape(1, 1960)
        it.set_tensor(in_idx, spec)
        it.invoke()
        # depthwise 10x8, depth multiplier 8, stride 2, SAME, fused ReLU
        xi, wi, bi = dw["inputs"]
        yi = dw["outputs"][0]
        (s_x,), (z_x,) = qparams(it, xi)
        s_w, _ = qparams(it, wi)
        (s_y,), (z_y,) = qparams(it, yi)
        w = it.get_tensor(wi)                      # [1, 10, 8, 8]
        g = ref.Geom.depthwise(49, 40, 1, 8, w.shape[1], w.shape[2], stride=2, padding="same")
        mult, shift = quantize_multipliers([float(s_x) * float(s) / float(s_y) for s in s_w])
        x = it.get_tensor(xi).ravel()
        y, _ = ref.dwconv_forward(g, x, int(z_x), w.ravel(), it.get_tensor(bi), mult, shift, int(z_y),
                                  *relu_range(int(z_y), True), double_rounding=True)
        assert np.array_equal(y, it.get_tensor(yi).ravel()), "depthwise"
        # fully connected 4000 -> 4
        xi, wi, bi = fc["inputs"]
        yi = fc["outputs"][0]
        (s_x,), (z_x,) = qparams(it, xi)
        (s_w,), _ = qparams(it, wi)
        (s_y,), (z_y,) = qparams(it, yi)
        w = it.get_tensor(wi)
        mult, shift = fc_multiplier(s_x, s_w, s_y)
        logits, _ = ref.conv_forward(ref.Geom.dense(1, w.shape[1], w.shape[0]), y, int(z_x), w.ravel(),
                                     it.get_tensor(bi), mult, shift, int(z_y), -128, 127)
        assert np.array_equal(logits, it.get_tensor(yi).ravel()), "fully connected"
        # int8 softmax
        (s_in,), _ = qparams(it, sm["inputs"][0])
        params = softmax_params(float(s_in), beta=1.0)
        probs = ref.softmax_forward(logits.reshape(1, -1), *params).ravel()
        assert np.array_equal(probs, it.get_tensor(sm["outputs"][0]).ravel()), "softmax"


def test_softmax_matches_tflite_over_many_logits():
    """The softmax alone over random logits, through the model's own SOFTMAX op: feed the FC
    output by choosing the FC bias, so any int8 logit vector can be produced."""
    it = interpreter("micro_speech_quantized.tflite")
    ops = {op["op_name"]: op for op in it._get_ops_details()}
    sm = ops["SOFTMAX"]
    (s_in,), _ = qparams(it, sm["inputs"][0])
    params = softmax_params(float(s_in), beta=1.0)
    # the interpreter computes the softmax from the FC output; compare on what it produced
    rng = np.random.default_rng(2)
    in_idx = it.get_input_details()[0]["index"]
    seen = 0
    for _ in range(40):
        it.set_tensor(in_idx, rng.integers(-128, 128, (1, 1960)).astype(np.int8))
        it.invoke()
        logits = it.get_tensor(sm["inputs"][0])
        probs = ref.softmax_forward(logits, *params)
        assert np.array_equal(probs, it.get_tensor(sm["outputs"][0]))
        seen += 1
    assert seen == 40

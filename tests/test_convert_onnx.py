"""ONNX -> floatnet.Net -> int8 QModel converter (host/microtrain/convert/from_onnx.py).

Small ONNX models are built here with onnx.helper (random weights, fixed seeds); the converted
float Net must reproduce onnx.reference.ReferenceEvaluator's logits, and the quantized model
must agree with it on the predicted class.
"""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper as oh, numpy_helper as nph  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from microtrain.convert import from_onnx as co  # noqa: E402
from microtrain.convert import floatnet as fn  # noqa: E402
from microtrain.model import qmodel  # noqa: E402


class Builder:
    """Sequential ONNX graph under construction: ``op`` chains a node onto the current tensor."""

    def __init__(self, in_shape, seed=0, opset=17):
        self.rng = np.random.default_rng(seed)
        self.in_shape, self.opset = tuple(in_shape), opset
        self.nodes, self.inits, self.k = [], [], 0
        self.cur = "x"
        self.names = {}

    def _name(self, base):
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, arr, base="c", as_node=False):
        name = self._name(base)
        t = nph.from_array(np.asarray(arr), name)
        if as_node:
            self.nodes.append(oh.make_node("Constant", [], [name], name=name + "_node", value=t))
        else:
            self.inits.append(t)
        return name

    def w(self, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else np.sqrt(2.0 / fan_in)
        return (self.rng.standard_normal(shape) * s).astype(np.float32)

    def op(self, op_type, *consts, name=None, data_first=True, **attrs):
        name = name or self._name(op_type.lower())
        out = name + "_out"
        ins = [self.cur] + list(consts) if data_first else list(consts) + [self.cur]
        self.nodes.append(oh.make_node(op_type, ins, [out], name=name, **attrs))
        self.cur = out
        self.names[name] = out
        return out

    def model(self, out_dims, balance=None):
        """The ModelProto; ``balance`` = (logits tensor, its bias initializer): shift that bias so the
        mean logits over random inputs are 0 (else random-weight nets predict one class)."""
        g = oh.make_graph(self.nodes, "test_graph",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(self.in_shape))],
                          [oh.make_tensor_value_info(self.cur, TensorProto.FLOAT, ["N"] + list(out_dims))],
                          initializer=self.inits)
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", self.opset)])
        onnx.checker.check_model(m)
        if balance:
            logits, bias = balance
            X = np.random.default_rng(99).standard_normal((256,) + self.in_shape).astype(np.float32)
            mean = ReferenceEvaluator(m).run([logits], {"x": X})[0].mean(axis=0)
            t = next(t for t in m.graph.initializer if t.name == bias)
            t.CopyFrom(nph.from_array((nph.to_array(t) - mean).astype(np.float32), bias))
        return m

    # common pieces
    def conv(self, out_c, k, bias=True, group=1, name=None, **attrs):
        in_c = self.in_c
        kk = (k, k) if np.isscalar(k) else tuple(k)
        W = self.const(self.w(out_c, in_c // group, *kk), "W")
        ins = [W] + ([self.const(self.w(out_c, scale=0.3), "b")] if bias else [])
        self.in_c = out_c
        return self.op("Conv", *ins, name=name, group=group, kernel_shape=list(kk), **attrs)

    def bn(self, n, name=None):
        r = self.rng
        cs = [self.const(v.astype(np.float32), nm) for v, nm in (
            (r.uniform(0.5, 1.5, n), "gamma"), (r.normal(0, 0.3, n), "beta"),
            (r.normal(0, 0.3, n), "mean"), (r.uniform(0.5, 2.0, n), "var"))]
        return self.op("BatchNormalization", *cs, name=name, epsilon=1e-3)


# ---------------------------------------------------------------------------------------------
# the three required models


def model_a():
    """Conv+BN+Relu -> MaxPool -> Conv(stride 2, SAME-like pads)+Relu -> GAP -> Flatten -> Gemm -> Softmax."""
    b = Builder((3, 12, 11), seed=1)
    b.in_c = 3
    b.conv(8, 3, pads=[1, 1, 1, 1], name="conv1")
    b.bn(8, name="bn1")
    b.op("Relu", name="relu1")
    b.op("MaxPool", name="pool1", kernel_shape=[2, 2], strides=[2, 2])             # 6x5
    b.conv(16, 3, strides=[2, 2], pads=[0, 1, 1, 1], name="conv2")                   # TF SAME: 3x3
    b.op("Relu", name="relu2")
    b.op("GlobalAveragePool", name="gap")
    b.op("Flatten", name="flatten", axis=1)
    W = b.const(b.w(5, 16, scale=0.5), "fcW")
    c = b.const(b.w(5, scale=0.1), "fcb")
    logits = b.op("Gemm", W, c, name="fc", transB=1)
    b.op("Softmax", name="softmax", axis=1)
    return b.model([5], balance=(logits, c)), logits


def model_b(flatten="Flatten"):
    """Conv -> Flatten -> Gemm+Relu -> Gemm (the NCHW -> HWC flatten permutation)."""
    b = Builder((2, 5, 4), seed=2)
    b.in_c = 2
    b.conv(3, 3, pads=[1, 1, 1, 1], name="conv")                                   # 3 x 5 x 4
    if flatten == "Flatten":
        b.op("Flatten", name="flatten")
    else:                                                                           # x.reshape(N, -1)
        b.op("Reshape", b.const(np.array([0, -1], np.int64), "shape"), name="reshape")
    W1 = b.w(60, 16, scale=0.2)                                                     # transB = 0: (in, out)
    b.op("Gemm", b.const(W1, "W1"), b.const(b.w(16, scale=0.1), "b1"), name="fc1", alpha=0.5, beta=2.0)
    b.op("Relu", name="relu")
    b2 = b.const(b.w(4, scale=0.1), "b2")
    logits = b.op("Gemm", b.const(b.w(4, 16, scale=0.4), "W2"), b2, name="fc2", transB=1)
    return b.model([4], balance=(logits, b2)), logits


def model_c():
    """Depthwise Conv (group = C_in, multiplier 2) + Relu -> AveragePool -> Flatten -> MatMul + Add."""
    b = Builder((3, 9, 9), seed=3)
    b.in_c = 3
    b.conv(6, 3, group=3, name="dw")                                                # 6 x 7 x 7, VALID
    b.op("Relu", name="relu")
    b.op("AveragePool", name="avg", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
         count_include_pad=0)                                                       # TF SAME: 4x4
    b.op("Flatten", name="flatten")
    b.op("MatMul", b.const(b.w(96, 4, scale=0.15), "W"), name="mm")
    bias = b.const(b.w(4, scale=0.1), "bias")
    logits = b.op("Add", bias, name="bias_add")
    return b.model([4], balance=(logits, bias)), logits


def model_d():
    """1-D model (N, C, L): Conv1d(auto_pad SAME_UPPER) + Clip(0) -> MaxPool(ceil) -> bias-less Conv1d
    + Mul/Add per-channel constants + Relu -> Shape/Gather/Unsqueeze/Concat/Reshape flatten
    -> Dropout -> Gemm -> BN -> Relu -> MatMul + Add -> LogSoftmax."""
    b = Builder((3, 20), seed=4)
    b.in_c = 3
    b.conv(6, (5,), strides=[2], auto_pad="SAME_UPPER", name="conv1")              # 6 x 10
    b.op("Clip", b.const(np.array(0, np.float32), "lo", as_node=True), name="clip")
    b.op("MaxPool", name="pool", kernel_shape=[3], strides=[2], ceil_mode=1)       # 6 x 5 (TF SAME)
    b.conv(4, (3,), bias=False, pads=[1, 1], name="conv2")                         # 4 x 5
    b.op("Mul", b.const(b.rng.uniform(0.5, 2, (4, 1)).astype(np.float32), "scale"), name="mul")
    b.op("Add", b.const(b.w(1, 4, 1, scale=0.2), "shift"), name="add", data_first=False)
    b.op("Relu", name="relu")
    feat = b.cur
    shp = b._name("shape")
    b.nodes.append(oh.make_node("Shape", [feat], [shp], name="shape"))
    n0 = b._name("n0")
    b.nodes.append(oh.make_node("Gather", [shp, b.const(np.array(0, np.int64), "i0")], [n0], name="gather", axis=0))
    n1 = b._name("n1")
    b.nodes.append(oh.make_node("Unsqueeze", [n0, b.const(np.array([0], np.int64), "ax")], [n1], name="unsq"))
    tgt = b._name("tgt")
    b.nodes.append(oh.make_node("Concat", [n1, b.const(np.array([-1], np.int64), "m1")], [tgt], name="concat",
                                axis=0))
    b.op("Reshape", tgt, name="reshape")
    b.op("Dropout", name="dropout")
    b.op("Gemm", b.const(b.w(12, 20, scale=0.3), "W1"), name="fc1", transB=1)
    b.bn(12, name="bn")
    b.op("Relu", name="relu2")
    b.op("MatMul", b.const(b.w(12, 3, scale=0.4), "W2"), name="fc2")
    bias = b.const(np.zeros((1, 3), np.float32), "b2")
    logits = b.op("Add", bias, name="fc2_bias", data_first=False)
    b.op("LogSoftmax", name="logsoftmax", axis=1)
    return b.model([3], balance=(logits, bias)), logits


def model_e():
    """Conv(auto_pad VALID, stride 2) -> Sub / Div constants -> Relu -> 1x1 Conv + BN + Relu
    -> ReduceMean(H, W, keepdims=0) -> Gemm -> Softmax."""
    b = Builder((3, 7, 8), seed=5)
    b.in_c = 3
    b.conv(6, 2, strides=[2, 2], auto_pad="VALID", name="conv1")                  # 6 x 3 x 4
    b.op("Sub", b.const(b.w(6, 1, 1, scale=0.2), "sub"), name="sub")
    b.op("Div", b.const(b.rng.uniform(0.5, 2, (1, 6, 1, 1)).astype(np.float32), "div"), name="div")
    b.op("Relu", name="relu1")
    b.conv(5, 1, bias=False, name="conv2")
    b.bn(5, name="bn2")
    b.op("Relu", name="relu2")
    b.op("ReduceMean", name="mean", axes=[2, 3], keepdims=0)
    c = b.const(b.w(4, scale=0.1), "fcb")
    logits = b.op("Gemm", b.const(b.w(4, 5, scale=0.5), "fcW"), c, name="fc", transB=1)
    b.op("Softmax", name="softmax")
    return b.model([4], balance=(logits, c)), logits


def model_f():
    """Conv + Relu -> GlobalMaxPool -> Squeeze -> Gemm (opset 13: Squeeze axes as an input)."""
    b = Builder((2, 6, 6), seed=6, opset=13)
    b.in_c = 2
    b.conv(6, 3, pads=[1, 1, 1, 1], name="conv")
    b.op("Relu", name="relu")
    b.op("GlobalMaxPool", name="gmp")
    b.op("Squeeze", b.const(np.array([2, 3], np.int64), "axes"), name="squeeze")
    c = b.const(b.w(3, scale=0.1), "fcb")
    logits = b.op("Gemm", b.const(b.w(3, 6, scale=0.5), "fcW"), c, name="fc", transB=1)
    return b.model([3], balance=(logits, c)), logits


MODELS = {"a": model_a, "b": model_b, "b_reshape": lambda: model_b("Reshape"), "c": model_c, "d": model_d,
          "e": model_e, "f": model_f}


def _inputs(model, n, seed):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((n,) + tuple(dims)).astype(np.float32)


def _onnx_logits(model, logits, X):
    return ReferenceEvaluator(model).run([logits], {"x": X})[0]


@pytest.mark.parametrize("which", sorted(MODELS))
def test_float_net_matches_onnx_reference(which):
    model, logits = MODELS[which]()
    net = co.load_onnx(model)
    X = _inputs(model, 64, seed=10)
    ref = _onnx_logits(model, logits, X)
    ours = net.forward(co.to_channels_last(X, net))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the whole ONNX output (softmax / log-softmax where present) agrees too
    if model.graph.node[-1].op_type == "Softmax":
        final = ReferenceEvaluator(model).run(None, {"x": X})[0]
        np.testing.assert_allclose(fn.softmax(ours.astype(np.float64)), final, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("which", sorted(MODELS))
def test_quantized_model_agrees(which, tmp_path):
    model, logits = MODELS[which]()
    path = tmp_path / f"model_{which}.onnx"
    onnx.save(model, str(path))
    net = co.load_onnx(str(path))
    calib = _inputs(model, 256, seed=20)
    labels = [f"c{i}" for i in range(net.output_shape[2])]
    qm = co.onnx_to_qmodel(str(path), calib, labels, layout="nchw")
    assert qm.name == f"model_{which}" and qm.labels == labels
    assert qm.layers[-1].op == "softmax" and qm.n_classes == len(labels)
    assert tuple(qm.input_shape) == net.input_shape
    X = co.to_channels_last(_inputs(model, 200, seed=30), net)
    float_pred = net.predict(X)
    assert np.bincount(float_pred).max() <= 0.8 * len(X)               # not a one-class model
    q_pred = np.array([np.argmax(qmodel.forward(qm, qm.quantize_input(x), keep=True)[-2][0].astype(np.int32))
                       for x in X])
    agree = np.mean(q_pred == float_pred)
    assert agree >= 0.9, agree
    # channels-last calibration gives the same model
    qm2 = co.onnx_to_qmodel(str(path), co.to_channels_last(calib, net), labels)
    assert qm2.input_scale == qm.input_scale and all(
        np.array_equal(a.w, b.w) for a, b in zip(qm.layers, qm2.layers) if a.w is not None)


def test_structure_of_model_a():
    model, _ = model_a()
    net = co.load_onnx(model)
    kinds = [type(l).__name__ for l in net.layers]
    assert kinds == ["Conv", "MaxPool", "Conv", "GlobalAvgPool", "Dense"]      # BN folded, Relu fused
    assert net.input_shape == (12, 11, 3)
    c1, _, c2, _, d = net.layers
    assert c1.relu and c1.padding == "same" and c2.relu and d.relu is False
    assert c2.stride == (2, 2) and c2.padding == "same" and c2.out_shape == (3, 3, 16)
    assert net.output_shape == (1, 1, 5)


def test_flatten_permutation_is_applied():
    model, _ = model_b()
    net = co.load_onnx(model)
    W1 = nph.to_array(next(t for t in model.graph.initializer if t.name.startswith("W1")))
    dense = net.layers[1]
    naive = 0.5 * W1.T                                                   # (out, C*H*W) in NCHW order
    assert not np.allclose(dense.W, naive)
    np.testing.assert_allclose(dense.W, naive.reshape(16, 3, 5, 4).transpose(0, 2, 3, 1).reshape(16, 60),
                               rtol=1e-6)


def test_depthwise_layout():
    model, _ = model_c()
    net = co.load_onnx(model)
    dw = net.layers[0]
    assert isinstance(dw, fn.DepthwiseConv) and dw.depth_mult == 2 and dw.W.shape == (3, 3, 6)
    assert isinstance(net.layers[1], fn.AvgPool) and net.layers[1].padding == "same"


def test_two_d_input_becomes_1x1xF():
    b = Builder((7,), seed=5)
    b.op("Gemm", b.const(b.w(5, 7), "W"), b.const(b.w(5), "b"), transB=1)
    b.op("Relu")
    logits = b.op("Gemm", b.const(b.w(3, 5), "W2"), transB=1)
    model = b.model([3])
    net = co.load_onnx(model)
    assert net.input_shape == (1, 1, 7)
    X = _inputs(model, 16, 0)
    np.testing.assert_allclose(net.forward(co.to_channels_last(X)), _onnx_logits(model, logits, X),
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# refusals


def _conv_model(in_c=2, **conv_attrs):
    b = Builder((in_c, 8, 8), seed=6)
    b.in_c = in_c
    b.conv(4, 3, name="the_conv", **conv_attrs)
    b.op("GlobalAveragePool")
    b.op("Flatten")
    b.op("Gemm", b.const(b.w(3, 4), "W"), transB=1)
    return b.model([3])


def _refusal_lstm():
    b = Builder((2, 4), seed=7)                                         # LSTM X: (seq, batch, features)
    H = 3
    b.op("LSTM", b.const(b.w(1, 4 * H, 4), "Wl"), b.const(b.w(1, 4 * H, H), "Rl"), name="my_lstm", hidden_size=H)
    return b.model([1, 2, H])


def _refusal_relu6():
    b = Builder((2, 6, 6), seed=8)
    b.in_c = 2
    b.conv(4, 3)
    b.op("Clip", b.const(np.array(0, np.float32), "lo"), b.const(np.array(6, np.float32), "hi"), name="relu6")
    b.op("GlobalAveragePool")
    b.op("Flatten")
    b.op("Gemm", b.const(b.w(3, 4), "W"), transB=1)
    return b.model([3])


def _refusal_bn_after_pool():
    b = Builder((2, 6, 6), seed=9)
    b.in_c = 2
    b.conv(4, 3)
    b.op("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    b.bn(4, name="lonely_bn")
    b.op("GlobalAveragePool")
    b.op("Flatten")
    b.op("Gemm", b.const(b.w(3, 4), "W"), transB=1)
    return b.model([3])


def _refusal_residual():
    b = Builder((2, 6, 6), seed=10)
    b.in_c = 2
    a = b.conv(2, 3, pads=[1, 1, 1, 1])
    b.conv(2, 3, pads=[1, 1, 1, 1])
    out = b._name("res")
    b.nodes.append(oh.make_node("Add", [a, b.cur], [out], name="residual_add"))
    b.cur = out
    b.op("GlobalAveragePool")
    b.op("Flatten")
    b.op("Gemm", b.const(b.w(3, 2), "W"), transB=1)
    return b.model([3])


def _refusal_avg_include_pad():
    b = Builder((2, 6, 6), seed=11)
    b.in_c = 2
    b.conv(4, 3, pads=[1, 1, 1, 1])
    b.op("AveragePool", name="avg_incl", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    b.op("GlobalAveragePool")
    b.op("Flatten")
    b.op("Gemm", b.const(b.w(3, 4), "W"), transB=1)
    return b.model([3])


def _refusal_spatial_flatten_softmax():
    b = Builder((2, 4, 4), seed=12)
    b.in_c = 2
    b.conv(3, 3)                                                        # 3 x 2 x 2
    b.op("Flatten")
    b.op("Softmax", name="sm", axis=1)
    return b.model([12])


REFUSALS = {
    "lstm": (_refusal_lstm, ["LSTM", "my_lstm"]),
    "dilation": (lambda: _conv_model(dilations=[2, 2]), ["Conv", "the_conv", "dilations"]),
    "asymmetric_pads": (lambda: _conv_model(pads=[1, 0, 0, 0]), ["Conv", "the_conv", "SAME", "VALID"]),
    "same_lower": (lambda: _conv_model(auto_pad="SAME_LOWER", strides=[2, 2]), ["Conv", "the_conv", "SAME"]),
    "grouped": (lambda: _conv_model(in_c=4, group=2), ["Conv", "the_conv", "group"]),
    "relu6": (_refusal_relu6, ["Clip", "relu6", "ReLU6"]),
    "bn_after_pool": (_refusal_bn_after_pool, ["BatchNormalization", "lonely_bn"]),
    "residual": (_refusal_residual, ["Add", "residual_add", "sequential"]),
    "avg_count_include_pad": (_refusal_avg_include_pad, ["AveragePool", "avg_incl", "count_include_pad"]),
    "nchw_flatten_output": (_refusal_spatial_flatten_softmax, ["Softmax", "sm", "HWC"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unsupported_raises_valueerror_naming_node(case):
    build, words = REFUSALS[case]
    model = build()
    with pytest.raises(ValueError) as e:
        co.load_onnx(model)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_supported_same_lower_when_symmetric():
    """SAME_LOWER equals TFLite SAME when the total padding is even."""
    model = _conv_model(auto_pad="SAME_LOWER")                        # k3 s1: total 2
    net = co.load_onnx(model)
    assert net.layers[0].padding == "same"


@pytest.mark.parametrize("cut", [0.5, 0.9, -3])
def test_truncated_file_raises(tmp_path, cut):
    model, _ = model_a()
    data = model.SerializeToString()
    n = int(len(data) * cut) if cut > 0 else len(data) + cut
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match="ONNX"):
        co.load_onnx(str(path))
    with pytest.raises(ValueError):
        co.onnx_to_qmodel(str(path), np.zeros((4, 12, 11, 3), np.float32))


def test_garbage_file_raises(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff\xfe not a protobuf \x00\x01" * 10)
    with pytest.raises(ValueError, match="ONNX"):
        co.load_onnx(str(path))


def test_calibration_shape_mismatch():
    model, _ = model_a()
    with pytest.raises(ValueError, match="calibration"):
        co.onnx_to_qmodel(model, np.zeros((4, 7), np.float32))

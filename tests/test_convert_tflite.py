"""The TFLite converter (microtrain.convert_tflite) against ai-edge-litert's reference kernels
(BUILTIN_REF): the converted QModel run by the numpy reference (qmodel.forward) must reproduce every
layer output of the interpreter bit for bit, on the two real models in ../shared/models and on small
models built here (CONV_2D, pools, MEAN, reshapes, per-tensor depthwise, multi-row FC), which the
real models do not exercise.  Malformed files and unsupported graphs must fail with clear errors."""

import dataclasses
import os

import numpy as np
import pytest

from microtrain.model import qmodel
from microtrain.plan import planner
from microtrain.sim import reference as ref
from microtrain.convert.quantize import activation_qparams
from microtrain.convert.from_tflite import TFLiteFormatError, activation_range, convert, load_tflite
from tests.conftest import SHARED_MODELS

tflite = pytest.importorskip("tflite")
lite = pytest.importorskip("ai_edge_litert.interpreter")
flatbuffers = pytest.importorskip("flatbuffers")

MODELS = SHARED_MODELS
HELLO = os.path.join(MODELS, "hello_world_int8.tflite")
SPEECH = os.path.join(MODELS, "micro_speech_quantized.tflite")


def model_bytes(path):
    if not os.path.exists(path):
        pytest.fail(f"{path} missing (shared/ models)")
    with open(path, "rb") as f:
        return f.read()


def interpreter(data):
    it = lite.Interpreter(model_content=bytes(data), experimental_op_resolver_type=lite.OpResolverType.BUILTIN_REF,
                          experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    return it


def assert_bit_exact(data, inputs, **kw):
    """Run `inputs` (int8 arrays) through litert and through the converted model; compare every layer.
    Returns the conversion (with .distinct: distinct output values per compared layer) and the number
    of compared layer outputs."""
    conv = convert(data, **kw)
    model = conv.model
    it = interpreter(data)
    d = it.get_input_details()[0]
    compared = 0
    seen = {}
    for n, x in enumerate(inputs):
        x = np.asarray(x, np.int8)
        it.set_tensor(d["index"], x.reshape(d["shape"]))
        it.invoke()
        outs = qmodel.forward(model, x.ravel(), keep=True)
        for i, ((y, _), ti) in enumerate(zip(outs, conv.tensors)):
            if ti is None:
                continue
            expected = it.get_tensor(ti).ravel()
            assert np.array_equal(y, expected), \
                (f"input {n}, layer {i} ({model.layers[i].name}): {np.flatnonzero(y != expected).size} of "
                 f"{y.size} values differ, first {y[y != expected][:5]} vs {expected[y != expected][:5]}")
            compared += 1
            seen.setdefault(i, set()).update(y.tolist())
    conv.distinct = {model.layers[i].name: len(v) for i, v in seen.items()}   # how much the inputs exercised
    return conv, compared


# ---------------------------------------------------------------------------------------------
# a small .tflite writer (flatbuffers + the tflite schema classes), for models with other ops


class ModelBuilder:
    """Tensors and operators of one subgraph, serialized as a TFLite flatbuffer."""

    def __init__(self):
        self.tensors = []
        self.ops = []
        self.vals = {}                # tensor -> int8 sample activations (calibration)

    def tensor(self, shape, type="INT8", data=None, scale=None, zp=None, qdim=0, name=None):
        scales = None if scale is None else np.atleast_1d(np.asarray(scale, np.float32))
        zps = None if scale is None else np.atleast_1d(np.asarray(0 if zp is None else zp, np.int64))
        if zps is not None and zps.size == 1 and scales.size > 1:
            zps = np.zeros(scales.size, np.int64) + zps[0]
        if data is not None:
            data = np.ascontiguousarray(data).tobytes()
        self.tensors.append(dict(shape=list(shape), type=getattr(tflite.TensorType, type), data=data,
                                 scales=scales, zps=zps, qdim=qdim, name=name or f"t{len(self.tensors)}"))
        return len(self.tensors) - 1

    def act(self, shape, scale, zp):
        return self.tensor(shape, "INT8", None, scale, zp)

    def op(self, name, inputs, outputs, options=None, **fields):
        self.ops.append((name, list(inputs), list(outputs), options, fields))
        return outputs[0]

    def build(self, inputs, outputs):
        b = flatbuffers.Builder(1024)
        T = tflite

        def vec_tables(start, offs):
            start(b, len(offs))
            for o in reversed(offs):
                b.PrependUOffsetTRelative(o)
            return b.EndVector()

        def ints(v, dtype=np.int32):
            return b.CreateNumpyVector(np.asarray(v, dtype))

        # buffers: 0 is the empty sentinel, then one per tensor
        buf_offs = []
        T.BufferStart(b)
        buf_offs.append(T.BufferEnd(b))
        for t in self.tensors:
            dv = b.CreateNumpyVector(np.frombuffer(t["data"], np.uint8)) if t["data"] else None
            T.BufferStart(b)
            if dv is not None:
                T.BufferAddData(b, dv)
            buf_offs.append(T.BufferEnd(b))
        t_offs = []
        for i, t in enumerate(self.tensors):
            name = b.CreateString(t["name"])
            shape = ints(t["shape"])
            q = None
            if t["scales"] is not None:
                sv = b.CreateNumpyVector(t["scales"])
                zv = b.CreateNumpyVector(t["zps"])
                T.QuantizationParametersStart(b)
                T.QuantizationParametersAddScale(b, sv)
                T.QuantizationParametersAddZeroPoint(b, zv)
                T.QuantizationParametersAddQuantizedDimension(b, t["qdim"])
                q = T.QuantizationParametersEnd(b)
            T.TensorStart(b)
            T.TensorAddShape(b, shape)
            T.TensorAddType(b, t["type"])
            T.TensorAddBuffer(b, i + 1)
            T.TensorAddName(b, name)
            if q is not None:
                T.TensorAddQuantization(b, q)
            t_offs.append(T.TensorEnd(b))
        codes = []
        op_offs = []
        for name, ins, outs, options, fields in self.ops:
            if name not in codes:
                codes.append(name)
            iv, ov = ints(ins), ints(outs)
            opt = None
            if options is not None:
                getattr(T, f"{options}Start")(b)
                for k, v in fields.items():
                    getattr(T, f"{options}Add{k}")(b, v)
                opt = getattr(T, f"{options}End")(b)
            T.OperatorStart(b)
            T.OperatorAddOpcodeIndex(b, codes.index(name))
            T.OperatorAddInputs(b, iv)
            T.OperatorAddOutputs(b, ov)
            if opt is not None:
                T.OperatorAddBuiltinOptionsType(b, getattr(T.BuiltinOptions, options))
                T.OperatorAddBuiltinOptions(b, opt)
            op_offs.append(T.OperatorEnd(b))
        tv = vec_tables(T.SubGraphStartTensorsVector, t_offs)
        opv = vec_tables(T.SubGraphStartOperatorsVector, op_offs)
        iv, ov = ints(inputs), ints(outputs)
        sname = b.CreateString("main")
        T.SubGraphStart(b)
        T.SubGraphAddTensors(b, tv)
        T.SubGraphAddInputs(b, iv)
        T.SubGraphAddOutputs(b, ov)
        T.SubGraphAddOperators(b, opv)
        T.SubGraphAddName(b, sname)
        sg = T.SubGraphEnd(b)
        oc_offs = []
        for name in codes:
            code = getattr(T.BuiltinOperator, name)
            T.OperatorCodeStart(b)
            T.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            T.OperatorCodeAddBuiltinCode(b, code)
            T.OperatorCodeAddVersion(b, 1)
            oc_offs.append(T.OperatorCodeEnd(b))
        ocv = vec_tables(T.ModelStartOperatorCodesVector, oc_offs)
        sgv = vec_tables(T.ModelStartSubgraphsVector, [sg])
        bv = vec_tables(T.ModelStartBuffersVector, buf_offs)
        desc = b.CreateString("microtrain test model")
        T.ModelStart(b)
        T.ModelAddVersion(b, 3)
        T.ModelAddOperatorCodes(b, ocv)
        T.ModelAddSubgraphs(b, sgv)
        T.ModelAddDescription(b, desc)
        T.ModelAddBuffers(b, bv)
        b.Finish(T.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


# layer helpers: output quantization calibrated on sample activations propagated in float, so that
# every layer's int8 outputs spread over the range (and RELU6 clamps inside it)

N_CALIB = 48


def add_input(mb, rng, shape, scale, zp):
    x = mb.act(shape, scale, zp)
    mb.vals[x] = rng.integers(-128, 128, (N_CALIB,) + tuple(shape[1:]))
    return x


def _q(mb, x):
    t = mb.tensors[x]
    return float(t["scales"][0]), int(t["zps"][0]), mb.vals[x].astype(np.int64)


def _calibrated(mb, real, act, shape):
    """An int8 tensor for the float outputs `real` (N, ...) with activation `act`."""
    lo, hi = np.percentile(real, 0.5), np.percentile(real, 99.5)
    if act != "NONE":
        lo, hi = 0.0, max(hi, 1e-3)
    if act == "RELU6":
        hi = 6.6 if hi > 6 else hi * 1.1          # the clamp at 6 falls inside the int8 range
    s, z = activation_qparams(lo, hi)
    y = mb.act(shape, s, z)
    amin, amax = activation_range(getattr(tflite.ActivationFunctionType, act), s, z)
    mb.vals[y] = np.clip(np.round(real / s) + z, amin, amax)
    return y


def _out_hw(h, w, k, stride, padding):
    if padding == "same":
        return -(-h // stride), -(-w // stride)
    return (h - k) // stride + 1, (w - k) // stride + 1


def add_conv(mb, rng, x, out_c, k, stride, padding, act, per_channel=True, depthwise=False, dm=1):
    s_x, z_x, xv = _q(mb, x)
    h, w, c = mb.tensors[x]["shape"][1:]
    if depthwise:
        out_c = c * dm
        wq = rng.integers(-127, 128, (1, k, k, out_c)).astype(np.int8)
    else:
        wq = rng.integers(-127, 128, (out_c, k, k, c)).astype(np.int8)
    s_w = rng.uniform(0.004, 0.012, out_c) if per_channel else np.full(out_c, 0.008)
    wt = mb.tensor(wq.shape, "INT8", wq, s_w if per_channel else s_w[:1], 0, qdim=3 if depthwise else 0)
    b = rng.integers(-2000, 2000, out_c).astype("<i4")
    bt = mb.tensor([out_c], "INT32", b, s_x * s_w, 0)
    oh, ow = _out_hw(h, w, k, stride, padding)
    g = ref.Geom.conv(h, w, c, out_c, k, k, stride, padding, dm)
    accs = []
    for v in xv:
        cols = ref.im2col(g, v.ravel(), z_x)                            # [M][taps][in_c]
        if depthwise:
            acc = (np.repeat(cols, dm, axis=2) * wq.reshape(k * k, out_c)).sum(axis=1)
        else:
            acc = cols.reshape(g.positions, -1) @ wq.reshape(out_c, -1).T.astype(np.int64)
        accs.append((acc + b).reshape(oh, ow, out_c))
    y = _calibrated(mb, np.array(accs) * s_x * s_w, act, [1, oh, ow, out_c])
    fields = dict(Padding=0 if padding == "same" else 1, StrideW=stride, StrideH=stride,
                  FusedActivationFunction=getattr(tflite.ActivationFunctionType, act))
    if depthwise:
        mb.op("DEPTHWISE_CONV_2D", [x, wt, bt], [y], "DepthwiseConv2DOptions", DepthMultiplier=dm, **fields)
    else:
        mb.op("CONV_2D", [x, wt, bt], [y], "Conv2DOptions", **fields)
    return y


def add_fc(mb, rng, x, out_f, act="NONE", rows=1, keep_num_dims=False, bias=True, logit_range=None):
    """logit_range: scale the weights so that the outputs span about that much (softmax inputs)."""
    s_x, z_x, xv = _q(mb, x)
    in_f = int(np.prod(mb.tensors[x]["shape"])) // rows
    wq = rng.integers(-127, 128, (out_f, in_f)).astype(np.int8)
    b = rng.integers(-2000, 2000, out_f).astype("<i4") if bias else np.zeros(out_f, np.int64)
    acc = (xv.reshape(len(xv), rows, in_f) - z_x) @ wq.T.astype(np.int64) + b
    s_w = 0.008
    if logit_range:
        s_w = logit_range / (s_x * np.ptp(np.percentile(acc, [0.5, 99.5])))
    wt = mb.tensor(wq.shape, "INT8", wq, s_w, 0)
    ins = [x, wt, mb.tensor([out_f], "INT32", b, s_x * s_w, 0) if bias else -1]
    y = _calibrated(mb, acc * s_x * s_w, act, [1, rows, out_f] if keep_num_dims else [rows, out_f])
    mb.op("FULLY_CONNECTED", ins, [y], "FullyConnectedOptions",
          FusedActivationFunction=getattr(tflite.ActivationFunctionType, act), KeepNumDims=keep_num_dims)
    return y


def add_pool(mb, x, kind, k, stride, padding):
    s, z, xv = _q(mb, x)
    h, w, c = mb.tensors[x]["shape"][1:]
    oh, ow = _out_hw(h, w, k, stride, padding)
    g = ref.Geom.pool(h, w, c, k, k, stride, padding)
    f = ref.maxpool_forward if kind == "MAX_POOL_2D" else ref.avgpool_forward
    y = mb.act([1, oh, ow, c], s, z)
    mb.vals[y] = np.array([f(g, v.ravel()) for v in xv]).reshape(len(xv), oh, ow, c)
    mb.op(kind, [x], [y], "Pool2DOptions", Padding=0 if padding == "same" else 1, StrideW=stride, StrideH=stride,
          FilterWidth=k, FilterHeight=k)
    return y


def add_mean(mb, x, keep_dims=True, out_q=None):
    s, z = mb.tensors[x]["scales"][0], mb.tensors[x]["zps"][0]
    c = mb.tensors[x]["shape"][3]
    axes = mb.tensor([2], "INT32", np.array([1, 2], "<i4"))
    s_y, z_y = out_q or (s, z)
    y = mb.act([1, 1, 1, c] if keep_dims else [1, c], s_y, z_y)
    if x in mb.vals:
        mean = (mb.vals[x].astype(np.float64) - z).mean(axis=(1, 2)) * s
        mb.vals[y] = np.clip(np.round(mean / s_y) + z_y, -128, 127).reshape((-1,) + tuple(mb.tensors[y]["shape"][1:]))
    mb.op("MEAN", [x, axes], [y], "ReducerOptions", KeepDims=keep_dims)
    return y


def add_reshape(mb, x, shape):
    t = mb.tensors[x]
    st = mb.tensor([len(shape)], "INT32", np.array(shape, "<i4"))
    y = mb.act(shape, t["scales"][0], t["zps"][0])
    if x in mb.vals:
        mb.vals[y] = mb.vals[x].reshape((-1,) + tuple(shape[1:]))
    mb.op("RESHAPE", [x, st], [y], "ReshapeOptions")
    return y


def add_softmax(mb, x, n, beta=1.0):
    y = mb.act([1, n], 1.0 / 256, -128)
    mb.op("SOFTMAX", [x], [y], "SoftmaxOptions", Beta=beta)
    return y


def random_inputs(rng, shape, n):
    xs = [rng.integers(-128, 128, shape) for _ in range(n - 3)]
    xs += [np.full(shape, -128), np.full(shape, 127), np.clip(rng.normal(-60, 30, shape), -128, 127)]
    return [x.astype(np.int8) for x in xs]


# ---------------------------------------------------------------------------------------------
# the real models


def test_hello_world_every_input_bit_exact():
    data = model_bytes(HELLO)
    conv, compared = assert_bit_exact(data, [np.array([v]) for v in range(-128, 128)])
    m = conv.model
    assert [l.op for l in m.layers] == ["conv", "conv", "conv", "softmax"]       # 3 FC + appended softmax
    assert conv.tensors[-1] is None and any("appended" in n for n in conv.notes)
    assert [l.double_rounding for l in m.layers[:3]] == [False] * 3
    assert [l.act_min for l in m.layers[:3]] == [-128, -128, -128]              # ReLU with zero point -128
    assert (m.input_shape, m.input_zero_point) == ((1, 1, 1), -128)
    assert compared == 256 * 3
    assert all(l.s_w.shape == (l.geom.out_c,) and l.s_w.dtype == np.float64 for l in m.layers[:3])
    # a one-output regression head: its appended softmax is always probability 1
    assert all(qmodel.forward(m, np.array([v], np.int8))[0] == 127 for v in (-128, 0, 127))


def speech_inputs(rng, n=10):
    xs = []
    for k in range(n - 2):
        if k % 2:
            xs.append(rng.integers(-128, 128, (49, 40)))
        else:   # spectrogram-like: low energy with bright bands and a few bright frames
            spec = rng.normal(-100, 25, (49, 40)) + 120 * (rng.random((49, 40)) < 0.05)
            spec[rng.integers(0, 49, 3)] += 80
            xs.append(np.clip(spec, -128, 127))
    xs += [np.full((49, 40), -128), np.full((49, 40), 127)]
    return [x.astype(np.int8).reshape(1, 1960) for x in xs]


def test_micro_speech_bit_exact():
    data = model_bytes(SPEECH)
    labels = ["silence", "unknown", "yes", "no"]
    conv, compared = assert_bit_exact(data, speech_inputs(np.random.default_rng(0)), labels=labels)
    m = conv.model
    assert [l.op for l in m.layers] == ["dwconv", "conv", "softmax"]
    dw, fc, sm = m.layers
    assert dw.geom == ref.Geom.depthwise(49, 40, 1, 8, 10, 8, stride=2, padding="same")
    assert dw.double_rounding and not fc.double_rounding
    assert dw.mult.size == 8 and fc.mult.size == 1 and fc.s_w.size == 4
    assert (dw.act_min, dw.act_max) == (-128, 127)                  # fused ReLU, output zero point -128
    assert m.input_shape == (49, 40, 1) and m.labels == labels and not conv.notes
    assert compared == 10 * 3
    assert load_tflite(SPEECH, labels).name == "micro_speech_quantized"


def test_micro_speech_plans_sparse():
    """The converted model plans: per-channel depthwise scales and a per-tensor FC feed the training
    factors.  "sparse" asks for the depthwise taps too (any weight fraction trains every tap of a
    depthwise layer), and 25x20 = 500 output positions exceed the update kernels' weight-gradient
    bound (256) today: the planner refuses it, and the same policy without those taps plans."""
    m = load_tflite(SPEECH, ["silence", "unknown", "yes", "no"])
    try:
        p = planner.plan(m, "sparse")
        assert {t.layer for t in p.train if t.weights} >= {1}
    except planner.PlanError as e:
        assert "500 output positions" in str(e)
        p = planner.plan(m, {0: {"bias": True}, 1: {"bias": True, "weights": 1.0}})
        assert [(t.layer, t.weights, t.bias) for t in p.train] == [(0, False, True), (1, True, True)]
    by = {t.layer: t for t in p.train}
    assert by[1].w_mult.size == 4 and by[0].b_mult.size == 8 and by[1].b_mult.size == 4
    assert list(p.grads) == [1] and p.first_backward == 0 and p.masks == [0] and p.kept == [0]
    assert 0 < p.peak_bytes < 256 * 1024 and "dwconv" in p.summary(m)


# ---------------------------------------------------------------------------------------------
# built models: the ops the real models do not have


def test_conv_pools_reshape_fc_softmax_bit_exact():
    rng = np.random.default_rng(3)
    mb = ModelBuilder()
    x = add_input(mb, rng, [1, 12, 10, 3], 0.05, -7)
    y = add_conv(mb, rng, x, 8, 3, 1, "same", "RELU6")                                 # per-channel, RELU6
    y = add_pool(mb, y, "MAX_POOL_2D", 3, 2, "same")                                   # 6x5, edge windows
    y = add_conv(mb, rng, y, 0, 3, 1, "valid", "NONE", per_channel=False, depthwise=True, dm=2)   # 4x3x16
    y = add_conv(mb, rng, y, 12, 1, 1, "valid", "RELU")                                # pointwise
    y = add_pool(mb, y, "AVERAGE_POOL_2D", 2, 2, "same")                               # 2x2, partial windows
    y = add_conv(mb, rng, y, 10, 2, 2, "same", "NONE")                                 # stride 2 SAME: 1x1
    y = add_reshape(mb, y, [1, 10])
    y = add_fc(mb, rng, y, 5, logit_range=8.0)
    y = add_softmax(mb, y, 5, beta=0.7)
    data = mb.build([x], [y])
    conv, compared = assert_bit_exact(data, random_inputs(rng, (1, 12, 10, 3), 40))
    assert [l.op for l in conv.model.layers] == ["conv", "maxpool", "dwconv", "conv", "avgpool", "conv", "conv",
                                                 "softmax"]
    assert compared == 40 * 8
    assert min(conv.distinct.values()) >= 10, conv.distinct          # outputs spread, softmax too
    assert conv.model.layers[0].act_max < 127                        # the RELU6 clamp is inside the range


def test_mean_and_multi_row_fc_bit_exact():
    rng = np.random.default_rng(4)
    mb = ModelBuilder()
    x = add_input(mb, rng, [1, 5, 7, 4], 0.04, -128)
    y = add_conv(mb, rng, x, 6, 3, 1, "same", "RELU")
    y = add_mean(mb, y)                                     # 35 positions: bit-exact only as a dwconv
    y = add_reshape(mb, y, [1, 2, 3])                       # 6 channels as 2 rows of 3 features
    y = add_fc(mb, rng, y, 4, act="RELU", rows=2, keep_num_dims=True, bias=False)      # the same FC per row
    y = add_reshape(mb, y, [1, 8])
    y = add_fc(mb, rng, y, 3)
    data = mb.build([x], [y])
    with pytest.raises(ValueError, match=r"operator 1 \(MEAN\).*not avgpool bit for bit.*mean='dwconv'"):
        convert(data)
    conv, compared = assert_bit_exact(data, random_inputs(rng, (1, 5, 7, 4), 30), mean="dwconv")
    assert min(conv.distinct.values()) >= 10, conv.distinct
    ops = [l.op for l in conv.model.layers]
    assert ops == ["conv", "dwconv", "conv", "conv", "softmax"]      # softmax appended
    assert conv.model.layers[2].geom.out_w == 2 and not conv.model.layers[2].b.any()
    assert compared == 30 * 4


def _mean_model(h, w, zp, keep_dims=True, out_q=None):
    mb = ModelBuilder()
    x = mb.act([1, h, w, 3], 0.05, zp)
    y = add_mean(mb, x, keep_dims, out_q)
    return mb.build([x], [y])


def sum_sweep(rng, h, w, c=3, random=60):
    """Inputs whose per-channel sums sweep the whole range (ramps), plus random ones."""
    n = h * w
    xs = []
    for t in range(0, 255 * n + 1, max(1, 255 * n // 300)):
        v = np.empty((n, c), np.int64)
        for ch in range(c):
            q, r = divmod(min(t + ch, 255 * n), n)
            v[:, ch] = -128 + q
            v[:r, ch] += 1
        xs.append(v.reshape(1, h, w, c))
    return xs + [rng.integers(-128, 128, (1, h, w, c)) for _ in range(random)]


def test_mean_semantics():
    """litert's int8 MEAN is an integer mean with the multiplier divided by n (double rounding), for
    any keep_dims and output quantization; as a depthwise layer it converts bit for bit, as avgpool
    only where every possible sum rounds the same (n = 1, 3)."""
    rng = np.random.default_rng(5)
    for h, w, zp, keep, out_q in ((5, 7, -128, True, None), (2, 2, -128, False, None), (4, 4, 0, True, None),
                                  (3, 3, -128, True, (0.03, -100)), (6, 5, 10, False, (0.11, 20)), (7, 7, 3, True, None)):
        conv, _ = assert_bit_exact(_mean_model(h, w, zp, keep, out_q), sum_sweep(rng, h, w), softmax=False,
                                   mean="dwconv")
        l, = conv.model.layers
        assert l.op == "dwconv" and l.w.size == h * w * 3 and l.double_rounding
        assert np.allclose(l.s_w, 1.0 / (h * w))
    # n = 3 (and 1): avgpool is exact, the default converts it
    for keep in (True, False):
        conv, _ = assert_bit_exact(_mean_model(1, 3, -128, keep), sum_sweep(rng, 1, 3), softmax=False)
        assert [l.op for l in conv.model.layers] == ["avgpool"] and not conv.notes
    # otherwise refused by default; mean="avgpool" converts with a note, and the difference is real
    data = _mean_model(2, 2, -128)
    with pytest.raises(ValueError, match=r"operator 0 \(MEAN\).*4 positions is not avgpool"):
        convert(data)
    conv = convert(data, softmax=False, mean="avgpool")
    assert conv.model.layers[0].op == "avgpool" and any("one step" in n for n in conv.notes)
    it = interpreter(data)
    x = np.full((1, 2, 2, 3), -128, np.int8)
    x[0, 0, :, 0] = -127                             # channel 0: sum(x - z) = 2, a tie at n = 4
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    tfl = it.get_tensor(it.get_output_details()[0]["index"]).ravel()
    ours = qmodel.forward(conv.model, x.ravel())
    assert (tfl[0], ours[0]) == (-127, -128)         # TFLite rounds 2/4 up from the zero point, avgpool -510/4 away
    with pytest.raises(ValueError, match="differs from the input"):
        convert(_mean_model(1, 3, 0, out_q=(0.1, 0)))
    with pytest.raises(ValueError, match="mean must be"):
        convert(data, mean="round")


# ---------------------------------------------------------------------------------------------
# errors


def test_truncated_and_garbage_files_raise():
    data = model_bytes(SPEECH)
    for n in (0, 5, 8, 64, 1000, len(data) // 2, len(data) - 200):
        with pytest.raises(TFLiteFormatError):
            convert(data[:n])
    rng = np.random.default_rng(6)
    with pytest.raises(TFLiteFormatError, match="not a TFLite model"):
        convert(rng.integers(0, 256, 4096).astype(np.uint8).tobytes())
    for seed in range(20):                         # garbage behind a valid header
        junk = bytearray(np.random.default_rng(seed).integers(0, 256, 2048).astype(np.uint8).tobytes())
        junk[4:8] = b"TFL3"
        with pytest.raises(ValueError):
            convert(bytes(junk))
    with pytest.raises(TFLiteFormatError):
        convert(model_bytes(HELLO)[:-300])


def test_fuzzed_files_raise_value_errors_only():
    """Random truncation, random bytes behind a valid header and root offset, and corrupted bytes in a
    real model: either a model (corrupted weights are undetectable) or a ValueError, never a crash."""
    real = [model_bytes(HELLO), model_bytes(SPEECH)]
    outcomes = {"model": 0, "error": 0}
    for seed in range(400):
        r = np.random.default_rng(seed)
        src = real[seed % 2]
        if seed % 3 == 0:
            data = bytearray(r.integers(0, 256, int(r.integers(8, 4096))).astype(np.uint8).tobytes())
            data[4:8] = b"TFL3"
            data[0:4] = int(r.integers(8, len(data))).to_bytes(4, "little")
        elif seed % 3 == 1:
            data = bytearray(src)
            for _ in range(int(r.integers(1, 20))):
                data[int(r.integers(8, len(data)))] = int(r.integers(0, 256))
        else:
            data = src[:int(r.integers(0, len(src)))]
        try:
            convert(bytes(data))
            outcomes["model"] += 1
        except ValueError:
            outcomes["error"] += 1
    assert outcomes["error"] > 300


def _patch_opcode(data, code):
    """Rewrite the builtin code of the model's first OperatorCode in place (both fields)."""
    m = tflite.Model.GetRootAs(data, 0)
    oc = m.OperatorCodes(0)
    out = bytearray(data)
    dep = oc._tab.Offset(4)           # deprecated_builtin_code: int8
    new = oc._tab.Offset(10)          # builtin_code: int32
    assert dep and new
    out[oc._tab.Pos + dep] = min(code, 127)
    out[oc._tab.Pos + new:oc._tab.Pos + new + 4] = int(code).to_bytes(4, "little")
    return bytes(out)


def test_unsupported_op_raises_with_its_name():
    data = _patch_opcode(model_bytes(HELLO), tflite.BuiltinOperator.TANH)
    with pytest.raises(ValueError, match=r"operator 0 \(TANH\) is not supported"):
        convert(data)
    mb = ModelBuilder()
    x = mb.act([1, 4], 0.1, 0)
    y = mb.act([1, 4], 0.1, 0)
    mb.op("MUL", [x, x], [y], "MulOptions")
    with pytest.raises(ValueError, match=r"operator 0 \(MUL\) is not supported"):
        convert(mb.build([x], [y]))


def test_refused_models():
    rng = np.random.default_rng(7)
    # uint8 / float input
    for t in ("UINT8", "FLOAT32"):
        mb = ModelBuilder()
        x = mb.tensor([1, 4], t, scale=0.1, zp=0)
        y = mb.act([1, 4], 1 / 256, -128)
        mb.op("SOFTMAX", [x], [y], "SoftmaxOptions", Beta=1.0)
        with pytest.raises(ValueError, match=t):
            convert(mb.build([x], [y]))
    # per-channel FULLY_CONNECTED
    mb = ModelBuilder()
    x = mb.act([1, 4], 0.1, 0)
    w = mb.tensor([3, 4], "INT8", rng.integers(-127, 128, (3, 4)).astype(np.int8), [0.01, 0.02, 0.03], 0)
    y = mb.act([1, 3], 0.5, 0)
    mb.op("FULLY_CONNECTED", [x, w, -1], [y], "FullyConnectedOptions")
    with pytest.raises(ValueError, match=r"operator 0 \(FULLY_CONNECTED\).*per-channel"):
        convert(mb.build([x], [y]))
    # a branch: one activation read twice
    mb = ModelBuilder()
    x = mb.act([1, 1, 1, 4], 0.1, 0)
    a = add_reshape(mb, x, [1, 4])
    mb.vals[a] = np.zeros((1, 4))
    b = add_fc(mb, rng, a, 2)
    c = add_fc(mb, rng, a, 2)
    with pytest.raises(ValueError, match=r"tensor \d+ \(t\d+\) of layer fc\d is read by nothing"):
        convert(mb.build([x], [c]))
    # dilation
    mb = ModelBuilder()
    x = mb.act([1, 6, 6, 1], 0.1, 0)
    w = mb.tensor([1, 3, 3, 1], "INT8", np.ones((1, 3, 3, 1), np.int8), 0.01, 0)
    y = mb.act([1, 6, 6, 1], 0.1, 0)
    mb.op("CONV_2D", [x, w, -1], [y], "Conv2DOptions", Padding=0, StrideW=1, StrideH=1, DilationWFactor=2,
          DilationHFactor=2)
    with pytest.raises(ValueError, match=r"operator 0 \(CONV_2D\): dilation"):
        convert(mb.build([x], [y]))


def _rounding_flips(data, inputs):
    """Per kind of layer (fc, conv, dwconv): output values that differ from litert when the layer
    rounds the other way (its input taken from litert)."""
    conv = convert(data, softmax=False)
    it = interpreter(data)
    d = it.get_input_details()[0]
    flips = {}
    for x in inputs:
        it.set_tensor(d["index"], np.asarray(x, np.int8).reshape(d["shape"]))
        it.invoke()
        for i, l in enumerate(conv.model.layers):
            if l.op not in ("conv", "dwconv"):
                continue
            xin = np.asarray(x, np.int8).ravel() if i == 0 else it.get_tensor(conv.tensors[i - 1]).ravel()
            y, _ = qmodel.run_layer(dataclasses.replace(l, double_rounding=not l.double_rounding), xin)
            kind = l.name.rstrip("0123456789")
            flips[kind] = flips.get(kind, 0) + int(np.count_nonzero(y != it.get_tensor(conv.tensors[i]).ravel()))
    return flips


def test_each_op_needs_its_rounding():
    """litert's reference FULLY_CONNECTED rounds once, CONV_2D and DEPTHWISE_CONV_2D twice: the other
    rounding breaks bit-exactness for each."""
    flips = _rounding_flips(model_bytes(HELLO), [np.array([v]) for v in range(-128, 128)])
    assert flips["fc"] > 0
    rng = np.random.default_rng(8)
    mb = ModelBuilder()
    x = add_input(mb, rng, [1, 12, 10, 3], 0.05, -7)
    y = add_conv(mb, rng, x, 8, 3, 1, "same", "NONE")
    y = add_conv(mb, rng, y, 0, 3, 1, "valid", "NONE", depthwise=True, dm=2)
    flips = _rounding_flips(mb.build([x], [y]), random_inputs(rng, (1, 12, 10, 3), 40))
    assert flips["conv"] > 0 and flips["dwconv"] > 0, flips


def test_activation_range_matches_tflite_rule():
    # CalculateActivationRangeQuantized: zp + round(f / s) in float32, clamped to int8
    assert activation_range(0, 0.1, 3) == (-128, 127)
    assert activation_range(1, 0.1, -128) == (-128, 127)
    assert activation_range(1, 0.1, 10) == (10, 127)
    assert activation_range(3, 6.0 / 255, -128) == (-128, 127)
    assert activation_range(3, 0.03, -128) == (-128, 72)
    assert activation_range(3, 0.05, -100) == (-100, 20)
    assert activation_range(2, 0.01, 0) == (-100, 100)
    with pytest.raises(ValueError, match="TANH"):
        activation_range(4, 0.1, 0)

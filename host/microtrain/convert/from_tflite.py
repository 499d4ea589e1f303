"""TFLite int8 model (TensorFlow Lite Micro / Edge Impulse style) -> microtrain's quantized graph.

    model = load_tflite("micro_speech_quantized.tflite", labels=["silence", "unknown", "yes", "no"])

What converts: one subgraph, one input and one output, operators in execution order that each
read activations earlier operators wrote (a chain, or a graph with branches such as ResNet's
residual connections; every activation is read by something or is the output) of

    FULLY_CONNECTED              -> conv QLayer, Geom.dense(rows, in, out); single rounding
    CONV_2D                      -> conv QLayer (OHWI weights as they are); double rounding
    DEPTHWISE_CONV_2D            -> dwconv QLayer ([1,kh,kw,out] -> [kh][kw][out]); double rounding
    AVERAGE_POOL_2D, MAX_POOL_2D -> avgpool / maxpool (same quantization in and out)
    MEAN over H,W                -> avgpool only where that is bit-exact (n = 1 or 3 positions), else
                                    refused; mean="dwconv" makes it a bit-exact depthwise layer
                                    (see _Converter.mean for TFLite's integer mean)
    RESHAPE, SQUEEZE, EXPAND_DIMS-> nothing (a byte copy in [H][W][C] order)
    ADD (same shapes)            -> add, reading two layers (TFLite's int8 ADD arithmetic)
    SOFTMAX (last)               -> softmax (beta from the model)

with int8 activations (per tensor), int8 weights (per tensor or per output channel, zero point 0)
and int32 biases.  Fused NONE / RELU / RELU_N1_TO_1 / RELU6 become act_min / act_max exactly as
TFLite's CalculateActivationRangeQuantized computes them.  Everything else (uint8, float, int16
or hybrid models, other operators, second outputs, broadcasting, dilation, per-channel FULLY_CONNECTED, shuffled or
sparse weights) is refused with a ValueError naming the operator and its index.

The integer parameters are computed the way ai-edge-litert's reference kernels compute them, so the
numpy reference (graph.forward) reproduces the interpreter bit for bit:
  FULLY_CONNECTED   real = double(float32(s_x) * float32(s_w)) / double(s_y)  (GetQuantizedConvolutionMultipler)
  CONV / DEPTHWISE  real[c] = double(s_x) * double(s_w[c]) / double(s_y)      (PopulateConvolutionQuantizationParams)
  SOFTMAX           softmax_params(s_x, beta)                                  (PreprocessSoftmaxScaling)
The FC multiplier is kept per tensor (one mult/shift); `s_w` is always per output channel (float64)
because the planner's training factors need it.  Note that QLayer.requantize_from_scales would
recompute an FC multiplier in double precision, which can differ from TFLite's in the last bit.

A model that does not end in SOFTMAX (a regression head such as hello_world) gets one appended
(TFLite's int8 softmax output quantization, 1/256 and -128) so that it can train as a classifier;
pass softmax=False to keep the chain as it is.  The QModel's input quantization is the model's own
input tensor's, never recomputed; its input_shape is what the first computing layer sees ([H][W][C],
e.g. (49, 40, 1) for micro_speech, whose input tensor is [1, 1960] followed by a RESHAPE).
"""

import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from microtrain.sim import reference as ref
from microtrain.model.qmodel import QLayer, QModel
from microtrain.model.fixedpoint import quantize_multiplier, quantize_multipliers, softmax_params

SOFTMAX_OUT = (1.0 / 256, -128)          # TFLite's int8 softmax output quantization
MAX_ELEMENTS = 1 << 26                    # refuse absurd shapes (garbage files) before allocating

# tflite schema enums (stable across schema versions)
_TYPES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING", 6: "BOOL", 7: "INT16",
          8: "COMPLEX64", 9: "INT8", 10: "FLOAT64", 11: "COMPLEX128", 12: "UINT64", 13: "RESOURCE",
          14: "VARIANT", 15: "UINT32", 16: "UINT16", 17: "INT4", 18: "BFLOAT16"}
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_RESHAPES = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")
SUPPORTED = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "ADD",
             "SOFTMAX") + _RESHAPES


class TFLiteFormatError(ValueError):
    """The bytes are not a readable TFLite flatbuffer (truncated, garbage, wrong file)."""


def _tflite():
    try:
        import tflite
    except ImportError as e:            # pragma: no cover - the package is pinned in the project
        raise ImportError("reading .tflite files needs the `tflite` package (pip install tflite==2.18.0)") from e
    return tflite


# ---------------------------------------------------------------------------------------------
# flatbuffer -> plain records


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple
    type: str
    scales: np.ndarray            # float32
    zero_points: np.ndarray       # int64
    qdim: int
    data: bytes = None            # constant data (None for activations)
    sparse: bool = False

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def quantized(self):
        return self.scales.size > 0

    def values(self, dtype):
        dt = np.dtype(dtype).newbyteorder("<")
        if self.data is None or len(self.data) == 0:
            raise ValueError(f"tensor {self.index} ({self.name}) has no constant data")
        if len(self.data) != self.size * dt.itemsize:
            raise TFLiteFormatError(f"tensor {self.index} ({self.name}) has {len(self.data)} bytes of data, "
                                    f"its shape {list(self.shape)} needs {self.size * dt.itemsize}")
        return np.frombuffer(self.data, dtype=dt).astype(np.dtype(dtype)).reshape(self.shape)


@dataclass
class Op:
    index: int
    name: str                     # BUILTIN operator name, e.g. "CONV_2D" (or "CUSTOM:<code>")
    inputs: list
    outputs: list
    options: object = None        # the tflite options object, initialised, or None
    options_type: int = 0


@dataclass
class Graph:
    tensors: list
    ops: list
    inputs: list
    outputs: list
    description: str = ""
    n_subgraphs: int = 1


def read_tflite(data):
    """Parse a .tflite flatbuffer (bytes) into Graph; TFLiteFormatError if it cannot be read."""
    data = bytes(data)
    if len(data) < 8:
        raise TFLiteFormatError(f"not a TFLite model: {len(data)} bytes")
    if data[4:8] != b"TFL3":
        raise TFLiteFormatError(f"not a TFLite model: file identifier {data[4:8]!r}, expected b'TFL3'")
    try:
        return _read(data)
    except (ValueError, TypeError) as e:
        if isinstance(e, TFLiteFormatError):
            raise
        raise TFLiteFormatError(f"malformed TFLite flatbuffer ({type(e).__name__}: {e})") from e
    except (struct.error, IndexError, KeyError, OverflowError, AttributeError, UnicodeDecodeError) as e:
        raise TFLiteFormatError(f"malformed or truncated TFLite flatbuffer ({type(e).__name__}: {e})") from e


def _in_range(data, off, n, what):
    if off < 0 or n < 0 or off + n > len(data):
        raise TFLiteFormatError(f"{what} lies outside the file ({off}+{n} > {len(data)} bytes): truncated?")


def _read(data):
    tfl = _tflite()
    m = tfl.Model.GetRootAs(data, 0)
    _in_range(data, m._tab.Pos, 4, "the model table")
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    if m.SubgraphsLength() < 1:
        raise TFLiteFormatError("the model has no subgraph")
    opcodes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == getattr(tfl.BuiltinOperator, "CUSTOM", 32):
            opcodes.append("CUSTOM:" + (oc.CustomCode() or b"?").decode("utf-8", "replace"))
        else:
            opcodes.append(names.get(code, f"BUILTIN_{code}"))
    buffers = []
    for i in range(m.BuffersLength()):
        b = m.Buffers(i)
        off, size = (b.Offset(), b.Size()) if hasattr(b, "Offset") else (0, 0)
        if off > 1:                         # data stored after the flatbuffer (models > 2 GB)
            _in_range(data, off, size, f"buffer {i}")
            buffers.append(data[off:off + size])
        elif b.DataLength():
            start = b._tab.Vector(b._tab.Offset(4))
            _in_range(data, start, b.DataLength(), f"buffer {i}")
            buffers.append(data[start:start + b.DataLength()])
        else:
            buffers.append(None)
    sg = m.Subgraphs(0)
    tensors = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        if any(d < 0 for d in shape) or (shape and np.prod(shape, dtype=np.float64) > MAX_ELEMENTS):
            raise TFLiteFormatError(f"tensor {i} has an invalid shape {list(shape)}")
        q = t.Quantization()
        scales = np.zeros(0, np.float32)
        zps = np.zeros(0, np.int64)
        qdim = 0
        if q is not None:
            if q.ScaleLength():
                scales = np.array(q.ScaleAsNumpy(), dtype=np.float32)
            if q.ZeroPointLength():
                zps = np.array(q.ZeroPointAsNumpy(), dtype=np.int64)
            qdim = q.QuantizedDimension()
        bi = t.Buffer()
        if bi >= len(buffers):
            raise TFLiteFormatError(f"tensor {i} names buffer {bi}, the model has {len(buffers)}")
        name = (t.Name() or b"").decode("utf-8", "replace")
        tensors.append(Tensor(i, name, shape, _TYPES.get(t.Type(), f"TYPE_{t.Type()}"), scales, zps, qdim,
                              buffers[bi], t.Sparsity() is not None))
    ops = []
    for i in range(sg.OperatorsLength()):
        o = sg.Operators(i)
        k = o.OpcodeIndex()
        if k >= len(opcodes):
            raise TFLiteFormatError(f"operator {i} uses opcode {k}, the model has {len(opcodes)}")
        ins = [int(v) for v in o.InputsAsNumpy()] if o.InputsLength() else []
        outs = [int(v) for v in o.OutputsAsNumpy()] if o.OutputsLength() else []
        for v in ins + outs:
            if v >= len(tensors) or v < -1:
                raise TFLiteFormatError(f"operator {i} names tensor {v}, the subgraph has {len(tensors)}")
        opts = None
        table = o.BuiltinOptions()
        otype = o.BuiltinOptionsType()
        if table is not None and otype:
            cls_name = _option_class(tfl, otype)
            if cls_name is not None and hasattr(tfl, cls_name):
                opts = getattr(tfl, cls_name)()
                opts.Init(table.Bytes, table.Pos)
        ops.append(Op(i, opcodes[k], ins, outs, opts, otype))
    inputs = [int(v) for v in sg.InputsAsNumpy()] if sg.InputsLength() else []
    outputs = [int(v) for v in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    for v in inputs + outputs:
        if not 0 <= v < len(tensors):
            raise TFLiteFormatError(f"subgraph input/output {v} is not a tensor")
    desc = (m.Description() or b"").decode("utf-8", "replace")
    return Graph(tensors, ops, inputs, outputs, desc, m.SubgraphsLength())


def _option_class(tfl, otype):
    for k, v in vars(tfl.BuiltinOptions).items():
        if v == otype and not k.startswith("_"):
            return k
    return None


# ---------------------------------------------------------------------------------------------
# conversion


@dataclass
class Converted:
    model: QModel
    tensors: list                 # per QLayer: index of the TFLite tensor holding its output (None: added)
    notes: list = field(default_factory=list)


def load_tflite(path, labels=(), name=None, softmax=True, mean="refuse"):
    """Read a TFLite int8 model file and convert it to a QModel (see the module docstring)."""
    with open(path, "rb") as f:
        data = f.read()
    if name is None:
        name = os.path.splitext(os.path.basename(str(path)))[0]
    return convert(data, labels, name, softmax, mean).model


def convert(data, labels=(), name="model", softmax=True, mean="refuse"):
    """bytes of a .tflite file -> Converted(QModel, output tensor index of every layer, notes).

    softmax: append an int8 softmax if the model does not end in one.
    mean: how a MEAN over H, W converts: "refuse" (avgpool where that is bit-exact, else ValueError),
    "dwconv" (a bit-exact depthwise layer) or "avgpool" (one step off on some sums); see _Converter.mean."""
    if mean not in ("refuse", "dwconv", "avgpool"):
        raise ValueError(f"mean must be 'refuse', 'dwconv' or 'avgpool', not {mean!r}")
    g = read_tflite(data)
    try:
        return _Converter(g, mean).run(labels, name, softmax)
    except struct.error as e:          # operator options are read lazily from the flatbuffer
        raise TFLiteFormatError(f"malformed TFLite flatbuffer (operator options: {e})") from e


def _err(op, msg):
    return ValueError(f"operator {op.index} ({op.name}): {msg}")


def _round_away(v):
    """TfLiteRound / std::round on a float32 value: half away from zero."""
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def activation_range(act, scale, zero_point, op=None):
    """TFLite CalculateActivationRangeQuantized for an int8 output (float32 arithmetic)."""
    s = np.float32(scale)

    def q(f):
        return zero_point + _round_away(np.float32(f) / s)

    kind = _ACTIVATIONS.get(act, f"ACTIVATION_{act}")
    if kind == "NONE":
        return -128, 127
    if kind == "RELU":
        return max(-128, q(0.0)), 127
    if kind == "RELU6":
        return max(-128, q(0.0)), min(127, q(6.0))
    if kind == "RELU_N1_TO_1":
        return max(-128, q(-1.0)), min(127, q(1.0))
    msg = f"fused activation {kind} is not supported (NONE, RELU, RELU_N1_TO_1, RELU6)"
    raise _err(op, msg) if op is not None else ValueError(msg)


def _hwc(shape, op, what):
    """A [1, ...] activation shape -> (h, w, c)."""
    if not shape:
        return (1, 1, 1)
    if shape[0] != 1:
        raise _err(op, f"{what} has batch {shape[0]} (shape {list(shape)}); only batch 1 converts")
    rest = shape[1:]
    if len(rest) > 3:
        raise _err(op, f"{what} has shape {list(shape)}; at most [1, H, W, C]")
    rest = (1,) * (3 - len(rest)) + tuple(rest)
    return tuple(int(v) for v in rest)


class _Converter:
    def __init__(self, g, mean_mode):
        self.g = g
        self.mean_mode = mean_mode
        self.notes = []

    def t(self, i):
        return self.g.tensors[i]

    # -- checks --------------------------------------------------------------------------------

    def act_q(self, ti, op, what):
        t = self.t(ti)
        if t.type != "INT8":
            raise _err(op, f"{what} tensor {ti} ({t.name}) is {t.type}; only int8 activations convert "
                           "(uint8, float, int16 and hybrid models are not supported)")
        if t.scales.size != 1 or t.zero_points.size not in (0, 1):
            raise _err(op, f"{what} tensor {ti} ({t.name}) needs one scale and zero point, it has "
                           f"{t.scales.size} scales")
        s = float(t.scales[0])
        z = int(t.zero_points[0]) if t.zero_points.size else 0
        if not (s > 0 and math.isfinite(s)) or not -128 <= z <= 127:
            raise _err(op, f"{what} tensor {ti} ({t.name}) has an invalid quantization ({s}, {z})")
        return s, z

    def weights(self, ti, op, out_c, qdim):
        if ti < 0:
            raise _err(op, "has no weights tensor")
        t = self.t(ti)
        if t.type != "INT8":
            raise _err(op, f"weights tensor {ti} ({t.name}) is {t.type}; only int8 weights convert")
        if t.sparse:
            raise _err(op, f"weights tensor {ti} ({t.name}) is sparse; densify the model first")
        if t.data is None:
            raise _err(op, f"weights tensor {ti} ({t.name}) is not a constant")
        if t.scales.size not in (1, out_c):
            raise _err(op, f"weights tensor {ti} has {t.scales.size} scales for {out_c} output channels")
        if t.scales.size > 1 and t.qdim != qdim:
            raise _err(op, f"weights tensor {ti} is quantized along dimension {t.qdim}, expected {qdim}")
        if t.zero_points.size and np.any(t.zero_points != 0):
            raise _err(op, f"weights tensor {ti} has non-zero zero points (int8 weights are symmetric)")
        s_w = np.broadcast_to(t.scales.astype(np.float64), (out_c,)).copy()
        if not np.all((s_w > 0) & np.isfinite(s_w)):
            raise _err(op, f"weights tensor {ti} has invalid scales")
        return t.values(np.int8), s_w, t.scales

    def bias(self, op, out_c):
        bi = op.inputs[2] if len(op.inputs) > 2 else -1
        if bi < 0:
            return np.zeros(out_c, np.int32)        # no bias: 0 adds nothing, and a bias can train
        t = self.t(bi)
        if t.type != "INT32":
            raise _err(op, f"bias tensor {bi} ({t.name}) is {t.type}; int32 expected")
        if t.size != out_c:
            raise _err(op, f"bias tensor {bi} has {t.size} values for {out_c} output channels")
        return t.values(np.int32).ravel().copy()

    def options(self, op, cls_name, required=True):
        if op.options is None or type(op.options).__name__ != cls_name:
            if required:
                raise _err(op, f"has no {cls_name}")
            return None
        return op.options

    # -- the chain -----------------------------------------------------------------------------

    def run(self, labels, name, append_softmax):
        g = self.g
        if g.n_subgraphs > 1:
            self.notes.append(f"{g.n_subgraphs} subgraphs: only the first (main) one is converted")
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise ValueError(f"the model has {len(g.inputs)} inputs and {len(g.outputs)} outputs; "
                             "a chain has one of each")
        if not g.ops:
            raise ValueError("the model has no operators")
        x = g.inputs[0]
        t_in = self.t(x)
        if t_in.type != "INT8":
            raise ValueError(f"the model input tensor {x} ({t_in.name}) is {t_in.type}: only fully int8 "
                             "models (int8 input and output) convert")
        pseudo = Op(-1, "input", [x], [x])
        in_scale, in_zp = self.act_q(x, pseudo, "model input")
        # the graph: which layer writes each activation tensor (-1: the model input; reshapes
        # write nothing, their output is their input's bytes)
        self.producer = {x: -1}
        layers, outs = [], []
        for k, op in enumerate(g.ops):
            out_name = self.t(op.outputs[0]).name if op.outputs and op.outputs[0] >= 0 else "?"
            if op.name not in SUPPORTED:
                raise ValueError(f"operator {op.index} ({op.name}) is not supported (it writes tensor "
                                 f"{op.outputs[0] if op.outputs else '?'}, {out_name}); microtrain converts "
                                 f"{', '.join(SUPPORTED)}")
            if len(op.outputs) != 1:
                raise _err(op, f"has {len(op.outputs)} outputs; a layer has one")
            acts = [v for v in op.inputs if v >= 0 and self.t(v).data is None]
            for v in acts:
                if v not in self.producer:
                    raise _err(op, f"reads tensor {v} ({self.t(v).name}), which no operator before it writes")
            if not op.inputs or op.inputs[0] not in self.producer:
                raise _err(op, "its first input is not an activation")
            if len(acts) > (2 if op.name == "ADD" else 1):
                raise _err(op, f"reads {len(acts)} activation tensors {acts}: only ADD reads two")
            if op.name == "SOFTMAX" and k != len(g.ops) - 1:
                raise _err(op, "SOFTMAX must be the last operator")
            y = op.outputs[0]
            if op.name in _RESHAPES:
                self.reshape(op)
                self.producer[y] = self.producer[op.inputs[0]]
                continue
            layer = getattr(self, op.name.lower())(op)
            layer.inputs = tuple(self.producer[v] for v in (acts if op.name == "ADD" else op.inputs[:1]))
            self.producer[y] = len(layers)
            layers.append(layer)
            outs.append(y)
        if not layers:
            raise ValueError("the model has no computing layer (only reshapes)")
        if self.producer.get(g.outputs[0]) != len(layers) - 1:
            raise ValueError(f"the model output is tensor {g.outputs[0]} ({self.t(g.outputs[0]).name}), "
                             "not the last operator's output")
        read = {j for l in layers for j in l.inputs}
        for i, l in enumerate(layers[:-1]):
            if i not in read:
                raise ValueError(f"tensor {outs[i]} ({self.t(outs[i]).name}) of layer {l.name} is read by nothing "
                                 "and is not the model output: a graph with a second output does not convert")
        first = next(l for l in layers if -1 in l.inputs)
        input_shape = (first.geom.in_h, first.geom.in_w, first.geom.in_c)
        if layers[-1].op != "softmax" and append_softmax:
            last = layers[-1]
            n = last.geom.out_h * last.geom.out_w * last.geom.out_c
            layers.append(QLayer("softmax", ref.Geom(1, 1, n, 1, 1, n), last.s_y, last.z_y, *SOFTMAX_OUT,
                                 softmax=softmax_params(last.s_y), name="softmax"))
            outs.append(None)
            self.notes.append(f"the model ends in {g.ops[-1].name}, not SOFTMAX: an int8 softmax over its "
                              f"{n} outputs was appended (output quantization 1/256, -128) so it can train")
        model = QModel(layers, input_shape, in_scale, in_zp, list(labels), name)
        return Converted(model, outs, self.notes)

    # -- operators -----------------------------------------------------------------------------

    def reshape(self, op):
        a, b = self.t(op.inputs[0]), self.t(op.outputs[0])
        if a.size != b.size:
            raise _err(op, f"changes the number of elements ({a.size} -> {b.size})")
        qa, qb = self.act_q(a.index, op, "input"), self.act_q(b.index, op, "output")
        if qa[1] != qb[1] or np.float32(qa[0]) != np.float32(qb[0]):
            raise _err(op, f"changes the quantization ({qa} -> {qb}); a reshape must copy bytes unchanged")

    def _io(self, op):
        x, y = op.inputs[0], op.outputs[0]
        s_x, z_x = self.act_q(x, op, "input")
        s_y, z_y = self.act_q(y, op, "output")
        return self.t(x), self.t(y), s_x, z_x, s_y, z_y

    def _check_out(self, op, g, ty, size_only=False):
        n = g.out_h * g.out_w * g.out_c
        if ty.size != n or (not size_only and len(ty.shape) == 4
                            and tuple(ty.shape[1:]) != (g.out_h, g.out_w, g.out_c)):
            raise _err(op, f"output shape {list(ty.shape)} does not match the computed "
                           f"[1, {g.out_h}, {g.out_w}, {g.out_c}]")

    def fully_connected(self, op):
        tx, ty, s_x, z_x, s_y, z_y = self._io(op)
        o = self.options(op, "FullyConnectedOptions", required=False)
        act = o.FusedActivationFunction() if o is not None else 0
        if o is not None and o.WeightsFormat() != 0:
            raise _err(op, "shuffled FULLY_CONNECTED weights are not supported")
        wt = self.t(op.inputs[1]) if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if wt is None or len(wt.shape) != 2:
            raise _err(op, "weights must be a 2-D [out, in] tensor")
        out_c, in_f = wt.shape
        if wt.scales.size > 1:
            raise _err(op, f"per-channel weight quantization ({wt.scales.size} scales) is not supported for "
                           "FULLY_CONNECTED")
        w, s_w, raw = self.weights(op.inputs[1], op, out_c, 0)
        if tx.size % in_f:
            raise _err(op, f"input of {tx.size} elements is not a multiple of {in_f} features")
        rows = tx.size // in_f
        geom = ref.Geom.dense(rows, in_f, out_c)
        self._check_out(op, geom, ty, size_only=True)
        real = float(np.float32(s_x) * np.float32(raw[0])) / float(s_y)
        mult, shift = quantize_multipliers([real])
        amin, amax = activation_range(act, s_y, z_y, op)
        return QLayer("conv", geom, s_x, z_x, s_y, z_y, amin, amax, w.ravel().copy(), self.bias(op, out_c), s_w,
                      mult, shift, False, name=f"fc{op.index}")

    def _conv_common(self, op, opts_name):
        o = self.options(op, opts_name)
        if o.DilationHFactor() not in (0, 1) or o.DilationWFactor() not in (0, 1):
            raise _err(op, f"dilation {o.DilationHFactor()}x{o.DilationWFactor()} is not supported")
        pad = {0: "same", 1: "valid"}.get(o.Padding())
        if pad is None:
            raise _err(op, f"padding {o.Padding()} is not supported")
        sh, sw = o.StrideH(), o.StrideW()
        if sh < 1 or sw < 1:
            raise _err(op, f"invalid strides {sh}x{sw}")
        return o, pad, (sh, sw)

    def _per_channel(self, s_x, s_w, s_y):
        return quantize_multipliers([float(s_x) * float(s) / float(s_y) for s in s_w])

    def conv_2d(self, op):
        tx, ty, s_x, z_x, s_y, z_y = self._io(op)
        o, pad, stride = self._conv_common(op, "Conv2DOptions")
        wt = self.t(op.inputs[1])
        if len(wt.shape) != 4:
            raise _err(op, "weights must be a 4-D [out, kh, kw, in] tensor")
        out_c, kh, kw, in_c = wt.shape
        h, w_, c = _hwc(tx.shape, op, "input")
        if c != in_c:
            raise _err(op, f"weights have {in_c} input channels, the input has {c} (grouped convolution?)")
        w, s_w, _ = self.weights(op.inputs[1], op, out_c, 0)
        geom = ref.Geom.conv(h, w_, c, out_c, kh, kw, stride, pad)
        self._check_out(op, geom, ty)
        mult, shift = self._per_channel(s_x, s_w, s_y)
        amin, amax = activation_range(o.FusedActivationFunction(), s_y, z_y, op)
        return QLayer("conv", geom, s_x, z_x, s_y, z_y, amin, amax, w.ravel().copy(), self.bias(op, out_c), s_w,
                      mult, shift, True, name=f"conv{op.index}")

    def depthwise_conv_2d(self, op):
        tx, ty, s_x, z_x, s_y, z_y = self._io(op)
        o, pad, stride = self._conv_common(op, "DepthwiseConv2DOptions")
        wt = self.t(op.inputs[1])
        if len(wt.shape) != 4 or wt.shape[0] != 1:
            raise _err(op, "weights must be a 4-D [1, kh, kw, out] tensor")
        _, kh, kw, out_c = wt.shape
        h, w_, c = _hwc(tx.shape, op, "input")
        if out_c % c:
            raise _err(op, f"{out_c} output channels are not a multiple of {c} input channels")
        dm = out_c // c
        if o.DepthMultiplier() not in (0, dm):
            self.notes.append(f"operator {op.index}: depth_multiplier option {o.DepthMultiplier()} ignored, "
                              f"the shapes give {dm} (as TFLite does)")
        w, s_w, _ = self.weights(op.inputs[1], op, out_c, 3)
        geom = ref.Geom.depthwise(h, w_, c, dm, kh, kw, stride, pad)
        self._check_out(op, geom, ty)
        mult, shift = self._per_channel(s_x, s_w, s_y)
        amin, amax = activation_range(o.FusedActivationFunction(), s_y, z_y, op)
        return QLayer("dwconv", geom, s_x, z_x, s_y, z_y, amin, amax, w.reshape(kh, kw, out_c).ravel().copy(),
                      self.bias(op, out_c), s_w, mult, shift, True, name=f"dwconv{op.index}")

    def _pool(self, op, kind):
        tx, ty, s_x, z_x, s_y, z_y = self._io(op)
        if z_x != z_y or np.float32(s_x) != np.float32(s_y):
            raise _err(op, f"output quantization ({s_y}, {z_y}) differs from the input's ({s_x}, {z_x}); "
                           "pooling must keep it")
        o = self.options(op, "Pool2DOptions")
        pad = {0: "same", 1: "valid"}.get(o.Padding())
        sh, sw, fh, fw = o.StrideH(), o.StrideW(), o.FilterHeight(), o.FilterWidth()
        if pad is None or min(sh, sw, fh, fw) < 1:
            raise _err(op, "invalid pooling options")
        h, w_, c = _hwc(tx.shape, op, "input")
        geom = ref.Geom.conv(h, w_, c, c, fh, fw, (sh, sw), pad)
        self._check_out(op, geom, ty)
        amin, amax = activation_range(o.FusedActivationFunction(), s_y, z_y, op)
        if kind == "maxpool" and (amin, amax) != (-128, 127):
            raise _err(op, f"a fused activation clamping to [{amin}, {amax}] after max pooling is not supported")
        return QLayer(kind, geom, s_x, z_x, s_x, z_x, amin, amax, name=f"{kind}{op.index}")

    def average_pool_2d(self, op):
        return self._pool(op, "avgpool")

    def max_pool_2d(self, op):
        return self._pool(op, "maxpool")

    def mean(self, op):
        """int8 MEAN over H and W.  ai-edge-litert's reference kernel computes (established on built
        models, any keep_dims, any output quantization; tests/test_convert_tflite.py):
            m0, e0 = QuantizeMultiplier(s_x / s_y);  k = min(floor(log2 n), 32, 31 + e0)
            y = MultiplyByQuantizedMultiplier(sum(x) - n * z_x, (m0 << k) // n, e0 - k) + z_y   (double rounding)
        avgpool computes round_half_away(sum(x) / n) instead: the two agree for every possible sum
        only for n = 1 and n = 3 (checked exhaustively here, per layer); otherwise they differ by one
        step on 1.5-40 % of the sums (ties, and the truncated multiplier).  Modes (`mean=`):
          "refuse"  avgpool where it is exact, else ValueError
          "dwconv"  bit-exact: a depthwise convolution over the whole map with weights 1 (scale 1/n),
                    bias 0 and exactly TFLite's multiplier; note that it then counts as a parametric
                    layer (a policy such as bias-only trains its bias)
          "avgpool" avgpool anyway (same quantization in and out), one step off on some sums"""
        tx, ty, s_x, z_x, s_y, z_y = self._io(op)
        at = self.t(op.inputs[1]) if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if at is None or at.type != "INT32" or at.data is None:
            raise _err(op, "the axes must be a constant int32 tensor")
        nd = len(tx.shape)
        axes = sorted({int(a) + nd if a < 0 else int(a) for a in at.values(np.int32).ravel()})
        if nd != 4 or axes != [1, 2]:
            raise _err(op, f"only MEAN over H and W of a [1, H, W, C] input converts (axes {axes} of "
                           f"shape {list(tx.shape)})")
        h, w_, c = _hwc(tx.shape, op, "input")
        n = h * w_
        m0, e0 = quantize_multiplier(float(s_x) / float(s_y))
        k = min(n.bit_length() - 1, 32, 31 + e0)
        mult, shift = (m0 << k) // n, e0 - k
        same_q = z_x == z_y and np.float32(s_x) == np.float32(s_y)
        if self.mean_mode == "dwconv":
            geom = ref.Geom.depthwise(h, w_, c, 1, h, w_, 1, "valid")
            self._check_out(op, geom, ty, size_only=True)
            self.notes.append(f"operator {op.index} (MEAN over {h}x{w_}) became a depthwise convolution "
                              "with weights 1 (scale 1/n) and bias 0, bit-exact with TFLite")
            return QLayer("dwconv", geom, s_x, z_x, s_y, z_y, -128, 127, np.ones(n * c, np.int8),
                          np.zeros(c, np.int32), np.full(c, 1.0 / n), np.array([mult], np.int32),
                          np.array([shift], np.int32), True, name=f"mean{op.index}")
        if not same_q:
            raise _err(op, f"output quantization ({s_y}, {z_y}) differs from the input's ({s_x}, {z_x}): "
                           "avgpool keeps it (mean='dwconv' converts this MEAN bit-exactly)")
        sums = np.arange(-128 * n, 127 * n + 1, dtype=np.int64)
        tfl = np.clip(ref.requantize(sums - n * z_x, mult, shift, True) + z_y, -128, 127)
        ours = np.clip(ref.div_round_away(sums, n), -128, 127)
        bad = int(np.count_nonzero(tfl != ours))
        if bad:
            msg = (f"MEAN over {h}x{w_} = {n} positions is not avgpool bit for bit: TFLite's integer mean "
                   f"(multiplier / n, double rounding) and avgpool's rounded division differ by one step on "
                   f"{bad} of the {sums.size} possible sums")
            if self.mean_mode != "avgpool":
                raise _err(op, msg + "; convert with mean='dwconv' (bit-exact, a depthwise layer with weights 1) "
                                     "or mean='avgpool' (accept the difference)")
            self.notes.append(f"operator {op.index}: {msg}")
        geom = ref.Geom.pool(h, w_, c, h, w_)
        self._check_out(op, geom, ty, size_only=True)
        return QLayer("avgpool", geom, s_x, z_x, s_x, z_x, name=f"mean{op.index}")

    def add(self, op):
        """int8 ADD of two tensors of one shape, as TFLite prepares it (add.cc): both inputs
        shifted left by 20, rescaled to twice the larger input scale, summed, rescaled to the
        output, each multiplier from QuantizeMultiplierSmallerThanOneExp."""
        a, b = op.inputs[0], op.inputs[1]
        y = op.outputs[0]
        s1, z1 = self.act_q(a, op, "first input")
        s2, z2 = self.act_q(b, op, "second input")
        s_y, z_y = self.act_q(y, op, "output")
        ta, tb, ty = self.t(a), self.t(b), self.t(y)
        if not (ta.shape == tb.shape == ty.shape):
            raise _err(op, f"adds tensors of shapes {list(ta.shape)} and {list(tb.shape)} into {list(ty.shape)}: "
                           "broadcasting is not supported")
        o = self.options(op, "AddOptions", required=False)
        act = o.FusedActivationFunction() if o is not None else 0
        left = 20
        twice = 2.0 * float(max(np.float32(s1), np.float32(s2)))
        (m1, e1), (m2, e2), (my, ey) = (quantize_multiplier(float(np.float32(s1)) / twice),
                                        quantize_multiplier(float(np.float32(s2)) / twice),
                                        quantize_multiplier(twice / float(np.float32((1 << left) * np.float32(s_y)))))
        amin, amax = activation_range(act, s_y, z_y, op)
        h, w_, c = _hwc(ta.shape, op, "input")
        params = ref.AddParams(z1, z2, z_y, left, m1, e1, m2, e2, my, ey, amin, amax)
        return QLayer("add", ref.Geom(h, w_, c, h, w_, c), s1, z1, s_y, z_y, amin, amax, add=params, s_x2=s2, z_x2=z2,
                      name=f"add{op.index}")

    def softmax(self, op):
        tx, ty, s_x, z_x, s_y, z_y = self._io(op)
        o = self.options(op, "SoftmaxOptions", required=False)
        beta = float(o.Beta()) if o is not None else 1.0
        if (np.float32(s_y), z_y) != (np.float32(SOFTMAX_OUT[0]), SOFTMAX_OUT[1]):
            raise _err(op, f"int8 softmax output quantization must be (1/256, -128), it is ({s_y}, {z_y})")
        n = tx.shape[-1] if tx.shape else 1
        if tx.size != n:
            raise _err(op, f"softmax over the last axis of {list(tx.shape)}: only one row converts")
        return QLayer("softmax", ref.Geom(1, 1, n, 1, 1, n), s_x, z_x, s_y, z_y,
                      softmax=softmax_params(s_x, beta), name="softmax")

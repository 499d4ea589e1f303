"""ONNX (NCHW, float) -> floatnet.Net (channels last) -> int8 QModel.

``load_onnx(path)`` reads a *sequential* ONNX classifier and returns the equivalent float network
(floatnet.Net, [H][W][C] activations) with BatchNormalization and per-channel constant
Add/Sub/Mul/Div folded into the preceding Conv/Gemm/MatMul and Relu fused into it.
``onnx_to_qmodel(path, calibration_samples, labels)`` is ``load_onnx`` followed by
``quantize.quantize`` (post-training int8 quantization, softmax appended).

Supported graph (one float input, one output, every other input a constant):

* input (N, C, H, W), (N, C, L) (a 1-D model: H = 1) or (N, F) (becomes [1][1][F]);
* Conv: group 1 or depthwise (group = C_in, any depth multiplier), any strides, dilations 1,
  padding only where it is exactly TFLite SAME or VALID for that shape (explicit pads,
  auto_pad SAME_UPPER / SAME_LOWER / VALID);
* BatchNormalization, Add / Sub / Mul / Div by a per-channel constant: folded into the
  directly preceding Conv / Gemm / MatMul (before its activation);
* Relu, Clip(0, inf): fused into the preceding layer (dropped where the input is already
  non-negative); ReLU6 (Clip(0, 6)) is refused: floatnet and the quantizer have no relu6;
* MaxPool, AveragePool (count_include_pad=0, or 1 when no window reads padding), ceil_mode
  where it gives TFLite's geometry, GlobalAveragePool, GlobalMaxPool, ReduceMean over H, W;
* Flatten(axis=1), Reshape to (N, -1) / (N, F), Squeeze of the 1x1 spatial axes;
* Gemm (alpha, beta, transB; transA = 0), MatMul by a constant (+ Add bias);
* Dropout, Identity (inference: no-ops); Softmax / LogSoftmax as the last node (dropped: the
  quantizer appends the int8 softmax, the Net's output is the logits);
* Constant nodes, nodes whose inputs are all constants (folded with the ONNX reference
  runtime) and Shape of a chain tensor (so ``x.view(x.size(0), -1)`` exports work).

ONNX flattens NCHW as (C, H, W); our Dense reads (H, W, C): the columns of the first
Gemm/MatMul after a Flatten of a spatial tensor are permuted accordingly.  The Net takes
channels-last input: ``to_channels_last`` converts NCHW samples.  Anything else raises
ValueError naming the node (op type and name).
"""

import os

import numpy as np

from microtrain.convert import floatnet as fn
from microtrain.convert import quantize as qz

__all__ = ["load_onnx", "onnx_to_qmodel", "to_channels_last"]


class _Refuse(ValueError):
    pass


def _desc(node):
    name = node.name or (f"output {node.output[0]!r}" if node.output else "unnamed")
    return f"{node.op_type} node {name!r}" if node.name else f"{node.op_type} node ({name})"


def _read_model(path):
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(path, onnx.ModelProto):
        model, where = path, "model"
    else:
        where = "bytes" if isinstance(path, (bytes, bytearray)) else os.fspath(path)
        try:
            if isinstance(path, (bytes, bytearray)):
                model = onnx.load_model_from_string(bytes(path))
            else:
                model = onnx.load_model(where)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError, OSError) as e:
            raise ValueError(f"{where}: not a readable ONNX model (truncated or corrupt file?): "
                             f"{type(e).__name__}: {e}") from e
    if not model.graph.node:
        raise ValueError(f"{where}: ONNX model has an empty graph (truncated or corrupt file?)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:                                            # checker's own error types
        raise ValueError(f"{where}: invalid ONNX model: {e}") from e
    return model, where


def _attrs(node):
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


# ---------------------------------------------------------------------------------------------
# window geometry


def _onnx_out(n, k, s, pb, pe, ceil):
    span = n + pb + pe - k
    if span < 0:
        return 0
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + pb:                               # window starting in end padding
        out -= 1
    return out


def _window(node, a, spatial_hw, k_hw, rank, desc):
    """Normalized 2-D strides / pads of a Conv or pooling node and the TFLite padding mode."""
    nd = rank - 2                                                      # spatial dims in ONNX
    strides = list(a.get("strides", [1] * nd))
    dil = list(a.get("dilations", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    auto = _s(a.get("auto_pad", "NOTSET"))
    ceil = int(a.get("ceil_mode", 0))
    if len(strides) != nd or len(dil) != nd or len(pads) != 2 * nd:
        raise _Refuse(f"{desc}: strides/dilations/pads do not match {nd} spatial dims")
    if any(d != 1 for d in dil):
        raise _Refuse(f"{desc}: dilations {dil} not supported (only 1)")
    if nd == 1:                                                        # 1-D: H = 1
        strides, pads = [1] + strides, [0, pads[0], 0, pads[1]]
    H, W = spatial_hw
    kh, kw = k_hw
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for d, (n, k, s) in enumerate(((H, kh, strides[0]), (W, kw, strides[1]))):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            small = total // 2
            pads[d], pads[d + 2] = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
        ceil = 0
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto != "NOTSET":
        raise _Refuse(f"{desc}: auto_pad {auto!r} not supported")
    if any(p < 0 for p in pads):
        raise _Refuse(f"{desc}: negative pads {pads} not supported")
    oh = _onnx_out(H, kh, strides[0], pads[0], pads[2], ceil)
    ow = _onnx_out(W, kw, strides[1], pads[1], pads[3], ceil)
    if oh < 1 or ow < 1:
        raise _Refuse(f"{desc}: kernel {kh}x{kw} does not fit input {H}x{W} with pads {pads}")
    found = []
    for mode in ("valid", "same"):
        try:
            g = fn.conv_geometry(H, W, kh, kw, tuple(strides), mode)
        except ValueError:
            continue
        found.append((mode, g))
        if g == (oh, ow, pads[0], pads[1]):
            return mode, tuple(strides), pads, (oh, ow)
    tf = "; ".join(f"{m.upper()} -> out {g[0]}x{g[1]}, pad top/left {g[2]}/{g[3]}" for m, g in found)
    raise _Refuse(f"{desc}: pads {pads} (t, l, b, r; ceil_mode={ceil}) give out {oh}x{ow} on input {H}x{W} "
                  f"with kernel {kh}x{kw} stride {strides[0]}x{strides[1]}: neither TFLite SAME nor VALID "
                  f"({tf}); only those paddings are supported")


# ---------------------------------------------------------------------------------------------
# conversion


class _Converter:
    CHAIN = {"Conv", "BatchNormalization", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
             "GlobalMaxPool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Gemm", "MatMul", "Add", "Sub",
             "Mul", "Div", "Dropout", "Identity", "Softmax", "LogSoftmax"}

    def __init__(self, model, where):
        from onnx import numpy_helper

        self.model, self.where = model, where
        self.g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        self.consumed = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumed.setdefault(i, []).append(n)
        self.graph_outputs = [o.name for o in self.g.output]
        self.layers, self.params = [], {}
        self.shapes = {}                                               # chain tensor -> ONNX dims (batch 1)

    # -- state helpers ---------------------------------------------------------------------
    def _set(self, name, kind, shape, rank, layer=None, nonneg=None, perm=None):
        self.cur, self.kind, self.shape, self.rank = name, kind, tuple(int(v) for v in shape), rank
        self.layer, self.perm = layer, perm
        if nonneg is not None:
            self.nonneg = nonneg
        self.shapes[name] = self._onnx_dims()

    def _onnx_dims(self):
        if self.kind == "flat":
            return (1, self.shape[0])
        C, H, W = self.shape
        return (1, C, W) if self.rank == 3 else (1, C, H, W)

    def _const(self, node, idx, what, optional=False):
        name = node.input[idx] if idx < len(node.input) else ""
        if not name:
            if optional:
                return None
            raise _Refuse(f"{_desc(node)}: missing {what}")
        if name not in self.consts:
            raise _Refuse(f"{_desc(node)}: {what} ({name!r}) must be a constant (initializer or Constant node)")
        return np.asarray(self.consts[name])

    def _add_layer(self, layer, W, b):
        self.layers.append(layer)
        idx = len(self.layers) - 1
        if W is not None:
            self.params[idx] = [np.asarray(W, np.float64), np.asarray(b, np.float64)]
        return idx

    def _channels(self):
        return self.shape[0]                                           # C for spatial, F for flat

    def _per_channel(self, node, c, what):
        """A constant broadcast against the current tensor, as a per-channel vector."""
        c = np.asarray(c, np.float64)
        dims = self._onnx_dims()
        try:
            if np.broadcast_shapes(dims, c.shape) != dims:
                raise ValueError
            full = np.broadcast_to(c, dims)
        except ValueError:
            raise _Refuse(f"{_desc(node)}: {what} of shape {c.shape} does not broadcast to {dims}") from None
        vec = full.reshape(full.shape[0], full.shape[1], -1)[0, :, 0]
        if not np.array_equal(full, np.broadcast_to(vec.reshape((1, -1) + (1,) * (len(dims) - 2)), dims)):
            raise _Refuse(f"{_desc(node)}: {what} varies over spatial positions (only per-channel constants fold)")
        return vec

    def _fold(self, node, mul, add, what):
        """Fold y = x * mul + add (per output channel) into the directly preceding parametric layer."""
        if self.layer is None:
            raise _Refuse(f"{_desc(node)}: {what} must directly follow a Conv/Gemm/MatMul (before its "
                          f"activation) to be folded; found after a non-foldable layer or an activation")
        layer = self.layers[self.layer]
        W, b = self.params[self.layer]
        n = b.shape[0]
        mul = np.broadcast_to(np.asarray(mul, np.float64), (n,))
        add = np.broadcast_to(np.asarray(add, np.float64), (n,))
        if isinstance(layer, fn.DepthwiseConv):
            W = W * mul
        else:
            W = W * mul.reshape((-1,) + (1,) * (W.ndim - 1))
        self.params[self.layer] = [W, b * mul + add]

    def _check_extra_outputs(self, node):
        for o in node.output[1:]:
            if o and (o in self.consumed or o in self.graph_outputs):
                raise _Refuse(f"{_desc(node)}: its output {o!r} is used; only the first output is supported")

    # -- input ------------------------------------------------------------------------------
    def _input(self):
        from onnx import TensorProto

        inits = set(self.consts)
        ins = [i for i in self.g.input if i.name not in inits]
        if len(ins) != 1:
            raise _Refuse(f"the graph must have exactly one (non-initializer) input, found {[i.name for i in ins]}")
        vi = ins[0]
        tt = vi.type.tensor_type
        if tt.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            raise _Refuse(f"input {vi.name!r}: element type {tt.elem_type} not supported (float only)")
        if not tt.HasField("shape"):
            raise _Refuse(f"input {vi.name!r} has no shape")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(dims) not in (2, 3, 4) or any(d is None or d < 1 for d in dims[1:]):
            raise _Refuse(f"input {vi.name!r}: shape {dims} not supported; need (N, C, H, W), (N, C, L) "
                          f"or (N, F) with known sizes")
        self.batch = dims[0]
        self.nonneg = False
        if len(dims) == 2:
            self.input_shape = (1, 1, dims[1])
            self._set(vi.name, "flat", (dims[1],), 2)
        elif len(dims) == 3:
            C, L = dims[1:]
            self.input_shape = (1, L, C)
            self._set(vi.name, "spatial", (C, 1, L), 3)
        else:
            C, H, W = dims[1:]
            self.input_shape = (H, W, C)
            self._set(vi.name, "spatial", (C, H, W), 4)

    # -- constant folding -------------------------------------------------------------------
    def _fold_constant_node(self, node):
        from onnx.reference import ReferenceEvaluator

        if node.op_type == "Constant":
            from onnx import numpy_helper
            a = _attrs(node)
            if "value" in a:
                val = numpy_helper.to_array(a["value"])
            elif len(a) == 1:
                key, v = next(iter(a.items()))
                if key in ("value_float", "value_floats"):
                    val = np.asarray(v, np.float32)
                elif key in ("value_int", "value_ints"):
                    val = np.asarray(v, np.int64)
                else:
                    raise _Refuse(f"{_desc(node)}: Constant attribute {key!r} not supported")
            else:
                raise _Refuse(f"{_desc(node)}: malformed Constant")
            self.consts[node.output[0]] = val
            return
        feeds = {i: self.consts[i] for i in node.input if i}
        try:
            outs = ReferenceEvaluator(node).run(None, feeds)
        except Exception as e:
            raise _Refuse(f"{_desc(node)}: cannot fold this constant expression: {e}") from e
        for name, val in zip(node.output, outs):
            if name:
                self.consts[name] = np.asarray(val)

    # -- main loop --------------------------------------------------------------------------
    def run(self):
        self._input()
        self.done = False                                              # Softmax seen
        for node in self.g.node:
            desc = _desc(node)
            if node.domain not in ("", "ai.onnx"):
                raise _Refuse(f"{desc}: operator domain {node.domain!r} not supported")
            ins = [i for i in node.input if i]
            if node.op_type == "Constant" or (ins and all(i in self.consts for i in ins)):
                self._fold_constant_node(node)
                continue
            if node.op_type == "Shape":
                self._shape_node(node)
                continue
            if node.op_type not in self.CHAIN:
                raise _Refuse(f"{desc}: unsupported operator {node.op_type!r} (supported: "
                              f"{', '.join(sorted(self.CHAIN))}, Constant, Shape)")
            data = [i for i in ins if i not in self.consts]
            if len(data) != 1:
                raise _Refuse(f"{desc}: takes {len(data)} non-constant inputs {data}; only sequential chains "
                              f"(one data input per node, residual/branching graphs not supported)")
            if data[0] != self.cur:
                raise _Refuse(f"{desc}: its input {data[0]!r} is not the output of the previous layer "
                              f"({self.cur!r}); only sequential chains are supported")
            if self.done:
                raise _Refuse(f"{desc}: nodes after the final Softmax are not supported")
            if data[0] != node.input[0] and node.op_type not in ("Add", "Mul", "Sub"):
                raise _Refuse(f"{desc}: the data tensor must be the first input")
            self._check_extra_outputs(node)
            getattr(self, "_op_" + node.op_type)(node, _attrs(node))
        self._finish()
        return self._build()

    def _finish(self):
        if len(self.graph_outputs) != 1:
            raise _Refuse(f"the graph must have exactly one output, found {self.graph_outputs}")
        if self.graph_outputs[0] != self.cur:
            raise _Refuse(f"graph output {self.graph_outputs[0]!r} is not the end of the layer chain "
                          f"({self.cur!r})")
        if not self.layers:
            raise _Refuse("the graph has no Conv/Gemm/MatMul/pooling layer")
        if self.kind == "spatial" and self.shape[1] * self.shape[2] > 1 and self.shape[0] > 1:
            raise _Refuse(f"the output is a {self.shape} (C, H, W) feature map; its NCHW order differs from "
                          f"our HWC order: end the model with GlobalAveragePool / Flatten + Gemm")
        if self.perm is not None:
            raise _Refuse("the output is a flattened NCHW feature map; its order differs from our HWC order: "
                          "end the model with a Gemm/MatMul")

    def _build(self):
        net = fn.Net(self.layers, self.input_shape, seed=0, dtype=np.float32)
        for i, (W, b) in self.params.items():
            layer = net.layers[i]
            if layer.W.shape != W.shape or layer.b.shape != b.shape:          # internal consistency
                raise AssertionError(f"layer {i}: weights {W.shape} vs built {layer.W.shape}")
            layer.W[...] = W
            layer.b[...] = b
        net.onnx_source = self.where
        return net

    # -- ops --------------------------------------------------------------------------------
    def _shape_node(self, node):
        x = node.input[0]
        if x not in self.shapes:
            raise _Refuse(f"{_desc(node)}: Shape of {x!r}, which is not a tensor of the layer chain")
        dims = np.asarray(self.shapes[x], np.int64)
        a = _attrs(node)
        start, end = a.get("start", 0), a.get("end", None)
        self.consts[node.output[0]] = dims[start:end]

    def _need_spatial(self, node):
        if self.kind != "spatial":
            raise _Refuse(f"{_desc(node)}: needs an (N, C, H, W) or (N, C, L) input, got a flat (N, {self.shape[0]})")

    def _need_flat(self, node):
        if self.kind != "flat":
            raise _Refuse(f"{_desc(node)}: needs a 2-D (N, F) input (add a Flatten), got an NCHW feature map")

    def _op_Conv(self, node, a):
        self._need_spatial(node)
        desc = _desc(node)
        C, H, W_ = self.shape
        Wt = self._const(node, 1, "weight").astype(np.float64)
        b = self._const(node, 2, "bias", optional=True)
        if Wt.ndim != self.rank:
            raise _Refuse(f"{desc}: weight rank {Wt.ndim} does not match input rank {self.rank}")
        if self.rank == 3:
            Wt = Wt[:, :, None, :]
        M, cg, kh, kw = Wt.shape
        ks = list(a.get("kernel_shape", Wt.shape[2:] if self.rank == 4 else [kw]))
        if list(ks) != ([kh, kw] if self.rank == 4 else [kw]):
            raise _Refuse(f"{desc}: kernel_shape {ks} does not match the weight shape")
        group = int(a.get("group", 1))
        mode, strides, _, (oh, ow) = _window(node, a, (H, W_), (kh, kw), self.rank, desc)
        b = np.zeros(M) if b is None else np.asarray(b, np.float64).reshape(-1)
        if b.shape != (M,):
            raise _Refuse(f"{desc}: bias shape {b.shape} != ({M},)")
        if group == 1:
            if cg != C:
                raise _Refuse(f"{desc}: weight has {cg} input channels, the input has {C}")
            layer = fn.Conv(M, kh, kw, stride=strides, padding=mode, relu=False)
            Wo = Wt.transpose(0, 2, 3, 1)                              # (out, kh, kw, in)
        elif group == C and cg == 1 and M % C == 0:
            layer = fn.DepthwiseConv(M // C, kh, kw, stride=strides, padding=mode, relu=False)
            Wo = Wt[:, 0].transpose(1, 2, 0)                           # (kh, kw, C * mult), oc = ic * mult + j
        else:
            raise _Refuse(f"{desc}: grouped convolution (group={group}, {C} input channels) not supported; "
                          f"only group=1 or depthwise (group = input channels)")
        idx = self._add_layer(layer, Wo, b)
        self._set(node.output[0], "spatial", (M, oh, ow), self.rank, layer=idx, nonneg=False)

    def _op_BatchNormalization(self, node, a):
        if int(a.get("training_mode", 0)):
            raise _Refuse(f"{_desc(node)}: training_mode=1 not supported")
        scale, beta, mean, var = (self._const(node, i, w).astype(np.float64).reshape(-1)
                                  for i, w in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
        n = self._channels()
        if not all(v.shape == (n,) for v in (scale, beta, mean, var)):
            raise _Refuse(f"{_desc(node)}: parameters do not have {n} channels")
        s = scale / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        self._fold(node, s, beta - mean * s, "BatchNormalization")
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=self.layer, perm=self.perm)

    def _op_Add(self, node, a):
        c = self.consts[node.input[1] if node.input[0] == self.cur else node.input[0]]
        self._fold(node, 1.0, self._per_channel(node, c, "addend"), "Add of a constant")
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=self.layer, perm=self.perm)

    def _op_Sub(self, node, a):
        if node.input[0] == self.cur:
            self._fold(node, 1.0, -self._per_channel(node, self.consts[node.input[1]], "subtrahend"),
                       "Sub of a constant")
        else:
            self._fold(node, -1.0, self._per_channel(node, self.consts[node.input[0]], "minuend"),
                       "Sub from a constant")
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=self.layer, perm=self.perm)

    def _op_Mul(self, node, a):
        c = self.consts[node.input[1] if node.input[0] == self.cur else node.input[0]]
        self._fold(node, self._per_channel(node, c, "factor"), 0.0, "Mul by a constant")
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=self.layer, perm=self.perm)

    def _op_Div(self, node, a):
        d = self._per_channel(node, self.consts[node.input[1]], "divisor")
        if np.any(d == 0):
            raise _Refuse(f"{_desc(node)}: division by zero")
        self._fold(node, 1.0 / d, 0.0, "Div by a constant")
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=self.layer, perm=self.perm)

    def _relu(self, node):
        if self.layer is not None:
            self.layers[self.layer].relu = True
        elif not self.nonneg:
            raise _Refuse(f"{_desc(node)}: an activation must directly follow a Conv/Gemm/MatMul (it is fused "
                          f"into it); found after a layer that cannot take it")
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=None, nonneg=True, perm=self.perm)

    def _op_Relu(self, node, a):
        self._relu(node)

    def _op_Clip(self, node, a):
        if self.opset < 11:
            lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
        else:
            lo = self._const(node, 1, "min", optional=True)
            hi = self._const(node, 2, "max", optional=True)
            lo = -np.inf if lo is None else float(np.asarray(lo).reshape(()))
            hi = np.inf if hi is None else float(np.asarray(hi).reshape(()))
        if lo == 0 and hi == np.inf:
            return self._relu(node)
        if lo == 0 and hi == 6:
            raise _Refuse(f"{_desc(node)}: ReLU6 (Clip(0, 6)) is not supported: floatnet and the int8 quantizer "
                          f"only have ReLU; retrain with ReLU")
        raise _Refuse(f"{_desc(node)}: Clip({lo}, {hi}) not supported (only Clip(0, inf) = ReLU)")

    def _pool(self, node, a, kind):
        self._need_spatial(node)
        desc = _desc(node)
        C, H, W_ = self.shape
        ks = list(a.get("kernel_shape", []))
        if len(ks) != self.rank - 2:
            raise _Refuse(f"{desc}: kernel_shape {ks} does not match the input rank")
        kh, kw = (1, ks[0]) if self.rank == 3 else ks
        mode, strides, pads, (oh, ow) = _window(node, a, (H, W_), (kh, kw), self.rank, desc)
        if kind == "avg" and int(a.get("count_include_pad", 0)):
            reads_pad = (pads[0] or pads[1] or (oh - 1) * strides[0] + kh > H or (ow - 1) * strides[1] + kw > W_)
            if reads_pad:
                raise _Refuse(f"{desc}: count_include_pad=1 with padding not supported (TFLite divides by the "
                              f"number of valid elements)")
        cls = fn.MaxPool if kind == "max" else fn.AvgPool
        idx = self._add_layer(cls(kh, kw, stride=strides, padding=mode), None, None)
        self._set(node.output[0], "spatial", (C, oh, ow), self.rank, perm=None)
        return idx

    def _op_MaxPool(self, node, a):
        self._pool(node, a, "max")

    def _op_AveragePool(self, node, a):
        self._pool(node, a, "avg")

    def _global(self, node, kind, keepdims=True):
        self._need_spatial(node)
        C, H, W_ = self.shape
        if kind == "avg":
            self._add_layer(fn.GlobalAvgPool(), None, None)
        else:
            self._add_layer(fn.MaxPool(H, W_, stride=(H, W_), padding="valid"), None, None)
        if keepdims:
            self._set(node.output[0], "spatial", (C, 1, 1), self.rank)
        else:
            self._set(node.output[0], "flat", (C,), 2)

    def _op_GlobalAveragePool(self, node, a):
        self._global(node, "avg")

    def _op_GlobalMaxPool(self, node, a):
        self._global(node, "max")

    def _axes(self, node, a):
        if "axes" in a:
            axes = list(a["axes"])
        else:
            c = self._const(node, 1, "axes", optional=True)
            axes = None if c is None else [int(v) for v in np.asarray(c).reshape(-1)]
        if axes is None:
            return None
        return sorted(ax + self.rank if ax < 0 else ax for ax in axes)

    def _op_ReduceMean(self, node, a):
        self._need_spatial(node)
        axes = self._axes(node, a)
        if axes != list(range(2, self.rank)):
            raise _Refuse(f"{_desc(node)}: ReduceMean over axes {axes} not supported (only the spatial axes "
                          f"{list(range(2, self.rank))}, i.e. global average pooling)")
        self._global(node, "avg", keepdims=bool(a.get("keepdims", 1)))

    def _flatten(self, node):
        if self.kind == "flat":
            self._set(node.output[0], "flat", self.shape, 2, layer=self.layer, perm=self.perm)
            return
        C, H, W_ = self.shape
        perm = (C, H, W_) if H * W_ > 1 and C > 1 else None
        self._set(node.output[0], "flat", (C * H * W_,), 2, perm=perm)

    def _op_Flatten(self, node, a):
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += self.rank
        if axis != 1:
            raise _Refuse(f"{_desc(node)}: Flatten axis {a.get('axis')} not supported (only 1)")
        self._flatten(node)

    def _op_Reshape(self, node, a):
        t = [int(v) for v in self._const(node, 1, "shape").reshape(-1)]
        F = int(np.prod(self.shape))
        batch_ok = (0, 1, -1) + ((self.batch,) if isinstance(self.batch, int) else ())
        if len(t) == 2 and t[0] in batch_ok and t[1] in (-1, F) and t != [-1, -1] \
                and not (t[0] == 0 and int(a.get("allowzero", 0))):
            return self._flatten(node)
        raise _Refuse(f"{_desc(node)}: Reshape to {t} not supported (only (N, -1) / (N, {F}) flattening)")

    def _op_Squeeze(self, node, a):
        axes = self._axes(node, a)
        if self.kind == "spatial" and axes == list(range(2, self.rank)) and self.shape[1] * self.shape[2] == 1:
            return self._flatten(node)
        raise _Refuse(f"{_desc(node)}: Squeeze of axes {axes} not supported (only the 1x1 spatial axes)")

    def _dense(self, node, Wm, b):
        F = self.shape[0]
        if Wm.shape[1] != F:
            raise _Refuse(f"{_desc(node)}: weight has {Wm.shape[1]} input features, the input has {F}")
        out = Wm.shape[0]
        if self.perm is not None:                                      # NCHW-flattened columns -> HWC
            C, H, W_ = self.perm
            Wm = Wm.reshape(out, C, H, W_).transpose(0, 2, 3, 1).reshape(out, F)
        idx = self._add_layer(fn.Dense(out, relu=False), Wm, b)
        self._set(node.output[0], "flat", (out,), 2, layer=idx, nonneg=False, perm=None)

    def _op_Gemm(self, node, a):
        self._need_flat(node)
        if int(a.get("transA", 0)):
            raise _Refuse(f"{_desc(node)}: transA=1 not supported")
        B = self._const(node, 1, "B").astype(np.float64)
        if B.ndim != 2:
            raise _Refuse(f"{_desc(node)}: B must be 2-D")
        Wm = float(a.get("alpha", 1.0)) * (B if int(a.get("transB", 0)) else B.T)
        c = self._const(node, 2, "C", optional=True)
        out = Wm.shape[0]
        if c is None:
            b = np.zeros(out)
        else:
            try:
                b = float(a.get("beta", 1.0)) * np.broadcast_to(np.asarray(c, np.float64), (1, out))[0]
            except ValueError:
                raise _Refuse(f"{_desc(node)}: C of shape {c.shape} is not a per-output bias") from None
        self._dense(node, Wm, b)

    def _op_MatMul(self, node, a):
        self._need_flat(node)
        B = self._const(node, 1, "B").astype(np.float64)
        if B.ndim != 2:
            raise _Refuse(f"{_desc(node)}: B must be 2-D (batched MatMul not supported)")
        self._dense(node, B.T, np.zeros(B.shape[1]))

    def _op_Dropout(self, node, a):
        if len(node.input) > 2 and node.input[2]:
            tm = self._const(node, 2, "training_mode")
            if bool(np.asarray(tm).reshape(())):
                raise _Refuse(f"{_desc(node)}: training_mode=True not supported")
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=self.layer, perm=self.perm)

    def _op_Identity(self, node, a):
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=self.layer, perm=self.perm)

    def _op_Softmax(self, node, a):
        axis = int(a.get("axis", 1 if self.opset < 13 else -1))
        if axis < 0:
            axis += len(self._onnx_dims())
        if self.kind != "flat" or axis != 1:
            raise _Refuse(f"{_desc(node)}: only a softmax over the classes of a 2-D (N, classes) tensor is "
                          f"supported (axis {a.get('axis')})")
        if self.perm is not None:
            raise _Refuse(f"{_desc(node)}: softmax over a flattened NCHW feature map (order differs from HWC)")
        self.done = True
        self._set(node.output[0], self.kind, self.shape, self.rank, layer=None, nonneg=True, perm=None)

    _op_LogSoftmax = _op_Softmax


# ---------------------------------------------------------------------------------------------
# public API


def load_onnx(path):
    """Float network (floatnet.Net, channels-last input) equivalent to a sequential ONNX model.

    ``path``: file name, serialized bytes or an ``onnx.ModelProto``.  The Net's ``forward``
    returns the logits (a final Softmax/LogSoftmax is dropped).  Raises ValueError (naming the
    node) for anything outside the supported subset and for unreadable files.
    """
    model, where = _read_model(path)
    return _Converter(model, where).run()


def to_channels_last(X, net=None):
    """NCHW samples -> our (n, H, W, C): (n, C, H, W) -> (n, H, W, C), (n, C, L) -> (n, 1, L, C),
    (n, F) -> (n, 1, 1, F).  With ``net`` the result is checked against its input shape."""
    X = np.asarray(X)
    if X.ndim == 4:
        Y = X.transpose(0, 2, 3, 1)
    elif X.ndim == 3:
        Y = X.transpose(0, 2, 1)[:, None]
    elif X.ndim == 2:
        Y = X[:, None, None, :]
    else:
        raise ValueError(f"samples of shape {X.shape}: expected (n, C, H, W), (n, C, L) or (n, F)")
    if net is not None and Y.shape[1:] != tuple(net.input_shape):
        raise ValueError(f"samples {X.shape} do not match the model input (H, W, C) {net.input_shape}")
    return np.ascontiguousarray(Y)


def onnx_to_qmodel(path, calibration_samples, labels=(), name=None, layout="nhwc"):
    """``load_onnx`` + post-training int8 quantization (``quantize.quantize``) -> QModel.

    ``calibration_samples``: float samples in our channels-last layout ((n, H, W, C) or flat
    (n, H*W*C)), or in ONNX's NCHW layout with ``layout="nchw"``.
    """
    net = load_onnx(path)
    if layout == "nchw":
        X = to_channels_last(calibration_samples, net)
    elif layout == "nhwc":
        X = np.asarray(calibration_samples, np.float32)
    else:
        raise ValueError(f"layout must be 'nhwc' or 'nchw', not {layout!r}")
    if X.size == 0 or X.size % int(np.prod(net.input_shape)):
        raise ValueError(f"calibration samples {X.shape} do not match the model input (H, W, C) {net.input_shape}")
    if name is None:
        name = (os.path.splitext(os.path.basename(net.onnx_source))[0]
                if isinstance(path, (str, os.PathLike)) else "model")
    return qz.quantize(net, X, labels, name=name)

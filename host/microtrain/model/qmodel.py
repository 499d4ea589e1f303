"""The quantized model: a graph of int8 layers in execution order, the form every converter
produces and the model file, the planner and the simulator consume.

Every layer names the layers whose outputs it reads (`inputs`, -1 the model input; None when it
is built: the layer before it, so a chain needs no bookkeeping).  Only `add` reads two.

A fully connected layer is a `conv` layer with Geom.dense(1, in_features, out_features): it reads
the previous layer's [H][W][C] output as one flat vector, which is TFLite's flattening order.
The last layer of a classifier is `softmax` over the logits of the layer before it.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from microtrain.board.modelfile import OPS  # the layer kinds: the model file's list, one home
from microtrain.sim import reference as ref
from microtrain.model.fixedpoint import quantize_multipliers, softmax_params

PARAMETRIC = ("conv", "dwconv")      # kinds with weights, biases and requantization multipliers


@dataclass
class QLayer:
    op: str
    geom: ref.Geom
    s_x: float                       # input scale / zero point
    z_x: int
    s_y: float                       # output scale / zero point
    z_y: int
    act_min: int = -128
    act_max: int = 127
    w: np.ndarray = None             # int8, conv [out_c][k_h][k_w][in_c], dwconv [k_h][k_w][out_c]
    b: np.ndarray = None             # int32 [out_c], scale s_w * s_x
    s_w: np.ndarray = None           # float64 [out_c] weight scales (host side: QAS factors)
    mult: np.ndarray = None          # int32 requantization multipliers (1 or out_c)
    shift: np.ndarray = None
    double_rounding: bool = False    # TFLite CONV_2D / DEPTHWISE rounding (FC rounds once)
    softmax: tuple = None            # (beta_mult, beta_left_shift, diff_min)
    name: str = ""
    inputs: tuple = None             # producer layers (-1: the model input); None: the layer before
    add: ref.AddParams = None        # add: TFLite's int8 ADD parameters (z_x / s_x: the first input)
    s_x2: float = None               # add: the second input's scale / zero point
    z_x2: int = 0

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}")

    @property
    def in_size(self):
        g = self.geom
        return g.in_h * g.in_w * g.in_c

    @property
    def out_size(self):
        g = self.geom
        return g.out_h * g.out_w * g.out_c

    @property
    def macs(self):
        g = self.geom
        if self.op == "conv":
            return g.positions * g.out_c * g.taps * g.in_c
        if self.op == "dwconv":
            return g.positions * g.out_c * g.taps
        return 0

    def requantize_from_scales(self):
        """(Re)compute mult/shift and per-channel output requantization from the scales."""
        if self.op in PARAMETRIC:
            real = self.s_x * np.asarray(self.s_w, dtype=np.float64) / self.s_y
            self.mult, self.shift = quantize_multipliers(real)
        elif self.op == "softmax":
            self.softmax = softmax_params(self.s_x)
        return self


@dataclass
class QModel:
    layers: list
    input_shape: tuple               # (h, w, c)
    input_scale: float
    input_zero_point: int
    labels: list = field(default_factory=list)
    name: str = "model"

    def __post_init__(self):
        for i, l in enumerate(self.layers):
            if l.inputs is None:
                l.inputs = (i - 1,)
            l.inputs = tuple(int(j) for j in l.inputs)
        self.check()

    def readers(self):
        """{producer (-1: the input): [layers that read its output]}."""
        r = {}
        for i, l in enumerate(self.layers):
            for j in l.inputs:
                r.setdefault(j, []).append(i)
        return r

    @property
    def n_classes(self):
        return self.layers[-1].geom.out_c

    def check(self):
        """Shapes fit and quantization parameters agree between every layer and those it reads."""
        if not self.layers:
            raise ValueError("a model needs at least one layer")
        n_in = int(np.prod(self.input_shape))
        for i, l in enumerate(self.layers):
            if len(l.inputs) != (2 if l.op == "add" else 1):
                raise ValueError(f"layer {i} ({l.op}) reads {len(l.inputs)} inputs")
            for k, j in enumerate(l.inputs):
                if not -1 <= j < i:
                    raise ValueError(f"layer {i} ({l.op}) reads layer {j}: a layer reads the input or earlier layers")
                size = n_in if j < 0 else self.layers[j].out_size
                s, z = (self.input_scale, self.input_zero_point) if j < 0 else (self.layers[j].s_y, self.layers[j].z_y)
                sx, zx = (l.s_x, l.z_x) if k == 0 else (l.s_x2, l.z_x2)
                what = "the input" if j < 0 else f"layer {j}"
                if l.in_size != size:
                    raise ValueError(f"layer {i} ({l.op}) expects {l.in_size} inputs, {what} gives {size}")
                if zx != z or (sx is not None and s is not None and not np.isclose(sx, s, rtol=1e-6)):
                    raise ValueError(f"layer {i} ({l.op}) input quantization ({sx}, {zx}) != {what}'s output ({s}, {z})")
            if l.op == "add" and l.add is None:
                raise ValueError(f"layer {i} (add) has no parameters")
            if l.op in PARAMETRIC:
                if l.w is None or l.mult is None:
                    raise ValueError(f"layer {i} ({l.op}) has no weights or multipliers")
                n_w = l.geom.out_c * l.geom.taps * (l.geom.in_c if l.op == "conv" else 1)
                if l.w.size != n_w:
                    raise ValueError(f"layer {i} weights have {l.w.size} elements, expected {n_w}")
            if l.op in ("maxpool", "avgpool") and (l.s_y != l.s_x or l.z_y != l.z_x):
                raise ValueError(f"layer {i} ({l.op}) must keep its input quantization")
        if self.layers[-1].op == "softmax" and self.labels and len(self.labels) != self.n_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.n_classes} classes")

    def copy(self):
        return QModel([replace(l, w=None if l.w is None else l.w.copy(), b=None if l.b is None else l.b.copy())
                       for l in self.layers], self.input_shape, self.input_scale, self.input_zero_point,
                      list(self.labels), self.name)

    def quantize_input(self, x):
        """float samples -> int8 with the model's input quantization (host side)."""
        q = np.round(np.asarray(x, dtype=np.float64) / self.input_scale) + self.input_zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    @property
    def macs(self):
        return sum(l.macs for l in self.layers)


def forward(model, xq, keep=False):
    """Integer forward pass with the reference kernels: logits/probabilities (int8), and with
    keep=True every layer's (output, clamp mask)."""
    x = np.asarray(xq, dtype=np.int8).ravel()
    outs = []
    for l in model.layers:
        outs.append(run_layer(l, *[x if j < 0 else outs[j][0] for j in l.inputs]))
    return outs if keep else outs[-1][0]


def run_layer(l, x, x2=None):
    g = l.geom
    if l.op == "add":
        return ref.add_forward(x, x2, l.add)
    if l.op == "conv":
        return ref.conv_forward(g, x, l.z_x, l.w, l.b, l.mult, l.shift, l.z_y, l.act_min, l.act_max,
                                l.double_rounding)
    if l.op == "dwconv":
        return ref.dwconv_forward(g, x, l.z_x, l.w, l.b, l.mult, l.shift, l.z_y, l.act_min, l.act_max,
                                  l.double_rounding)
    if l.op == "maxpool":
        return ref.maxpool_forward(g, x), None
    if l.op == "avgpool":
        return ref.avgpool_forward(g, x, l.act_min, l.act_max), None
    if l.op == "softmax":
        return ref.softmax_forward(x.reshape(1, -1), *l.softmax).ravel(), None
    raise ValueError(l.op)

"""What a board exchanges with the federation: the trainable subset of its plan (biases and
sparse channels, nothing frozen), as the model's own integers with its fixed scales.

A layout names that subset, one part per trained layer:

    part      (layer, rows, cin_lo, cin_hi, bias)   the plan's TrainSpec minus its SGD factors
    weights   conv   w[out_c, taps, in_c]: w[rows, :, cin_lo:cin_hi]   (cin_lo == cin_hi: frozen)
              dwconv w[taps, out_c]:      w[:, rows]                   (cin_lo == cin_hi: frozen)
    bias      b[rows]                                                  (bias False: frozen)

and travels as text (`encode`) beside two flat arrays: "w", every part's weights (int8) in
layout order, and "b", every part's biases (int32).  Personal layers (FedPer) are left out of
the layout, so they never leave the board.  Elements are indexed in the flattened tensors, so
two boards with different plans of one model name the same weight by the same index.
"""

import numpy as np

from microtrain.model.qmodel import PARAMETRIC


class LayoutError(ValueError):
    """A layout that does not fit the model (another model, a corrupted message)."""


def layout(model, plan, personal=()):
    """The parts of `plan` that are exchanged: every trained layer except `personal` ones."""
    out = []
    for t in plan.train:
        if t.layer in personal:
            continue
        rows = tuple(int(r) for r in t.rows)
        out.append((t.layer, rows, int(t.cin_lo), int(t.cin_hi), bool(t.bias)))
    return tuple(out)


def encode(parts):
    """Layout as text: 'layer:rows-bitmask-hex:cin_lo:cin_hi:bias' joined by ';'."""
    items = []
    for layer, rows, lo, hi, bias in parts:
        mask = sum(1 << r for r in rows)
        items.append(f"{layer}:{mask:x}:{lo}:{hi}:{int(bias)}")
    return ";".join(items)


def decode(text, model=None):
    """The layout of `encode`; checked against the model when given."""
    parts = []
    try:
        for item in filter(None, str(text).split(";")):
            layer, mask, lo, hi, bias = item.split(":")
            m = int(mask, 16)
            rows = tuple(r for r in range(m.bit_length()) if m >> r & 1)
            parts.append((int(layer), rows, int(lo), int(hi), bias == "1"))
    except ValueError:
        raise LayoutError(f"not a layout: {str(text)[:60]!r}") from None
    parts = tuple(parts)
    if model is not None:
        check(model, parts)
    return parts


def check(model, parts):
    n = len(model.layers)
    for layer, rows, lo, hi, bias in parts:
        if not 0 <= layer < n or model.layers[layer].op not in PARAMETRIC:
            raise LayoutError(f"layout names layer {layer}, which has no parameters in {model.name!r}")
        g = model.layers[layer].geom
        if rows and rows[-1] >= g.out_c or not 0 <= lo <= hi <= g.in_c:
            raise LayoutError(f"layout of layer {layer} outside its {g.out_c} channels / {g.in_c} inputs")


def weight_index(model, part):
    """Flat indices of the part's trained weights in its layer's w (empty if they are frozen)."""
    layer, rows, lo, hi, _ = part
    l = model.layers[layer]
    g = l.geom
    r = np.asarray(rows, np.int64)
    if hi <= lo or not len(r):
        return np.zeros(0, np.int64)
    if l.op == "conv":
        k = np.arange(g.taps)
        c = np.arange(lo, hi)
        return ((r[:, None, None] * g.taps + k[None, :, None]) * g.in_c + c[None, None, :]).ravel()
    return (np.arange(g.taps)[None, :] * g.out_c + r[:, None]).ravel()       # dwconv w[taps, out_c]


def bias_index(part):
    layer, rows, lo, hi, bias = part
    return np.asarray(rows if bias else (), np.int64)


def sizes(model, parts):
    """(number of weights, number of biases) a layout carries."""
    return (sum(len(weight_index(model, p)) for p in parts), sum(len(bias_index(p)) for p in parts))


def take(model, parts):
    """(w int8, b int32): the layout's elements of the model's tensors."""
    w = [np.asarray(model.layers[p[0]].w, np.int8).ravel()[weight_index(model, p)] for p in parts]
    b = [np.asarray(model.layers[p[0]].b, np.int32).ravel()[bias_index(p)] for p in parts]
    return (np.concatenate(w) if w else np.zeros(0, np.int8)).astype(np.int8), \
        (np.concatenate(b) if b else np.zeros(0, np.int32)).astype(np.int32)


def put(model, parts, w, b):
    """A copy of the model with the layout's elements set from (w, b): any dtype, rounded half
    away from zero and saturated to int8 / int32 (what a float strategy such as FedAdam sends
    back lands on the model's integer grid)."""
    nw, nb = sizes(model, parts)
    w, b = np.asarray(w).ravel(), np.asarray(b).ravel()
    if w.size != nw or b.size != nb:
        raise LayoutError(f"{w.size} weights and {b.size} biases for a layout of {nw} and {nb}")
    w, b = to_int(w, np.int8), to_int(b, np.int32)
    m = model.copy()
    iw = ib = 0
    for p in parts:
        l = m.layers[p[0]]
        wi, bi = weight_index(m, p), bias_index(p)
        if len(wi):
            flat = np.array(l.w, np.int8).ravel()
            flat[wi] = w[iw:iw + len(wi)]
            l.w = flat.reshape(np.shape(l.w))
            iw += len(wi)
        if len(bi):
            flat = np.array(l.b, np.int32).ravel()
            flat[bi] = b[ib:ib + len(bi)]
            l.b = flat.reshape(np.shape(l.b))
            ib += len(bi)
    return m


def to_int(a, dtype):
    """Integers of `a` in dtype's range: integer input as is (saturated), float rounded half away."""
    info = np.iinfo(dtype)
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)):
            raise LayoutError("non-finite values in an exchanged tensor")
        a = np.sign(a) * np.floor(np.abs(a) + 0.5)
    return np.clip(a, info.min, info.max).astype(dtype)


def union(model, layouts):
    """One layout covering every element any of `layouts` trains (for strategies that need the
    same arrays from every board, e.g. FedAvg / FedAdam unchanged)."""
    by = {}
    for parts in layouts:
        for layer, rows, lo, hi, bias in parts:
            r, l0, h0, b0 = by.get(layer, (set(), None, None, False))
            if hi > lo:
                l0, h0 = (lo, hi) if l0 is None else (min(l0, lo), max(h0, hi))
            by[layer] = (r | set(rows), l0, h0, b0 or bias)
    out = []
    for layer in sorted(by):
        r, lo, hi, bias = by[layer]
        out.append((layer, tuple(sorted(r)), lo or 0, hi or 0, bias))
    return tuple(out)

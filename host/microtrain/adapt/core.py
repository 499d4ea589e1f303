"""The board's forward-only adaptation, host side, on a QModel with the reference kernels: the
same integers as firmware/microtrain/adapt.py (whose integer helpers it imports: one home for
the arithmetic), so the host knows what the board will pick and set, and can evaluate a delta
before sending it.  Also the adaptation files (anchors, source statistics, delta)."""

import io
from dataclasses import replace

import numpy as np

from microtrain.board import adapt as B
from microtrain.board import checkpoint as ckpt
from microtrain.model.qmodel import PARAMETRIC, run_layer

TAGS = {"W": "w", "B": "b", "M": "mult", "S": "shift"}


def classifier(model):
    return len(model.layers) - 2


def stat_layers(model):
    return [i for i, l in enumerate(model.layers[:-2]) if l.op in PARAMETRIC]


def _wide(l):
    return replace(l, shift=np.asarray(l.shift, np.int32) - B.WIDE_SHIFT, z_y=0, act_min=-128, act_max=127)


def forward_all(model, X, layers=()):
    """Per sample: the embedding (int8, the classifier's input) and, for each layer in `layers`,
    its statistics-pass channel sums (s, q) as int64 arrays.  Returns (E [n, size], {i: (S [n, C],
    Q [n, C])})."""
    X = np.asarray(X, np.int8).reshape(len(X), -1)
    cls = classifier(model)
    E = np.zeros((len(X), model.layers[cls].in_size), np.int8)
    sums = {i: (np.zeros((len(X), model.layers[i].geom.out_c), np.int64),
                np.zeros((len(X), model.layers[i].geom.out_c), np.int64)) for i in layers}
    wide = {i: _wide(model.layers[i]) for i in layers}
    for n, x in enumerate(X):
        for i, l in enumerate(model.layers[:cls]):
            if i in wide:
                v = run_layer(wide[i], x)[0].astype(np.int64).reshape(-1, l.geom.out_c)
                sums[i][0][n] = v.sum(0)
                sums[i][1][n] = (v * v).sum(0)
            x = run_layer(l, x)[0]
        E[n] = x
    return E, sums


def finish(sums, idx, positions):
    """(mean, std) lists per channel, as the board computes them, over the samples idx."""
    S, Q = sums
    n = len(idx) * positions
    s, q = S[idx].sum(0), Q[idx].sum(0)
    out = [B.finish_stats(int(a), int(b), n) for a, b in zip(s, q)]
    return [m for m, _ in out], [d for _, d in out]


def positions(model, i):
    g = model.layers[i].geom
    return g.out_h * g.out_w


def stats(model, X, layers=None, idx=None):
    """{layer: (mean, std)} of the statistics pass over samples X (all, or those in idx)."""
    layers = stat_layers(model) if layers is None else layers
    _, sums = forward_all(model, X, layers)
    idx = np.arange(len(X)) if idx is None else np.asarray(idx)
    return {i: finish(sums[i], idx, positions(model, i)) for i in layers}


def select(E, y, k, n_classes):
    """The board's anchors: per class, integer farthest-point sampling on the embeddings."""
    return B.select(bytes(np.asarray(E, np.int8).tobytes()), bytes(np.asarray(y, np.uint8)), E.shape[1], k,
                    n_classes)


def anchors(model, X, y, k):
    """What the board's `anchors` command computes: (picked record indices, their embeddings,
    labels, {layer: (mean, std)})."""
    layers = stat_layers(model)
    E, sums = forward_all(model, X, layers)
    picked = select(E, y, k, model.n_classes)
    st = {i: finish(sums[i], np.asarray(picked), positions(model, i)) for i in layers}
    return picked, E[picked], np.asarray(y)[picked], st


# ---- deltas ----
def folded(model, i, a, d):
    """Layer i's (mult, shift, bias) with the per-channel correction (a_num, a_den) and d."""
    l = model.layers[i]
    C = l.geom.out_c
    mult = np.broadcast_to(np.asarray(l.mult, np.int64), C)
    shift = np.broadcast_to(np.asarray(l.shift, np.int64), C)
    out = [B.fold(int(mult[c]), int(shift[c]), int(l.b[c]), a[c][0], a[c][1], d[c]) for c in range(C)]
    return {f"M{i:03d}": np.array([o[0] for o in out], np.int32), f"S{i:03d}": np.array([o[1] for o in out], np.int32),
            f"B{i:03d}": np.array([o[2] for o in out], np.int32)}


def correct_layer(model, i, src, tgt):
    """The delta moving layer i's statistics tgt to src (the board's rule)."""
    cs = [B.correction((src[0][c], src[1][c]), (tgt[0][c], tgt[1][c])) for c in range(len(src[0]))]
    return folded(model, i, [(c[0], c[1]) for c in cs], [c[2] for c in cs])


def restats(model, X, idx, source):
    """The board's running-statistics re-estimation over samples X[idx]: layer by layer, each
    measured with the ones below corrected.  Returns the delta."""
    m = model.copy()
    delta = {}
    for i in stat_layers(model):
        tgt = stats(m, np.asarray(X)[idx], [i])[i]
        d = correct_layer(m, i, source[i], tgt)
        delta.update(d)
        m = apply(m, d)
    return delta


def imprint(model, E, y):
    """The board's prototype imprinting from anchor embeddings E with labels y."""
    cls = classifier(model)
    c = model.layers[cls]
    nc = model.n_classes
    x = np.asarray(E, np.int64) - c.z_x
    sums = [[int(v) for v in x[np.asarray(y) == k].sum(0)] for k in range(nc)]
    counts = [int(np.sum(np.asarray(y) == k)) for k in range(nc)]
    rows = bytearray(np.asarray(c.w, np.int8).tobytes())
    bias = [int(v) for v in c.b]
    B.ncm_head(sums, counts, [int(v) for v in np.ravel(c.mult)], [int(v) for v in np.ravel(c.shift)], c.z_y, rows,
               bias)
    return {f"W{cls:03d}": np.frombuffer(bytes(rows), np.int8).reshape(c.w.shape).copy(),
            f"B{cls:03d}": np.array(bias, np.int32)}


def apply(model, delta):
    """A copy of the model with the delta's tensors set."""
    m = model.copy()
    for tag, v in delta.items():
        l = m.layers[int(tag[1:])]
        attr = TAGS[tag[0]]
        v = np.asarray(v)
        if attr == "w":
            v = v.astype(np.int8).reshape(l.w.shape)
        else:
            v = v.astype(np.int32)
        setattr(m.layers[int(tag[1:])], attr, v)
    return m


# ---- files (the checkpoint format, bound to the model file's id) ----
def to_bytes(model_id, blobs):
    """blobs: {tag: array} or [(tag, bytes)]."""
    items = blobs.items() if isinstance(blobs, dict) else blobs
    f = io.BytesIO()
    out = []
    for tag, v in items:
        if not isinstance(v, (bytes, bytearray)):
            v = np.ascontiguousarray(v, np.int8 if tag[0] == "W" else "<i4").tobytes()
        out.append((tag.encode() if isinstance(tag, str) else tag, bytes(v)))
    ckpt.write(f, ckpt.State(0, model_id), out)
    return f.getvalue()


def stats_bytes(model_id, st):
    return to_bytes(model_id, B.stats_blobs(st))


def parse(data, model_id=None):
    """{tag str: bytes} of an adaptation file; ValueError if it belongs to another model."""
    st, index = ckpt.parse(data)
    if model_id is not None and st.model_id != model_id:
        raise ValueError(f"the file belongs to model {st.model_id:08x}, not {model_id:08x}")
    return {t.decode(): bytes(v) for t, v in index.items()}


def parse_anchors(data, model, model_id=None):
    """(record indices, embeddings [m, size], labels, {layer: (mean, std)}) of an anchors file."""
    d = parse(data, model_id)
    size = model.layers[classifier(model)].in_size
    E = np.frombuffer(d["ANCE"], np.int8).reshape(-1, size)
    st = B.parse_stats({t.encode(): v for t, v in d.items()})
    return list(np.frombuffer(d["ANCI"], "<u2").astype(int)), E, np.frombuffer(d["ANCL"], np.uint8).astype(int), st

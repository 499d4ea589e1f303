"""Writing and reading the model file (.mtm) on the host.

The format and its reader live in the board library (firmware/microtrain/modelfile.py, importable
here as microtrain.board.modelfile), so the board and the host parse the same bytes with the same
code; this module adds the writer and conversions from/to QModel and Plan.
"""

import struct
import zlib

import numpy as np

from microtrain.sim import reference as ref
from microtrain.board import modelfile as fmt
from microtrain.model.qmodel import QLayer, QModel

ALIGN = 4


class _Blob:
    def __init__(self):
        self.data = bytearray()

    def add(self, b):
        while len(self.data) % ALIGN:
            self.data.append(0)
        off = len(self.data)
        self.data += bytes(b)
        return off


def to_bytes(model, plan=None):
    """The model file bytes of a QModel (and optionally its training Plan)."""
    wght, bias, qpar, idx = _Blob(), _Blob(), _Blob(), _Blob()
    layr = bytearray()
    for l in model.layers:
        g = l.geom
        flags = (fmt.FLAG_DOUBLE_ROUNDING if l.double_rounding else 0)
        w_off = w_len = b_off = q_off = q_n = 0
        if l.op in ("conv", "dwconv"):
            w = np.asarray(l.w, np.int8).ravel()
            w_off, w_len = wght.add(w.tobytes()), w.size
            if l.b is not None:
                flags |= fmt.FLAG_BIAS
                b_off = bias.add(np.asarray(l.b, "<i4").tobytes())
            mult, shift = np.asarray(l.mult, "<i4").ravel(), np.asarray(l.shift, "<i4").ravel()
            q_off, q_n = qpar.add(mult.tobytes() + shift.tobytes()), mult.size
        sm = l.softmax or (0, 0, 0)
        layr += struct.pack(fmt.LAYER_FMT, fmt.OPS.index(l.op), flags, 0, *[int(v) for v in g.array()],
                            l.z_x, l.z_y, l.act_min, l.act_max, int(sm[0]), int(sm[1]), int(sm[2]),
                            w_off, w_len, b_off, q_off, q_n)
    h, w_, c = model.input_shape
    max_classes = plan.max_classes if plan is not None else model.n_classes
    info = struct.pack(fmt.INFO_FMT, len(model.layers), model.n_classes, h, w_, c, model.input_zero_point,
                       max_classes, 0, model.input_scale)
    sections = [("INFO", info), ("LAYR", bytes(layr))]
    if plan is not None:
        sections.append(("PLAN", _plan_bytes(model, plan, qpar, idx)))
        sections.append(("INDX", bytes(idx.data)))
    sections += [("WGHT", bytes(wght.data)), ("BIAS", bytes(bias.data)), ("QPAR", bytes(qpar.data)),
                 ("LABL", "\n".join(model.labels).encode())]
    return _assemble(sections)


def _plan_bytes(model, plan, qpar, idx):
    recs = bytearray()
    for t in plan.train:
        out_c = model.layers[t.layer].geom.out_c
        rows_off = idx.add(np.asarray(t.rows, "<u2").tobytes())
        wq = qpar.add(np.asarray(t.w_mult, "<i4").tobytes() + np.asarray(t.w_shift, "<i4").tobytes()) \
            if t.weights else fmt.NONE
        bq = qpar.add(np.asarray(t.b_mult, "<i4").tobytes() + np.asarray(t.b_shift, "<i4").tobytes()) \
            if t.bias else fmt.NONE
        assert len(t.rows) <= out_c
        recs += struct.pack(fmt.TRAIN_FMT, t.layer, 1 if t.bias else 0, t.cin_lo, t.cin_hi, rows_off,
                            len(t.rows), wq) + struct.pack("<I", bq)
    for i in sorted(plan.grads):
        gs = plan.grads[i]
        q = qpar.add(np.asarray(gs.mult, "<i4").tobytes() + np.asarray(gs.shift, "<i4").tobytes())
        recs += struct.pack(fmt.GRAD_FMT, i, gs.exp_adjust, q)
    recs += struct.pack("<%dH" % len(plan.kept), *plan.kept)
    recs += struct.pack("<%dH" % len(plan.masks), *plan.masks)
    head = struct.pack(fmt.PLAN_FMT, len(plan.train), plan.first_backward, len(plan.grads),
                       fmt.PLAN_QAS if plan.qas else 0, plan.seed & 0xFFFFFFFF, plan.arena_size,
                       plan.inference_arena, plan.lr, int(plan.class_add[0]), int(plan.class_add[1]),
                       len(plan.kept), len(plan.masks), len(plan.buffers))
    body = head + recs
    while len(body) % 4:
        body += b"\0"
    for b in plan.buffers.values():
        body += struct.pack(fmt.BUFFER_FMT, b.name.encode(), b.offset, b.size)
    return body


def _assemble(sections):
    n = len(sections)
    table_size = n * struct.calcsize(fmt.SECTION_FMT)
    pos = struct.calcsize(fmt.HEADER_FMT) + table_size
    body = bytearray()
    table = bytearray()
    for tag, data in sections:
        pad = (-pos) % ALIGN
        body += b"\0" * pad
        pos += pad
        table += struct.pack(fmt.SECTION_FMT, tag.encode(), pos, len(data), zlib.crc32(data))
        body += data
        pos += len(data)
    head8 = struct.pack("<4sHH", fmt.MAGIC, fmt.VERSION, n)
    crc = zlib.crc32(head8 + bytes(table))
    return head8 + struct.pack("<I", crc) + bytes(table) + bytes(body)


def save(path, model, plan=None):
    data = to_bytes(model, plan)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def from_bytes(data):
    """(QModel, plan dict or None) from model file bytes, through the board's reader.  Float
    scales are not stored in the file (the board never needs them), so they come back as None."""
    import io
    sections = fmt.read_sections(io.BytesIO(data))
    info, layers, labels = fmt.parse_layers(sections)
    n_layers, n_classes, h, w, c, zp, max_classes, _flags, scale = info
    qlayers = []
    for d in layers:
        g = ref.Geom(*d["geom"])
        ql = QLayer(d["op"], g, s_x=None, z_x=d["zx"], s_y=None, z_y=d["zy"], act_min=d["act_min"],
                    act_max=d["act_max"], double_rounding=bool(d["double_rounding"]))
        if d["w"] is not None:
            ql.w = np.frombuffer(d["w"], np.int8).copy()
            ql.b = None if d["b"] is None else np.frombuffer(d["b"], "<i4").astype(np.int32)
            ql.mult = np.frombuffer(d["mult"], "<i4").astype(np.int32)
            ql.shift = np.frombuffer(d["shift"], "<i4").astype(np.int32)
        if d["op"] == "softmax":
            ql.softmax = d["softmax"]
        qlayers.append(ql)
    model = QModel.__new__(QModel)           # skip check(): scales are not in the file
    model.layers, model.input_shape, model.input_scale = qlayers, (h, w, c), scale
    model.input_zero_point, model.labels, model.name = zp, labels, "model"
    return model, fmt.parse_plan(sections, layers)


def replace_tensors(original, trained):
    """The original model file with the trained weights and biases written in.  If classes were
    added (shapes changed), an inference-only file of the trained model instead (the plan's
    offsets no longer hold; convert again to train further)."""
    import io
    sections = fmt.read_sections(io.BytesIO(original))
    info, layers, _ = fmt.parse_layers(sections)
    if trained.n_classes != info[1]:
        return to_bytes(trained)
    wght, bias = bytearray(sections["WGHT"]), bytearray(sections["BIAS"])
    lsize = struct.calcsize(fmt.LAYER_FMT)
    for i, l in enumerate(trained.layers):
        if l.w is None:
            continue
        v = struct.unpack_from(fmt.LAYER_FMT, sections["LAYR"], i * lsize)
        w_off, w_len, b_off = v[23], v[24], v[25]
        wght[w_off:w_off + w_len] = np.asarray(l.w, np.int8).tobytes()
        if l.b is not None:
            b = np.asarray(l.b, "<i4").tobytes()
            bias[b_off:b_off + len(b)] = b
    out = []
    for tag in _order(original):
        data = bytes(wght) if tag == "WGHT" else bytes(bias) if tag == "BIAS" else bytes(sections[tag])
        out.append((tag, data))
    return _assemble(out)


def _order(data):
    """Section tags in the order of the file's table."""
    n = struct.unpack_from("<4sHHI", data, 0)[2]
    size = struct.calcsize(fmt.SECTION_FMT)
    return [struct.unpack_from(fmt.SECTION_FMT, data, 12 + i * size)[0].decode() for i in range(n)]


def load(path):
    with open(path, "rb") as f:
        return from_bytes(f.read())

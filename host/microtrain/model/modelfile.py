"""Writing and reading the model file (.mtm) on the host.

The format and its reader live in the board library (firmware/microtrain/modelfile.py, importable
here as microtrain.board.modelfile), so the board and the host parse the same bytes with the same
code; this module adds the writer and the conversions from and to QModel and Plan: a file read back
with `load` gives the QModel and Plan that wrote it (`to_bytes(*from_bytes(data)) == data`).
"""

import io
import json
import struct
import zlib

import numpy as np

from microtrain.sim import reference as ref
from microtrain.board import modelfile as fmt
from microtrain.model.qmodel import PARAMETRIC, QLayer, QModel
from microtrain.plan.planner import Buffer, GradSpec, Plan, TrainSpec

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
        if l.op in PARAMETRIC:
            w = np.asarray(l.w, np.int8).ravel()
            w_off, w_len = wght.add(w.tobytes()), w.size
            if l.b is not None:
                flags |= fmt.FLAG_BIAS
                b_off = bias.add(np.asarray(l.b, "<i4").tobytes())
            mult, shift = np.asarray(l.mult, "<i4").ravel(), np.asarray(l.shift, "<i4").ravel()
            q_off, q_n = qpar.add(mult.tobytes() + shift.tobytes()), mult.size
        elif l.op == "add":
            q_off, q_n = qpar.add(np.asarray(l.add.array(), "<i4").tobytes()), fmt.ADD_PARAMS
        sm = l.softmax or (0, 0, 0)
        ins = tuple(l.inputs) + (fmt.NO_INPUT,) * (2 - len(l.inputs))
        layr += struct.pack(fmt.LAYER_FMT, fmt.OPS.index(l.op), flags, *ins, *[int(v) for v in g.array()],
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
                 ("LABL", "\n".join(model.labels).encode()), (fmt.HOST_TAG, _host_bytes(model, plan))]
    return _assemble(sections)


def _host_bytes(model, plan):
    """The HOST section: what only the host needs to rebuild the objects that wrote the file
    (float scales, names, the plan's policy and report figures).  JSON, whose floats read back
    to the same float64; the board skips the section (its CRC is still checked)."""
    meta = {"name": model.name, "input_scale": model.input_scale,
            "layers": [{"name": l.name, "s_x": l.s_x, "s_y": l.s_y, "s_x2": l.s_x2,
                        "s_w": None if l.s_w is None else [float(v) for v in np.ravel(l.s_w)]}
                       for l in model.layers]}
    if plan is not None:
        meta["plan"] = {"policy": plan.policy, "lr": plan.lr, "notes": list(plan.notes), "word_bytes": plan.word_bytes,
                        "weight_bytes_ram": plan.weight_bytes_ram, "frozen_bytes": plan.frozen_bytes,
                        "weights_bytes": plan.weights_bytes, "sum_of_tensors": plan.sum_of_tensors, "weights_in_flash": plan.weights_in_flash,
                        "model_heap_bytes": plan.model_heap_bytes, "split": plan.split_meta}
    return json.dumps(meta, separators=(",", ":")).encode()


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
                       (fmt.PLAN_QAS if plan.qas else 0) | (plan.cut << fmt.PLAN_CUT_SHIFT), plan.seed & 0xFFFFFFFF, plan.arena_size,
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
    """(QModel, Plan or None) from model file bytes, through the board's reader.  A file without
    a HOST section (written elsewhere) has no float scales: they come back as None, and such a
    model runs and trains but cannot be planned again."""
    sections = fmt.read_sections(io.BytesIO(data), skip=())
    info, layers, labels = fmt.parse_layers(sections)
    n_layers, n_classes, h, w, c, zp, max_classes, _flags, scale = info
    meta = json.loads(bytes(sections[fmt.HOST_TAG]).decode()) if fmt.HOST_TAG in sections else None
    lmeta = meta["layers"] if meta and len(meta["layers"]) == len(layers) else [{}] * len(layers)
    qlayers = []
    for d, lm in zip(layers, lmeta):
        g = ref.Geom(*d["geom"])
        ql = QLayer(d["op"], g, s_x=lm.get("s_x"), z_x=d["zx"], s_y=lm.get("s_y"), z_y=d["zy"], act_min=d["act_min"],
                    act_max=d["act_max"], double_rounding=bool(d["double_rounding"]), name=lm.get("name", ""),
                    inputs=d["inputs"], s_x2=lm.get("s_x2"))
        if lm.get("s_w") is not None:
            ql.s_w = np.array(lm["s_w"], np.float64)
        if d["w"] is not None:
            ql.w = np.frombuffer(d["w"], np.int8).copy()
            ql.b = None if d["b"] is None else _i32(d["b"])
            ql.mult, ql.shift = _i32(d["mult"]), _i32(d["shift"])
        if d["op"] == "softmax":
            ql.softmax = d["softmax"]
        if d["op"] == "add":
            ql.add = ref.AddParams(*[int(v) for v in _i32(d["mult"])])
            ql.z_x2 = ql.add.z2
        qlayers.append(ql)
    if meta is not None:
        model = QModel(qlayers, (h, w, c), meta["input_scale"], zp, labels, meta["name"])
    else:
        model = QModel.__new__(QModel)       # skip check(): the scales are not in the file
        model.layers, model.input_shape, model.input_scale = qlayers, (h, w, c), scale
        model.input_zero_point, model.labels, model.name = zp, labels, "model"
    raw = fmt.parse_plan(sections, layers)
    return model, None if raw is None else _plan(model, raw, (meta or {}).get("plan"), max_classes)


def _i32(buf):
    return None if buf is None else np.frombuffer(buf, "<i4").astype(np.int32)


def _plan(model, raw, meta, max_classes):
    """The planner's Plan from the file's plan (and the HOST section's report fields)."""
    train = [TrainSpec(t["layer"], np.frombuffer(t["rows"], "<u2").copy(), t["cin_lo"], t["cin_hi"], bool(t["bias"]),
                       _i32(t["w_mult"]), _i32(t["w_shift"]), _i32(t["b_mult"]), _i32(t["b_shift"]))
             for t in raw["train"]]
    grads = {i: GradSpec(i, _i32(m), _i32(s), adj) for i, (m, s, adj) in raw["grads"].items()}
    buffers = {name: Buffer(name, off, size) for name, (off, size) in raw["buffers"].items()}
    meta = meta or {}
    p = Plan(meta.get("policy", "from file"), meta.get("lr", raw["lr"]), bool(raw["qas"]), train, grads,
             raw["first_backward"], raw["kept"], raw["masks"], buffers, raw["arena"], raw["inference_arena"],
             meta.get("weight_bytes_ram", 0), meta.get("frozen_bytes", 0), max_classes,
             raw["seed"], tuple(raw["class_add"]))
    p.notes = list(meta.get("notes", []))
    p.word_bytes = meta.get("word_bytes", 4)
    p.weights_bytes = meta.get("weights_bytes", 0)
    p.sum_of_tensors = meta.get("sum_of_tensors", 0)
    p.weights_in_flash = meta.get("weights_in_flash", False)
    p.cut = raw["cut"]
    p.split_meta = meta.get("split")
    p.n_backward = (p.cut or len(model.layers) - 1) - p.first_backward
    p.n_layers = len(model.layers)
    p.model_heap_bytes = meta.get("model_heap_bytes", 0)
    return p


def replace_tensors(original, trained):
    """The original model file with the trained weights and biases written in.  If classes were
    added (shapes changed), an inference-only file of the trained model instead (the plan's
    offsets no longer hold; convert again to train further)."""
    sections = fmt.read_sections(io.BytesIO(original), skip=())
    info, layers, _ = fmt.parse_layers(sections)
    if trained.n_classes != info[1]:
        return to_bytes(trained)
    wght, bias = bytearray(sections["WGHT"]), bytearray(sections["BIAS"])
    lsize = struct.calcsize(fmt.LAYER_FMT)
    for i, l in enumerate(trained.layers):
        if l.w is None:
            continue
        v = struct.unpack_from(fmt.LAYER_FMT, sections["LAYR"], i * lsize)
        w_off, w_len, b_off = v[24], v[25], v[26]
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

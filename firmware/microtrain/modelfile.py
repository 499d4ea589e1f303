# The microtrain model file (.mtm), version 2: reader (runs on the board and on the host).
#
#   header   '<4sHHI'  magic b'MTRN', version, n_sections, crc32(header[0:8] + section table)
#   table    n x '<4sIII'  tag, offset, length, crc32 of the section
#   sections INFO LAYR WGHT BIAS QPAR LABL [PLAN INDX] [HOST]  (offsets 4-aligned)
#
# HOST holds what only the host reads (float scales, names, the plan's report figures, as JSON):
# the board checks its CRC as it streams past and keeps none of it.
#
# Section layouts are the *_FMT strings below; docs/model-format.md describes every field.
# The reader checks magic, version, bounds and every CRC before it trusts a byte, and says what
# is wrong: a truncated, corrupted or newer file never loads half-way.

import struct

MAGIC = b"MTRN"
VERSION = 2                  # 2: layers name their inputs (a graph, not a chain); ADD
HEADER_FMT = "<4sHHI"
SECTION_FMT = "<4sIII"
INFO_FMT = "<HHHHHhHHf"      # n_layers n_classes in_h in_w in_c in_zp max_classes flags in_scale
LAYER_FMT = "<BBhh13i7i5I"   # op flags in0 in1, geom[13], zx zy act_min act_max sm_mult sm_shift sm_diff_min,
#                              w_off w_len b_off q_off q_n
# in0 / in1: the layers whose outputs this layer reads (-1: the model input, NO_INPUT: none);
# layers are stored in an order where every layer comes after the layers it reads
PLAN_FMT = "<HHHHIIIfiiHHH"  # n_train first_backward n_grads flags seed arena inference_arena lr
#                              class_add_mult class_add_shift n_kept n_masks n_buffers
TRAIN_FMT = "<HHHHIII"       # layer flags cin_lo cin_hi rows_off n_rows wq_off (bq_off follows)
GRAD_FMT = "<HhI"            # layer exp_adjust q_off
BUFFER_FMT = "<8sII"         # name offset size
NONE = 0xFFFFFFFF
NO_INPUT = -2
ADD_PARAMS = 12              # an ADD layer's int32 parameters in QPAR (the kernel's params)
HOST_TAG = "HOST"
# the arena buffers every training plan has (plus act<i> / mask<i> for layer outputs and masks)
ARENA_BUFFERS = ("input", "grad0", "grad1", "gacc", "scratch", "val_x", "val_y", "replay",
                 "replay_n", "telem")

OPS = ("conv", "dwconv", "maxpool", "avgpool", "softmax", "add")
FLAG_DOUBLE_ROUNDING = 1
FLAG_BIAS = 2
PLAN_QAS = 1
PLAN_CUT_SHIFT = 8           # PLAN flags bits 8..15: split training's cut (0: the board trains alone)
MAX_SECTIONS = 16


class ModelFileError(ValueError):
    pass


try:
    from mtkernels import crc32
except ImportError:
    try:
        from binascii import crc32
    except ImportError:
        from .pykernels import crc32


def _crc(data, crc=0):
    return crc32(data, crc) & 0xFFFFFFFF


def _read_exact(f, n, what):
    b = f.read(n)
    if b is None or len(b) != n:
        raise ModelFileError("truncated file: %s needs %d bytes, got %d" % (what, n, 0 if b is None else len(b)))
    return b


def _table(f):
    """The checked header's section table: ([(tag, offset, length, crc)], where it ends)."""
    head = _read_exact(f, struct.calcsize(HEADER_FMT), "header")
    magic, version, n, crc = struct.unpack(HEADER_FMT, head)
    if magic != MAGIC:
        raise ModelFileError("not a microtrain model file (magic %r)" % (magic,))
    if version > VERSION:
        raise ModelFileError("model file version %d is newer than this microtrain (reads %d): update the board library"
                             % (version, VERSION))
    if version < VERSION:
        raise ModelFileError("model file version %d is older than this microtrain's (%d): convert the model again"
                             % (version, VERSION))
    if n == 0 or n > MAX_SECTIONS:
        raise ModelFileError("corrupted header (version %d, %d sections)" % (version, n))
    table = _read_exact(f, n * struct.calcsize(SECTION_FMT), "section table")
    if _crc(head[:8] + table) != crc:
        raise ModelFileError("corrupted header (CRC mismatch)")
    entries = []
    for i in range(n):
        entries.append(struct.unpack_from(SECTION_FMT, table, i * struct.calcsize(SECTION_FMT)))
    return entries, struct.calcsize(HEADER_FMT) + len(table)


def section_table(f):
    """[(tag, offset, length, crc)] of a model file's checked header; f is left at 0."""
    entries, _ = _table(f)
    f.seek(0)
    return entries


def plan_reserve(f):
    """[(key, bytes)] of the big buffers a model file's PLAN will allocate: the training arena
    ("arena") and the RAM copy of each trained layer's weights (key: the layer's index).  Read
    before the rest, so that the board can allocate them while its heap is still in one piece;
    f is left at 0.  Unchecked (the CRCs come with read_sections): only sizes to try."""
    entries, _ = _table(f)
    where = {}
    for tag, off, length, _crc in entries:
        where[bytes(tag)] = (off, length)
    out = []
    hsize = struct.calcsize(PLAN_FMT)
    if b"PLAN" in where and where[b"PLAN"][1] >= hsize:
        off, length = where[b"PLAN"]
        f.seek(off)
        h = struct.unpack(PLAN_FMT, _read_exact(f, hsize, "PLAN"))
        out.append(("arena", h[5]))
        tsize = struct.calcsize(TRAIN_FMT) + 4
        lsize = struct.calcsize(LAYER_FMT)
        lay_off, lay_len = where.get(b"LAYR", (0, 0))
        if length >= hsize + h[0] * tsize:
            train = _read_exact(f, h[0] * tsize, "PLAN")
            for i in range(h[0]):
                layer, _flags, lo, hi = struct.unpack_from("<HHHH", train, i * tsize)
                if hi > lo and (layer + 1) * lsize <= lay_len:
                    f.seek(lay_off + layer * lsize)
                    out.append((layer, struct.unpack(LAYER_FMT, _read_exact(f, lsize, "LAYR"))[25]))
    f.seek(0)
    return out


def read_sections(f, skip=(HOST_TAG,), where=None):
    """{tag: bytes} of a model file object, every CRC checked; sections in `skip` are checked
    and not kept.  `where` (a dict) gets (offset, length, crc) of every section."""
    entries, pos = _table(f)
    size = _size(f, pos)
    sections = {}
    for tag, off, length, scrc in sorted(entries, key=lambda e: (e[1], e[2])):   # (MicroPython sorts unstably: an empty section first)
        try:
            tag = bytes(tag).decode()
        except UnicodeError:
            raise ModelFileError("corrupted section table (tag %r)" % (bytes(tag),))
        if size is not None and off + length > size:     # before anything is allocated for it
            raise ModelFileError("truncated file: section %s needs bytes %d..%d, the file has %d" % (tag, off, off + length, size))
        if off < pos:
            raise ModelFileError("corrupted section table (section %s overlaps)" % tag)
        if off > pos:
            _read_exact(f, off - pos, "padding before " + tag)
        if tag in skip:
            data = None
            crc = 0
            left = length
            view = memoryview(bytearray(256))   # one buffer: no garbage between the kept sections
            while left:
                if left < len(view):
                    view = view[:left]
                got = f.readinto(view) or 0
                if got != len(view):
                    raise ModelFileError("truncated file: section %s needs %d bytes, got %d"
                                         % (tag, length, length - left + got))
                crc = _crc(view, crc)
                left -= len(view)
        else:
            try:
                data = _read_exact(f, length, "section " + tag)
            except MemoryError:
                raise MemoryError("section %s (%d B) does not fit the free heap%s" % (tag, length, _free()))
            crc = _crc(data)
        if crc != scrc:
            raise ModelFileError("section %s is corrupted (CRC mismatch)" % tag)
        if data is not None:
            sections[tag] = data
        if where is not None:
            where[tag] = (off, length, scrc)
        pos = off + length
    for tag in ("INFO", "LAYR", "WGHT", "BIAS", "QPAR"):
        if tag not in sections and tag not in skip:
            raise ModelFileError("section %s is missing" % tag)
    return sections


def _free():
    try:
        import gc
        gc.collect()
        return " (%d B free)" % gc.mem_free()
    except (ImportError, AttributeError):
        return ""


def _size(f, pos):
    """The file's size (then back to pos), or None where the stream cannot seek."""
    try:
        size = f.seek(0, 2)
        f.seek(pos)
        return size
    except (AttributeError, OSError, ValueError):
        return None


def read(path):
    with open(path, "rb") as f:
        return read_sections(f)


def _slice(blob, off, n, what):
    """A view (no copy) of n bytes of a section."""
    if off + n > len(blob):
        raise ModelFileError("%s points outside its section" % what)
    return memoryview(blob)[off:off + n]


def parse_layers(sections):
    """List of layer dicts with their int8 weight / int32 bias / multiplier bytes."""
    if len(sections["INFO"]) != struct.calcsize(INFO_FMT):
        raise ModelFileError("INFO holds %d bytes, expected %d" % (len(sections["INFO"]), struct.calcsize(INFO_FMT)))
    info = struct.unpack(INFO_FMT, sections["INFO"])
    n_layers = info[0]
    if n_layers == 0 or info[1] == 0 or info[6] < info[1]:
        raise ModelFileError("INFO is inconsistent: %d layers, %d classes, room for %d" % (n_layers, info[1], info[6]))
    lsize = struct.calcsize(LAYER_FMT)
    layr = sections["LAYR"]
    if len(layr) != n_layers * lsize:
        raise ModelFileError("LAYR holds %d bytes, %d layers need %d" % (len(layr), n_layers, n_layers * lsize))
    layers = []
    for i in range(n_layers):
        v = struct.unpack_from(LAYER_FMT, layr, i * lsize)
        op, flags = v[0], v[1]
        if op >= len(OPS):
            raise ModelFileError("layer %d has unknown op %d" % (i, op))
        ins = (v[2],) if v[3] == NO_INPUT else (v[2], v[3])
        for j in ins:
            if not -1 <= j < i:
                raise ModelFileError("layer %d reads layer %d: a layer reads the input or the layers before it" % (i, j))
        geom = v[4:17]
        zx, zy, amin, amax, sm_mult, sm_shift, sm_diff = v[17:24]
        w_off, w_len, b_off, q_off, q_n = v[24:29]
        out_c = geom[5]
        if (len(ins) == 2) != (OPS[op] == "add"):
            raise ModelFileError("layer %d (%s) reads %d inputs" % (i, OPS[op], len(ins)))
        d = {"op": OPS[op], "inputs": ins, "geom": geom, "zx": zx, "zy": zy, "act_min": amin, "act_max": amax,
             "double_rounding": flags & FLAG_DOUBLE_ROUNDING, "softmax": (sm_mult, sm_shift, sm_diff),
             "w": None, "b": None, "mult": None, "shift": None}
        if d["op"] in ("conv", "dwconv"):
            d["w"] = _slice(sections["WGHT"], w_off, w_len, "layer %d weights" % i)
            if flags & FLAG_BIAS:
                d["b"] = _slice(sections["BIAS"], b_off, 4 * out_c, "layer %d bias" % i)
            if q_n not in (1, out_c):
                raise ModelFileError("layer %d has %d multipliers for %d channels" % (i, q_n, out_c))
            d["mult"] = _slice(sections["QPAR"], q_off, 4 * q_n, "layer %d multipliers" % i)
            d["shift"] = _slice(sections["QPAR"], q_off + 4 * q_n, 4 * q_n, "layer %d shifts" % i)
        elif d["op"] == "add":
            if q_n != ADD_PARAMS:
                raise ModelFileError("layer %d (add) has %d parameters, not %d" % (i, q_n, ADD_PARAMS))
            d["mult"] = _slice(sections["QPAR"], q_off, 4 * q_n, "layer %d parameters" % i)
        layers.append(d)
    labels = []
    if "LABL" in sections and len(sections["LABL"]):
        labels = bytes(sections["LABL"]).decode().split("\n")
    return info, layers, labels


def parse_plan(sections, layers):
    """The training plan, or None for an inference-only file."""
    if "PLAN" not in sections:
        return None
    p = sections["PLAN"]
    qpar = sections["QPAR"]
    idx = sections.get("INDX", b"")
    hsize = struct.calcsize(PLAN_FMT)
    if len(p) < hsize:
        raise ModelFileError("PLAN section is truncated")
    h = struct.unpack_from(PLAN_FMT, p, 0)
    n_train, first, n_grads, flags, seed, arena, inference, lr, ca_mult, ca_shift, n_kept, n_masks, n_buf = h
    plan = {"first_backward": first, "qas": flags & PLAN_QAS, "cut": flags >> PLAN_CUT_SHIFT, "seed": seed, "arena": arena,
            "inference_arena": inference, "lr": lr, "class_add": (ca_mult, ca_shift), "train": [], "grads": {},
            "kept": [], "masks": [], "buffers": {}}
    pos = hsize
    tsize = struct.calcsize(TRAIN_FMT) + 4
    for _ in range(n_train):
        if pos + tsize > len(p):
            raise ModelFileError("PLAN section is truncated")
        layer, tflags, lo, hi, rows_off, n_rows, wq = struct.unpack_from(TRAIN_FMT, p, pos)
        bq = struct.unpack_from("<I", p, pos + tsize - 4)[0]
        pos += tsize
        if layer >= len(layers) or layers[layer]["w"] is None:
            raise ModelFileError("PLAN trains layer %d, which has no parameters" % layer)
        out_c = layers[layer]["geom"][5]
        t = {"layer": layer, "bias": tflags & 1, "cin_lo": lo, "cin_hi": hi,
             "rows": _slice(idx, rows_off, 2 * n_rows, "PLAN rows"), "n_rows": n_rows,
             "w_mult": None, "w_shift": None, "b_mult": None, "b_shift": None}
        if wq != NONE:
            t["w_mult"] = _slice(qpar, wq, 4 * out_c, "PLAN weight factors")
            t["w_shift"] = _slice(qpar, wq + 4 * out_c, 4 * out_c, "PLAN weight factors")
        if bq != NONE:
            t["b_mult"] = _slice(qpar, bq, 4 * out_c, "PLAN bias factors")
            t["b_shift"] = _slice(qpar, bq + 4 * out_c, 4 * out_c, "PLAN bias factors")
        plan["train"].append(t)
    gsize = struct.calcsize(GRAD_FMT)
    for _ in range(n_grads):
        if pos + gsize > len(p):
            raise ModelFileError("PLAN section is truncated")
        layer, adj, q = struct.unpack_from(GRAD_FMT, p, pos)
        pos += gsize
        if layer >= len(layers) or layers[layer]["w"] is None:
            raise ModelFileError("PLAN rescales layer %d, which has no weights" % layer)
        out_c = layers[layer]["geom"][5]
        plan["grads"][layer] = (_slice(qpar, q, 4 * out_c, "PLAN rescale"),
                                _slice(qpar, q + 4 * out_c, 4 * out_c, "PLAN rescale"), adj)
    for key, n in (("kept", n_kept), ("masks", n_masks)):
        if pos + 2 * n > len(p):
            raise ModelFileError("PLAN section is truncated")
        plan[key] = list(struct.unpack_from("<%dH" % n, p, pos))
        pos += 2 * n
    pos = (pos + 3) & ~3
    bsize = struct.calcsize(BUFFER_FMT)
    for _ in range(n_buf):
        if pos + bsize > len(p):
            raise ModelFileError("PLAN section is truncated")
        name, off, size = struct.unpack_from(BUFFER_FMT, p, pos)
        pos += bsize
        try:
            name = bytes(name).rstrip(b"\0").decode()
        except UnicodeError:
            raise ModelFileError("PLAN names an arena buffer %r" % (bytes(name),))
        if off + size > arena or off & 3:
            raise ModelFileError("PLAN buffer %s lies outside the arena or is misaligned" % name)
        plan["buffers"][name] = (off, size)
    need = list(ARENA_BUFFERS) + ["act%d" % i for i in range(len(layers))] + ["mask%d" % i for i in plan["masks"]]
    for name in need:
        if name not in plan["buffers"]:
            raise ModelFileError("PLAN has no arena buffer %s" % name)
    for i in plan["kept"] + plan["masks"]:
        if i >= len(layers):
            raise ModelFileError("PLAN keeps the output of layer %d, the model has %d" % (i, len(layers)))
    if first >= len(layers):
        raise ModelFileError("PLAN starts the backward pass at layer %d, the model has %d" % (first, len(layers)))
    if plan["cut"] and not first <= plan["cut"] <= len(layers) - 2:
        raise ModelFileError("PLAN cuts at layer %d, outside [%d, %d]" % (plan["cut"], first, len(layers) - 2))
    return plan

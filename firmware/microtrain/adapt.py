# Adaptation without backprop (docs/adapt.md): forward passes only, integers only.
#
# On the board:
#   anchors(t, "samples.bin", K, "anchors.bin")   K representatives per class of the board's
#       samples (records: label byte + int8 sample), chosen by integer farthest-point sampling
#       in the embedding space (the classifier's input); written with their embeddings and the
#       per-channel statistics of every backbone layer over them: what goes to the host
#   imprint(t, "anchors.bin")                      prototype imprinting: the classifier becomes
#       the nearest-class-mean rule of the anchors, in the classifier's own scales
#   restats(t, "samples.bin", "anchors.bin", "model.src")   running-statistics re-estimation:
#       layer by layer, the per-channel scale and offset that give each backbone layer the
#       pre-activation statistics of the source data again (folded into its integer
#       multipliers and biases)
#   apply(t, "delta.bin")                          a host's parameters; any of them lands
#       atomically with a checkpoint and is undone if the board's own validation drops
#
# Files are the checkpoint format (checkpoint.py) bound to the model file's id:
#   anchors  ANCL label u8 per anchor, ANCI record index u16, ANCE embeddings (int8, E each),
#            T<layer> per channel: mean i32, std i32 (1/16 units of the statistics pass)
#   source   T<layer> as above, over the source (pretraining) data
#   delta    W/B/M/S<layer>: new weights, biases, multipliers, shifts (whole tensors)
#
# The statistics pass: a layer's pre-activation M (acc + b), i.e. before the output's zero
# point and clamp, as int8 at 1/4 of the output's scale (the layer's own kernel with shift - 2,
# zero point 0, no clamp): ReLU does not hide the negative side.

import struct

from . import checkpoint as ckpt
from .model import OP_CONV, OP_DWCONV
from .trainer import _ints as ints
from ._compat import collect, mem_alloc, mem_free, ticks_diff, ticks_us

WIDE_SHIFT = 2          # the statistics pass at 2^-2 of the output's scale
STAT_ONE = 16           # statistics in 1/16 of a unit of that pass
MAX_RATIO = 4           # a correction scales a channel by at most 4 (and at least 1/4)
Q31 = 1 << 31


class AdaptError(ValueError):
    pass


# ---- integer helpers (the host imports these: one home for the arithmetic) ----
def div_round(n, d):
    """n / d rounded to nearest, ties away from zero (d > 0)."""
    h = d >> 1
    return (n + h) // d if n >= 0 else -((h - n) // d)


def isqrt(n):
    if n <= 0:
        return 0
    x = 1 << ((_bits(n) + 1) >> 1)
    while True:
        y = (x + n // x) >> 1
        if y >= x:
            return x
        x = y


def _bits(n):
    b = 0
    while n:
        n >>= 1
        b += 1
    return b


def finish_stats(s, q, n):
    """(mean, std) in 1/STAT_ONE from a channel's sum, sum of squares and count."""
    if n <= 0:
        return 0, 0
    return div_round(STAT_ONE * s, n), isqrt(div_round(STAT_ONE * STAT_ONE * (n * q - s * s), n * n))


def fold(mult, shift, bias, a_num, a_den, d):
    """One channel's correction y' = a y + d of its pre-activation (a = a_num / a_den, d in
    1/STAT_ONE units of the statistics pass) folded into its requantization: returns the new
    (mult, shift, bias).  mult * 2^(shift - 31) is the layer's real multiplier M; the new one is
    a M, and the bias moves by d / (a M) in accumulator units."""
    m = div_round(mult * a_num, a_den)
    if m <= 0:
        return mult, shift, bias
    while m >= Q31:
        m = (m + 1) >> 1
        shift += 1
    while m < (Q31 >> 1):
        m <<= 1
        shift -= 1
    # d in pass units (STAT_ONE per unit, a unit is 2^WIDE_SHIFT output units): bias units =
    # d * 2^WIDE_SHIFT / STAT_ONE / (m 2^(shift - 31))
    e = 31 - shift + WIDE_SHIFT - 4                  # STAT_ONE = 2^4
    num, den = d, m
    if e >= 0:
        num <<= e
    else:
        den <<= -e
    return m, shift, max(-Q31, min(Q31 - 1, bias + div_round(num, den)))


def correction(src, tgt):
    """(a_num, a_den, d): the per-channel a and d that move statistics tgt (mean, std) to src;
    a is bounded to [1/MAX_RATIO, MAX_RATIO], a channel without spread keeps its scale."""
    ms, ss = src
    mt, st = tgt
    if st <= 0 or ss <= 0:
        a_num = a_den = 1
    else:
        a_num, a_den = min(ss, MAX_RATIO * st), max(st, (ss + MAX_RATIO - 1) // MAX_RATIO)
    return a_num, a_den, ms - div_round(a_num * mt, a_den)


def farthest_points(embs, size, idx, k):
    """Integer farthest-point sampling: of the records `idx` (embeddings of `size` bytes in
    `embs`, int8), the one nearest their mean first, then each time the one farthest (squared
    L2) from those already chosen; ties go to the first.  Returns up to k record indices."""
    n = len(idx)
    if not n:
        return []
    sums = [0] * size
    for i in idx:
        o = i * size
        for j in range(size):
            sums[j] += embs[o + j] ^ 0x80        # int8 -> value + 128: differences are the same
    best = bd = None
    for i in idx:
        o = i * size
        d = 0
        for j in range(size):
            v = n * (embs[o + j] ^ 0x80) - sums[j]
            d += v * v
        if bd is None or d < bd:
            best, bd = i, d
    out = [best]
    mind = [_dist(embs, size, i, best) for i in idx]
    while len(out) < min(k, n):
        far, fd = -1, -1
        for p in range(n):
            if mind[p] > fd and idx[p] not in out:
                far, fd = p, mind[p]
        c = idx[far]
        out.append(c)
        for p in range(n):
            d = _dist(embs, size, idx[p], c)
            if d < mind[p]:
                mind[p] = d
    return out


def _dist(embs, size, a, b):
    oa, ob = a * size, b * size
    d = 0
    for j in range(size):
        v = (embs[oa + j] ^ 0x80) - (embs[ob + j] ^ 0x80)
        d += v * v
    return d


def select(embs, labels, size, k, n_classes):
    """Per class (in class order) the farthest-point anchors: a list of record indices."""
    out = []
    for c in range(n_classes):
        out += farthest_points(embs, size, [i for i in range(len(labels)) if labels[i] == c], k)
    return out


def ncm_head(sums, counts, mult, shift, zy, rows, bias):
    """Prototype imprinting: classifier rows and biases of the nearest-class-mean rule
    logit_c = mu_c . x - |mu_c|^2 / 2 (x the embedding minus its zero point, mu_c the class's
    mean of it), in the classifier's own multipliers: every class c gets
    w_c = beta mu_c / M_c, b_c = -beta |mu_c|^2 / (2 M_c), one beta for all so that the weights
    fit int8 and a class mean's logit spans 3/4 of the output's range above its zero point.
    sums[c]: per input the class's sum over its anchors, counts[c] their number; classes without
    anchors keep their row.  rows: bytearray C*E (int8) and bias: list of C ints, changed in place."""
    n_c = len(counts)
    size = len(rows) // n_c
    top = max(8, (127 - zy) * 3 // 4)
    bn = bd = None                                   # beta = bn / bd, the smallest bound wins
    for c in range(n_c):
        n = counts[c]
        if not n:
            continue
        mc, sc = _m(mult, c), _m(shift, c)
        big = max(max(sums[c]), -min(sums[c]), 1)
        sq = sum(v * v for v in sums[c]) or 1
        for num, den in ((127 * n * mc, big << (31 - sc)), (2 * top * n * n, sq)):
            if bn is None or num * bd < bn * den:
                bn, bd = num, den
    if bn is None:
        raise AdaptError("no anchors")
    for c in range(n_c):
        n = counts[c]
        if not n:
            continue
        mc, sc = _m(mult, c), _m(shift, c)
        den = bd * n * mc
        for j in range(size):
            w = div_round((bn * sums[c][j]) << (31 - sc), den)
            rows[c * size + j] = max(-127, min(127, w)) & 0xFF
        sq = sum(v * v for v in sums[c])
        bias[c] = max(-Q31, min(Q31 - 1, -div_round((bn * sq) << (31 - sc), 2 * den * n)))


def _m(v, c):
    return v[c] if len(v) > 1 else v[0]


def pack_ints(v):
    return struct.pack("<%di" % len(v), *v)


def stat_layers(model):
    """The backbone layers with multipliers: every conv / depthwise layer below the classifier."""
    return [i for i, l in enumerate(model.layers[:-2]) if l.op in (OP_CONV, OP_DWCONV)]


def read_file(path, model_id):
    """{tag: bytes} of an adaptation file, checked whole (CRC, model id) first."""
    with open(path, "rb") as f:
        st, index = ckpt.scan(f)
        if st.model_id != model_id:
            raise AdaptError("%s belongs to another model file (model %08x, this one %08x)" % (path, st.model_id, model_id))
        out = {}
        for tag, (off, size) in index.items():
            f.seek(off)
            out[tag] = f.read(size)
    return out


def write_file(path, t, blobs):
    with open(path, "wb") as f:
        ckpt.write(f, t._state(), blobs)
    return path


def stats_blobs(stats):
    out = []
    for i in sorted(stats):
        m, s = stats[i]
        out.append((b"T%03d" % i, pack_ints(m) + pack_ints(s)))
    return out


def parse_stats(blobs):
    out = {}
    for tag, v in blobs.items():
        if tag[:1] == b"T":
            a = ints(v)
            h = len(a) >> 1
            out[int(tag[1:].decode())] = (a[:h], a[h:])
    return out


class _Records:
    """The board's sample file (label byte + int8 sample per record), read one at a time."""

    def __init__(self, t, path):
        self.size = t.model.in_size + 1
        self.f = open(path, "rb")
        self.f.seek(0, 2)
        self.n = self.f.tell() // self.size
        if not self.n or self.n * self.size != self.f.tell():
            self.f.close()
            raise AdaptError("%s: not a whole number of %d B records (label + sample)" % (path, self.size))
        self.rec = bytearray(self.size)
        self.x = memoryview(self.rec)[1:]

    def read(self, i):
        self.f.seek(i * self.size)
        self.f.readinto(self.rec)
        return self.rec[0], self.x

    def close(self):
        self.f.close()


class Adaptor:
    """Forward-only adaptation of a Trainer's model (see the top of this file)."""

    def __init__(self, t):
        self.t = t
        self.model = t.model
        self.layers = stat_layers(t.model)
        self.wide = bytearray(max([t.model.layers[i].out_size for i in self.layers] or [1]))
        self.us = 0

    def _embed(self, x):
        t = self.t
        t.model.set_input(x, t.views[0][0])
        t.model.run(t.views, t.classifier)
        return t.views[t.classifier][0]

    def _wide_pass(self, i, shift, s, q):
        """Add layer i's statistics-pass values, on the input its views hold, to the channel sums."""
        t = self.t
        l = t.model.layers[i]
        k = t.k
        x = t.views[i][0]
        y = memoryview(self.wide)[:l.out_size]
        if l.op == OP_CONV:
            k.conv_forward(l.geom, x, l.zx, l.w, l.b, l.mult, shift, 0, -128, 127, l.rounding, y, None, t.scratch)
        else:
            k.dwconv_forward(l.geom, x, l.zx, l.w, l.b, l.mult, shift, 0, -128, 127, l.rounding, y, None)
        c, n = 0, l.out_c
        for v in y:
            v = v - 256 if v > 127 else v
            s[c] += v
            q[c] += v * v
            c += 1
            if c == n:
                c = 0

    def stats(self, recs, idx, layers):
        """{layer: (mean, std) per channel} of the statistics pass of `layers` (ascending) over
        the records idx: one forward pass per record, each layer measured on its input."""
        t = self.t
        model, views = t.model, t.views
        shifts = [pack_ints([v - WIDE_SHIFT for v in ints(model.layers[i].shift)]) for i in layers]
        sums = [([0] * model.layers[i].out_c, [0] * model.layers[i].out_c) for i in layers]
        for r in idx:
            model.set_input(recs.read(r)[1], views[0][0])
            done = 0
            for j, i in enumerate(layers):
                if i > done:
                    model.run(views, i, done)
                    done = i
                self._wide_pass(i, shifts[j], sums[j][0], sums[j][1])
        out = {}
        for j, i in enumerate(layers):
            l = model.layers[i]
            n = len(idx) * l.out_size // l.out_c
            ms, ss = [], []
            for c in range(l.out_c):
                m, d = finish_stats(sums[j][0][c], sums[j][1][c], n)
                ms.append(m)
                ss.append(d)
            out[i] = (ms, ss)
        return out

    def anchors(self, src, k, out=None, limit=0):
        """Pick k anchors per class of the sample file src (its last `limit` records if given):
        returns (blobs, summary); written to `out` if given."""
        t0 = ticks_us()
        t = self.t
        collect()
        base = mem_alloc()
        recs = _Records(t, src)
        try:
            first = max(0, recs.n - limit) if limit else 0
            n = recs.n - first
            size = t.model.layers[t.classifier].in_size
            try:
                embs = bytearray(n * size)
            except MemoryError:
                raise AdaptError("%d samples x %d B of embeddings do not fit the heap (%d B free): pass a limit"
                                 % (n, size, mem_free()))
            labels = bytearray(n)
            for r in range(n):
                y, x = recs.read(first + r)
                labels[r] = y
                embs[r * size:(r + 1) * size] = self._embed(x)
            heap = mem_alloc() - base
            picked = select(embs, labels, size, k, t.model.n_classes)
            blobs = [(b"ANCL", bytes(labels[p] for p in picked)),
                     (b"ANCI", struct.pack("<%dH" % len(picked), *[first + p for p in picked])),
                     (b"ANCE", b"".join(bytes(embs[p * size:(p + 1) * size]) for p in picked))]
            embs = None
            collect()
            stats = self.stats(recs, [first + p for p in picked], self.layers)
        finally:
            recs.close()
        blobs += stats_blobs(stats)
        if out:
            write_file(out, t, blobs)
        self.us = ticks_diff(ticks_us(), t0)
        return blobs, {"anchors": len(picked), "records": n, "embedding": size, "us": self.us, "heap": heap,
                       "bytes": sum(8 + len(b) for _, b in blobs) + ckpt.HEADER_SIZE + 4}

    # ---- board-side adaptation ----
    def imprint(self, anchors):
        """The delta of prototype imprinting from an anchors file: the classifier's rows and
        biases of the anchors' nearest-class-mean rule."""
        t = self.t
        a = read_file(anchors, t.model.id)
        c = t.model.layers[t.classifier]
        size = c.in_size
        nc = t.model.n_classes
        sums = [[0] * size for _ in range(nc)]
        counts = [0] * nc
        e, labels = a[b"ANCE"], a[b"ANCL"]
        for p in range(len(labels)):
            y = labels[p]
            counts[y] += 1
            row = sums[y]
            o = p * size
            for j in range(size):
                v = e[o + j]
                row[j] += (v - 256 if v > 127 else v) - c.zx
        rows = bytearray(c.w)
        bias = ints(c.b)
        ncm_head(sums, counts, ints(c.mult), ints(c.shift), c.zy, rows, bias)
        return [(b"W%03d" % t.classifier, bytes(rows)), (b"B%03d" % t.classifier, pack_ints(bias))]

    def restats(self, src, anchors, source):
        """The delta of running-statistics re-estimation over the anchors' records of src, layer
        by layer (each measured with the layers below already corrected), toward the source
        statistics in the file `source`."""
        t = self.t
        srcs = parse_stats(read_file(source, t.model.id))
        ai = read_file(anchors, t.model.id)[b"ANCI"]
        idx = list(struct.unpack("<%dH" % (len(ai) >> 1), ai))
        recs = _Records(t, src)
        layers = t.model.layers
        keep = [(i, layers[i].mult, layers[i].shift, layers[i].b) for i in self.layers]
        out = []
        try:
            for i in self.layers:
                if i not in srcs:
                    raise AdaptError("%s has no statistics of layer %d" % (source, i))
                l = layers[i]
                tm, ts = self.stats(recs, idx, [i])[i]
                sm, ss = srcs[i]
                mult, shift, bias = ints(l.mult), ints(l.shift), ints(l.b)
                nm, ns, nb = [], [], []
                for ch in range(l.out_c):
                    a_num, a_den, d = correction((sm[ch], ss[ch]), (tm[ch], ts[ch]))
                    m, s, b = fold(_m(mult, ch), _m(shift, ch), bias[ch], a_num, a_den, d)
                    nm.append(m)
                    ns.append(s)
                    nb.append(b)
                l.mult, l.shift, l.b = pack_ints(nm), pack_ints(ns), pack_ints(nb)
                out += [(b"M%03d" % i, l.mult), (b"S%03d" % i, l.shift), (b"B%03d" % i, l.b)]
        finally:
            recs.close()
            for i, m, s, b in keep:                # the delta is applied by apply(), like a host's
                layers[i].mult, layers[i].shift, layers[i].b = m, s, b
        return out

    # ---- applying a delta ----
    def apply(self, blobs, margin=None):
        """Set the tensors of a delta (tag, bytes), atomically with a checkpoint; if the board's
        validation samples score lower than before by more than the trainer's margin, the old
        tensors come back and nothing is written.  Returns the summary."""
        t = self.t
        t0 = ticks_us()
        margin = t.val_margin if margin is None else margin
        bufs = []
        for tag, data in blobs:                  # check the whole delta before changing anything
            bufs.append((t.adopt(tag, len(data)), data))
        before = self._score()
        old = [bytes(b) for b, _ in bufs]
        for b, data in bufs:
            b[:] = data
        after = self._score()
        kept = before is None or after >= before - margin
        if kept:
            t.checkpoint()
            if before is not None:
                t.best_val = after
                t.best_store.save(t._state(), t._state_blobs() + [(b"BVAL", struct.pack("<i", after))])
        else:
            for (b, _), o in zip(bufs, old):
                b[:] = o
        self.us = ticks_diff(ticks_us(), t0)
        return {"kept": kept, "before": before, "after": after, "tensors": len(bufs), "us": self.us,
                "bytes": sum(len(d) for _, d in blobs)}

    def _score(self):
        t = self.t
        if not min(t.val_n, t.val_capacity):
            return None
        t.evaluate()
        right, total = t.last_eval
        return (1000 * right + (total >> 1)) // total


def delta_blobs(path, model_id):
    d = read_file(path, model_id)
    return [(tag, d[tag]) for tag in sorted(d)]

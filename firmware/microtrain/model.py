# A loaded model: layers with their integer parameters, and the int8 forward pass.
#
# Frozen weights (and biases and requantization factors, when the region holds them too) are
# read in place from memory-mapped flash where the board has it (flashmap: the RP2040's XIP
# flash), else they stay in the bytes read from the model file (one buffer per
# section, viewed, not copied); weights and biases that train are copied to RAM once.  The
# forward pass runs in preallocated views of one arena: nothing per sample is allocated.

import gc
import struct

from . import backend
from . import modelfile
from ._compat import const, typed

# layer kinds: indices into modelfile.OPS (const: MicroPython folds them into the code instead
# of looking up a global)
OP_CONV = const(0)
OP_DWCONV = const(1)
OP_MAXPOOL = const(2)
OP_AVGPOOL = const(3)
OP_SOFTMAX = const(4)
OP_ADD = const(5)


BUFFERS = (bytes, bytearray, memoryview)


class _Slicer:
    def __getitem__(self, k):
        return k


# A slice object made once: `view[s] = x` with a ready slice allocates nothing, where
# `view[a:b] = x` builds a new slice object each time.
slicer = _Slicer()
WHOLE = slicer[:]


class Layer:
    def __init__(self, d):
        self.op = modelfile.OPS.index(d["op"])
        self.inputs = d["inputs"]  # the layers it reads (-1: the model input)
        self.geom_t = d["geom"]
        self.geom = typed("i", struct.pack("<13i", *d["geom"]))
        self.in_size = d["geom"][0] * d["geom"][1] * d["geom"][2]
        self.out_size = d["geom"][3] * d["geom"][4] * d["geom"][5]
        self.out_c = d["geom"][5]
        self.zx = d["zx"]
        self.zy = d["zy"]
        self.act_min = d["act_min"]
        self.act_max = d["act_max"]
        self.rounding = 1 if d["double_rounding"] else 0
        self.softmax = d["softmax"]
        self.w = d["w"]           # memoryview into WGHT (frozen) or bytearray (training)
        self.b = d["b"]
        self.mult = d["mult"]
        self.shift = d["shift"]


class Model:
    """`microtrain.load(path)`: a model file's layers, ready for `predict`."""

    def __init__(self, path, in_flash=True):
        reg = _flash_region() if in_flash else None
        where = {}
        with open(path, "rb") as f:
            self._reserve = _reserve(modelfile.plan_reserve(f))
            f.seek(8)
            # the file's identity: the header CRC covers the section table, so every section's CRC
            self.id = struct.unpack("<I", f.read(4))[0]
            f.seek(0)
            flash = {}
            if reg:
                from . import flashmap
                flash = flashmap.mapped(reg, self.id, modelfile.section_table(f))
            self.weights_in_flash = bool(flash)
            skip = (modelfile.HOST_TAG,) + (tuple(flash) if flash else ("WGHT",) if reg else ())
            sections = modelfile.read_sections(f, skip, where)
            if reg and not flash:                 # not written to the region (yet): the heap
                if "WGHT" not in where:
                    raise modelfile.ModelFileError("section WGHT is missing")
                off, n, crc = where["WGHT"]
                f.seek(off)
                try:
                    view = f.read(n)
                except MemoryError:
                    raise MemoryError("the frozen weights (%d B) do not fit the free heap%s and are not in "
                                      "this board's flash yet: flash the .weights.uf2 `microtrain push` "
                                      "wrote" % (n, modelfile._free()))
                if view is None or len(view) != n:
                    raise modelfile.ModelFileError("truncated file: section WGHT")
                sections["WGHT"] = view
            sections.update(flash)
        info, layers, labels = modelfile.parse_layers(sections)
        self.n_layers, self.n_classes, h, w, c, self.in_zp, self.max_classes, _flags, self.in_scale = info
        self.input_shape = (h, w, c)
        self.in_size = h * w * c
        self.layers = [Layer(d) for d in layers]
        self.labels = labels
        self.plan = modelfile.parse_plan(sections, layers)
        self.path = path
        self._check_graph()
        self.kernels = backend.kernels
        self._views = None

    def _check_graph(self):
        for i, l in enumerate(self.layers):
            for j in l.inputs:
                size = self.in_size if j < 0 else self.layers[j].out_size
                if size != (l.out_size if l.op == OP_ADD else l.in_size):
                    raise modelfile.ModelFileError("layer %d expects %d inputs, layer %d gives %d" % (i, l.in_size, j, size))
        if self.layers[-1].op != OP_SOFTMAX:
            raise modelfile.ModelFileError("the last layer must be a softmax classifier")

    def out_sizes(self):
        """Every layer's output bytes (the classifier's logits and probabilities grow to max_classes)."""
        sizes = [l.out_size for l in self.layers]
        for i in (len(sizes) - 2, len(sizes) - 1):
            if self.layers[i].out_c == self.n_classes:
                sizes[i] = max(sizes[i], self.max_classes)
        return sizes

    def take_reserved(self, key, size):
        """The bytes load() reserved for key (the training arena, "arena", or a trained layer's
        weights, its index): allocated first, before the model's objects cut the heap up.  A new
        bytearray when nothing of that size was reserved."""
        a = self._reserve.pop(key, None) if self._reserve else None
        if a is not None and len(a) == size:
            return a
        a = None
        gc.collect()
        return bytearray(size)

    def reserved_bytes(self):
        return sum(len(a) for a in self._reserve.values()) if self._reserve else 0

    def share_views(self, views):
        """predict / probabilities run in the views of a trainer's arena (between its steps its
        activations are dead): one arena for both, as the plan counts it."""
        self._views = views
        self._arena = None

    # ---- inference arena: the activations by liveness (arena.py), then the kernels' scratch ----
    def _inference_views(self):
        if self._views is None:
            from . import arena as ar
            scratch = 0
            for l in self.layers:
                if l.op == OP_CONV:
                    scratch = max(scratch, self.kernels.conv_forward_scratch(l.geom))
            sizes = self.out_sizes()
            items, alias = ar.activations([l.inputs for l in self.layers], sizes, self.in_size,
                                          inplace=inplace_layers(self))
            offs, size = ar.place(items)
            self._arena = bytearray(size + scratch)
            mv = memoryview(self._arena)
            bufs = {"scratch": mv[size:size + scratch], "input": mv[offs["input"]:offs["input"] + self.in_size]}
            for i in range(len(self.layers)):
                o = offs[ar.name_of(i, alias)]
                bufs["act%d" % i] = mv[o:o + sizes[i]]
            self._views = self.forward_views(bufs, ())
        return self._views

    def forward_views(self, bufs, masks):
        """Per layer [input view, output view, mask view or None, second input view or None] in an
        arena's buffers: layer i writes act<i>, reads the buffers of the layers it names (where
        lifetimes do not overlap, the plan's offsets let buffers share bytes)."""
        outs = [bufs["act%d" % i][:l.out_size] for i, l in enumerate(self.layers)]
        views = []
        for i, l in enumerate(self.layers):
            ins = [bufs["input"] if j < 0 else outs[j] for j in l.inputs]
            m = bufs["mask%d" % i][:(l.out_size + 7) >> 3] if i in masks else None
            views.append([ins[0], outs[i], m, ins[1] if len(ins) > 1 else None])
        self.scratch = bufs["scratch"]
        self.input_view = bufs["input"]
        return views

    def run(self, views, stop=0, start=0):
        """The forward pass through prepared views; returns the probabilities' view (with stop:
        layers [start, stop) only, and the view of layer stop - 1's output: split training's cut)."""
        k = self.kernels
        scratch = self.scratch
        layers = self.layers
        n = stop or len(layers)
        for i in range(start, n):
            l = layers[i]
            x, y, m, x2 = views[i]
            op = l.op
            if op == OP_CONV:
                k.conv_forward(l.geom, x, l.zx, l.w, l.b, l.mult, l.shift, l.zy, l.act_min, l.act_max,
                               l.rounding, y, m, scratch)
            elif op == OP_DWCONV:
                k.dwconv_forward(l.geom, x, l.zx, l.w, l.b, l.mult, l.shift, l.zy, l.act_min, l.act_max,
                                 l.rounding, y, m)
            elif op == OP_MAXPOOL:
                k.maxpool_forward(l.geom, x, y)
            elif op == OP_AVGPOOL:
                k.avgpool_forward(l.geom, x, l.act_min, l.act_max, y)
            elif op == OP_ADD:
                k.add_forward(x, x2, l.mult, y, m)
            else:
                sm = l.softmax
                k.softmax_forward(x, 1, l.out_size, sm[0], sm[1], sm[2], y)
        return views[n - 1][1]

    def set_input(self, x, view):
        if len(x) != self.in_size:
            raise ValueError("x: expected %d int8 values (shape %s), got %d" % (self.in_size, self.input_shape, len(x)))
        view[WHOLE] = x if isinstance(x, BUFFERS) else bytes(v & 0xFF for v in x)

    def predict(self, x):
        """Class index of one int8 sample (bytes / bytearray / array('b') / list of ints)."""
        views = self._inference_views()
        self.set_input(x, views[0][0])
        return argmax(self.run(views))

    def probabilities(self, x):
        views = self._inference_views()
        self.set_input(x, views[0][0])
        p = self.run(views)
        return [(v ^ 0x80) / 256 for v in bytes(p)]      # int8 y -> (y + 128) / 256


def inplace_layers(model):
    """Layers that may write their output over their first input (element-wise: ADD)."""
    return [i for i, l in enumerate(model.layers) if l.op == OP_ADD]


def argmax(probs):
    """Index of the largest int8 value in a byte view (first on ties); allocates nothing."""
    best, at = -129, 0
    for i in range(len(probs)):
        v = probs[i]
        v = v - 256 if v > 127 else v
        if v > best:
            best, at = v, i
    return at


def _reserve(sizes):
    """{key: bytearray} of the (key, size) pairs while the heap is still in one piece; a buffer
    that does not fit is left out (the trainer then says so when it allocates it)."""
    out = {}
    gc.collect()
    for key, size in sizes:
        if size:
            try:
                out[key] = bytearray(size)
            except MemoryError:
                pass
    return out


def _flash_region():
    # only the RP2040 maps its flash; elsewhere the flashmap module is not even loaded (heap)
    import sys
    if sys.platform != "rp2":
        return None
    from . import flashmap
    return flashmap.region()


def load(path, in_flash=True):
    """The model of a .mtm file.  in_flash: frozen weights read in place from memory-mapped
    flash where the board has it (see flashmap); False reads them into the heap."""
    return Model(path, in_flash)

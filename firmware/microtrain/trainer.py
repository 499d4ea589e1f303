# The trainer: one int8 training step along the plan of the model file, checkpoints and
# rollback, validation, class addition, telemetry.  Step for step the same integer operations
# as the host simulator (host/microtrain/sim/simulator.py), so both hold identical bytes.

import array
import struct

from . import backend
from . import modelfile
from .model import OP_CONV, OP_DWCONV, OP_MAXPOOL, OP_SOFTMAX, argmax
from ._compat import collect, exists, mem_alloc, mem_free, mem_peak, remove, rename, ticks_diff, ticks_us, typed
from .telemetry import Telemetry

LOGIT_GRAD_EXP = -15
AVGPOOL_GRAD_BITS = 13
CKPT_MAGIC = b"MTCK"
CKPT_VERSION = 1

try:
    from math import log
except ImportError:       # a port without floats: report -log2 in 1/16 steps instead
    log = None


class TrainingError(ValueError):
    pass


class Trainer:
    """`Trainer(model)`: allocates the training arena of the model's plan once.

    step(x, label) -> loss          one sample (int8 bytes of the model's input size)
    predict(x) -> class index       evaluate() -> accuracy on the stored validation samples
    checkpoint() / rollback()       atomic file replace; rollback restores the last checkpoint
    add_class(samples, name)        grow the classifier by one class, initialised from the samples
    export(path, delta=False)       the trained tensors (or their change) for the host to pull
    """

    def __init__(self, model, checkpoint_path="microtrain.ckpt", val_margin=0.1, telemetry=None):
        plan = model.plan
        if plan is None:
            raise TrainingError("this model file has no training plan: convert it with a policy")
        self.model = model
        self.plan = plan
        self.k = backend.kernels
        layers = model.layers
        self.classifier = len(layers) - 2
        if layers[-1].op != OP_SOFTMAX or layers[self.classifier].op != OP_CONV:
            raise TrainingError("training needs a dense classifier followed by a softmax")
        self.original_classes = model.n_classes
        # trainable tensors move to RAM, with the plan's factors as typed views
        self.train = {}
        for t in plan["train"]:
            l = layers[t["layer"]]
            if t["cin_hi"] > t["cin_lo"]:
                l.w = bytearray(l.w)
            if t["bias"]:
                l.b = bytearray(l.b)
            self.train[t["layer"]] = [t["rows"], t["cin_lo"], t["cin_hi"], t["w_mult"], t["w_shift"],
                                      t["b_mult"] if t["bias"] else None, t["b_shift"] if t["bias"] else None]
        # the arena: every buffer of the plan is a view, sliced once here
        self.arena = bytearray(plan["arena"])
        mv = memoryview(self.arena)
        self.bufs = bufs = {}
        for name, (off, size) in plan["buffers"].items():
            bufs[name] = mv[off:off + size]
        self.masks = set(plan["masks"])
        self.views = model.forward_views(bufs, set(plan["kept"]), self.masks)
        self.scratch = bufs["scratch"]
        self._backward_views()
        self.rng = array.array("I", [plan["seed"] or 1])
        self.steps = 0
        self.samples = 0
        self.last_seq = -1
        self.lr_shift = 0
        self.ckpt_path = checkpoint_path
        self.val_margin = int(val_margin * 1000)    # per mille, so decisions compare integers
        self.since_ckpt = 0
        self.heap_free = mem_free()
        self.loss_avg = None
        self.best_avg = None
        self.best_val = None
        self.n_params = self._count_params()
        self.telemetry = telemetry or Telemetry(bufs["telem"])
        # validation samples and a small replay memory per class (for class addition), in the arena
        self.val_x, self.val_y = bufs["val_x"], bufs["val_y"]
        self.val_capacity = len(self.val_y)
        self.val_n = 0
        self.replay_x, self.replay_n = bufs["replay"], bufs["replay_n"]
        self.replay_per_class = len(self.replay_x) // (model.max_classes * model.in_size)
        collect()

    # ---- views of the backward pass ----
    def _backward_views(self):
        layers = self.model.layers
        plan = self.plan
        g0, g1, gacc = self.bufs["grad0"], self.bufs["grad1"], self.bufs["gacc"]
        last = len(layers) - 1
        n = layers[last].out_size
        self.g_logits = g0[:2 * n]
        self.logit_mask = self.views[last - 1][2]
        steps = []
        cur = 0
        for i in range(last - 1, plan["first_backward"] - 1, -1):
            l = layers[i]
            gy = (g0, g1)[cur][:2 * l.out_size]
            other = (g0, g1)[1 - cur]
            down = i > plan["first_backward"]
            gs = plan["grads"].get(i)
            gp = other[:2 * l.out_size] if (down and l.op in (OP_CONV, OP_DWCONV)) else None
            acc = gacc[:4 * l.in_size] if down else None
            gx = other[:2 * l.in_size] if down else None
            mask = self.views[i - 1][2] if (down and (i - 1) in self.masks) else None
            steps.append([i, l, gy, gp, acc, gx, mask, gs, down])
            if down:
                cur = 1 - cur
        self.bw = steps

    def _count_params(self):
        n = 0
        for i, t in self.train.items():
            l = self.model.layers[i]
            g = l.geom_t
            rows = len(t[0]) >> 1
            if t[2] > t[1]:
                n += rows * g[6] * g[7] * ((t[2] - t[1]) if l.op == OP_CONV else 1)
            if t[5] is not None:
                n += rows
        return n

    # ---- inference ----
    def forward(self, x):
        self.model.set_input(x, self.views[0][0])
        return self.model.run(self.views)

    def predict(self, x):
        return argmax(self.forward(x))

    # ---- training ----
    def step(self, x, label, seq=None):
        """One training step on one sample; returns the loss (a float, for reports only)."""
        if not 0 <= label < self.model.n_classes:
            raise ValueError("label: must be in [0, %d], got %d" % (self.model.n_classes - 1, label))
        t0 = ticks_us()
        k = self.k
        probs = self.forward(x)
        k.softmax_grad(probs, label, self.g_logits)
        if self.logit_mask is not None:
            k.grad_mask(self.g_logits, self.logit_mask)
        e = LOGIT_GRAD_EXP
        rng = self.rng
        lr = self.lr_shift
        for s in self.bw:
            i, l, gy, gp, acc, gx, mask, gs, down = s
            x_in = self.views[i][0]
            ex = 0
            if down:
                op = l.op
                if op == OP_CONV or op == OP_DWCONV:
                    g = l.geom_t
                    k.grad_rescale(gy, g[3] * g[4], g[5], gs[0], gs[1], gp)
                    if op == OP_CONV:
                        k.conv_input_grad(l.geom, gp, l.w, acc)
                    else:
                        k.dwconv_input_grad(l.geom, gp, l.w, acc)
                    adj = gs[2]
                elif op == OP_MAXPOOL:
                    k.maxpool_input_grad(l.geom, x_in, gy, acc)
                    adj = 0
                else:
                    k.avgpool_input_grad(l.geom, gy, acc)
                    adj = -AVGPOOL_GRAD_BITS
                ex = e + adj + k.grad_narrow(acc, mask, gx)
            t = self.train.get(i)
            if t is not None:
                upd = k.conv_update if l.op == OP_CONV else k.dwconv_update
                upd(l.geom, x_in, l.zx, gy, e + lr, l.w, l.b, t[0], t[1], t[2], t[3], t[4], t[5], t[6], rng,
                    self.scratch)
            if not down:
                break
            e = ex
        self.steps += 1
        self.samples += 1
        if seq is not None:
            self.last_seq = seq
        self._remember(x, label)
        p = probs[label] ^ 0x80              # (y + 128): the label's probability in 1/256
        loss = -log(max(p, 0.5) / 256) if log else (8 - _log2(max(p, 1))) * 1.0
        correct = argmax(probs) == label
        us = ticks_diff(ticks_us(), t0)
        if self.steps & 15 == 1:            # gc.mem_free() walks the heap: sample it, not every step
            self.heap_free = mem_free()
        self.telemetry.step(self.steps, loss, correct, self.lr_shift, us, self.heap_free, self.n_params)
        self._watch(256 - p)
        return loss

    def _watch(self, err):
        """Divergence: the running error a (8 x the mean of 256 - p_label over ~8 steps, an
        integer in [0, 2048]) climbing more than half-way from its best since the last checkpoint
        to the worst possible value rolls back and halves the learning rate.  Only integers
        decide, so every port and backend rolls back at the same step."""
        a = (err << 3) if self.loss_avg is None else self.loss_avg - (self.loss_avg >> 3) + err
        self.loss_avg = a
        self.since_ckpt += 1
        if self.best_avg is None or a < self.best_avg:
            self.best_avg = a
        elif self.since_ckpt > 8 and a > self.best_avg + ((2048 - self.best_avg) >> 1) and exists(self.ckpt_path):
            self.rollback(reason="loss diverged")
            self.lr_shift -= 1

    def _remember(self, x, label):
        r = self.replay_per_class
        if not r:
            return
        n = self.replay_n[label]
        slot = (label * r + (n % r)) * self.model.in_size
        self.replay_x[slot:slot + self.model.in_size] = bytes(x) if not isinstance(x, (bytes, bytearray)) else x
        n += 1
        self.replay_n[label] = n if n < 256 else r + n % r    # a byte: keep >= r, keep rotating

    def fit(self, samples, epochs=1):
        """Train on an iterable of (x, label) for some epochs; returns the mean loss of the last."""
        total = 0.0
        for _ in range(epochs):
            total, n = 0.0, 0
            for x, y in samples:
                total += self.step(x, y)
                n += 1
            total /= max(n, 1)
            self.telemetry.epoch(self.steps, total, self.lr_shift)
        return total

    # ---- validation ----
    def add_validation(self, x, label):
        """Keep a sample on the board for evaluate() (up to val_capacity; the oldest is replaced)."""
        i = self.val_n % self.val_capacity
        n = self.model.in_size
        self.val_x[i * n:(i + 1) * n] = x if isinstance(x, (bytes, bytearray)) else bytes(x)
        self.val_y[i] = label
        self.val_n += 1

    def evaluate(self, samples=None):
        """Accuracy on the stored validation samples (or on an iterable of (x, label))."""
        right = total = 0
        if samples is None:
            n = self.model.in_size
            for i in range(min(self.val_n, self.val_capacity)):
                right += self.predict(self.val_x[i * n:(i + 1) * n]) == self.val_y[i]
                total += 1
        else:
            for x, y in samples:
                right += self.predict(x) == y
                total += 1
        self.last_eval = (right, total)
        acc = right / total if total else 0.0
        self.telemetry.evaluate(self.steps, acc)
        return acc

    def validate(self):
        """Evaluate; roll back if accuracy dropped more than val_margin below the best, else
        checkpoint when it is a new best.  Returns the accuracy."""
        acc = self.evaluate()
        right, total = self.last_eval
        pm = (1000 * right + (total >> 1)) // total if total else 0   # per mille: an integer decision
        if self.best_val is not None and pm < self.best_val - self.val_margin and exists(self.ckpt_path):
            self.rollback(reason="validation accuracy dropped")
        elif self.best_val is None or pm >= self.best_val:
            self.best_val = pm
            self.checkpoint()
        return acc

    # ---- checkpoints ----
    def _state_blobs(self):
        """(tag, buffer) of everything training changes, in plan order."""
        out = []
        for i in sorted(self.train):
            l = self.model.layers[i]
            if isinstance(l.w, bytearray):
                out.append((b"W%03d" % i, l.w))
            if self.train[i][5] is not None:
                out.append((b"B%03d" % i, l.b))
        c = self.model.layers[self.classifier]
        if self.model.n_classes != self.original_classes:
            t = self.train[self.classifier]
            out.append((b"CLSM", c.mult))
            out.append((b"CLSS", c.shift))
            out.append((b"CLSR", t[0]))
            for j, tag in ((3, b"CLWM"), (4, b"CLWS"), (5, b"CLBM"), (6, b"CLBS")):
                if t[j] is not None:
                    out.append((tag, t[j]))
            gs = self.plan["grads"].get(self.classifier)
            if gs is not None:
                out.append((b"CLGM", gs[0]))
                out.append((b"CLGS", gs[1]))
            out.append((b"LABL", "\n".join(self.model.labels).encode()))
        return out

    def checkpoint(self):
        """Write the training state to checkpoint_path atomically: a reset at any moment leaves
        either the previous checkpoint or this one, never a mix."""
        tmp = self.ckpt_path + ".new"
        head = struct.pack("<4sHHIIiiIH", CKPT_MAGIC, CKPT_VERSION, 0, self.steps, self.samples, self.last_seq,
                           self.lr_shift, self.rng[0], self.model.n_classes)
        crc = modelfile.crc32(head)
        with open(tmp, "wb") as f:
            f.write(head)
            for tag, buf in self._state_blobs():
                rec = struct.pack("<4sI", tag, len(buf))
                f.write(rec)
                f.write(buf)
                crc = modelfile.crc32(buf, modelfile.crc32(rec, crc))
            f.write(struct.pack("<I", crc & 0xFFFFFFFF))
        if exists(self.ckpt_path):
            remove(self.ckpt_path)
        rename(tmp, self.ckpt_path)
        self.best_avg = self.loss_avg
        self.since_ckpt = 0
        self.telemetry.event("checkpoint", self.steps)

    def rollback(self, reason="requested"):
        """Restore the last checkpoint (the file, or its .new twin if a reset hit the rename)."""
        for path in (self.ckpt_path, self.ckpt_path + ".new"):
            if exists(path):
                try:
                    self._restore(path)
                except (ValueError, OSError):
                    continue
                self.loss_avg = self.best_avg = None
                self.telemetry.event("rollback", self.steps, reason)
                return True
        raise TrainingError("no valid checkpoint to roll back to")

    def _restore(self, path):
        with open(path, "rb") as f:
            data = f.read()
        hs = struct.calcsize("<4sHHIIiiIH")
        if len(data) < hs + 4:
            raise ValueError("checkpoint truncated")
        magic, ver, _, steps, samples, seq, lr, rng, n_classes = struct.unpack_from("<4sHHIIiiIH", data, 0)
        if magic != CKPT_MAGIC or ver != CKPT_VERSION:
            raise ValueError("not a checkpoint of this version")
        if modelfile.crc32(memoryview(data)[:len(data) - 4]) & 0xFFFFFFFF != struct.unpack_from("<I", data, len(data) - 4)[0]:
            raise ValueError("checkpoint corrupted")
        blobs = {}
        pos = hs
        while pos < len(data) - 4:
            tag, n = struct.unpack_from("<4sI", data, pos)
            blobs[bytes(tag)] = memoryview(data)[pos + 8:pos + 8 + n]
            pos += 8 + n
        if n_classes != self.model.n_classes:
            self._resize_classifier(n_classes, blobs)
            if b"LABL" in blobs:
                self.model.labels = bytes(blobs[b"LABL"]).decode().split("\n")
        for i in sorted(self.train):
            l = self.model.layers[i]
            if isinstance(l.w, bytearray):
                l.w[:] = blobs[b"W%03d" % i]
            if self.train[i][5] is not None:
                l.b[:] = blobs[b"B%03d" % i]
        self.steps, self.samples, self.last_seq, self.lr_shift = steps, samples, seq, lr
        self.rng[0] = rng

    # ---- class addition ----
    def _resize_classifier(self, n_classes, blobs):
        layers = self.model.layers
        c, sm = layers[self.classifier], layers[-1]
        t = self.train[self.classifier]
        g = list(c.geom_t)
        k_in = g[0] * g[1] * g[2]
        g[5] = n_classes
        c.geom_t = tuple(g)
        c.geom = typed("i", struct.pack("<13i", *g))
        c.out_size = c.out_c = n_classes
        c.w = bytearray(blobs[b"W%03d" % self.classifier]) if b"W%03d" % self.classifier in blobs else bytearray(n_classes * k_in)
        c.b = bytearray(blobs[b"B%03d" % self.classifier])
        c.mult, c.shift = bytearray(blobs[b"CLSM"]), bytearray(blobs[b"CLSS"])
        t[0] = bytearray(blobs[b"CLSR"])
        for j, tag in ((3, b"CLWM"), (4, b"CLWS"), (5, b"CLBM"), (6, b"CLBS")):
            if tag in blobs:
                t[j] = bytearray(blobs[tag])
        gs = self.plan["grads"].get(self.classifier)
        if gs is not None and b"CLGM" in blobs:
            self.plan["grads"][self.classifier] = (bytearray(blobs[b"CLGM"]), bytearray(blobs[b"CLGS"]), gs[2])
        sg = (1, 1, n_classes, 1, 1, n_classes, 1, 1, 1, 1, 0, 0, 1)
        sm.geom_t = sg
        sm.geom = typed("i", struct.pack("<13i", *sg))
        sm.in_size = sm.out_size = sm.out_c = n_classes
        self.model.n_classes = n_classes
        # the last two layers' views now cover n_classes elements (their buffers hold max_classes)
        bufs = self.bufs
        self.views = self.model.forward_views(bufs, set(self.plan["kept"]), self.masks)
        self._backward_views()
        self.n_params = self._count_params()

    def add_class(self, samples, name=None, epochs=8):
        """Add a class from a few int8 samples: its classifier row starts as their mean embedding
        (integer arithmetic: row = round(64 * d / max|d|), d = sum of (x - zx) over the samples),
        its scale and training factors are those of the widest existing channel; then it trains on
        the samples interleaved with the replay memory of the other classes."""
        samples = list(samples)
        if not samples:
            raise ValueError("samples: need at least one")
        model = self.model
        n = model.n_classes
        if n >= model.max_classes:
            raise TrainingError("the plan reserved room for %d classes" % model.max_classes)
        if self.classifier not in self.train:
            raise TrainingError("add_class needs a plan that trains the classifier (its bias at least)")
        layers = model.layers
        c = layers[self.classifier]
        k_in = c.in_size
        emb = self.views[self.classifier][0]
        d = [0] * k_in
        for x in samples:
            self.forward(x)
            e = bytes(emb)
            for j in range(k_in):
                v = e[j]
                d[j] += (v - 256 if v > 127 else v) - c.zx
        m = max(max(d), -min(d), 1)
        row = bytes(((64 * v + (m >> 1)) // m) & 0xFF if v >= 0 else (-((-64 * v + (m >> 1)) // m)) & 0xFF for v in d)
        # the widest channel: largest real scale mult * 2^shift (same s_x, s_y for all channels)
        mult_l, shift_l = _ints(c.mult), _ints(c.shift)
        per_channel = len(mult_l) > 1
        ref = 0
        if per_channel:
            for j in range(n):
                if (shift_l[j], mult_l[j]) > (shift_l[ref], mult_l[ref]):
                    ref = j
        bias_l = _ints(c.b)
        new_bias = sum(bias_l) // len(bias_l)
        t = self.train[self.classifier]
        blobs = {b"W%03d" % self.classifier: bytes(c.w) + row,
                 b"B%03d" % self.classifier: bytes(c.b) + struct.pack("<i", new_bias),
                 b"CLSM": bytes(c.mult) + (struct.pack("<i", mult_l[ref]) if per_channel else b""),
                 b"CLSS": bytes(c.shift) + (struct.pack("<i", shift_l[ref]) if per_channel else b""),
                 b"CLSR": bytes(t[0]) + struct.pack("<H", n)}
        for j, tag in ((3, b"CLWM"), (4, b"CLWS"), (5, b"CLBM"), (6, b"CLBS")):
            if t[j] is not None:
                blobs[tag] = bytes(t[j]) + struct.pack("<i", _ints(t[j])[ref])
        gs = self.plan["grads"].get(self.classifier)
        if gs is not None:
            blobs[b"CLGM"] = bytes(gs[0]) + struct.pack("<i", _ints(gs[0])[ref])
            blobs[b"CLGS"] = bytes(gs[1]) + struct.pack("<i", _ints(gs[1])[ref])
        self._resize_classifier(n + 1, blobs)
        while len(model.labels) < n:
            model.labels.append("class%d" % len(model.labels))
        model.labels.append(name if name is not None else "class%d" % n)
        self.telemetry.event("class", self.steps, name or str(n))
        # fine-tune: the new samples interleaved with replayed samples of the other classes
        r = self.replay_per_class
        size = model.in_size
        for _ in range(epochs):
            for j, x in enumerate(samples):
                self.step(x, n)
                for cls in range(n):
                    have = min(self.replay_n[cls], r)
                    if have:
                        slot = (cls * r + (j % have)) * size
                        self.step(self.replay_x[slot:slot + size], cls)
        return n

    # ---- export ----
    def export(self, path, delta=False):
        """The trained tensors as a checkpoint-format file; with delta=True each tensor is
        replaced by its byte-wise difference (mod 256) to the model file's original values."""
        if not delta:
            tmp, self.ckpt_path = self.ckpt_path, path
            try:
                self.checkpoint()
            finally:
                self.ckpt_path = tmp
            return path
        with open(self.model.path, "rb") as f:
            sections = modelfile.read_sections(f)
        _, original, _ = modelfile.parse_layers(sections)
        with open(path, "wb") as f:
            for i in sorted(self.train):
                l = self.model.layers[i]
                for tag, buf, base in ((b"W%03d" % i, l.w, original[i]["w"]), (b"B%03d" % i, l.b, original[i]["b"])):
                    if tag[:1] == b"W" and not isinstance(buf, bytearray) or tag[:1] == b"B" and self.train[i][5] is None:
                        continue
                    data = bytearray(buf)
                    b = bytes(base)
                    for j in range(min(len(b), len(data))):
                        data[j] = (data[j] - b[j]) & 0xFF
                    f.write(struct.pack("<4sI", tag, len(data)))
                    f.write(data)
        return path

    def memory(self):
        """Heap figures for telemetry: (free, allocated, peak or -1)."""
        return mem_free(), mem_alloc(), mem_peak() if mem_peak else -1


def _ints(buf):
    return list(struct.unpack("<%di" % (len(buf) >> 2), bytes(buf)))


def _log2(v):
    n = 0
    while v > 1:
        v >>= 1
        n += 1
    return n

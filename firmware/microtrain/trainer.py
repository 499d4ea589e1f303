# The trainer: one int8 training step along the plan of the model file, checkpoints and
# rollback, validation, class addition, telemetry.  Step for step the same integer operations
# as the host simulator (host/microtrain/sim/simulator.py), so both hold identical bytes.

import array
import struct

from . import backend
from . import checkpoint as ckpt
from . import modelfile
from .model import BUFFERS, OP_CONV, OP_DWCONV, OP_MAXPOOL, OP_SOFTMAX, argmax, slicer
from ._compat import collect, mem_alloc, mem_free, mem_peak, ticks_diff, ticks_us, typed
from .telemetry import Telemetry

LOGIT_GRAD_EXP = -15       # the softmax gradient's fixed scale 2^-15 (as the kernels)
AVGPOOL_GRAD_BITS = 13     # average pooling's reciprocal precision (as the kernels)
MIN_LR_SHIFT = -12         # a rollback halves the learning rate, down to 2^-12 of the plan's

try:
    from math import log
except ImportError:       # a port without floats: report -log2 in 1/16 steps instead
    log = None


# tensors an adaptation may set, by tag letter (W005: layer 5's weights)
ADAPT_TAGS = {b"W": "w", b"B": "b", b"M": "mult", b"S": "shift"}

# the classifier's SGD factors in a checkpoint after class addition: (tag, Trainable attribute)
CLASS_FACTORS = ((b"CLWM", "w_mult"), (b"CLWS", "w_shift"), (b"CLBM", "b_mult"), (b"CLBS", "b_shift"))


def _loss_table():
    """-ln(p / 256) in 1/1000 for p = 0..256 (p < 1 as 0.5): the loss of a step from the label's
    probability without a float, computed once (or as 1000 * ln 2 per halving without floats)."""
    t = array.array("H", bytes(2 * 257))
    for p in range(257):
        q = p if p else 0.5
        t[p] = int(-log(q / 256) * 1000 + 0.5) if log else 693 * (8 - _log2(max(p, 1)))
    return t


class TrainingError(ValueError):
    pass


class Trainable:
    """What trains in one layer (the plan's record, as typed views of the model file)."""

    def __init__(self, t):
        self.rows = t["rows"]             # uint16 output channels
        self.cin_lo = t["cin_lo"]         # input channels [cin_lo, cin_hi) of the weights train
        self.cin_hi = t["cin_hi"]
        self.w_mult = t["w_mult"]         # per output channel SGD factors of the weights
        self.w_shift = t["w_shift"]
        self.b_mult = t["b_mult"] if t["bias"] else None   # ... of the bias (None: frozen)
        self.b_shift = t["b_shift"] if t["bias"] else None


class BackStep:
    """One layer of the backward pass with its views in the arena, prepared once."""

    def __init__(self, i, layer, gy, gp, acc, gx, mask, gs, down):
        self.i = i              # layer index
        self.layer = layer
        self.gy = gy            # int16 gradient w.r.t. the layer's output
        self.gp = gp            # the rescaled gradient (conv / depthwise)
        self.acc = acc          # int32 input-gradient accumulator
        self.gx = gx            # int16 gradient w.r.t. the layer's input (the next step's gy)
        self.mask = mask        # the input's clamp mask, or None
        self.gs = gs            # (mult, shift, exponent adjustment) of the rescaling
        self.down = down        # the gradient goes on to the layer below


class Trainer:
    """`Trainer(model)`: allocates the training arena of the model's plan once.

    step(x, label) -> loss          one sample (int8 bytes of the model's input size)
    predict(x) -> class index       evaluate() -> accuracy on the stored validation samples
    checkpoint() / rollback()       two slots that survive any resets; rollback restores the newest
    validate()                      keeps the best validated state apart, rolls back to it on a drop
    add_class(samples, name)        grow the classifier by one class, initialised from the samples
    export(path, delta=False)       the trained tensors (or their change) for the host to pull
    adopt(tag, size)                a tensor an adaptation sets (microtrain/adapt.py): in RAM and
                                    in every checkpoint from then on
    split_forward(x) / split_step   split training (a plan with a cut): the board's layers below
                                    the cut, the host's gradient at the cut (microtrain/link.py)
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
        self.cut = plan.get("cut", 0)     # split training: the board runs layers [0, cut), the host the rest
        self.rollbacks = 0
        # trainable tensors move to RAM, with the plan's factors as typed views
        self.train = {}
        for t in plan["train"]:
            l = layers[t["layer"]]
            if t["cin_hi"] > t["cin_lo"]:
                w = model.take_reserved(t["layer"], len(l.w))
                w[:] = l.w
                l.w = w
            if t["bias"]:
                l.b = bytearray(l.b)
            self.train[t["layer"]] = Trainable(t)
        # the arena: every buffer of the plan is a view, sliced once here
        self.arena = model.take_reserved("arena", plan["arena"])
        model._reserve = None             # what the plan did not ask for goes back to the heap
        mv = memoryview(self.arena)
        self.bufs = bufs = {}
        for name, (off, size) in plan["buffers"].items():
            bufs[name] = mv[off:off + size]
        self.masks = set(plan["masks"])
        self.views = model.forward_views(bufs, self.masks)
        model.share_views(self.views)
        self.scratch = bufs["scratch"]
        self._backward_views()
        self.rng = array.array("I", [plan["seed"] or 1])
        self.steps = 0
        self.samples = 0
        self.last_seq = -1
        self.lr_shift = 0
        self.ckpt_path = checkpoint_path
        self.store = ckpt.Store(checkpoint_path)              # periodic checkpoints
        self.best_store = ckpt.Store(checkpoint_path + ".best")   # the best validated state
        self.store.has()        # read the slots once now, so a step never walks the file system
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
        # validation samples too large for the arena (a plan with an empty val_x, e.g. 96x96 RGB
        # images): one slot each in a file on the board's flash, read back into the input view
        self.val_file = checkpoint_path + ".vals" if len(self.val_x) < self.val_capacity * model.in_size else None
        self.replay_x, self.replay_n = bufs["replay"], bufs["replay_n"]
        self.replay_per_class = len(self.replay_x) // (model.max_classes * model.in_size)
        size = model.in_size
        self.replay_slots = [slicer[i * size:(i + 1) * size] for i in range(model.max_classes * self.replay_per_class)]
        self._prob_view = None
        self.adapted = {}       # tag -> original bytes of tensors an adaptation changed (adapt.py)
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
        # a split plan's backward starts below the cut, from the gradient the host sends into grad0
        top = self.cut - 1 if self.cut else last - 1
        self.g_cut = g0[:2 * layers[top].out_size] if self.cut else None
        steps = []
        cur = 0
        for i in range(top, plan["first_backward"] - 1, -1):
            l = layers[i]
            gy = (g0, g1)[cur][:2 * l.out_size]
            other = (g0, g1)[1 - cur]
            down = i > plan["first_backward"]
            gs = plan["grads"].get(i)
            gp = other[:2 * l.out_size] if (down and l.op in (OP_CONV, OP_DWCONV)) else None
            acc = gacc[:4 * l.in_size] if down else None
            gx = other[:2 * l.in_size] if down else None
            p = l.inputs[0]     # the planner keeps the backward path a chain: p == i - 1
            mask = self.views[p][2] if (down and p in self.masks) else None
            steps.append(BackStep(i, l, gy, gp, acc, gx, mask, gs, down))
            if down:
                cur = 1 - cur
        self.bw = steps

    def _count_params(self):
        n = 0
        for i, t in self.train.items():
            l = self.model.layers[i]
            g = l.geom_t
            rows = len(t.rows) >> 1
            if t.cin_hi > t.cin_lo:
                n += rows * g[6] * g[7] * ((t.cin_hi - t.cin_lo) if l.op == OP_CONV else 1)
            if t.b_mult is not None:
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
        return self.train_step(x, label, seq) / 1000

    def train_step(self, x, label, seq=None):
        """One training step; returns the loss in 1/1000 (an integer: nothing is allocated)."""
        if self.cut:
            raise TrainingError("this plan is split at layer %d: the host runs the layers above it "
                                "(`microtrain train --split`)" % self.cut)
        self._check_label(label)
        t0 = ticks_us()
        probs = self.forward(x)
        self.k.softmax_grad(probs, label, self.g_logits)
        if self.logit_mask is not None:
            self.k.grad_mask(self.g_logits, self.logit_mask)
        self._backward(LOGIT_GRAD_EXP)
        return self._account(x, label, seq, probs[label] ^ 0x80, argmax(probs) == label, ticks_diff(ticks_us(), t0))

    def _check_label(self, label):
        if not 0 <= label < self.model.n_classes:
            raise ValueError("label: must be in [0, %d], got %d" % (self.model.n_classes - 1, label))

    def _backward(self, e):
        """The backward pass along the plan from the gradient in the first step's gy (scale
        2^e): each layer's input gradient (weights before the update), then its update."""
        k = self.k
        rng = self.rng
        lr = self.lr_shift
        views = self.views
        train = self.train
        for s in self.bw:
            l = s.layer
            x_in = views[s.i][0]
            ex = 0
            if s.down:
                op = l.op
                if op == OP_CONV or op == OP_DWCONV:
                    g = l.geom_t
                    gs = s.gs
                    k.grad_rescale(s.gy, g[3] * g[4], g[5], gs[0], gs[1], s.gp)
                    if op == OP_CONV:
                        k.conv_input_grad(l.geom, s.gp, l.w, s.acc)
                    else:
                        k.dwconv_input_grad(l.geom, s.gp, l.w, s.acc)
                    adj = gs[2]
                elif op == OP_MAXPOOL:
                    k.maxpool_input_grad(l.geom, x_in, s.gy, s.acc)
                    adj = 0
                else:
                    k.avgpool_input_grad(l.geom, s.gy, s.acc)
                    adj = -AVGPOOL_GRAD_BITS
                ex = e + adj + k.grad_narrow(s.acc, s.mask, s.gx)
            t = train.get(s.i)
            if t is not None:
                upd = k.conv_update if l.op == OP_CONV else k.dwconv_update
                upd(l.geom, x_in, l.zx, s.gy, e + lr, l.w, l.b, t.rows, t.cin_lo, t.cin_hi, t.w_mult, t.w_shift,
                    t.b_mult, t.b_shift, rng, self.scratch)
            if not s.down:
                break
            e = ex

    def _account(self, x, label, seq, p, correct, us):
        """After a step: counters, replay memory, telemetry, the divergence watch.  p: the label's
        probability in 1/256.  Returns the loss in 1/1000."""
        self.steps += 1
        self.samples += 1
        if seq is not None:
            self.last_seq = seq
        self._remember(x, label)
        loss = LOSS_MILLI[p]
        if self.steps & 15 == 1:            # gc.mem_free() walks the heap: sample it, not every step
            self.heap_free = mem_free()
        self.telemetry.step(self.steps, loss, correct, self.lr_shift, us, self.heap_free, self.n_params)
        self._watch(256 - p)
        return loss

    # ---- split training ----
    def split_forward(self, x):
        """Layers [0, cut) forward on one sample; returns the views of the activation at the cut
        and of its clamp mask (None when the plan keeps none) - what the host needs."""
        self.model.set_input(x, self.views[0][0])
        v = self.views[self.cut - 1]
        self.model.run(self.views, self.cut)
        return v[1], v[2]

    def split_step(self, x, label, e, p, correct, rng, us, seq=None):
        """The board's part of a split step, after split_forward(x) and the host's reply: the
        host's layers updated with the PRNG state `rng` (as one trainer would, top down), their
        gradient at the cut is in g_cut (scale 2^e), p is the label's probability in 1/256.  The
        backward runs through the board's layers; returns the loss in 1/1000."""
        self._check_label(label)
        t0 = ticks_us()
        self.rng[0] = rng
        if self.bw:
            self._backward(e)
        return self._account(x, label, seq, p, correct, us + ticks_diff(ticks_us(), t0))

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
        elif self.since_ckpt > 8 and a > self.best_avg + ((2048 - self.best_avg) >> 1) and self._has_checkpoint():
            self.rollback(reason="loss diverged")
            self.lr_shift = max(self.lr_shift - 1, MIN_LR_SHIFT)

    def _remember(self, x, label):
        r = self.replay_per_class
        if not r:
            return
        n = self.replay_n[label]
        self.replay_x[self.replay_slots[label * r + n % r]] = x if isinstance(x, BUFFERS) else bytes(x)
        n += 1
        self.replay_n[label] = n if n < 256 else r + n % r    # a byte: keep >= r, keep rotating

    def fit(self, samples, epochs=1):
        """Train on an iterable of (x, label) for some epochs; returns the mean loss of the last."""
        total = 0.0
        for _ in range(epochs):
            total, n = 0.0, 0
            for x, y in samples:
                total += self.train_step(x, y)
                n += 1
            total = total / 1000 / max(n, 1)
            self.telemetry.epoch(self.steps, total, self.lr_shift)
        return total

    # ---- validation ----
    def add_validation(self, x, label):
        """Keep a sample on the board for evaluate() (up to val_capacity; the oldest is replaced)."""
        i = self.val_n % self.val_capacity
        n = self.model.in_size
        x = x if isinstance(x, BUFFERS) else bytes(x)
        if self.val_file is None:
            self.val_x[i * n:(i + 1) * n] = x
        else:                   # a fresh file, then appended slots, then slots overwritten in turn
            with open(self.val_file, "wb" if not self.val_n else "ab" if i == self.val_n else "r+b") as f:
                if i < self.val_n:
                    f.seek(i * n)
                f.write(x)
        self.val_y[i] = label
        self.val_n += 1

    def evaluate(self, samples=None):
        """Accuracy on the stored validation samples (or on an iterable of (x, label))."""
        right = total = 0
        if samples is None and self.val_file is not None and self.val_n:
            with open(self.val_file, "rb") as f:
                for i in range(min(self.val_n, self.val_capacity)):
                    f.readinto(self.views[0][0])
                    right += argmax(self.model.run(self.views)) == self.val_y[i]
                    total += 1
        elif samples is None:
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
        """Evaluate on the stored validation samples.  A new best (or equal) is kept apart as the
        best validated state (its own two slots) and checkpointed; a drop of more than val_margin
        below the best rolls back to the best state - not to the last periodic checkpoint, which
        may hold the same poisoned weights - and halves the learning rate.  Returns the accuracy."""
        acc = self.evaluate()
        right, total = self.last_eval
        if not total:
            return acc
        pm = (1000 * right + (total >> 1)) // total         # per mille: an integer decision
        if self.best_val is not None and pm < self.best_val - self.val_margin and self.best_store.newest():
            self.rollback(reason="validation accuracy dropped", best=True)
            self.lr_shift = max(self.lr_shift - 1, MIN_LR_SHIFT)
        elif self.best_val is None or pm >= self.best_val:
            self.best_val = pm
            self.best_store.save(self._state(), self._state_blobs() + [(b"BVAL", struct.pack("<i", pm))])
        self.checkpoint()
        return acc

    def _has_checkpoint(self):
        return self.store.has()

    # ---- checkpoints ----
    def _state_blobs(self):
        """(tag, buffer) of everything training changes, in plan order."""
        out = []
        for i in sorted(self.train):
            l = self.model.layers[i]
            if isinstance(l.w, bytearray):
                out.append((b"W%03d" % i, l.w))
            if self.train[i].b_mult is not None:
                out.append((b"B%03d" % i, l.b))
        c = self.model.layers[self.classifier]
        if self.model.n_classes != self.original_classes:
            t = self.train[self.classifier]
            out.append((b"CLSM", c.mult))
            out.append((b"CLSS", c.shift))
            out.append((b"CLSR", t.rows))
            for tag, attr in CLASS_FACTORS:
                if getattr(t, attr) is not None:
                    out.append((tag, getattr(t, attr)))
            gs = self.plan["grads"].get(self.classifier)
            if gs is not None:
                out.append((b"CLGM", gs[0]))
                out.append((b"CLGS", gs[1]))
            out.append((b"LABL", "\n".join(self.model.labels).encode()))
        have = set(tag for tag, _ in out)
        for tag in sorted(self.adapted):
            if tag not in have:
                out.append((tag, self._tensor(tag)))
        return out

    # ---- tensors an adaptation changed (microtrain/adapt.py) ----
    def _tensor(self, tag):
        return getattr(self.model.layers[_layer_of(tag)], ADAPT_TAGS[tag[:1]])

    def adopt(self, tag, size):
        """The writable buffer of tensor `tag` (W/B/M/S + layer: weights, biases, multipliers,
        shifts), in RAM from now on and part of every checkpoint.  `size` must be its size
        (multipliers and shifts of a per-tensor layer may grow to one per channel)."""
        try:
            i = _layer_of(tag)
            attr = ADAPT_TAGS[tag[:1]]
            l = self.model.layers[i]
        except (KeyError, ValueError, IndexError):
            raise TrainingError("no tensor %r in this model" % tag)
        cur = getattr(l, attr)
        if cur is None or l.op not in (OP_CONV, OP_DWCONV):
            raise TrainingError("layer %d has no %s" % (i, attr))
        if size != len(cur) and not (attr in ("mult", "shift") and len(cur) == 4 and size == 4 * l.out_c):
            raise TrainingError("tensor %s: %d B, the model's has %d" % (tag.decode(), size, len(cur)))
        if tag not in self.adapted:
            self.adapted[tag] = bytes(cur)
        if not isinstance(cur, bytearray) or len(cur) != size:
            b = bytearray(size)
            if len(cur) == size:
                b[:] = cur
            else:
                for j in range(0, size, 4):
                    b[j:j + 4] = cur
            setattr(l, attr, b)
            cur = b
        return cur

    def _state(self):
        return ckpt.State(0, self.model.id, self.steps, self.samples, self.last_seq, self.lr_shift, self.rng[0],
                          self.model.n_classes)

    def checkpoint(self):
        """Write the training state to the checkpoint store: a reset at any moment, also twice in a
        row, leaves the newest complete checkpoint intact (two slots, see checkpoint.py)."""
        self.store.save(self._state(), self._state_blobs())
        self.best_avg = self.loss_avg
        self.since_ckpt = 0
        self.telemetry.event("checkpoint", self.steps)

    def resume(self):
        """After a reset: continue from the newest checkpoint, counters included (the link resumes
        after its last_seq).  False if there is none; TrainingError if it belongs to another
        model file or no slot is usable."""
        found = self.store.newest()
        if found is None:
            if self.store.skipped:
                raise TrainingError("no usable checkpoint (%s)" % "; ".join(self.store.skipped))
            return False
        st = self._load(found, self.store)
        self.steps, self.samples, self.last_seq, self.lr_shift = st.steps, st.samples, st.last_seq, st.lr_shift
        best = self.best_store.newest()
        if best is not None and best[1].model_id == self.model.id and b"BVAL" in best[2]:
            v = bytearray(4)
            self.best_store.read_into(best[0], best[2], b"BVAL", v)
            self.best_val = struct.unpack("<i", v)[0]
        self.telemetry.event("rollback", self.steps, "resume")
        return True

    def rollback(self, reason="requested", best=False):
        """Restore the trained tensors of the newest checkpoint (best=True: of the best validated
        state).  The stream's counters stay (those samples were received, once); the learning
        rate stays at the lower of now and then.  The restored state becomes the newest
        checkpoint, so a reset cannot bring back what was rolled back."""
        store = self.best_store if best else self.store
        found = store.newest()
        if found is None:
            why = "; ".join(store.skipped) or "none written yet"
            raise TrainingError("no valid checkpoint to roll back to (%s)" % why)
        lr = self.lr_shift
        st = self._load(found, store)
        self.rollbacks += 1                 # a split session's host rolls its layers back with these
        self.steps = st.steps
        self.lr_shift = min(lr, st.lr_shift)
        self.loss_avg = self.best_avg = None
        if best:
            self.store.save(self._state(), self._state_blobs())
        self.telemetry.event("rollback", self.steps, reason)
        return True

    def _load(self, found, store):
        """Apply a scanned checkpoint to the trainer: checked whole first, then copied in place."""
        slot, st, index = found
        if st.model_id != self.model.id:
            raise TrainingError("checkpoint %s belongs to another model file (model %08x, this one %08x): it was "
                                "left as it is; start over with `microtrain train --fresh` (or delete it)"
                                % (store.slots[slot], st.model_id, self.model.id))
        if not self.original_classes <= st.n_classes <= self.model.max_classes:
            raise ckpt.CheckpointError("%d classes, the model file has %d and room for %d"
                                       % (st.n_classes, self.original_classes, self.model.max_classes))
        if st.n_classes != self.model.n_classes:
            if st.n_classes < self.model.n_classes:
                raise TrainingError("the checkpoint predates the classes added since (%d < %d)"
                                    % (st.n_classes, self.model.n_classes))
            w, b = b"W%03d" % self.classifier, b"B%03d" % self.classifier
            blobs = {}
            for tag in index:
                if tag[:2] == b"CL" or tag in (w, b, b"LABL"):
                    blobs[tag] = bytearray(index[tag][1])
                    store.read_into(slot, index, tag, blobs[tag])
            for tag in (b, b"CLSM", b"CLSS", b"CLSR"):
                if tag not in blobs:
                    raise ckpt.CheckpointError("a checkpoint with added classes lacks %s" % tag.decode())
            self._resize_classifier(st.n_classes, blobs)
            if b"LABL" in blobs:
                self.model.labels = bytes(blobs[b"LABL"]).decode().split("\n")
        have = set(tag for tag, _ in self._state_blobs())
        for tag in index:
            if _is_tensor(tag) and tag not in have:
                self.adopt(tag, index[tag][1])
        for tag in list(self.adapted):
            if tag not in index:            # adapted after this checkpoint: back to the model file's
                setattr(self.model.layers[_layer_of(tag)], ADAPT_TAGS[tag[:1]], bytearray(self.adapted.pop(tag)))
        for tag, buf in self._state_blobs():
            if tag not in index:
                raise ckpt.CheckpointError("the checkpoint lacks tensor %s" % tag.decode())
            if index[tag][1] != len(buf):
                raise ckpt.CheckpointError("tensor %s holds %d bytes, the model needs %d"
                                           % (tag.decode(), index[tag][1], len(buf)))
        for tag, buf in self._state_blobs():
            if _is_tensor(tag):
                store.read_into(slot, index, tag, buf)
        self.rng[0] = st.rng
        return st

    def fresh(self):
        """Forget every checkpoint of this trainer (a new model file under the same name)."""
        self.store.clear()
        self.best_store.clear()

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
        t.rows = bytearray(blobs[b"CLSR"])
        for tag, attr in CLASS_FACTORS:
            if tag in blobs:
                setattr(t, attr, bytearray(blobs[tag]))
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
        self.views = self.model.forward_views(bufs, self.masks)
        self.model.share_views(self.views)
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
                 b"CLSR": bytes(t.rows) + struct.pack("<H", n)}
        for tag, attr in CLASS_FACTORS:
            f = getattr(t, attr)
            if f is not None:
                blobs[tag] = bytes(f) + struct.pack("<i", _ints(f)[ref])
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
            with open(path, "wb") as f:
                ckpt.write(f, self._state(), self._state_blobs())
            return path
        with open(self.model.path, "rb") as f:
            sections = modelfile.read_sections(f)
        _, original, _ = modelfile.parse_layers(sections)
        with open(path, "wb") as f:
            for i in sorted(self.train):
                l = self.model.layers[i]
                for tag, buf, base in ((b"W%03d" % i, l.w, original[i]["w"]), (b"B%03d" % i, l.b, original[i]["b"])):
                    if tag[:1] == b"W" and not isinstance(buf, bytearray) or tag[:1] == b"B" and self.train[i].b_mult is None:
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


def _is_tensor(tag):
    """W/B/M/S + three digits: a layer's tensor (not BVAL, CLSM, LABL)."""
    if tag[:1] not in ADAPT_TAGS:
        return False
    try:
        _layer_of(tag)
    except ValueError:
        return False
    return True


def _layer_of(tag):
    if len(tag) != 4:
        raise ValueError(tag)
    return int(tag[1:].decode())


def _ints(buf):
    return list(struct.unpack("<%di" % (len(buf) >> 2), bytes(buf)))


def _log2(v):
    n = 0
    while v > 1:
        v >>= 1
        n += 1
    return n


LOSS_MILLI = _loss_table()

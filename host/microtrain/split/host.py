"""The host's part of split training: the layers from the cut up, forward and backward.

`IntegerHost` runs them with the numpy reference kernels of the simulator - the same code
(Simulator.backward) on the same combined plan, so the board's layers and these together hold
the bytes one simulator would.  `FloatHost` runs them in float32 (dequantized weights, fp32
SGD with the same learning rate), returns the gradient at the cut as int16 with a power-of-two
scale, and `requantized()` gives the int8 layers to push at the end.

Both keep snapshots of their layers at the board's checkpoints (`snapshot(seq)`), so when the
board rolls back or resumes from a checkpoint after a reset, the host's layers go back with it.
"""

import struct

import numpy as np

from microtrain.board import link as proto
from microtrain.model.qmodel import PARAMETRIC, run_layer
from microtrain.sim import reference as ref
from microtrain.sim.simulator import Simulator

ACT_TAIL = struct.calcsize(proto.ACT_TAIL_FMT)
GRAD_TAIL = struct.calcsize(proto.GRAD_TAIL_FMT)
KEEP_SNAPSHOTS = 4


def parse_act(payload, n_act, n_mask):
    """(activation int8, mask bool or None, label, lr_shift, rng, rollbacks, ckpt_seq) of an ACT."""
    if len(payload) != n_act + n_mask + ACT_TAIL:
        raise ValueError(f"ACT of {len(payload)} B, the cut sends {n_act + n_mask + ACT_TAIL}")
    act = np.frombuffer(payload, np.int8, n_act).copy()
    mask = ref.unpack_mask(np.frombuffer(payload, np.uint8, n_mask, n_act), n_act) if n_mask else None
    label, lr, rng, rb, ckpt = struct.unpack_from(proto.ACT_TAIL_FMT, payload, n_act + n_mask)
    return act, mask, label, lr, rng, rb, ckpt


def grad_payload(gx, e, p, correct, rng):
    head = b"" if gx is None else np.asarray(gx, "<i2").tobytes()
    return head + struct.pack(proto.GRAD_TAIL_FMT, int(e), int(p), int(correct), int(rng) & 0xFFFFFFFF)


class IntegerHost:
    """Layers [cut, end) of `model` in the board's integer arithmetic (the combined plan)."""

    kind = "integer"

    def __init__(self, model, combined, cut, board_trains=True):
        self.sim = Simulator(model, combined)
        self.cut = cut
        self.board_trains = board_trains
        self.layers_trained = sorted(t.layer for t in combined.train if t.layer >= cut)
        self.snapshots = {}
        self.at = None          # the last sample whose step the host's layers hold

    @property
    def model(self):
        return self.sim.model

    def step(self, act, mask, label, lr_shift, rng):
        """One sample's host part: forward, the softmax gradient, backward down to the cut with
        the PRNG state `rng`.  Returns (gradient at the cut or None, exponent, p, correct, rng)."""
        sim, cut = self.sim, self.cut
        layers = sim.model.layers
        outs = {cut: act}
        masks = {cut - 1: mask} if mask is not None else {}
        for i in range(cut, len(layers)):
            outs[i + 1], masks[i] = run_layer(layers[i], outs[i])
        probs = outs[len(layers)]
        sim.rng, sim.lr_shift = rng, lr_shift
        g, e = sim.logits_grad(probs, label, masks)
        gx, ex = sim.backward(outs, masks, g, e, len(layers) - 2, cut)
        sim.loss(probs, label)
        if not self.board_trains:
            gx, ex = None, 0
        return gx, ex, sim.last_p, int(np.argmax(probs) == label), sim.rng

    def predict(self, act):
        x = act
        for l in self.sim.model.layers[self.cut:]:
            x, _ = run_layer(l, x)
        return int(np.argmax(x))

    # ---- snapshots at the board's checkpoints ----
    def state(self):
        return {i: (self.model.layers[i].w.copy(), self.model.layers[i].b.copy()) for i in self.layers_trained}

    def set_state(self, st):
        for i, (w, b) in st.items():
            self.model.layers[i].w, self.model.layers[i].b = w.copy(), b.copy()

    def snapshot(self, seq):
        if seq not in self.snapshots:
            self.snapshots[seq] = self.state()
            for old in sorted(self.snapshots)[:-KEEP_SNAPSHOTS]:
                del self.snapshots[old]

    def restore(self, seq):
        if seq not in self.snapshots:
            raise KeyError(seq)
        self.set_state(self.snapshots[seq])
        self.at = seq

    def trained_model(self):
        """The host's copy of the model with its layers as they are now (int8)."""
        return self.model.copy()


def _relu(l):
    """The layer's clamp sits at or above real 0 (act_min >= z_y): a ReLU, as the float net has it."""
    return l.act_min >= l.z_y


class FloatHost(IntegerHost):
    """Layers [cut, end) in float32: dequantized weights, fp32 SGD (lr of the plan), the
    gradient at the cut quantized to int16 with the power-of-two scale that fits its maximum.
    The board's side stays integer; the pair is not bit-reproducible against the simulator."""

    kind = "float"

    def __init__(self, model, combined, cut, board_trains=True):
        super().__init__(model, combined, cut, board_trains)
        self.lr = combined.lr
        m = self.sim.model
        self.fw = {}
        for i in range(cut, len(m.layers)):
            l = m.layers[i]
            if l.op in PARAMETRIC:
                if l.op != "conv" or l.geom.taps != 1 or l.geom.positions != 1:
                    raise ValueError(f"the float host side runs dense layers only; layer {i} is a {l.op} over "
                                     f"{l.geom.positions} positions: use the integer host (cut higher)")
                w = l.w.reshape(l.geom.out_c, -1).astype(np.float32) * np.asarray(l.s_w, np.float32).reshape(-1, 1)
                b = l.b.astype(np.float32) * np.asarray(l.s_w, np.float32) * np.float32(l.s_x)
                self.fw[i] = [w, b]
        self.trainable = {i for i in self.layers_trained}

    def step(self, act, mask, label, lr_shift, rng):
        m = self.sim.model
        cut = self.cut
        l0 = m.layers[cut]
        x = (act.astype(np.float32) - l0.z_x) * np.float32(l0.s_x)
        xs, pre = [], []
        for i in range(cut, len(m.layers)):
            l = m.layers[i]
            if l.op == "softmax":
                z = x - x.max()
                probs = np.exp(z) / np.exp(z).sum()
                break
            w, b = self.fw[i]
            xs.append(x)
            y = w @ x + b
            pre.append(y)
            x = np.maximum(y, 0) if _relu(l) else y
        g = probs.copy()
        g[label] -= 1
        lr = self.lr * 2.0 ** lr_shift
        par = [i for i in range(cut, len(m.layers) - 1)]
        for k in range(len(par) - 1, -1, -1):
            i = par[k]
            l = m.layers[i]
            if _relu(l):
                g = g * (pre[k] > 0)
            w, b = self.fw[i]
            gx = w.T @ g
            t = self.sim.train.get(i)
            if t is not None:
                if t.weights:
                    w -= lr * np.outer(g, xs[k])
                if t.bias:
                    b -= lr * g
            g = gx
        gq, e = None, 0
        if self.board_trains:
            if mask is not None:
                g = g * mask
            # the board's convention: g_real = g_int * 2^e, w.r.t. the real activation at the cut,
            # |g_int| < 2^14 as the integer backward narrows it
            top = float(np.abs(g).max())
            e = min(max(int(np.ceil(np.log2(top / 16383.0))) if top > 0 else -30, -48), 48)
            gq = np.clip(np.round(g * 2.0 ** -e), -16384, 16383).astype(np.int16)
        p = min(int(float(probs[label]) * 256), 255)    # as the int8 softmax: (y + 128) / 256
        return gq, e, p, int(np.argmax(probs) == label), rng

    def predict(self, act):
        raise NotImplementedError

    def state(self):
        return {i: (w.copy(), b.copy()) for i, (w, b) in self.fw.items()}

    def set_state(self, st):
        for i, (w, b) in st.items():
            self.fw[i] = [w.copy(), b.copy()]

    def trained_model(self):
        """The float layers requantized into the int8 model: weights per channel symmetric with
        new scales, biases at s_w * s_x, the output multipliers recomputed (requantization)."""
        from microtrain.model.fixedpoint import quantize_multipliers
        m = self.sim.model.copy()
        for i, (w, b) in self.fw.items():
            l = m.layers[i]
            s_w = np.maximum(np.abs(w).max(axis=1), 1e-12) / 127.0
            l.w = np.clip(np.round(w / s_w[:, None]), -127, 127).astype(np.int8).ravel()
            l.s_w = s_w.astype(np.float64)
            l.b = np.round(b / (s_w * l.s_x)).astype(np.int64).clip(-(1 << 31), (1 << 31) - 1).astype(np.int32)
            l.mult, l.shift = quantize_multipliers(l.s_w * l.s_x / l.s_y)
        return m

"""The host simulator: runs a training plan with the numpy reference kernels, step for step what
the board does (firmware/microtrain/trainer.py), so that after any number of steps on the same
samples the board and the simulator hold identical trainable weights, PRNG state and counters.

Also the fp32 fine-tuning baseline of the same trainable subset (`float_finetune`).
"""

import math

import numpy as np

from microtrain.sim import reference as ref
from microtrain.model.qmodel import PARAMETRIC, run_layer

LOGIT_GRAD_EXP = ref.SOFTMAX_GRAD_EXP


class Simulator:
    def __init__(self, model, plan):
        self.model = model.copy()
        self.plan = plan
        self.rng = plan.seed & 0xFFFFFFFF or 1
        self.steps = 0
        self.lr_shift = 0
        self.train = {t.layer: t for t in plan.train}

    # ---- inference ----
    def forward(self, xq):
        x = np.asarray(xq, dtype=np.int8).ravel()
        outs = [x]                           # outs[j + 1]: layer j's output (outs[0] the input)
        masks = {}
        for i, l in enumerate(self.model.layers):
            y, mask = run_layer(l, *[outs[j + 1] for j in l.inputs])
            outs.append(y)
            masks[i] = mask
        return outs, masks

    def predict(self, xq):
        outs, _ = self.forward(xq)
        return int(np.argmax(outs[-1])), outs[-1]

    def evaluate(self, X, y):
        return float(np.mean([self.predict(x)[0] == t for x, t in zip(X, y)]))

    # ---- one training step ----
    def step(self, xq, label):
        """Forward, backward along the plan, in-place SGD; returns the loss (float, report only)."""
        outs, masks = self.forward(xq)
        g, e = self.logits_grad(outs[-1], label, masks)
        self.backward(outs, masks, g, e, len(self.model.layers) - 2, self.plan.first_backward)
        self.steps += 1
        return self.loss(outs[-1], label)

    def logits_grad(self, probs, label, masks):
        """The gradient at the classifier's output: the integer softmax minus the one-hot label
        (scale 2^LOGIT_GRAD_EXP), through the classifier's clamp mask where the plan keeps it."""
        layers = self.model.layers
        last = len(layers) - 1
        if layers[last].op != "softmax":
            raise ValueError("training needs a softmax classifier as the last layer")
        g = ref.softmax_grad(probs, label)
        if last - 1 in self.plan.masks:
            g = ref.grad_mask(g, masks[last - 1])
        return g, LOGIT_GRAD_EXP

    def loss(self, probs, label):
        self.last_p = int(probs[label]) + 128        # the label's probability in 1/256, as the board's
        return -math.log(max(self.last_p / 256.0, 1.0 / 512))

    def backward(self, outs, masks, g, e, top, bottom):
        """Layers top, top - 1, ..., bottom of the backward pass from g (scale 2^e) at top's
        output: each layer's input gradient (with its weights before this step's update), then
        its update.  Returns (g, e) at bottom's input, or (None, None) where the plan needs none
        (split training: the host runs the layers above the cut, the board those below)."""
        layers = self.model.layers
        for i in range(top, bottom - 1, -1):
            l = layers[i]
            p = l.inputs[0]                  # the planner keeps the backward path a chain: p == i - 1
            x = outs[p + 1]                  # this layer's input
            gx = ex = None
            if i in self.plan.grads or (i > self.plan.first_backward and l.op in ("maxpool", "avgpool")):
                if l.op in PARAMETRIC:
                    gs = self.plan.grads[i]
                    gp = ref.grad_rescale(g.reshape(-1, l.geom.out_c), gs.mult, gs.shift).ravel()
                    fn = ref.conv_input_grad if l.op == "conv" else ref.dwconv_input_grad
                    acc = fn(l.geom, gp, l.w)
                    adj = gs.exp_adjust
                elif l.op == "maxpool":
                    acc, adj = ref.maxpool_input_grad(l.geom, x, g), 0
                else:
                    acc, adj = ref.avgpool_input_grad(l.geom, g), -ref.AVGPOOL_GRAD_BITS
                gx, r = ref.grad_narrow(acc, masks.get(p) if p in self.plan.masks else None)
                ex = e + adj + r
            t = self.train.get(i)
            if t is not None:
                fn = ref.conv_update if l.op == "conv" else ref.dwconv_update
                l.w, l.b, self.rng = fn(l.geom, x, l.z_x, g, e + self.lr_shift, l.w, l.b, t.rows, t.cin_lo, t.cin_hi,
                                        t.w_mult, t.w_shift, t.b_mult if t.bias else None,
                                        t.b_shift if t.bias else None, self.rng)
            if gx is None:
                return None, None
            g, e = gx, ex
        return g, e

    # ---- state ----
    def trainable_state(self):
        """Bytes of everything training changes, in the order of the board's checkpoint blobs
        (weights of layers whose weights train; trained biases)."""
        out = bytearray()
        for t in self.plan.train:
            l = self.model.layers[t.layer]
            if t.weights:
                out += np.asarray(l.w, np.int8).tobytes()
            if t.bias:
                out += np.asarray(l.b, "<i4").tobytes()
        return bytes(out), self.rng, self.steps

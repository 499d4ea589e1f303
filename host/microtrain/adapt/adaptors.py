"""The host's adaptors: from a board's anchors (embeddings and layer statistics, never raw
samples) to a delta of its parameters.  Each is one documented choice (docs/adapt.md):

head       a closed-form classifier: ridge regression of one-hot labels on the anchor
           embeddings, quantized into the classifier's rows and biases at its own scales (its
           multipliers stay, so the plan's training factors stay valid for later backprop)
correct    distribution correction of the first backbone layer: the per-channel scale and
           offset that give its pre-activations the source statistics again, folded into its
           integer multipliers and biases (the first layer's statistics are the only ones the
           board measured with nothing corrected below them)
generator  a linear map learned on the host across many simulated domains (the sensor
           distortions of the scenario: camera shifts and contrast, IMU rotations and gains) from
           the anchors' statistics of every backbone layer to the corrections of every layer
           that re-estimating statistics over all of a domain's samples would make
"""

import numpy as np

from microtrain.adapt import core

METHODS = ("head", "correct", "generator")
BOARD_METHODS = ("imprint", "restats")


def head(model, E, y, ridge=0.1):
    """Ridge regression of one-hot labels on the anchors' embeddings (minus the classifier's
    input zero point), bias unregularized; lambda = ridge x the mean squared embedding."""
    cls = core.classifier(model)
    c = model.layers[cls]
    nc = model.n_classes
    X = np.asarray(E, np.float64) - c.z_x
    Y = np.eye(nc)[np.asarray(y)]
    A = np.hstack([X, np.ones((len(X), 1))])
    lam = ridge * float(np.mean(X * X)) * len(X)
    R = lam * np.eye(A.shape[1])
    R[-1, -1] = 0.0
    W = np.linalg.solve(A.T @ A + R + 1e-9 * np.eye(A.shape[1]), A.T @ Y)        # [E + 1, C]
    Wr, b = W[:-1].T, W[-1]
    # the classifier's real multipliers M_c: logits y = zy + M_c (w x + b), one beta for all rows
    M = np.broadcast_to(np.asarray(c.mult, np.float64) * 2.0 ** (np.asarray(c.shift, np.float64) - 31), nc)
    top = max(8, (127 - c.z_y) * 3 // 4)
    L = A @ W
    beta = min(127.0 / np.max(np.abs(Wr) / M[:, None]), top / max(np.max(np.abs(L)), 1e-9))
    w = np.clip(np.round(beta * Wr / M[:, None]), -127, 127).astype(np.int8)
    bq = np.clip(np.round(beta * b / M), -2**31, 2**31 - 1).astype(np.int32)
    return {f"W{cls:03d}": w.reshape(c.w.shape), f"B{cls:03d}": bq}


def correct(model, source, target):
    """Distribution correction of the first backbone layer from the anchors' statistics."""
    i = core.stat_layers(model)[0]
    return core.correct_layer(model, i, source[i], target[i])


# ---- the learned generator ----
def features(model, source, target):
    """Per channel of every backbone layer: log of the std ratio and the mean shift in source
    standard deviations (anchors vs source)."""
    f = []
    for i in core.stat_layers(model):
        sm, ss = (np.asarray(v, np.float64) for v in source[i])
        tm, ts = (np.asarray(v, np.float64) for v in target[i])
        sd = np.maximum(ss, 1.0)
        f += [np.log(np.maximum(ts, 1.0) / sd), (tm - sm) / sd]
    return np.concatenate(f)


def _params(model, delta, source):
    """A restats delta as per-channel (log a, d / source std) of every layer: the generator's
    target space, from the folded multipliers back (a = M'/M, d from the bias move)."""
    out = []
    for i in core.stat_layers(model):
        l = model.layers[i]
        C = l.geom.out_c
        M = np.broadcast_to(np.asarray(l.mult, np.float64) * 2.0 ** (np.asarray(l.shift, np.float64) - 31), C)
        M2 = delta[f"M{i:03d}"] * 2.0 ** (delta[f"S{i:03d}"].astype(np.float64) - 31)
        a = M2 / M
        db = delta[f"B{i:03d}"].astype(np.float64) - np.asarray(l.b, np.float64)
        d = db * M2 / 2.0 ** core.B.WIDE_SHIFT * core.B.STAT_ONE      # back to 1/16 pass units
        out += [np.log(a), d / np.maximum(np.asarray(source[i][1], np.float64), 1.0)]
    return np.concatenate(out)


class Generator:
    """Ridge regression from `features` to restats' per-channel parameters, fit on simulated
    domains: each domain is the source data through one random distortion; its features are
    those of the anchors the board would pick there, its target the restats of all its samples."""

    def __init__(self, model, source, ridge=1.0):
        self.model, self.source, self.ridge = model, source, ridge
        self.W = None

    def fit(self, X_src, y_src, distort, k, domains, per_domain=100, seed=0):
        """distort(X float, seed) -> X float (a domain); X_src float samples the model's input
        quantization takes.  Returns self."""
        rng = np.random.default_rng([0x6E4, seed])
        F, T = [], []
        layers = core.stat_layers(self.model)
        for d in range(domains):
            pick = rng.choice(len(X_src), size=min(per_domain, len(X_src)), replace=False)
            Xd = self.model.quantize_input(distort(X_src[pick], 10_000 + seed * 1000 + d).reshape(len(pick), -1))
            yd = y_src[pick]
            E, sums = core.forward_all(self.model, Xd, layers)
            anchors = core.select(E, yd, k, self.model.n_classes)
            tgt = {i: core.finish(sums[i], np.asarray(anchors), core.positions(self.model, i)) for i in layers}
            oracle = core.restats(self.model, Xd, np.arange(len(Xd)), self.source)
            F.append(features(self.model, self.source, tgt))
            T.append(_params(self.model, oracle, self.source))
        F, T = np.array(F), np.array(T)
        self.mu, self.sd = F.mean(0), F.std(0) + 1e-6
        A = np.hstack([(F - self.mu) / self.sd, np.ones((len(F), 1))])
        R = self.ridge * np.eye(A.shape[1])
        R[-1, -1] = 0.0
        self.W = np.linalg.solve(A.T @ A + R, A.T @ T)
        return self

    def delta(self, target):
        """The delta for a board whose anchors have statistics `target`."""
        f = (features(self.model, self.source, target) - self.mu) / self.sd
        p = np.append(f, 1.0) @ self.W
        out, o = {}, 0
        for i in core.stat_layers(self.model):
            C = self.model.layers[i].geom.out_c
            la, dn = p[o:o + C], p[o + C:o + 2 * C]
            o += 2 * C
            one = 1 << 12
            a = [(int(round(float(np.exp(np.clip(v, -np.log(4), np.log(4)))) * one)), one) for v in la]
            d = [int(round(float(v) * max(float(s), 1.0))) for v, s in zip(dn, self.source[i][1])]
            out.update(core.folded(self.model, i, a, d))
        return out

    def save(self, path):
        np.savez(path, W=self.W, mu=self.mu, sd=self.sd)

    def load(self, path):
        z = np.load(path)
        self.W, self.mu, self.sd = z["W"], z["mu"], z["sd"]
        return self

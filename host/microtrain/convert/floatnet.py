"""Small float numpy network library: sequential models, forward, backward, training.

Used to pretrain the reference models before int8 quantization and as the fp32 fine-tuning
baseline (including sparse updates through ``trainable``).  Layouts are the project's (see
reference.py / mt_kernels.h):

* activations per sample [H][W][C] (channels last); a batch is (n, H, W, C); every layer
  outputs a 4-D batch (Dense gives (n, 1, 1, out));
* Conv weights (out_c, k_h, k_w, in_c) (TFLite OHWI), bias (out_c,);
* DepthwiseConv weights (k_h, k_w, in_c * depth_mult), output channel oc = ic * depth_mult + j;
* Dense weights (out, in_features) with the input flattened in H, W, C order;
* SAME padding as TFLite: out = ceil(in / stride), pad_total = max((out - 1) * stride + k - in, 0),
  pad_before = pad_total // 2; average pooling divides by the number of valid (non-padding)
  elements; max pooling ignores padding.

The last layer's output, flattened to (n, classes), is the logits of a softmax cross-entropy.
Everything is vectorized (strided views + matmul; loops only over kernel taps).  A ``Net`` has
one dtype (float32 by default, float64 for gradient checks).  Initialization is deterministic
given the seed: He normal for layers followed by ReLU, Glorot uniform otherwise, zero biases.
"""

import copy

import numpy as np


def _pair(v):
    if v is None:
        return None
    if np.isscalar(v):
        return (int(v), int(v))
    a, b = v
    return (int(a), int(b))


def conv_geometry(in_h, in_w, k_h, k_w, stride, padding):
    """(out_h, out_w, pad_t, pad_l) of a conv/pool window, TFLite SAME/VALID rules (the same
    computation as the integer kernels' geometry, reference.Geom.conv)."""
    from microtrain.sim.reference import Geom
    g = Geom.conv(in_h, in_w, 1, 1, k_h, k_w, tuple(stride), padding)
    return g.out_h, g.out_w, g.pad_t, g.pad_l


# ---------------------------------------------------------------------------------------------
# layers


class Layer:
    """Base: ``build`` sets shapes/params, ``forward`` caches what ``backward`` needs."""

    has_params = False
    relu = False

    def build(self, in_shape, rng, dtype):
        self.in_shape = tuple(in_shape)
        self.dtype = dtype
        self.out_shape = self._build(self.in_shape, rng)
        return self.out_shape

    def macs(self):
        return 0

    def _relu_fwd(self, y, keep):
        if self.relu:
            np.maximum(y, 0, out=y)
            if keep:
                self._mask = y > 0
        return y

    def _relu_bwd(self, gy):
        return gy * self._mask if self.relu else gy

    def __repr__(self):
        return f"{type(self).__name__}({getattr(self, 'in_shape', '?')} -> {getattr(self, 'out_shape', '?')})"


class _Windowed(Layer):
    """Shared geometry of conv / depthwise / pooling layers."""

    def _geom(self, in_shape):
        H, W, C = in_shape
        self.out_h, self.out_w, self.pad_t, self.pad_l = conv_geometry(
            H, W, self.k_h, self.k_w, self.stride, self.padding)
        # padded extent large enough for every window, as in reference._padded
        self.Hp = max((self.out_h - 1) * self.stride[0] + self.k_h, self.pad_t + H)
        self.Wp = max((self.out_w - 1) * self.stride[1] + self.k_w, self.pad_l + W)

    def _pad(self, x, fill=0.0):
        n, H, W, C = x.shape
        if self.Hp == H and self.Wp == W:
            return x
        p = np.full((n, self.Hp, self.Wp, C), fill, dtype=x.dtype)
        p[:, self.pad_t:self.pad_t + H, self.pad_l:self.pad_l + W] = x
        return p

    def _crop(self, p):
        H, W, _ = self.in_shape
        return p[:, self.pad_t:self.pad_t + H, self.pad_l:self.pad_l + W]

    def _tap(self, p, i, j):
        """(n, out_h, out_w, C) view of padded p seen by kernel tap (i, j)."""
        sh, sw = self.stride
        return p[:, i:i + sh * (self.out_h - 1) + 1:sh, j:j + sw * (self.out_w - 1) + 1:sw]

    def _taps(self):
        return [(i, j) for i in range(self.k_h) for j in range(self.k_w)]

    def _cols(self, p):
        """(n, out_h, out_w, k_h, k_w, C) strided view of padded p (no copy)."""
        sh, sw = self.stride
        win = np.lib.stride_tricks.sliding_window_view(p, (self.k_h, self.k_w), axis=(1, 2))
        win = win[:, :sh * (self.out_h - 1) + 1:sh, :sw * (self.out_w - 1) + 1:sw]
        return win.transpose(0, 1, 2, 4, 5, 3)                     # (n, oh, ow, C, kh, kw) -> HWC

    def geom_args(self):
        """Keyword arguments of ``reference.Geom.conv``-style geometry."""
        H, W, C = self.in_shape
        return dict(in_h=H, in_w=W, in_c=C, out_c=self.out_shape[2], k_h=self.k_h, k_w=self.k_w,
                    stride=self.stride, padding=self.padding)


class Conv(_Windowed):
    has_params = True

    def __init__(self, out_c, k_h, k_w, stride=(1, 1), padding="valid", relu=True):
        self.out_c, self.k_h, self.k_w = int(out_c), int(k_h), int(k_w)
        self.stride, self.padding, self.relu = _pair(stride), padding, bool(relu)

    def _build(self, in_shape, rng):
        self._geom(in_shape)
        C = in_shape[2]
        fan_in, fan_out = self.k_h * self.k_w * C, self.k_h * self.k_w * self.out_c
        self.W = _init(rng, (self.out_c, self.k_h, self.k_w, C), fan_in, fan_out, self.relu, self.dtype)
        self.b = np.zeros(self.out_c, dtype=self.dtype)
        return (self.out_h, self.out_w, self.out_c)

    def macs(self):
        return self.out_h * self.out_w * self.out_c * self.k_h * self.k_w * self.in_shape[2]

    def forward(self, x, keep=False):
        n = x.shape[0]
        cols = self._cols(self._pad(x)).reshape(n * self.out_h * self.out_w, -1)   # copies
        y = (_mm(cols, self.W.reshape(self.out_c, -1).T) + self.b).reshape(n, self.out_h, self.out_w, self.out_c)
        if keep:
            self._x_cols = cols
        return self._relu_fwd(y, keep)

    def backward(self, gy):
        gy = self._relu_bwd(gy)
        n = gy.shape[0]
        g2 = gy.reshape(-1, self.out_c)
        self.dW = _mm(g2.T, self._x_cols).reshape(self.W.shape)
        self.db = g2.sum(axis=0)
        gcols = _mm(g2, self.W.reshape(self.out_c, -1)).reshape(
            n, self.out_h, self.out_w, self.k_h, self.k_w, self.in_shape[2])
        gp = np.zeros((n, self.Hp, self.Wp, self.in_shape[2]), dtype=gy.dtype)
        for i, j in self._taps():
            self._tap(gp, i, j)[...] += gcols[:, :, :, i, j]
        return self._crop(gp)


class DepthwiseConv(_Windowed):
    has_params = True

    def __init__(self, depth_mult, k_h, k_w, stride=(1, 1), padding="valid", relu=True):
        self.depth_mult, self.k_h, self.k_w = int(depth_mult), int(k_h), int(k_w)
        self.stride, self.padding, self.relu = _pair(stride), padding, bool(relu)

    def _build(self, in_shape, rng):
        self._geom(in_shape)
        oc = in_shape[2] * self.depth_mult
        fan = self.k_h * self.k_w
        self.W = _init(rng, (self.k_h, self.k_w, oc), fan, fan * self.depth_mult, self.relu, self.dtype)
        self.b = np.zeros(oc, dtype=self.dtype)
        return (self.out_h, self.out_w, oc)

    def macs(self):
        return self.out_h * self.out_w * self.out_shape[2] * self.k_h * self.k_w

    def _rep(self, v):
        """(..., C) -> (..., C * depth_mult), channel ic feeding outputs ic*M .. ic*M+M-1."""
        return np.repeat(v, self.depth_mult, axis=-1) if self.depth_mult > 1 else v

    def forward(self, x, keep=False):
        p = self._pad(x)
        n = x.shape[0]
        y = np.empty((n, self.out_h, self.out_w, self.out_shape[2]), dtype=x.dtype)
        y[...] = self.b
        for i, j in self._taps():
            y += self._rep(self._tap(p, i, j)) * self.W[i, j]
        if keep:
            self._p = p
        return self._relu_fwd(y, keep)

    def backward(self, gy):
        gy = self._relu_bwd(gy)
        n, C, M = gy.shape[0], self.in_shape[2], self.depth_mult
        self.dW = np.empty_like(self.W)
        self.db = gy.sum(axis=(0, 1, 2))
        gp = np.zeros((n, self.Hp, self.Wp, C), dtype=gy.dtype)
        for i, j in self._taps():
            self.dW[i, j] = np.einsum("nhwo,nhwo->o", gy, self._rep(self._tap(self._p, i, j)))
            self._tap(gp, i, j)[...] += (gy * self.W[i, j]).reshape(n, self.out_h, self.out_w, C, M).sum(-1)
        return self._crop(gp)


class MaxPool(_Windowed):
    def __init__(self, k_h, k_w, stride=None, padding="valid"):
        self.k_h, self.k_w = int(k_h), int(k_w)
        self.stride, self.padding = _pair(stride) or (self.k_h, self.k_w), padding

    def _build(self, in_shape, rng):
        self._geom(in_shape)
        return (self.out_h, self.out_w, in_shape[2])

    def forward(self, x, keep=False):
        p = self._pad(x, -np.inf)
        n, C = x.shape[0], x.shape[3]
        win = self._cols(p).reshape(n, self.out_h, self.out_w, self.k_h * self.k_w, C)
        arg = win.argmax(axis=3)                                       # first maximum wins
        if keep:
            self._arg = arg
        return np.take_along_axis(win, arg[:, :, :, None], axis=3)[:, :, :, 0]

    def backward(self, gy):
        n, C = gy.shape[0], self.in_shape[2]
        gp = np.zeros((n, self.Hp, self.Wp, C), dtype=gy.dtype)
        for t, (i, j) in enumerate(self._taps()):
            self._tap(gp, i, j)[...] += np.where(self._arg == t, gy, 0)
        return self._crop(gp)


class AvgPool(_Windowed):
    def __init__(self, k_h, k_w, stride=None, padding="valid"):
        self.k_h, self.k_w = int(k_h), int(k_w)
        self.stride, self.padding = _pair(stride) or (self.k_h, self.k_w), padding

    def _build(self, in_shape, rng):
        self._geom(in_shape)
        ones = self._pad(np.ones((1,) + tuple(in_shape[:2]) + (1,)), 0.0)
        cnt = sum(self._tap(ones, i, j) for i, j in self._taps())      # valid elements per window
        self._inv = (1.0 / cnt).astype(self.dtype)                     # (1, oh, ow, 1)
        return (self.out_h, self.out_w, in_shape[2])

    def forward(self, x, keep=False):
        p = self._pad(x)
        s = np.zeros((x.shape[0], self.out_h, self.out_w, x.shape[3]), dtype=x.dtype)
        for i, j in self._taps():
            s += self._tap(p, i, j)
        return s * self._inv

    def backward(self, gy):
        n, C = gy.shape[0], self.in_shape[2]
        g = gy * self._inv
        gp = np.zeros((n, self.Hp, self.Wp, C), dtype=gy.dtype)
        for i, j in self._taps():
            self._tap(gp, i, j)[...] += g
        return self._crop(gp)


class GlobalAvgPool(Layer):
    def _build(self, in_shape, rng):
        return (1, 1, in_shape[2])

    def forward(self, x, keep=False):
        return x.mean(axis=(1, 2), keepdims=True)

    def backward(self, gy):
        H, W, C = self.in_shape
        return np.broadcast_to(gy / (H * W), (gy.shape[0], H, W, C)).copy()


class Dense(Layer):
    has_params = True

    def __init__(self, out, relu=False):
        self.out, self.relu = int(out), bool(relu)

    def _build(self, in_shape, rng):
        fin = int(np.prod(in_shape))
        self.W = _init(rng, (self.out, fin), fin, self.out, self.relu, self.dtype)
        self.b = np.zeros(self.out, dtype=self.dtype)
        return (1, 1, self.out)

    def macs(self):
        return self.W.size

    def forward(self, x, keep=False):
        x2 = x.reshape(x.shape[0], -1)                                 # H, W, C order
        if keep:
            self._x = x2
        y = (_mm(x2, self.W.T) + self.b).reshape(x.shape[0], 1, 1, self.out)
        return self._relu_fwd(y, keep)

    def backward(self, gy):
        gy = self._relu_bwd(gy).reshape(gy.shape[0], self.out)
        self.dW = _mm(gy.T, self._x)
        self.db = gy.sum(axis=0)
        return _mm(gy, self.W).reshape((gy.shape[0],) + self.in_shape)


def _mm(a, b):
    """a @ b on C-contiguous operands: numpy's matmul on a transposed float32 view can fall off
    the BLAS path and be ~100x slower (seen with numpy 2.4)."""
    return np.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b))


def _init(rng, shape, fan_in, fan_out, relu, dtype):
    if relu:                                                           # He normal
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    else:                                                              # Glorot uniform
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-lim, lim, size=shape)
    return w.astype(dtype)


# ---------------------------------------------------------------------------------------------
# loss


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of (n, classes) logits vs int labels; returns (loss, dloss/dlogits)."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(n), y].mean()
    g = np.exp(logp)
    g[np.arange(n), y] -= 1.0
    return float(loss), g / n


# ---------------------------------------------------------------------------------------------
# network


class Net:
    """Sequential model.  ``layers[i].W`` / ``.b`` are the parameters (read/write numpy arrays)."""

    def __init__(self, layers, input_shape, seed=0, dtype=np.float32):
        self.layers = list(layers)
        self.input_shape = tuple(int(v) for v in input_shape)
        if len(self.input_shape) != 3:
            raise ValueError("input_shape is (H, W, C)")
        self.dtype = np.dtype(dtype)
        self.seed = seed
        rng = np.random.default_rng(seed)
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.build(shape, rng, self.dtype)
        self.output_shape = shape

    # -- inference ------------------------------------------------------------------------
    def _input(self, X):
        X = np.asarray(X, dtype=self.dtype)
        return X.reshape((X.shape[0],) + self.input_shape)

    def forward(self, X, keep=False):
        """Logits (n, classes).  ``keep`` caches what ``backward`` needs."""
        a = self._input(X)
        for layer in self.layers:
            a = layer.forward(a, keep)
        return a.reshape(a.shape[0], -1)

    def activations(self, X, batch_size=None):
        """Every layer's output (list of (n, H, W, C) arrays), e.g. for range calibration."""
        X = self._input(X)
        step = batch_size or max(len(X), 1)
        outs = [[] for _ in self.layers]
        for s in range(0, len(X), step):
            a = X[s:s + step]
            for k, layer in enumerate(self.layers):
                a = layer.forward(a, False)
                outs[k].append(a)
        return [np.concatenate(o) for o in outs]

    def predict(self, X, batch_size=512):
        X = self._input(X)
        return np.concatenate([self.forward(X[s:s + batch_size]).argmax(axis=1)
                               for s in range(0, len(X), batch_size)] or [np.zeros(0, np.int64)])

    def accuracy(self, X, y):
        return float(np.mean(self.predict(X) == np.asarray(y)))

    # -- gradients ------------------------------------------------------------------------
    def backward(self, grad):
        """Backpropagate d(loss)/d(logits) through the last ``forward(keep=True)``.

        Returns a list with one entry per layer: (dW, db) for layers with parameters, else None.
        The gradient with respect to the input is left in ``self.input_grad``.
        """
        g = np.asarray(grad, dtype=self.dtype).reshape((grad.shape[0],) + self.output_shape)
        for layer in reversed(self.layers):
            g = layer.backward(g)
        self.input_grad = g
        return [(l.dW, l.db) if l.has_params else None for l in self.layers]

    def loss_and_grads(self, X, y):
        """(mean softmax cross-entropy, per-layer [(dW, db) | None])."""
        logits = self.forward(X, keep=True)
        loss, g = softmax_cross_entropy(logits, np.asarray(y))
        return loss, self.backward(g)

    def loss(self, X, y):
        return softmax_cross_entropy(self.forward(X), np.asarray(y))[0]

    # -- training -------------------------------------------------------------------------
    def param_layers(self):
        return [i for i, l in enumerate(self.layers) if l.has_params]

    def _masks(self, trainable):
        """{layer: (W mask | True | False, b mask | True | False)} for every parameter layer."""
        out = {}
        spec = None if trainable is None else {int(k): v for k, v in trainable.items()}
        if spec is not None:
            bad = [k for k in spec if k not in self.param_layers()]
            if bad:
                raise ValueError(f"trainable names layers without parameters: {bad}")
        for i in self.param_layers():
            if spec is None:
                out[i] = (True, True)
                continue
            s = spec.get(i, {"weights": False, "bias": False})
            masks = []
            for key, p in (("weights", self.layers[i].W), ("bias", self.layers[i].b)):
                m = s.get(key, False)
                if isinstance(m, (bool, np.bool_)):
                    masks.append(bool(m))
                else:
                    m = np.asarray(m, dtype=bool)
                    if m.shape != p.shape:
                        raise ValueError(f"layer {i} {key} mask shape {m.shape} != {p.shape}")
                    masks.append(m)
            out[i] = tuple(masks)
        return out

    def fit(self, X, y, epochs, lr=1e-3, batch_size=32, seed=0, optimizer="adam",
            weight_decay=0.0, trainable=None, momentum=0.0, betas=(0.9, 0.999), eps=1e-8,
            verbose=False):
        """Mini-batch training of softmax cross-entropy; returns the mean loss of every epoch.

        optimizer "adam" (bias-corrected) or "sgd" (optional ``momentum``).  ``weight_decay``
        adds wd * W to the weight gradients (L2; biases are not decayed).  ``trainable``
        restricts updates: None trains everything, else a dict {layer_index: {"weights": bool |
        bool mask of W's shape, "bias": bool | bool mask of b's shape}}; layers not listed and
        masked-out entries are never written (they stay bit-identical).  Batches are shuffled
        with ``seed``; the result is deterministic for a given seed.
        """
        X = self._input(X)
        y = np.asarray(y)
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', not {optimizer!r}")
        masks = self._masks(trainable)
        active = {i: m for i, m in masks.items() if m[0] is not False or m[1] is not False}
        rng = np.random.default_rng(seed)
        state = {(i, k): [np.zeros_like(p), np.zeros_like(p)]
                 for i in active for k, p in (("W", self.layers[i].W), ("b", self.layers[i].b))}
        b1, b2 = betas
        t = 0
        history = []
        for epoch in range(epochs):
            order = rng.permutation(len(X))
            total = 0.0
            for s in range(0, len(X), batch_size):
                idx = order[s:s + batch_size]
                loss, grads = self.loss_and_grads(X[idx], y[idx])
                total += loss * len(idx)
                t += 1
                for i, (mw, mb) in active.items():
                    layer = self.layers[i]
                    dW, db = grads[i]
                    for key, p, g, m in (("W", layer.W, dW, mw), ("b", layer.b, db, mb)):
                        if m is False:
                            continue
                        if key == "W" and weight_decay:
                            g = g + weight_decay * p
                        m1, m2 = state[(i, key)]
                        if optimizer == "adam":
                            m1 *= b1
                            m1 += (1 - b1) * g
                            m2 *= b2
                            m2 += (1 - b2) * g * g
                            step = (lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)) * m1 / (np.sqrt(m2) + eps)
                        elif momentum:
                            m1 *= momentum
                            m1 += g
                            step = lr * m1
                        else:
                            step = lr * g
                        step = step.astype(p.dtype, copy=False)
                        if m is True:
                            p -= step
                        else:
                            np.subtract(p, step, out=p, where=m)
            history.append(total / len(X))
            if verbose:
                print(f"epoch {epoch + 1}/{epochs} loss {history[-1]:.4f}")
        return history

    # -- misc -----------------------------------------------------------------------------
    def copy(self):
        """Independent deep copy (e.g. to fine-tune a pretrained model several ways)."""
        return copy.deepcopy(self)

    def macs(self):
        return sum(l.macs() for l in self.layers)

    def n_params(self):
        return sum(l.W.size + l.b.size for l in self.layers if l.has_params)

    def summary(self):
        lines = [f"input {self.input_shape}"]
        for i, l in enumerate(self.layers):
            p = f" W{l.W.shape} b{l.b.shape}" if l.has_params else ""
            lines.append(f"{i:2d} {type(l).__name__:14s} -> {l.out_shape}{p} macs={l.macs()}")
        lines.append(f"total macs={self.macs()} params={self.n_params()}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# reference models


def imu_reference_model(n_classes=4, seed=0, dtype=np.float32):
    """The fixed IMU model: 1x100x6 -> Conv8 k(1,5) -> MaxPool(1,2) -> Conv16 k(1,5) -> MaxPool(1,2)
    -> Conv32 k(1,3) -> GlobalAvgPool -> Dense(n_classes).  82,048 MACs for 4 classes."""
    return Net([
        Conv(8, 1, 5, relu=True),
        MaxPool(1, 2),
        Conv(16, 1, 5, relu=True),
        MaxPool(1, 2),
        Conv(32, 1, 3, relu=True),
        GlobalAvgPool(),
        Dense(n_classes),
    ], input_shape=(1, 100, 6), seed=seed, dtype=dtype)


def digits_mlp(seed=0, hidden=32, dtype=np.float32):
    """8x8x1 digits -> Dense(hidden) ReLU -> Dense(10)."""
    return Net([Dense(hidden, relu=True), Dense(10)], input_shape=(8, 8, 1), seed=seed, dtype=dtype)


def digits_cnn(seed=0, dtype=np.float32):
    """8x8x1 -> Conv8 3x3 same ReLU -> MaxPool 2 -> Conv16 3x3 same ReLU -> MaxPool 2 -> Dense(10)."""
    return Net([
        Conv(8, 3, 3, padding="same", relu=True),
        MaxPool(2, 2),
        Conv(16, 3, 3, padding="same", relu=True),
        MaxPool(2, 2),
        Dense(10),
    ], input_shape=(8, 8, 1), seed=seed, dtype=dtype)

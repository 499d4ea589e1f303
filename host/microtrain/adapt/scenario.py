"""The adaptation scenarios on real data: a model pretrained on half of a dataset as the factory
ships it, and a device that sees the rest through its own sensor - the digits CNN through a
camera of its own (datasets.shift_digits), the IMU model through a watch worn rotated with other
gains (datasets.shift_imu, BasicMotions: 20 recordings per class, so a device has 5 to adapt on
and 5 held out).  Deterministic in the seed; the seed also picks the device."""

import numpy as np

from microtrain import datasets
from microtrain.convert import floatnet, quantize
from microtrain.adapt import core

DIGITS = tuple(str(d) for d in range(10))


def digits(seed=0):
    """dict: model (QModel), source float samples and labels (the pretraining half), the device's
    int8 train / test samples and labels, distort(X, seed) -> a domain of the same family."""
    X, y = datasets.load_digits()
    (Xp, yp), (Xr, yr) = datasets.split(X, y, [0.5, 0.5], seed=seed)
    net = floatnet.digits_cnn(seed=seed)
    net.fit(Xp, yp, epochs=10, lr=3e-3, seed=seed)
    model = quantize.quantize(net, Xp, DIGITS, name="digits_cnn")
    return _device(model, Xp, yp, Xr, yr, lambda A, s: datasets.shift_digits(A, seed=s)[0], 100 + seed, seed)


def imu(seed=0):
    X, y, names = datasets.load_basic_motions()
    (Xp, yp), (Xr, yr) = datasets.split(X, y, [0.5, 0.5], seed=seed)
    net = floatnet.imu_reference_model(len(names), seed=seed)
    net.fit(Xp, yp, epochs=60, lr=3e-3, seed=seed)
    model = quantize.quantize(net, Xp, names, name="imu")
    return _device(model, Xp, yp, Xr, yr, lambda A, s: datasets.shift_imu(A, s, max_deg=180, gain_sd=0.5)[0],
                   3 + seed, seed)


def _device(model, Xp, yp, Xr, yr, distort, dev_seed, seed):
    Xd = distort(Xr, dev_seed)
    (a, ya), (t, yt) = datasets.split(Xd, yr, [0.5, 0.5], seed=seed + 1)
    q = lambda A: model.quantize_input(A.reshape(len(A), -1))    # noqa: E731
    xs = q(Xp)
    return {"model": model, "X_src": Xp, "y_src": yp, "x_src": xs, "x": q(a), "y": ya, "xt": q(t), "yt": yt,
            "source": core.stats(model, xs), "distort": distort}


def accuracy(model, x, y):
    from microtrain.model.qmodel import forward
    return float(np.mean([int(np.argmax(forward(model, xi))) == int(t) for xi, t in zip(x, y)]))

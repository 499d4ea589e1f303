"""Reference models, pretrained here from packaged datasets (deterministic per seed)."""

from functools import lru_cache

import numpy as np

from microtrain import datasets
from microtrain.convert import floatnet
from microtrain.convert import quantize

IMU_CLASSES = ("Standing", "Running", "Walking", "Badminton")


@lru_cache(maxsize=8)
def imu_reference(seed=0, classes=(0, 1, 2, 3), epochs=60):
    """The reference IMU model (DESIGN: Conv1D 6->8 k5, MaxPool 2, Conv1D 8->16 k5, MaxPool 2,
    Conv1D 16->32 k3, global average pool, Dense 32->classes), pretrained on BasicMotions samples
    of the given classes (a 75/25 split per seed), quantized to int8.
    Returns (float net, QModel, (X_train, y_train), (X_test, y_test)) with labels remapped to
    0..len(classes)-1 in the order given."""
    X, y, _ = datasets.load_basic_motions()
    (Xtr, ytr), (Xte, yte) = datasets.split(X, y, [0.75, 0.25], seed=seed)
    keep = np.isin(ytr, classes)
    remap = {c: i for i, c in enumerate(classes)}
    Xp, yp = Xtr[keep], np.array([remap[v] for v in ytr[keep]])
    net = floatnet.imu_reference_model(len(classes), seed=seed)
    net.fit(Xp, yp, epochs=epochs, lr=3e-3, seed=seed)
    model = quantize.quantize(net, Xp, [IMU_CLASSES[c] for c in classes], name="imu")
    return net, model, (Xtr, ytr), (Xte, yte)


@lru_cache(maxsize=2)
def imu_wide(hidden=448, seed=0, classes=(0, 1, 2, 3), epochs=8):
    """A model whose frozen weights alone outgrow a Pico's free heap: 1x100x6 -> Dense(hidden)
    ReLU -> Dense(classes); 600 x 448 = 268,800 int8 weights in the first layer.  Pretrained on
    BasicMotions like imu_reference.  Returns (QModel, (X_train, y_train))."""
    X, y, _ = datasets.load_basic_motions()
    (Xtr, ytr), _ = datasets.split(X, y, [0.75, 0.25], seed=seed)
    keep = np.isin(ytr, classes)
    remap = {c: i for i, c in enumerate(classes)}
    Xp, yp = Xtr[keep], np.array([remap[v] for v in ytr[keep]])
    net = floatnet.Net([floatnet.Dense(hidden, relu=True), floatnet.Dense(len(classes))],
                       input_shape=(1, 100, 6), seed=seed)
    net.fit(Xp, yp, epochs=epochs, lr=1e-3, seed=seed)
    return quantize.quantize(net, Xp, [IMU_CLASSES[c] for c in classes], name="imu-wide"), (Xp, yp)

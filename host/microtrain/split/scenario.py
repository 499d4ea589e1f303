"""The split-training scenario on a real dataset (scikit-learn's digits): the digits CNN
pretrained on half the data as the factory ships it; each device sees the rest through its own
camera (datasets.shift_digits) and splits it into training and held-out samples."""

from microtrain import datasets
from microtrain.convert import floatnet, quantize

LABELS = tuple(str(d) for d in range(10))


def pretrained(seed=0, epochs=10):
    """(float net, QModel, X_rest, y_rest)."""
    X, y = datasets.load_digits()
    (Xp, yp), (Xr, yr) = datasets.split(X, y, [0.5, 0.5], seed=seed)
    net = floatnet.digits_cnn(seed=seed)
    net.fit(Xp, yp, epochs=epochs, lr=3e-3, seed=seed)
    return net, quantize.quantize(net, Xp, LABELS, name="digits_cnn"), Xr, yr


def device(model, X, y, k, seed=0, train_fraction=0.6):
    """Device k's data: (x_train, y_train, x_test, y_test) as int8, and the float samples."""
    Xk, _ = datasets.shift_digits(X, seed=100 + k)
    (a, ya), (t, yt) = datasets.split(Xk, y, [train_fraction, 1 - train_fraction], seed=seed + k)
    q = model.quantize_input
    return q(a.reshape(len(a), -1)), ya, q(t.reshape(len(t), -1)), yt, (a, t)

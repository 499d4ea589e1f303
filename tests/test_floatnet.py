"""floatnet (float numpy training library) and datasets: gradients, layouts, training sanity."""

import zlib

import numpy as np
import pytest

from microtrain import datasets
from microtrain.convert import floatnet as fn
from microtrain.sim import reference as ref

# ---------------------------------------------------------------------------------------------
# gradient checks (float64, central differences)

LAYER_CASES = {
    "conv_valid_relu": ((5, 6, 3), lambda: fn.Conv(4, 3, 2, relu=True)),
    "conv_same_s2": ((7, 6, 2), lambda: fn.Conv(3, 3, 4, stride=2, padding="same", relu=False)),
    "conv_same_s2_relu": ((6, 7, 3), lambda: fn.Conv(2, 2, 3, stride=(2, 1), padding="same", relu=True)),
    "conv_1d_time": ((1, 11, 3), lambda: fn.Conv(4, 1, 5, relu=True)),
    "dw_m2_same_s2": ((7, 6, 3), lambda: fn.DepthwiseConv(2, 3, 3, stride=2, padding="same", relu=False)),
    "dw_m1_valid_relu": ((5, 5, 4), lambda: fn.DepthwiseConv(1, 2, 3, relu=True)),
    "maxpool_valid": ((6, 6, 3), lambda: fn.MaxPool(2, 2)),
    "maxpool_same_s2": ((7, 5, 2), lambda: fn.MaxPool(3, 3, stride=2, padding="same")),
    "avgpool_valid": ((6, 4, 3), lambda: fn.AvgPool(2, 2)),
    "avgpool_same_s2": ((7, 5, 2), lambda: fn.AvgPool(3, 3, stride=2, padding="same")),
    "global_avgpool": ((3, 5, 4), lambda: fn.GlobalAvgPool()),
    "dense": ((2, 3, 4), lambda: fn.Dense(5)),
    "dense_relu": ((1, 1, 6), lambda: fn.Dense(4, relu=True)),
}


def _numgrad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def _close(analytic, numeric, tol=1e-6):
    scale = max(1.0, np.abs(numeric).max())
    np.testing.assert_allclose(analytic, numeric, atol=tol * scale, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_gradients(name):
    shape, make = LAYER_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    net = fn.Net([make()], shape, seed=3, dtype=np.float64)
    layer = net.layers[0]
    if layer.has_params:
        layer.b[...] = rng.normal(0, 0.5, layer.b.shape)   # nonzero bias: ReLU cuts somewhere
    X = rng.normal(size=(2,) + shape)
    R = rng.normal(size=(2, int(np.prod(net.output_shape))))

    def loss():
        return float((net.forward(X) * R).sum())

    net.forward(X, keep=True)
    grads = net.backward(R)
    _close(net.input_grad, _numgrad(loss, X))
    if layer.has_params:
        dW, db = grads[0]
        _close(dW, _numgrad(loss, layer.W))
        _close(db, _numgrad(loss, layer.b))
    else:
        assert grads == [None]


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 5)) * 3
    y = np.array([0, 4, 2, 2])
    loss, g = fn.softmax_cross_entropy(z, y)
    p = fn.softmax(z)
    assert loss == pytest.approx(-np.log(p[np.arange(4), y]).mean())
    _close(g, _numgrad(lambda: fn.softmax_cross_entropy(z, y)[0], z))


def test_net_loss_and_grads_full_model():
    """End to end through a mixed stack with the softmax-CE loss."""
    rng = np.random.default_rng(2)
    net = fn.Net([
        fn.Conv(4, 3, 3, stride=2, padding="same"),
        fn.DepthwiseConv(2, 3, 3, padding="same"),
        fn.AvgPool(2, 2, padding="same"),
        fn.Conv(3, 1, 1, relu=False),
        fn.MaxPool(2, 2, stride=1),
        fn.GlobalAvgPool(),
        fn.Dense(3),
    ], (9, 8, 2), seed=5, dtype=np.float64)
    for l in net.layers:
        if l.has_params:
            l.b[...] = rng.normal(0, 0.3, l.b.shape)
    X = rng.normal(size=(3, 9, 8, 2))
    y = np.array([0, 2, 1])
    _, grads = net.loss_and_grads(X, y)
    for i in net.param_layers():
        layer = net.layers[i]
        _close(grads[i][0], _numgrad(lambda: net.loss(X, y), layer.W))
        _close(grads[i][1], _numgrad(lambda: net.loss(X, y), layer.b))


# ---------------------------------------------------------------------------------------------
# layouts: float layers on integer data == the integer reference kernels (identity requant)

ONE = (1 << 30, 1)      # mult, shift: requantize(acc) == acc


def _ref_conv(layer, x, dw=False):
    H, W, C = layer.in_shape
    oc = layer.out_shape[2]
    if dw:
        g = ref.Geom.depthwise(H, W, C, layer.depth_mult, layer.k_h, layer.k_w, layer.stride, layer.padding)
        f = ref.dwconv_forward
    else:
        g = ref.Geom.conv(H, W, C, oc, layer.k_h, layer.k_w, layer.stride, layer.padding)
        f = ref.conv_forward
    mult, shift = np.full(oc, ONE[0]), np.full(oc, ONE[1])
    y, _ = f(g, x.ravel(), 0, layer.W.astype(np.int64), layer.b.astype(np.int64), mult, shift, 0, -128, 127)
    return y.reshape(layer.out_shape)


@pytest.mark.parametrize("dw,shape,make", [
    (False, (7, 6, 3), lambda: fn.Conv(4, 3, 2, stride=2, padding="same", relu=False)),
    (False, (1, 12, 5), lambda: fn.Conv(3, 1, 4, stride=(1, 2), padding="valid", relu=False)),
    (True, (6, 7, 3), lambda: fn.DepthwiseConv(2, 3, 3, stride=2, padding="same", relu=False)),
    (True, (5, 5, 2), lambda: fn.DepthwiseConv(3, 2, 2, padding="valid", relu=False)),
])
def test_conv_layout_matches_reference(dw, shape, make):
    rng = np.random.default_rng(7)
    net = fn.Net([make()], shape, seed=0, dtype=np.float64)
    layer = net.layers[0]
    layer.W[...] = rng.integers(-1, 2, layer.W.shape)
    layer.b[...] = rng.integers(-3, 4, layer.b.shape)
    x = rng.integers(-2, 3, shape)
    y = net.activations(x[None].astype(float))[0][0]
    np.testing.assert_array_equal(y, _ref_conv(layer, x, dw))
    g = ref.Geom.conv(*shape, layer.out_shape[2], layer.k_h, layer.k_w, layer.stride, layer.padding)
    assert (layer.out_h, layer.out_w, layer.pad_t, layer.pad_l) == (g.out_h, g.out_w, g.pad_t, g.pad_l)


def test_dense_layout_matches_reference():
    rng = np.random.default_rng(8)
    net = fn.Net([fn.Dense(5)], (2, 3, 4), dtype=np.float64)
    d = net.layers[0]
    d.W[...] = rng.integers(-1, 2, d.W.shape)
    d.b[...] = rng.integers(-3, 4, 5)
    x = rng.integers(-2, 3, (2, 3, 4))
    g = ref.Geom.dense(1, 24, 5)
    y, _ = ref.conv_forward(g, x.ravel(), 0, d.W.astype(np.int64), d.b.astype(np.int64),
                            np.full(5, ONE[0]), np.full(5, ONE[1]), 0, -128, 127)
    np.testing.assert_array_equal(net.forward(x[None].astype(float))[0], y)


@pytest.mark.parametrize("k,stride,padding", [((2, 2), None, "valid"), ((3, 3), 2, "same"), ((1, 3), (1, 2), "same")])
def test_pool_layout_matches_reference(k, stride, padding):
    rng = np.random.default_rng(9)
    shape = (7, 6, 3)
    x = rng.integers(-100, 101, shape)
    mp = fn.Net([fn.MaxPool(*k, stride=stride, padding=padding)], shape, dtype=np.float64)
    ap = fn.Net([fn.AvgPool(*k, stride=stride, padding=padding)], shape, dtype=np.float64)
    g = ref.Geom.pool(*shape, *k, fn._pair(stride), padding)
    ymax = mp.activations(x[None].astype(float))[0][0]
    np.testing.assert_array_equal(ymax.ravel(), ref.maxpool_forward(g, x.ravel()))
    yavg = ap.activations(x[None].astype(float))[0][0]
    rounded = np.sign(yavg) * np.floor(np.abs(yavg) + 0.5)       # reference rounds half away
    np.testing.assert_array_equal(rounded.ravel(), ref.avgpool_forward(g, x.ravel()))


# ---------------------------------------------------------------------------------------------
# models and training API


def test_reference_models_shapes_and_macs():
    imu = fn.imu_reference_model()
    assert [l.out_shape for l in imu.layers] == [(1, 96, 8), (1, 48, 8), (1, 44, 16), (1, 22, 16),
                                                  (1, 20, 32), (1, 1, 32), (1, 1, 4)]
    assert imu.layers[0].W.shape == (8, 1, 5, 6) and imu.layers[6].W.shape == (4, 32)
    assert imu.macs() == 82048
    for net in (fn.digits_mlp(0), fn.digits_cnn(0)):
        assert net.forward(np.zeros((2, 8, 8, 1))).shape == (2, 10)
        assert net.n_params() * 4 < 16 * 1024


def test_init_and_fit_deterministic():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 1, 100, 6)), rng.integers(0, 4, 20)
    a, b = fn.imu_reference_model(seed=1), fn.imu_reference_model(seed=1)
    assert not np.array_equal(a.layers[0].W, fn.imu_reference_model(seed=2).layers[0].W)
    a.fit(X, y, epochs=2, batch_size=8, seed=4)
    b.fit(X, y, epochs=2, batch_size=8, seed=4)
    for la, lb in zip(a.layers, b.layers):
        if la.has_params:
            assert np.array_equal(la.W, lb.W) and np.array_equal(la.b, lb.b)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_trainable_restriction_freezes_exactly(optimizer):
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(24, 1, 100, 6)).astype(np.float32), rng.integers(0, 4, 24)
    net = fn.imu_reference_model(seed=0)
    before = [(l.W.copy(), l.b.copy()) if l.has_params else None for l in net.layers]
    wmask = np.zeros(net.layers[2].W.shape, dtype=bool)
    wmask[[1, 5, 9]] = True                       # 3 output channels ...
    wmask[:, :, :, 4:] = False                    # ... and half of their input channels
    bmask = np.zeros(16, dtype=bool)
    bmask[[1, 5]] = True
    spec = {2: {"weights": wmask, "bias": bmask},
            4: {"weights": False, "bias": True},  # biases only
            "6": {"weights": True}}               # str keys accepted; bias omitted = frozen
    net.fit(X, y, epochs=3, batch_size=8, seed=0, optimizer=optimizer, weight_decay=1e-3,
            trainable=spec, momentum=0.9 if optimizer == "sgd" else 0.0)
    for i, (W0, b0) in ((i, p) for i, p in enumerate(before) if p is not None):
        W, b = net.layers[i].W, net.layers[i].b
        if i == 2:
            assert np.array_equal(W[~wmask], W0[~wmask]) and np.all(W[wmask] != W0[wmask])
            assert np.array_equal(b[~bmask], b0[~bmask]) and np.all(b[bmask] != b0[bmask])
        elif i == 4:
            assert np.array_equal(W, W0) and not np.array_equal(b, b0)
        elif i == 6:
            assert not np.array_equal(W, W0) and np.array_equal(b, b0)
        else:
            assert np.array_equal(W, W0) and np.array_equal(b, b0)
    with pytest.raises(ValueError):
        net.fit(X, y, epochs=1, trainable={2: {"weights": np.zeros(3, bool)}})
    with pytest.raises(ValueError):
        net.fit(X, y, epochs=1, trainable={1: {"weights": True}})     # MaxPool has no parameters


def test_activations_are_every_layer_output():
    net = fn.digits_cnn(0)
    X = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
    acts = net.activations(X, batch_size=2)
    assert [a.shape[1:] for a in acts] == [l.out_shape for l in net.layers]
    np.testing.assert_allclose(acts[-1].reshape(5, -1), net.forward(X), rtol=1e-6)
    assert acts[0].min() >= 0                     # fused ReLU


# ---------------------------------------------------------------------------------------------
# datasets


@pytest.fixture(scope="module")
def basic_motions():
    return datasets.load_basic_motions()


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


def test_basic_motions(basic_motions):
    X, y, names = basic_motions
    assert X.shape == (80, 1, 100, 6) and X.dtype == np.float32 and y.dtype == np.int64
    assert names == ["Standing", "Running", "Walking", "Badminton"]
    assert np.bincount(y).tolist() == [20, 20, 20, 20]
    # values of aeon.datasets.load_basic_motions() (aeon 1.6.0): first sample of TRAIN, t = 0
    np.testing.assert_allclose(X[0, 0, 0], [0.079106, 0.394032, 0.551444, 0.351565, 0.02397, 0.633883], rtol=1e-6)
    assert y[0] == 0 and float(X.astype(np.float64).sum()) == pytest.approx(367.8218745180966, rel=1e-9)


def test_digits(digits):
    X, y = digits
    assert X.shape == (1797, 8, 8, 1) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert sorted(set(y.tolist())) == list(range(10))


def test_split_stratified_deterministic(basic_motions):
    X, y, _ = basic_motions
    a = datasets.split(X, y, (0.75, 0.25), seed=3)
    b = datasets.split(X, y, (0.75, 0.25), seed=3)
    c = datasets.split(X, y, (0.75, 0.25), seed=4)
    assert [len(p[1]) for p in a] == [60, 20]
    assert np.bincount(a[0][1]).tolist() == [15] * 4 and np.bincount(a[1][1]).tolist() == [5] * 4
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])
    # a partition: every sample exactly once
    allx = np.concatenate([a[0][0], a[1][0]]).reshape(80, -1)
    assert len(np.unique(allx, axis=0)) == len(np.unique(X.reshape(80, -1), axis=0))
    parts = datasets.split(X, y, (0.5, 0.25, 0.25), seed=0)
    assert [len(p[1]) for p in parts] == [40, 20, 20]
    with pytest.raises(ValueError):
        datasets.split(X, y, (0.5, 0.4), seed=0)


def test_shift_helpers(digits, basic_motions):
    X = digits[0][:50]
    s1, p1 = datasets.shift_digits(X, 1)
    s1b, _ = datasets.shift_digits(X, 1)
    s2, _ = datasets.shift_digits(X, 2)
    assert s1.shape == X.shape and s1.dtype == np.float32 and np.array_equal(s1, s1b)
    assert not np.array_equal(s1, s2) and 0 <= s1.min() and s1.max() <= 1
    assert (p1["dy"], p1["dx"]) != (0, 0)
    Xi = basic_motions[0][:10]
    t1, q = datasets.shift_imu(Xi, 1)
    assert t1.shape == Xi.shape and np.allclose(q["rotation"] @ q["rotation"].T, np.eye(3))
    assert np.array_equal(t1, datasets.shift_imu(Xi, 1)[0])


# ---------------------------------------------------------------------------------------------
# training sanity


def test_imu_reference_model_trains(basic_motions):
    X, y, _ = basic_motions
    (Xtr, ytr), (Xte, yte) = datasets.split(X, y, (0.75, 0.25), seed=0)
    net = fn.imu_reference_model(seed=0)
    net.fit(Xtr, ytr, epochs=100, lr=3e-3, batch_size=16, seed=0)
    assert net.accuracy(Xte, yte) >= 0.85


def test_digits_mlp_trains(digits):
    X, y = digits
    (Xtr, ytr), (Xte, yte) = datasets.split(X, y, (2 / 3, 1 / 3), seed=0)
    net = fn.digits_mlp(seed=0)
    net.fit(Xtr, ytr, epochs=30, lr=3e-3, batch_size=32, seed=0)
    assert net.accuracy(Xte, yte) >= 0.90


def test_digits_cnn_trains(digits):
    X, y = digits
    (Xtr, ytr), (Xte, yte) = datasets.split(X, y, (2 / 3, 1 / 3), seed=0)
    net = fn.digits_cnn(seed=0)
    net.fit(Xtr, ytr, epochs=10, lr=3e-3, batch_size=32, seed=0)
    assert net.accuracy(Xte, yte) >= 0.90


def test_quantize_refuses_weights_that_overflow():
    """A float model whose weights overflow float32 is a clear ValueError naming the layer, not a
    model with NaN scales (and no RuntimeWarning on the way)."""
    import warnings
    from microtrain.convert import quantize
    net = fn.digits_mlp(seed=0)
    X = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    net.layers[0].W[0, 0] = np.float32(3e38)
    net.layers[0].W[0, 1] = np.float32(3e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="layer 0: its .* is not finite"):
            quantize.quantize(net, X)

"""Real datasets shipped inside PyPI packages (nothing is downloaded at run time), plus splits.

* ``load_digits()``: scikit-learn's 8x8 handwritten digits (1797 samples, 10 classes).
* ``load_basic_motions()``: the BasicMotions smartwatch IMU set (80 samples, 6 channels x 100
  steps, 4 activities) from the ``.ts`` files bundled in the aeon wheel.
* ``load_textures()``: crops of the brick, grass and gravel photographs bundled in the
  scikit-image wheel (512 x 512 grayscale each): a material-recognition task for camera models.

All images/series are returned channels-last, one sample being [H][W][C] like the kernels'
activations: digits (n, 8, 8, 1), BasicMotions (n, 1, 100, 6) (H=1, W=time, C=sensor axis).

Why BasicMotions is not read through ``aeon.datasets``: importing aeon imports numba, and the
numba that aeon 1.6 accepts (< 0.64) refuses to import with numpy >= 2.4 (the project pins
numpy 2.4.6).  The data files themselves do not need aeon's code, so this module finds the
installed aeon package without importing it and parses its ``.ts`` files (a plain text format,
handled by ``read_ts`` below).  The values match ``aeon.datasets.load_basic_motions()``
exactly (checked against aeon 1.6.0 with numpy 2.3); the label order is the file's
``@classLabel`` order (aeon itself returns lower-cased string labels).

``split`` makes stratified, seed-deterministic partitions; ``shift_digits`` / ``shift_imu``
simulate a per-device distribution shift for personalization experiments.
"""

import importlib.util
import os

import numpy as np

BASIC_MOTIONS_CLASSES = ("Standing", "Running", "Walking", "Badminton")
BASIC_MOTIONS_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")


# ---------------------------------------------------------------------------------------------
# digits


def load_digits():
    """scikit-learn digits: X float32 (1797, 8, 8, 1) in [0, 1] (pixel / 16), y int64 0..9."""
    from sklearn.datasets import load_digits as _sk_load_digits   # reads the csv in the wheel

    d = _sk_load_digits()
    X = (d.images.astype(np.float32) / np.float32(16.0))[..., None]
    return X, d.target.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# BasicMotions


def _package_dir(name):
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {name!r} is not installed (pip install the project's dev extras)")
    return list(spec.submodule_search_locations)[0]


def basic_motions_files():
    """Paths of (TRAIN, TEST) BasicMotions .ts files: inside the installed aeon package, else the
    copy an installed microtrain carries (microtrain.data)."""
    try:
        d = os.path.join(_package_dir("aeon"), "datasets", "data", "BasicMotions")
    except (ImportError, FileNotFoundError, AttributeError):
        from microtrain import data
        d = data.find("BasicMotions")
    paths = tuple(os.path.join(d, f"BasicMotions_{part}.ts") for part in ("TRAIN", "TEST"))
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} is missing from the installed aeon package")
    return paths


def read_ts(path):
    """Parse an equal-length, labelled, missing-free ``.ts`` file (sktime/aeon format).

    Returns (X float64 (n, dims, length), labels list of str, class_labels tuple from the
    header's ``@classLabel`` line).
    """
    header = {}
    rows, labels = [], []
    in_data = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if line.lower() == "@data":
                    in_data = True
                elif line.startswith("@"):
                    key, _, value = line[1:].partition(" ")
                    header[key.lower()] = value.strip()
                continue
            *dims, label = line.split(":")
            rows.append([[float(v) for v in d.split(",")] for d in dims])
            labels.append(label.strip())
    for key, want in (("timestamps", "false"), ("missing", "false"), ("equallength", "true")):
        if header.get(key, want).lower() != want:
            raise ValueError(f"{path}: @{key} {header.get(key)} is not supported")
    cl = header.get("classlabel", "").split()
    if not cl or cl[0].lower() != "true":
        raise ValueError(f"{path}: no class labels")
    X = np.array(rows, dtype=np.float64)
    if "dimensions" in header and X.shape[1] != int(header["dimensions"]):
        raise ValueError(f"{path}: {X.shape[1]} dimensions, header says {header['dimensions']}")
    if "serieslength" in header and X.shape[2] != int(header["serieslength"]):
        raise ValueError(f"{path}: length {X.shape[2]}, header says {header['serieslength']}")
    return X, labels, tuple(cl[1:])


def load_basic_motions():
    """BasicMotions, train + test files merged (80 samples; callers re-split per seed).

    Returns (X float32 (80, 1, 100, 6), y int64 in 0..3, class_names) where class_names[y] is
    the activity (Standing, Running, Walking, Badminton) and channels are
    ``BASIC_MOTIONS_CHANNELS`` (3-axis accelerometer then 3-axis gyroscope).  Raw sensor
    values, not normalized.  Rows 0..39 are the package's TRAIN file, 40..79 its TEST file.
    """
    Xs, ys = [], []
    class_names = None
    for path in basic_motions_files():
        X, labels, names = read_ts(path)
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise ValueError(f"{path}: class labels {names} differ from {class_names}")
        index = {c: i for i, c in enumerate(class_names)}
        Xs.append(X)
        ys.append(np.array([index[s] for s in labels], dtype=np.int64))
    X = np.concatenate(Xs).transpose(0, 2, 1)[:, None, :, :]      # (n, dims, T) -> (n, 1, T, C)
    return np.ascontiguousarray(X, dtype=np.float32), np.concatenate(ys), list(class_names)


# ---------------------------------------------------------------------------------------------
# textures


TEXTURES = ("brick", "grass", "gravel")


def load_textures(classes=("brick", "grass"), n_train=20, n_test=30, size=96, channels=3, seed=0):
    """Random size x size crops of scikit-image's texture photographs, one class per texture.

    Training crops come from the top half of each photograph and test crops from the bottom
    half, so no test pixel was seen in training; each crop is flipped left-right with
    probability 1/2.  Grayscale is repeated over ``channels`` (3 for an RGB camera model).
    Returns ((X_train, y_train), (X_test, y_test)): X float32 (n, size, size, channels) in
    [0, 1], classes in order (n_train then n_test per class), y int64.
    """
    import skimage.data    # the photographs ship in the wheel (skimage/data/*.png)

    rng = np.random.default_rng([0x7E47, seed])
    half = 256
    if size > half:
        raise ValueError(f"crops of {size} px do not fit half of a 512 px photograph")
    parts = ([], []), ([], [])
    for label, name in enumerate(classes):
        if name not in TEXTURES:
            raise ValueError(f"unknown texture {name!r}; choose from {', '.join(TEXTURES)}")
        img = getattr(skimage.data, name)().astype(np.float32) / np.float32(255.0)
        for (xs, ys), n, top in zip(parts, (n_train, n_test), (0, half)):
            for _ in range(n):
                r = top + int(rng.integers(0, half - size + 1))
                c = int(rng.integers(0, img.shape[1] - size + 1))
                crop = img[r:r + size, c:c + size]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                xs.append(np.repeat(crop[:, :, None], channels, axis=2))
                ys.append(label)
    return tuple((np.array(xs, np.float32), np.array(ys, np.int64)) for xs, ys in parts)


# ---------------------------------------------------------------------------------------------
# splits


def split(X, y, fractions, seed, stratify=True):
    """Partition (X, y) into len(fractions) parts; returns [(X_part, y_part), ...].

    ``fractions`` must sum to 1 (within 1e-6).  With ``stratify`` each class is divided in the
    same proportions (part k of class c gets round(cumsum * n_c) boundaries), so a 0.75/0.25
    split of BasicMotions gives 15/5 samples of every class.  Sample order inside each part is
    shuffled.  Deterministic for a given seed; different seeds give different partitions.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) == 0 or np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    y = np.asarray(y)
    if len(X) != len(y):
        raise ValueError("X and y differ in length")
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(fr)
    cuts[-1] = 1.0
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    parts = [[] for _ in fr]
    for idx in groups:
        idx = rng.permutation(idx)
        bounds = np.concatenate([[0], np.round(cuts * len(idx)).astype(np.int64)])
        for k in range(len(fr)):
            parts[k].append(idx[bounds[k]:bounds[k + 1]])
    out = []
    for p in parts:
        p = rng.permutation(np.concatenate(p)) if p else np.zeros(0, np.int64)
        out.append((X[p], y[p]))
    return out


# ---------------------------------------------------------------------------------------------
# per-device shifts (personalization scenario)


def shift_digits(X, seed):
    """Simulate a "device" with its own camera: one fixed random distortion per seed.

    For a given seed the same transform is applied to every image of X (n, 8, 8, 1) in [0, 1]:
      * translation by (dy, dx) pixels, each in {-1, 0, 1} and not both 0, zero fill;
      * intensity affine x' = clip(a * x + b, 0, 1), contrast a in [0.5, 0.8], offset b in
        [0.1, 0.3] (a washed-out sensor with a raised black level).
    Returns (X_shifted float32, params dict).  Seed 0 is a valid device like any other.
    """
    rng = np.random.default_rng([0x5D16, seed])
    while True:
        dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
        if dy or dx:
            break
    a = float(rng.uniform(0.5, 0.8))
    b = float(rng.uniform(0.1, 0.3))
    X = np.asarray(X, dtype=np.float32)
    S = np.zeros_like(X)
    H, W = X.shape[1:3]
    S[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        X[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    S = np.clip(np.float32(a) * S + np.float32(b), 0.0, 1.0).astype(np.float32)
    return S, {"dy": dy, "dx": dx, "contrast": a, "offset": b}


def _rotation(rng, max_deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    t = np.deg2rad(rng.uniform(-max_deg, max_deg))
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)            # Rodrigues


def shift_imu(X, seed, max_deg=30.0, gain_sd=0.1):
    """Simulate a "device" (watch worn differently, other sensor calibration) for BasicMotions.

    For a given seed, every sample of X (n, 1, T, 6) gets the same transform: one rotation of up
    to ``max_deg`` degrees about a random axis applied to both the accelerometer (channels 0-2)
    and gyroscope (3-5) triplets (the watch sits rotated on the wrist), then a per-channel gain
    N(1, gain_sd).  Returns (X_shifted float32, params dict).
    """
    rng = np.random.default_rng([0x1A0, seed])
    R = _rotation(rng, max_deg)
    gain = rng.normal(1.0, gain_sd, size=6)
    X = np.asarray(X, dtype=np.float64)
    S = np.concatenate([X[..., :3] @ R.T, X[..., 3:6] @ R.T], axis=-1) * gain
    return S.astype(np.float32), {"rotation": R, "gain": gain}

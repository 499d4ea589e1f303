"""Labelled samples from files (CSV, NPZ, WAV) as the int8 rows the board trains on."""

import os

import click


def _fail(msg):
    raise click.ClickException(msg)


def load_samples(path, model=None, label=None):
    """(x int8 [n][in_size], labels) from CSV / NPZ / WAV, quantized with the model's input scale
    when the data are floats."""
    import numpy as np
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        d = np.load(path)
        x, y = d["x"], d["y"]
    elif ext == ".csv":
        rows = np.loadtxt(path, delimiter=",", skiprows=_csv_header(path))
        rows = rows.reshape(len(rows), -1) if rows.ndim > 1 else rows.reshape(1, -1)
        y, x = rows[:, 0].astype(int), rows[:, 1:]
    elif ext == ".wav":
        import wave
        with wave.open(path) as w:
            if w.getsampwidth() != 2:
                _fail(f"{path}: 16-bit PCM WAV expected")
            a = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
            a = a.reshape(-1, w.getnchannels())
        if label is None:
            _fail("a WAV file needs --label")
        n = int(np.prod(model.input_shape)) if model is not None else a.size
        x, y = a.ravel()[:n].reshape(1, -1), np.array([label])
    else:
        _fail(f"{path}: expected .csv (label, values...), .npz (x, y) or .wav")
    if label is not None and ext != ".wav":
        y = np.full(len(x), label)
    x = np.asarray(x)
    if x.dtype != np.int8:
        if model is None:
            _fail("float samples need the model file to be quantized (pass --model)")
        x = model.quantize_input(x.reshape(len(x), -1))
    return x.reshape(len(x), -1), np.asarray(y, dtype=int)


def _csv_header(path):
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
        return 0
    except ValueError:
        return 1

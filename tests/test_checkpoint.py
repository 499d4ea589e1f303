"""Checkpoints survive a reset anywhere, also twice in a row (issue 16).

(a) The board's own checkpoint code (firmware/microtrain/checkpoint.py, run in CPython) on a fake
    flash that behaves like the hardware at a power cut: the open file keeps the bytes written
    before the cut, the rest of the interrupted page is erased (0xFF) or noise.  A cut at every
    byte of a save, and pairs of cuts (the save that recovers is cut again), must leave exactly
    the newest complete state readable - never an older one, never a mix.
(b) The real MicroPython unix port training and checkpointing, SIGKILLed at random moments (also
    while it resumes): the newest checkpoint never goes back behind the last save the board
    reported, and after all the kills the trained bytes equal an uninterrupted run's.
"""

import os
import random
import re
import signal
import subprocess
import tempfile
import time

import numpy as np
import pytest

from microtrain.board import checkpoint as ck
from microtrain.device import unixport
from microtrain.plan import planner
from research import zoo

PAGE = 256


class PowerCut(Exception):
    pass


class FakeFlash:
    """Files in a dict; `cut_after(n)` makes the power fail after n more bytes are written."""

    def __init__(self, rng, erased=True):
        self.files = {}
        self.left = None
        self.rng = rng
        self.erased = erased
        self.cuts = 0

    def cut_after(self, n):
        self.left = n

    def open(self, path, mode="rb"):
        if "w" in mode:
            self.files[path] = bytearray()             # truncation reaches the flash at once (worst case)
        elif path not in self.files:
            raise OSError(2, "ENOENT")
        return _File(self, path, mode)

    def exists(self, path):
        return path in self.files

    def remove(self, path):
        del self.files[path]


class _File:
    def __init__(self, flash, path, mode):
        self.flash, self.path, self.pos = flash, path, 0
        self.data = flash.files[path]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass

    def write(self, b):
        fl = self.flash
        b = bytes(b)
        if fl.left is not None and len(b) > fl.left:
            self.data += b[:fl.left]
            pad = -len(self.data) % PAGE                  # the page being programmed is left half-done
            self.data += b"\xff" * pad if fl.erased else bytes(fl.rng.randrange(256) for _ in range(pad))
            fl.left = None
            fl.cuts += 1
            raise PowerCut()
        if fl.left is not None:
            fl.left -= len(b)
        self.data += b
        return len(b)

    def seek(self, off, whence=0):
        self.pos = off if whence == 0 else len(self.data) + off
        return self.pos

    def read(self, n=-1):
        out = bytes(self.data[self.pos:] if n < 0 else self.data[self.pos:self.pos + n])
        self.pos += len(out)
        return out

    def readinto(self, buf):
        out = self.read(len(buf))
        buf[:len(out)] = out
        return len(out)


@pytest.fixture
def flash(monkeypatch):
    fl = FakeFlash(random.Random(0))
    monkeypatch.setattr(ck, "open", fl.open, raising=False)
    monkeypatch.setattr(ck, "exists", fl.exists)
    monkeypatch.setattr(ck, "remove", fl.remove)
    return fl


def _state(k, rng):
    """The k-th save of a training run: counters and three tensors that all change."""
    st = ck.State(steps=10 * k, samples=10 * k, last_seq=10 * k - 1, lr_shift=-(k % 3), rng=1 + k, n_classes=4,
                  model_id=0xC0FFEE)
    blobs = [(b"W%03d" % i, bytes(rng.randrange(256) for _ in range(n))) for i, n in ((0, 96), (1, 40), (2, 150))]
    return st, blobs


def _read(path):
    """What a rebooted board finds: (steps, blobs) of the newest complete state, or None."""
    s = ck.Store(path)
    found = s.newest()
    if found is None:
        return None
    slot, st, index = found
    blobs = []
    for tag in sorted(index):
        buf = bytearray(index[tag][1])
        s.read_into(slot, index, tag, buf)
        blobs.append((tag, bytes(buf)))
    return st.steps, blobs


def _save(path, k, rng, cut=None, flash=None):
    st, blobs = _state(k, rng)
    if cut is not None:
        flash.cut_after(cut)
    try:
        ck.Store(path).save(st, blobs)                  # a fresh store: it reads the slots, as after a boot
        return (st.steps, sorted(blobs)), True
    except PowerCut:
        return (st.steps, sorted(blobs)), False


def _size(rng):
    st, blobs = _state(1, rng)
    return ck.HEADER_SIZE + sum(8 + len(b) for _, b in blobs) + 4


@pytest.mark.parametrize("erased", [True, False], ids=["erased-page", "noise-page"])
def test_a_cut_at_every_byte_of_a_save_keeps_the_newest_complete_state(flash, erased):
    flash.erased = erased
    size = _size(random.Random(0))
    for k_cut in (1, 2, 3):                             # the first save ever, the second (other slot), a third
        for cut in range(size):
            flash.files.clear()
            rng = random.Random(k_cut)
            done = None
            for k in range(1, k_cut):
                done, ok = _save("ck", k, rng)
                assert ok
            attempt, ok = _save("ck", k_cut, rng, cut, flash)
            assert not ok
            assert _read("ck") == done, (k_cut, cut)
    print(f"\n{flash.cuts} power cuts, every byte of saves 1-3, "
          f"{'erased' if erased else 'noisy'} page: the newest complete state each time")
    assert flash.cuts == 3 * size


def test_double_resets_never_lose_the_last_complete_state(flash):
    """Save 2 completes, save 3 is cut, the save that follows the reboot is cut too, then a
    third save is cut or completes: state 2 survives until a later save completes."""
    size = _size(random.Random(0))
    n = 0
    for c1 in range(0, size, 7):
        for c2 in range(0, size, 7):
            flash.files.clear()
            rng = random.Random(c1 * 1000 + c2)
            _save("ck", 1, rng)
            two, _ = _save("ck", 2, rng)
            _, ok = _save("ck", 3, rng, c1, flash)
            assert not ok and _read("ck") == two
            _, ok = _save("ck", 4, rng, c2, flash)      # the recovery's own save, cut as well
            assert not ok and _read("ck") == two, (c1, c2)
            if (c1 + c2) % 2:                          # and a third reset in a row
                _, ok = _save("ck", 5, rng, (c1 * c2) % size, flash)
                assert not ok and _read("ck") == two
            five, ok = _save("ck", 6, rng)
            assert ok and _read("ck") == five
            n += 1
    print(f"\n{n} double-reset sequences, {flash.cuts} power cuts: none lost the last complete state")
    assert flash.cuts >= 2 * n and n >= 1000


# ---------------------------------------------------------------------------------------------
# (b) real process kills

KILL_SCRIPT = """
import microtrain
D = '{dir}'
m = microtrain.load(D + '/m.mtm')
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
try:
    t.resume()
except microtrain.TrainingError as e:   # the first save ever was cut: nothing complete to lose
    print('FRESH', e)
    t.fresh()
data = open(D + '/samples.bin', 'rb').read()
labels = open(D + '/labels.bin', 'rb').read()
size = m.in_size
n = len(labels)
print('RESUMED', t.last_seq)
for i in range(t.last_seq + 1, n):
    t.train_step(data[i * size:(i + 1) * size], labels[i], i)
    t.checkpoint()
    print('SAVED', i)
out = open(D + '/final.bin', 'wb')
for tag, buf in t._state_blobs():
    out.write(buf)
out.close()
print('DONE', t.steps)
"""


def _run_until_killed(script, d, delay):
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(unixport.board_path("native")))
    p = subprocess.Popen([unixport.executable(), "-X", "heapsize=1M", script], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env, cwd=d, start_new_session=True)
    end = time.monotonic() + delay
    while p.poll() is None and time.monotonic() < end:
        time.sleep(0.001)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    out = p.communicate()[0].decode()
    return p.returncode, out


def test_sigkill_anywhere_on_the_unix_port_changes_nothing_learned():
    kills = int(os.environ.get("MICROTRAIN_KILLS", "300"))
    _, model, (X, y), _ = zoo.imu_reference(seed=0)
    p = planner.plan(model, "sparse", word_bytes=8)
    n = 40
    xq, labels = model.quantize_input(X[:n]), y[:n]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as ref, tempfile.TemporaryDirectory() as d:
        for folder in (ref, d):
            unixport._write(folder, model, p, xq, labels)
            with open(os.path.join(folder, "run.py"), "w") as f:
                f.write(KILL_SCRIPT.format(dir=folder))
        t0 = time.monotonic()
        code, out = _run_until_killed(os.path.join(ref, "run.py"), ref, 60)
        assert code == 0 and f"DONE {n}" in out, out
        span = time.monotonic() - t0                        # kills land anywhere in a whole run
        reference = open(os.path.join(ref, "final.bin"), "rb").read()

        killed = finished = fresh_starts = torn = 0
        saved = -1
        while killed < kills or not finished:
            code, out = _run_until_killed(os.path.join(d, "run.py"), d, rng.uniform(0.0, span))
            assert "Traceback" not in out, out
            fresh_starts += out.count("FRESH")
            resumed = re.findall(r"^RESUMED (-?\d+)\n", out, re.M)      # whole lines only: a kill
            if resumed:                                                  # can cut one mid-print
                assert int(resumed[0]) >= saved, f"went back from save {saved} to {resumed[0]}:\n{out}"
            done = re.findall(r"^SAVED (\d+)\n", out, re.M)
            if done:
                saved = int(done[-1])
            if code == 0:
                assert f"DONE {n}" in out
                assert open(os.path.join(d, "final.bin"), "rb").read() == reference, "the kills changed what was learned"
                finished += 1
                if killed < kills:                          # start over (fresh) for more kills
                    for s in ck.SLOTS:
                        os.remove(os.path.join(d, "ck" + s))
                    saved = -1
            else:
                killed += 1
                for sl in ck.SLOTS:                         # did the kill land in a write?
                    path = os.path.join(d, "ck" + sl)
                    if os.path.exists(path):
                        try:
                            with open(path, "rb") as f:
                                ck.scan(f)
                        except ck.CheckpointError:
                            torn += 1
    print(f"\nrun {span * 1000:.0f} ms; {killed} SIGKILLs (also during load and resume; {torn} tore a slot), {finished} runs "
          f"finished, "
          f"{fresh_starts} first saves cut: the trained bytes equal the uninterrupted run's")

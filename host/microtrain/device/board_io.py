"""Talking to a board over its USB serial REPL with mpremote's Python transport: what it is,
installing the board library and the right native module, copying models, fetching checkpoints.

Paths on the board are relative to its working directory ("lib/microtrain/..."), which is the
filesystem root on a board and the flash folder of the virtual board.
"""

import hashlib
import os
import struct
import time

from microtrain.board import checkpoint as ckpt_format
from microtrain.device.boards import MPY_ARCHS


class BoardError(RuntimeError):
    pass


class Session:
    """An open raw-REPL session: `with Session(port) as s: s.info()`."""

    def __init__(self, port, baudrate=115200):
        from mpremote.transport_serial import SerialTransport
        try:
            self.t = SerialTransport(port, baudrate=baudrate)
        except Exception as e:                      # noqa: BLE001 - pyserial raises several kinds
            raise BoardError(f"cannot open {port}: {e}") from e
        try:
            self.t.enter_raw_repl(soft_reset=False)
        except Exception as e:                      # noqa: BLE001
            self.t.close()
            raise BoardError(f"no MicroPython REPL on {port}: {e}") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.t.exit_raw_repl()
        finally:
            self.t.close()

    def eval(self, expr):
        return self.t.eval(expr)

    def exec(self, code):
        return self.t.exec(code)

    def info(self):
        mpy, version, platform = self.eval("(__import__('sys').implementation._mpy, __import__('sys').version, "
                                           "__import__('sys').platform)")
        arch = MPY_ARCHS.get(mpy >> 10)
        return {"mpy": mpy, "mpy_version": f"{mpy & 0xFF}.{(mpy >> 8) & 3}", "arch": arch, "version": version,
                "platform": platform}

    # ---- files ----
    def _hash(self, path):
        try:
            if not self.t.fs_exists(path):
                return None
            return self.t.fs_hashfile(path, "sha256")
        except Exception:                           # noqa: BLE001 - no hashlib on the board
            return b"?"

    def put(self, data, dest, force=False):
        """Copy bytes to dest unless the board already has them; verify by hash.  Returns True
        if written."""
        local = hashlib.sha256(data).digest()
        if not force and self._hash(dest) == local:
            return False
        d = os.path.dirname(dest)
        parts = []
        while d:
            parts.append(d)
            d = os.path.dirname(d)
        for p in reversed(parts):
            if not self.t.fs_exists(p):
                self.t.fs_mkdir(p)
        self.t.fs_writefile(dest, data)
        got = self._hash(dest)
        if got not in (local, b"?"):
            raise BoardError(f"{dest}: the board's copy does not match (hash {got.hex()} != {local.hex()})")
        return True

    def get(self, path):
        return self.t.fs_readfile(path)

    def exists(self, path):
        return self.t.fs_exists(path)


def install(session, dist, model_bytes=None, model_name="model.mtm", log=print):
    """The board library (.mpy), the native module for the board's arch (or a notice that the
    pure-Python backend will run), and optionally a model file.  Returns what was written."""
    info = session.info()
    if info["mpy"] & 0xFF != 6:
        raise BoardError(f"the board's MicroPython writes .mpy version {info['mpy_version']}; "
                         "microtrain's modules are version 6 (MicroPython 1.23-1.29)")
    written = []
    lib = os.path.join(dist, "lib", "microtrain")
    if not os.path.isdir(lib):
        raise BoardError(f"{lib} missing: run `make natmods`")
    for f in sorted(os.listdir(lib)):
        if f.endswith(".mpy"):
            with open(os.path.join(lib, f), "rb") as fh:
                if session.put(fh.read(), f"lib/microtrain/{f}"):
                    written.append(f"lib/microtrain/{f}")
    native = os.path.join(dist, f"{info['arch']}_6.3", "mtkernels.mpy") if info["arch"] else None
    if native and os.path.exists(native):
        with open(native, "rb") as fh:
            if session.put(fh.read(), "lib/mtkernels.mpy"):
                written.append("lib/mtkernels.mpy")
        backend = "native"
    else:
        log(f"notice: no native module built for arch {info['arch']}: the board will run the pure-Python "
            "backend (same results, slower)")
        backend = "python"
    if model_bytes is not None and session.put(model_bytes, model_name):
        written.append(model_name)
    return written, backend, info


def parse_checkpoint(data):
    """{'steps', 'samples', 'last_seq', 'lr_shift', 'rng', 'n_classes', 'generation', 'model_id',
    'blobs': {tag: bytes}} of checkpoint bytes (the board's own reader, microtrain.board.checkpoint)."""
    try:
        st, blobs = ckpt_format.parse(data)
    except ckpt_format.CheckpointError as e:
        raise BoardError(f"checkpoint: {e}") from None
    return {"steps": st.steps, "samples": st.samples, "last_seq": st.last_seq, "lr_shift": st.lr_shift, "rng": st.rng,
            "n_classes": st.n_classes, "generation": st.generation, "model_id": st.model_id,
            "blobs": {bytes(t).decode("ascii", "replace"): bytes(v) for t, v in blobs.items()}}


def read_checkpoint(session, path, retries=3):
    """The newest complete checkpoint of the store `path` on the board (its two slots), parsed;
    a slot that is torn or corrupted is passed over (said in 'skipped').  Reads are retried."""
    found, skipped = None, []
    for slot in (path + s for s in ckpt_format.SLOTS):
        if not _retry(lambda: session.exists(slot), retries):
            continue
        try:
            ck = parse_checkpoint(_retry(lambda: session.get(slot), retries))
        except BoardError as e:
            skipped.append(f"{slot}: {e}")
            continue
        if found is None or ckpt_format._newer(ck["generation"], found["generation"]):
            found = dict(ck, slot=slot)
    if found is None:
        raise BoardError(f"no usable checkpoint {path} on the board"
                         + (f" ({'; '.join(skipped)})" if skipped else ": train first (the board checkpoints as it goes)"))
    found["skipped"] = skipped
    return found


def model_id(model_bytes):
    """The identity a checkpoint binds to: the model file header's CRC."""
    return struct.unpack_from("<I", model_bytes, 8)[0] if len(model_bytes) >= 12 else None


def _retry(fn, retries):
    """fn() again after a transport error (a garbled reply), up to `retries` times."""
    from mpremote.transport import TransportError
    for k in range(retries + 1):
        try:
            return fn()
        except (TransportError, OSError) as e:
            if k == retries:
                raise BoardError(f"the board did not answer ({type(e).__name__}: {e})") from e
            time.sleep(0.2)


def apply_checkpoint(model, ckpt):
    """The QModel with the checkpoint's trained tensors (and added classes) written in."""
    import numpy as np
    m = model.copy()
    blobs = ckpt["blobs"]
    cls = len(m.layers) - 2
    for tag, data in blobs.items():
        if tag[0] in "WB" and tag[1:].isdigit():
            l = m.layers[int(tag[1:])]
            if tag[0] == "W":
                l.w = np.frombuffer(data, np.int8).copy()
            else:
                l.b = np.frombuffer(data, "<i4").astype(np.int32)
    if ckpt["n_classes"] != model.n_classes:
        c, sm = m.layers[cls], m.layers[-1]
        n = ckpt["n_classes"]
        c.mult = np.frombuffer(blobs["CLSM"], "<i4").astype(np.int32)
        c.shift = np.frombuffer(blobs["CLSS"], "<i4").astype(np.int32)
        from dataclasses import replace
        c.geom = replace(c.geom, out_c=n)
        sm.geom = replace(sm.geom, in_c=n, out_c=n)
        m.labels = blobs["LABL"].decode().split("\n") if "LABL" in blobs else m.labels
        while len(m.labels) < n:
            m.labels.append(f"class{len(m.labels)}")
    return m

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


READ_TIMEOUT = 5.0          # seconds between two bytes of a reply before the board counts as gone


class BoardError(RuntimeError):
    pass


class BoardUnreachable(BoardError):
    """The port or the transport failed (cable, reset, a garbled reply): trying again may work."""


class Session:
    """An open raw-REPL session: `with Session(port) as s: s.info()`."""

    def __init__(self, port, baudrate=115200):
        from mpremote.transport_serial import SerialTransport
        try:
            # a read timeout: a board that goes away mid-call is an error, not a wait forever
            self.t = SerialTransport(port, baudrate=baudrate, timeout=READ_TIMEOUT)
        except Exception as e:                      # noqa: BLE001 - pyserial raises several kinds
            raise BoardUnreachable(f"cannot open {port}: {e}") from e
        try:
            self.t.enter_raw_repl(soft_reset=False)
        except Exception as e:                      # noqa: BLE001
            self.t.close()
            raise BoardUnreachable(f"no MicroPython REPL on {port}: {e}") from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.t.exit_raw_repl()
        except Exception:                           # noqa: BLE001 - a port that is gone is closed
            pass
        finally:
            try:
                self.t.close()
            except Exception:                       # noqa: BLE001
                pass

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

    def same(self, data, dest):
        """Whether the board's dest holds exactly these bytes."""
        return self._hash(dest) == hashlib.sha256(data).digest()

    def replace(self, data, dest, force=False):
        """Like put, but dest keeps its old bytes until the new ones are verified beside it
        (dest + '.new', then a rename over dest)."""
        if not force and self.same(data, dest):
            return False
        self.put(data, dest + ".new", force=force)
        # LittleFS renames over a file in one step; FAT refuses, so it is removed first
        self.exec("import os\ntry:\n os.rename(%r, %r)\nexcept OSError:\n os.remove(%r)\n os.rename(%r, %r)"
                  % (dest + ".new", dest, dest, dest + ".new", dest))
        return True

    def listdir(self, path):
        """Names of the files in a board folder ([] if there is none)."""
        if not self.t.fs_exists(path):
            return []
        return [e.name for e in self.t.fs_listdir(path)]

    def get(self, path):
        return self.t.fs_readfile(path)

    def exists(self, path):
        return self.t.fs_exists(path)


LIB = "lib/microtrain"
STAGED = LIB + ".new"       # the next library, being written and verified
OLD = LIB + ".old"          # the previous library, during the switch

# One exec on the board: finish or undo a switch a reset interrupted, then (if asked) switch.
# Both steps are directory renames; at every moment either lib/microtrain or, between the two
# renames, a verified lib/microtrain.new holds a complete library.
_SWITCH = """
import os
def _e(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
def _rm(p):
    for n in os.listdir(p):
        os.remove(p + '/' + n)
    os.rmdir(p)
L, N, O = %r, %r, %r
if not _e(L) and _e(O):
    os.rename(N if _e(N) and %r else O, L)
if _e(O):
    _rm(O)
if %r:
    if _e(L):
        os.rename(L, O)
    os.rename(N, L)
    if _e(O):
        _rm(O)
print(_e(L))
"""


def _switch(session, staged_ok, switch):
    out = session.exec(_SWITCH % (LIB, STAGED, OLD, staged_ok, switch))
    return out.strip().endswith(b"True")


def install(session, dist, model_bytes=None, model_name="model.mtm", log=print, retries=3):
    """The board library (.mpy), the native module for the board's arch (or a notice that the
    pure-Python backend will run), and optionally a model file.  Returns what was written.

    Nothing is replaced before its new copy is verified (SHA-256 on the board): the library is
    staged in lib/microtrain.new and swapped in by two directory renames, single files are
    written beside their old copy and renamed over it.  A push that breaks off (cable, reset)
    leaves the old library importable; the next push resumes, sending only what is not staged
    yet.  Transport errors are retried."""
    info = _retry(session, session.info, retries)
    if info["mpy"] & 0xFF != 6:
        raise BoardError(f"the board's MicroPython writes .mpy version {info['mpy_version']}; "
                         "microtrain's modules are version 6 (MicroPython 1.23-1.29)")
    lib = os.path.join(dist, "lib", "microtrain")
    if not os.path.isdir(lib):
        raise BoardError(f"{lib} missing: run `make natmods`")
    files = {}
    for f in sorted(os.listdir(lib)):
        if f.endswith(".mpy"):
            with open(os.path.join(lib, f), "rb") as fh:
                files[f] = fh.read()
    written = []
    _retry(session, lambda: _switch(session, True, False), retries)     # finish an interrupted switch
    have = set(_retry(session, lambda: session.listdir(LIB), retries))
    if have != set(files) or any(not _retry(session, lambda: session.same(data, f"{LIB}/{f}"), retries)
                                 for f, data in files.items()):
        for f in set(_retry(session, lambda: session.listdir(STAGED), retries)) - set(files):
            _retry(session, lambda: session.t.fs_rmfile(f"{STAGED}/{f}"), retries)   # stale from an older push
        for f, data in files.items():
            if _retry(session, lambda: session.put(data, f"{STAGED}/{f}"), retries):
                written.append(f"{LIB}/{f}")
        if not _retry(session, lambda: _switch(session, True, True), retries):
            raise BoardError("the board did not switch to the new library: run `microtrain push` again")
        written = written or [LIB]
    native = os.path.join(dist, f"{info['arch']}_6.3", "mtkernels.mpy") if info["arch"] else None
    if native and os.path.exists(native):
        with open(native, "rb") as fh:
            module = fh.read()
        if _retry(session, lambda: session.replace(module, "lib/mtkernels.mpy"), retries):
            written.append("lib/mtkernels.mpy")
        backend = "native"
    else:
        log(f"notice: no native module built for arch {info['arch']}: the board will run the pure-Python "
            "backend (same results, slower)")
        backend = "python"
    if model_bytes is not None and _retry(session, lambda: session.replace(model_bytes, model_name), retries):
        written.append(model_name)
    if model_bytes is not None:
        # where frozen weights can be read in place (board flashmap): what that region holds
        def region():
            session.exec("from microtrain import flashmap as _mt_flashmap")
            return session.eval("_mt_flashmap.state()")
        info["flash_region"] = _retry(session, region, retries)
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
        if not _retry(session, lambda: session.exists(slot), retries):
            continue
        try:
            ck = parse_checkpoint(_retry(session, lambda: session.get(slot), retries))
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


def _retry(session, fn, retries):
    """fn() again after a transport error (a garbled reply, a board that reset: the raw REPL is
    entered again first), up to `retries` times."""
    from mpremote.transport import TransportError
    # mpremote raises TypeError when it reads from a port that went away mid-call
    for k in range(retries + 1):
        try:
            return fn()
        except (TransportError, OSError, TypeError) as e:
            if k == retries:
                raise BoardUnreachable(f"the board did not answer ({type(e).__name__}: {e})") from e
            time.sleep(0.2)
            try:
                session.t.enter_raw_repl(soft_reset=False, timeout_overall=3)
            except Exception:                       # noqa: BLE001 - the next try reports it
                pass


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

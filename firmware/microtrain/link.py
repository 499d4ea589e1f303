# The serial link, board side: framed messages on the REPL's own stdin/stdout.
#
# The host (host/microtrain/device/link.py) enters the raw REPL and runs
#     import microtrain.link as L; L.serve("model.mtm", "model.ckpt", 16, 60, check)
# then both sides exchange frames until BYE.  Every frame:
#
#   0   2  sync b"\xeb\x90"
#   2   2  payload length n (u16 LE)
#   4   1  type                     HELLO SAMPLE ACK NACK TELEMETRY CMD RESULT ERROR BYE GRAD ACT
#   5   1  flags                    SAMPLE: 1 = validation sample (stored, not trained on)
#   6   4  seq (i32 LE)             SAMPLE: its sequence number; ACK/NACK/HELLO/BYE: the highest
#                                   seq applied; CMD/RESULT: the command id
#  10   2  crc32(bytes 2..9) & 0xFFFF, so a false sync never makes us wait for a bogus length
#  12   n  payload                  SAMPLE: int8 sample, then the label byte
#  12+n 4  crc32(bytes 2..11+n)
#
# Rules: SAMPLE seq is applied only if seq == last applied + 1 (Trainer.last_seq, which the
# checkpoint keeps); older ones are acked again and not applied; newer ones (a gap) and frames
# with a good header but a bad CRC are NACKed once per expected seq; the host resends.  The
# trainer checkpoints every `every` samples and a session starts from the checkpoint, so after a
# reset the host resumes from HELLO's last_seq + 1: nothing is lost or applied twice.
#
# Split training (a plan with a cut; the command "split PATH BASE COUNT" names the board's own
# sample file, records of label byte + int8 sample, whose record (seq - BASE) % n is sample seq):
# the host drives it with GRAD frames, the board answers every one with the ACT frame of the
# sample it wants a gradient for, last_seq + 1 (which also acknowledges everything applied):
#   ACT  seq  activation at the cut (int8), its clamp mask bits (if kept), label u8, lr shift i8,
#             PRNG state u32, rollbacks u16, seq of the last checkpoint i32 (ACT_TAIL_FMT)
#   GRAD seq  the gradient at the cut (int16, when the board trains), its exponent i8, the label's
#             probability u8 (1/256), correct u8, the PRNG state after the host's updates u32;
#             applied only if seq == last_seq + 1; an empty GRAD only asks for the ACT
# The host keeps its layers in step: it snapshots them at each checkpoint the ACTs report and
# restores the snapshot when the board rolls back or resumes from a checkpoint after a reset.
# Keyboard interrupt is off while framing; "\x03\r\x01" (mpremote entering the raw REPL) or a
# Ctrl-C followed by a second of quiet ends the session, and so does `idle` seconds without a
# valid frame.  Nothing but frames is written while a session runs.

import struct
import sys

from . import backend, modelfile
from .model import load
from .telemetry import RECORD_SIZE
from .trainer import Trainer
from ._compat import collect, mem_alloc, mem_free, nonce16, remove, stat, ticks_us
from ._compat import ticks_diff as ticks_diff_us

try:
    from micropython import kbd_intr
except ImportError:
    def kbd_intr(c):
        pass

try:
    import select
except ImportError:
    select = None

try:
    from time import ticks_diff, ticks_ms
except ImportError:
    from time import monotonic

    def ticks_ms():
        return int(monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

try:
    import json
except ImportError:
    json = None

VERSION = 2
SYNC = b"\xeb\x90"
HEAD_FMT = "<HBBi"          # after the sync: length, type, flags, seq; then the u16 header check
HEAD_SIZE = 12
OVERHEAD = 16
HELLO, SAMPLE, ACK, NACK, TELEMETRY, CMD, RESULT, ERROR, BYE, GRAD, ACT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
LAST_TYPE = ACT
TYPE_NAMES = ("", "HELLO", "SAMPLE", "ACK", "NACK", "TELEMETRY", "CMD", "RESULT", "ERROR", "BYE", "GRAD", "ACT")
ACT_TAIL_FMT = "<BbIHi"     # after the activation and mask: label, lr shift, PRNG state, rollbacks, ckpt seq
GRAD_TAIL_FMT = "<bBBI"     # after the gradient: exponent, probability (1/256), correct, PRNG state
F_VALIDATION = 1            # SAMPLE flag
F_FAILED = 1                # RESULT flag: the command raised
F_FATAL = 1                 # ERROR flag: the sample was rejected (not applied), the host must stop
NACK_CRC, NACK_GAP = 1, 2   # NACK flags
HELLO_FMT = "<BBHBBiiIIHHHbiHI"  # version, native, in_size, classes, max classes, last_seq, ckpt_seq, steps,
#   samples, validation samples, checkpoint every, max payload, lr_shift, request (its seq; 0: unasked),
#   trainer id (new after a reset: telemetry record numbers start again), telemetry records written
ACK_FMT = "<iI"             # ACK/NACK payload: seq of the last checkpoint, steps
BANNER = b"raw REPL; CTRL-B to exit\r\n"
TX_SIZE = 512
TEL_RECORDS = 8
IBT_MS = 500                # inter-byte timeout inside a frame
POLL_MS = 200


def crc(buf, c=0):
    return modelfile.crc32(buf, c) & 0xFFFFFFFF


def start_check(model, checkpoint, every, idle, fresh=0):
    """Check value of serve()'s arguments: a start command garbled on the wire raises."""
    return crc(("%s|%s|%d|%d|%d" % (model, checkpoint, every, idle, fresh)).encode()) & 0xFFFF


class _State:
    """What outlives a session in this MicroPython process: the trainer and the link counters."""

    def __init__(self, trainer, key):
        self.t = trainer
        self.key = key
        self.ckpt_seq = trainer.last_seq
        self.id = nonce16()           # tells the host this is a new trainer (after a reset)
        self.last_cmd = None
        self.last_reply = None
        self.session = None
        self.sessions = self.frames = self.bad = self.dups = self.gaps = self.applied = 0
        self.ended = ""


class Session:
    def __init__(self, st, every, idle_s):
        self.st = st
        t = self.t = st.t
        self.every = every
        self.idle = idle_s * 1000
        self.in_size = n = t.model.in_size
        self.x = bytearray(n)                 # samples land here: trained on in place, no copy
        self.xv = memoryview(self.x)
        self.cap = max(n + 1, 128)
        self.src = None                       # split training: the board's sample file
        if t.cut:
            self._split_buffers()
        self.rx = bytearray(self.cap + 4)
        self.rxv = memoryview(self.rx)
        self.tail = bytearray(5)              # label + crc of a sample
        self.tailv = memoryview(self.tail)
        self.hdr = bytearray(HEAD_SIZE)
        self.hdrv = memoryview(self.hdr)
        self.hv2 = self.hdrv[2:]
        self.tx = bytearray(max(TX_SIZE, OVERHEAD + self.cap, OVERHEAD + len(self.actp) if t.cut else 0))
        self.txv = memoryview(self.tx)
        self.txn = 0
        self.tel = bytearray(TEL_RECORDS * RECORD_SIZE)
        self.telv = memoryview(self.tel)
        self.teln = 0
        self.ackp = bytearray(struct.calcsize(ACK_FMT))
        self.one = bytearray(1)
        self.onev = memoryview(self.one)
        self.pb = None                        # bytes pushed back for rescanning
        self.pbi = 0
        inp = getattr(sys.stdin, "buffer", sys.stdin)
        self.rd = inp.readinto
        self.wr = getattr(sys.stdout, "buffer", sys.stdout).write
        self.poll = None
        self.ipoll = False
        if select is not None and hasattr(select, "poll"):
            try:
                self.poll = select.poll()
                self.poll.register(sys.stdin, select.POLLIN)
                self.ipoll = hasattr(self.poll, "ipoll")
            except (OSError, TypeError, ValueError, AttributeError):
                self.poll = None
        self.closed = False
        self.nacked = None
        self.nack_t = 0
        self.since = 0
        self.n = self.typ = self.flags = self.seq = 0

    # ---- bytes in ----
    def _wait(self, ms):
        p = self.poll
        if p is None:
            return True
        if self.ipoll:
            for _ in p.ipoll(ms):            # allocation-free on MicroPython
                return True
            return False
        return bool(p.poll(ms))

    def _getc(self, ms):
        pb = self.pb
        if pb is not None:
            c = pb[self.pbi]
            self.pbi += 1
            if self.pbi >= len(pb):
                self.pb = None
            return c
        if self.closed or not self._wait(ms):
            return -1
        if not self.rd(self.onev):
            self.closed = True                # stdin at EOF: nobody will talk to us again
            return -1
        return self.one[0]

    def _readn(self, mv, n, ms):
        got = 0
        while got < n and self.pb is not None:
            mv[got] = self._getc(0)
            got += 1
        whole = len(mv) == n
        while got < n:
            if self.closed or not self._wait(ms):
                return got
            r = self.rd(mv if whole and not got else mv[got:n])
            if not r:
                self.closed = True
                return got
            got += r
        return got

    def _ctrl_c(self):
        """A Ctrl-C between frames: mpremote's "\\r\\x01" after it, or quiet, ends the session."""
        c = self._getc(1000)
        if c < 0:
            return True
        if c == 13:
            c2 = self._getc(1000)
            if c2 < 0:
                return True
            if c2 == 1:                       # we ate the Ctrl-A: answer as the raw REPL would
                self._flush()
                self._out(BANNER)
                return True
            self.pb = bytes((13, c2))
        else:
            self.pb = bytes((c,))
        self.pbi = 0
        return False

    def _recv(self, ms):
        """One valid frame: its type; 0 on timeout, -1 when interrupted, -2 for a frame whose
        header is good but whose payload is not (self.seq is its seq)."""
        hdr, hv = self.hdr, self.hdrv
        c = self._getc(ms)
        while True:
            if c < 0:
                return 0
            if c == 3:
                if self._ctrl_c():
                    return -1
                c = self._getc(IBT_MS)
                continue
            if c != 0xEB:
                c = self._getc(ms)
                continue
            c = self._getc(IBT_MS)
            if c != 0x90:
                continue                      # look at c again: it may start a sync
            if self._readn(self.hv2, 10, IBT_MS) < 10:
                return 0
            n, typ, flags, seq = struct.unpack_from(HEAD_FMT, hdr, 2)
            if crc(hv[2:10]) & 0xFFFF != hdr[10] | (hdr[11] << 8) or not 0 < typ <= LAST_TYPE or n > self.cap:
                self.st.bad += 1
                self.pb = bytes(hdr[2:12])    # a false sync: rescan what followed it
                self.pbi = 0
                c = self._getc(ms)
                continue
            c0 = crc(hv[2:12])
            if typ == SAMPLE and n == self.in_size + 1:
                tv = self.tailv
                ok = self._readn(self.xv, n - 1, IBT_MS) == n - 1 and self._readn(tv, 5, IBT_MS) == 5
                ok = ok and crc(tv[0:1], crc(self.x, c0)) == struct.unpack_from("<I", self.tail, 1)[0]
            else:
                ok = self._readn(self.rxv, n + 4, IBT_MS) == n + 4
                ok = ok and crc(self.rxv[:n], c0) == struct.unpack_from("<I", self.rx, n)[0]
            self.n, self.typ, self.flags, self.seq = n, typ, flags, seq
            if not ok:
                self.st.bad += 1
                return -2
            self.st.frames += 1
            return typ

    # ---- bytes out ----
    def _out(self, data):
        o = self.wr(data) or 0
        if o >= len(data):
            return
        mv = memoryview(data)
        stuck = 0
        while o < len(mv):
            w = self.wr(mv[o:])
            if not w:
                stuck += 1
                if stuck > 1000:
                    return
                continue
            o += w

    def _flush(self):
        if self.txn:
            self._out(self.txv[:self.txn])
            self.txn = 0

    def _frame(self, typ, seq, payload=None, flags=0):
        n = len(payload) if payload is not None else 0
        size = len(self.tx)
        if n > size - OVERHEAD:
            n = size - OVERHEAD
        if self.txn + OVERHEAD + n > size:
            self._flush()
        tx, mv, o = self.tx, self.txv, self.txn
        tx[o] = 0xEB
        tx[o + 1] = 0x90
        struct.pack_into(HEAD_FMT, tx, o + 2, n, typ, flags, seq)
        struct.pack_into("<H", tx, o + 10, crc(mv[o + 2:o + 10]) & 0xFFFF)
        if n:
            tx[o + 12:o + 12 + n] = payload[:n] if n < len(payload) else payload
        struct.pack_into("<I", tx, o + 12 + n, crc(mv[o + 2:o + 12 + n]))
        self.txn = o + OVERHEAD + n

    def _telemetry(self, ring, off):         # the trainer's telemetry sink: copy one record out
        o = self.teln * RECORD_SIZE
        tel = self.tel
        for j in range(RECORD_SIZE):          # byte by byte: a slice would allocate a view
            tel[o + j] = ring[off + j]
        self.teln += 1
        if self.teln >= TEL_RECORDS:
            self._tel_frame()

    def _tel_frame(self):
        if self.teln:
            self._frame(TELEMETRY, self.t.telemetry.head - self.teln, self.telv[:self.teln * RECORD_SIZE])
            self.teln = 0

    def _ack(self, typ=ACK, flags=0):
        self._tel_frame()
        struct.pack_into(ACK_FMT, self.ackp, 0, self.st.ckpt_seq, self.t.steps)
        self._frame(typ, self.t.last_seq, self.ackp, flags)

    def _nack(self, why):
        expect = self.t.last_seq + 1
        now = ticks_ms()
        if self.nacked == expect and ticks_diff(now, self.nack_t) < 100:
            return                            # one NACK per gap: the host goes back once
        self.nacked = expect
        self.nack_t = now
        self._ack(NACK, why)

    def _error(self, seq, msg, flags=F_FATAL):
        self._tel_frame()
        self._frame(ERROR, seq, msg.encode(), flags)

    def _hello(self, req=0):
        t, st = self.t, self.st
        m = t.model
        head = struct.pack(HELLO_FMT, VERSION, 1 if backend.NAME == "native" else 0, m.in_size, m.n_classes,
                           m.max_classes, t.last_seq, st.ckpt_seq, t.steps, t.samples,
                           min(t.val_n, t.val_capacity), self.every, self.cap, t.lr_shift, req, st.id,
                           t.telemetry.head)
        self._frame(HELLO, t.last_seq, head + "\n".join(m.labels).encode())

    # ---- the session ----
    def run(self):
        st, t = self.st, self.t
        st.sessions += 1
        t.telemetry.sink = self._telemetry
        self._hello()
        self._flush()
        last = ticks_ms()
        while True:
            typ = self._recv(POLL_MS)
            if typ == 0:
                if self.closed:
                    return "eof"
                if self.idle and ticks_diff(ticks_ms(), last) > self.idle:
                    self._frame(BYE, t.last_seq)
                    self._flush()
                    return "idle"
                continue
            if typ == -1:
                return "interrupted"
            last = ticks_ms()
            if typ == -2:
                if self.typ == SAMPLE:
                    self._nack(NACK_CRC)
                elif self.typ == GRAD and self.src is not None:
                    self._act()                # a garbled gradient: ask for it again
            elif typ == SAMPLE:
                self._sample()
            elif typ == GRAD:
                self._grad()
            elif typ == HELLO:
                self._hello(self.seq)
            elif typ == CMD:
                self._command()
            elif typ == BYE:
                self._ack()
                self._frame(BYE, t.last_seq)
                self._flush()
                return "bye"
            if self.teln and not self._wait(0):
                self._tel_frame()             # quiet line: send what telemetry is waiting
            self._flush()

    def _sample(self):
        st, t = self.st, self.t
        seq = self.seq
        expect = t.last_seq + 1
        if seq < expect:
            st.dups += 1
            self._ack()
            return
        if seq > expect:
            st.gaps += 1
            self._nack(NACK_GAP)
            return
        if self.n != self.in_size + 1:
            self._error(seq, "sample of %d bytes, the model takes %d" % (self.n - 1, self.in_size))
            return
        label = self.tail[0]
        if label >= t.model.n_classes:
            self._error(seq, "label %d, the model has %d classes" % (label, t.model.n_classes))
            return
        try:
            if self.flags & F_VALIDATION:
                t.add_validation(self.x, label)
                self._keep_validation(seq, label)
            else:
                t.train_step(self.x, label, seq)
        except Exception as e:  # noqa: BLE001 - report it, keep the session and the REPL
            self._error(seq, "%s: %s" % (type(e).__name__, e))
            return
        t.last_seq = seq                      # also after a divergence rollback inside step()
        st.applied += 1
        self.since += 1
        if self.every and self.since >= self.every:
            try:
                self._checkpoint()
            except Exception as e:  # noqa: BLE001 - e.g. flash full: the host is told, training goes on
                self._error(seq, "checkpoint failed: %s: %s" % (type(e).__name__, e), 0)
        self._ack()

    def _checkpoint(self):
        t = self.t
        if t.val_n and not t.cut:            # validation samples on the board: keep the best apart,
            t.validate()                     # roll back a poisoned stream (checkpoints either way)
        else:
            t.checkpoint()
        self.st.ckpt_seq = self.t.last_seq
        self.since = 0

    def _keep_validation(self, seq, label):
        with open(self.t.ckpt_path + ".val", "ab") as f:
            f.write(struct.pack("<iB", seq, label))
            f.write(self.x)

    # ---- split training ----
    def _split_buffers(self):
        t = self.t
        l = t.model.layers[t.cut - 1]
        self.n_act = n = l.out_size
        self.n_mask = (n + 7) >> 3 if t.views[t.cut - 1][2] is not None else 0
        self.n_grad = 2 * n if t.bw else 0
        self.cap = max(self.cap, self.n_grad + struct.calcsize(GRAD_TAIL_FMT))
        self.actp = bytearray(n + self.n_mask + struct.calcsize(ACT_TAIL_FMT))
        self.rec = bytearray(self.in_size + 1)
        self.recv = memoryview(self.rec)
        self.sx = self.recv[1:]
        self.fwd_seq = None                   # the sample whose forward pass the views hold
        self.fwd_us = 0

    def _split_open(self, path, base, count):
        t = self.t
        if not t.cut:
            raise ValueError("this model file's plan is not split: convert it with --split")
        size = stat(path)[6]
        if size % (self.in_size + 1) or not size:
            raise ValueError("%s: %d B is not a whole number of %d B records (label + sample)"
                             % (path, size, self.in_size + 1))
        if self.src is not None:
            self.src.close()
        self.src = open(path, "rb")
        self.src_n = size // (self.in_size + 1)
        self.src_base = base
        self.src_end = base + count
        self.fwd_seq = None
        return self.src_n

    def _split_forward(self, seq):
        t = self.t
        k = (seq - self.src_base) % self.src_n
        self.src.seek(k * (self.in_size + 1))
        if self.src.readinto(self.recv) != len(self.rec):
            raise OSError("sample file shrank under the session")
        if self.rec[0] >= t.model.n_classes:
            raise ValueError("sample %d of the file: label %d, the model has %d classes" % (k, self.rec[0], t.model.n_classes))
        t0 = ticks_us()
        act, mask = t.split_forward(self.sx)
        self.fwd_us = ticks_diff_us(ticks_us(), t0)
        n, m, p = self.n_act, self.n_mask, self.actp
        p[0:n] = act
        if m:
            p[n:n + m] = mask
        self.fwd_seq = seq

    def _act(self):
        """The ACT of the sample the board wants a gradient for (last_seq + 1); empty after the
        stream's last sample."""
        t = self.t
        seq = t.last_seq + 1
        if seq >= self.src_end or seq < self.src_base:
            self._tel_frame()
            self._frame(ACT, seq, None)
            return
        if self.fwd_seq != seq:
            try:
                self._split_forward(seq)
            except Exception as e:  # noqa: BLE001
                self._error(seq, "%s: %s" % (type(e).__name__, e))
                return
        struct.pack_into(ACT_TAIL_FMT, self.actp, self.n_act + self.n_mask, self.rec[0], t.lr_shift, t.rng[0],
                         t.rollbacks & 0xFFFF, self.st.ckpt_seq)
        self._tel_frame()
        self._frame(ACT, seq, self.actp)

    def _grad(self):
        st, t = self.st, self.t
        if self.src is None:
            self._error(self.seq, "a gradient, but no split stream: the host sends the split command first")
            return
        seq = self.seq
        if self.n and seq == t.last_seq + 1 and self.src_base <= seq < self.src_end:
            tail = struct.calcsize(GRAD_TAIL_FMT)
            if self.n != self.n_grad + tail:
                self._error(seq, "gradient of %d bytes, the cut takes %d" % (self.n - tail, self.n_grad))
                return
            try:
                if self.fwd_seq != seq:       # a command ran a forward pass since the ACT
                    self._split_forward(seq)
                e, p, correct, rng = struct.unpack_from(GRAD_TAIL_FMT, self.rx, self.n_grad)
                if self.n_grad:
                    t.g_cut[0:self.n_grad] = self.rxv[0:self.n_grad]
                t.split_step(self.sx, self.rec[0], e, p, correct, rng, self.fwd_us, seq)
            except Exception as e:  # noqa: BLE001 - report it, keep the session and the REPL
                self._error(seq, "%s: %s" % (type(e).__name__, e))
                return
            self.fwd_seq = None
            t.last_seq = seq
            st.applied += 1
            self.since += 1
            if self.every and self.since >= self.every:
                try:
                    self._checkpoint()
                except Exception as e:  # noqa: BLE001
                    self._error(seq, "checkpoint failed: %s: %s" % (type(e).__name__, e), 0)
        elif self.n:
            if seq <= t.last_seq:
                st.dups += 1
            else:
                st.gaps += 1
        self._act()

    def _adapt(self, a):
        t0 = ticks_us()
        collect()
        base = mem_alloc()
        r = _adapt_run(self.t, a)
        r["heap_used"] = r.pop("heap", 0) or max(0, mem_alloc() - base)
        r["total_us"] = ticks_diff_us(ticks_us(), t0)
        if "kept" in r and r["kept"]:
            self.st.ckpt_seq = self.t.last_seq
            self.since = 0
        return r

    def _command(self):
        st = self.st
        seq = self.seq
        if self.src is not None:
            self.fwd_seq = None               # a command may run a forward pass: redo the sample's
        if seq == st.last_cmd and st.last_reply is not None:
            flags, payload = st.last_reply    # a resent command: answer again, do not run it again
        else:
            flags = 0
            try:
                r = self._run(bytes(self.rxv[:self.n]).decode())
            except Exception as e:  # noqa: BLE001
                flags, r = F_FAILED, {"error": "%s: %s" % (type(e).__name__, e)}
            payload = _encode(r)
            st.last_cmd, st.last_reply = seq, (flags, payload)
        self._tel_frame()
        self._frame(RESULT, seq, payload, flags)

    def _run(self, name):
        t, st = self.t, self.st
        if name == "checkpoint":
            self._checkpoint()
        elif name == "telemetry":            # what the ring still holds, re-sent
            tel = t.telemetry
            first = max(0, tel.head - tel.capacity)
            for i in range(first, tel.head):
                off = (i % tel.capacity) * RECORD_SIZE
                self._frame(TELEMETRY, i, memoryview(tel.buf)[off:off + RECORD_SIZE])
            return {"records": tel.head - first, "written": tel.head}
        elif name == "evaluate":
            acc = t.evaluate()
            return {"accuracy": acc, "right": t.last_eval[0], "total": t.last_eval[1], "steps": t.steps}
        elif name == "rollback":
            t.rollback(reason="host")
            st.ckpt_seq = t.last_seq
            self.since = 0
        elif name == "reload":              # the host wrote a checkpoint (a federated round's global)
            t.store.scanned = False
            t.resume()
            st.ckpt_seq = t.last_seq
            self.since = 0
        elif name.startswith("split "):    # split PATH BASE COUNT: the board's samples, from seq BASE
            path, base, count = name[6:].rsplit(" ", 2)
            n = self._split_open(path, int(base), int(count))
            r = stats()
            r["records"] = n
            return r
        elif name.split(" ", 1)[0] in ADAPT_COMMANDS:
            r = self._adapt(name.split(" "))
            r.update(stats())
            return r
        elif name == "clear_validation":
            t.val_n = 0
            try:
                remove(t.ckpt_path + ".val")
            except OSError:
                pass
        elif name != "stats":
            raise ValueError("unknown command %r" % name)
        return stats()


# adaptation without backprop (microtrain/adapt.py): the files are on the board's flash
#   anchors SRC K OUT [LIMIT]    pick K anchors per class of the sample file SRC, write OUT
#   apply DELTA                  a host's delta; imprint ANCHORS; restats SRC ANCHORS SOURCE
ADAPT_COMMANDS = ("anchors", "apply", "imprint", "restats")


def _adapt_run(t, a):
    from .adapt import Adaptor, delta_blobs
    ad = Adaptor(t)
    t0 = ticks_us()
    if a[0] == "anchors":
        return ad.anchors(a[1], int(a[2]), a[3], int(a[4]) if len(a) > 4 else 0)[1]
    if a[0] == "apply":
        blobs = delta_blobs(a[1], t.model.id)
    elif a[0] == "imprint":
        blobs = ad.imprint(a[1])
    else:
        blobs = ad.restats(a[1], a[2], a[3])
    us = ticks_diff_us(ticks_us(), t0)
    r = ad.apply(blobs)
    r["compute_us"] = us
    return r


def _encode(r):
    if json is not None:
        return json.dumps(r).encode()
    return ("{" + ", ".join('"%s": %s' % (k, _json_value(v)) for k, v in r.items()) + "}").encode()


def _json_value(v):                           # a port without json: the values commands return
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, str):
        return '"%s"' % v
    return v


_state = None


def trainer():
    """The trainer of the last session (None before the first): for inspection at the REPL."""
    return _state.t if _state is not None else None


def stats():
    st = _state
    if st is None:
        return {}
    t = st.t
    return {"last_seq": t.last_seq, "ckpt_seq": st.ckpt_seq, "steps": t.steps, "samples": t.samples,
            "lr_shift": t.lr_shift, "val_n": min(t.val_n, t.val_capacity), "sessions": st.sessions,
            "frames": st.frames, "bad": st.bad, "dups": st.dups, "gaps": st.gaps, "applied": st.applied,
            "ended": st.ended, "mem_free": mem_free()}


def _open(model, checkpoint, fresh=0):
    global _state
    try:
        s = stat(model)
        key = (model, checkpoint, s[6], s[8])
    except (OSError, TypeError):
        key = (model, checkpoint)
    if _state is not None and _state.key == key and not fresh:
        return _state
    _state = None
    collect()
    t = Trainer(load(model), checkpoint_path=checkpoint)
    if fresh:                                 # asked to start over from the model file
        t.fresh()
        try:
            remove(checkpoint + ".val")
        except OSError:
            pass
    t.resume()                                # the newest complete checkpoint, if any (refused if
    #                                           it belongs to another model file)
    st = _State(t, key)
    _load_validation(t)
    _state = st
    return st


def _load_validation(t):
    n = t.model.in_size
    rec = bytearray(5 + n)
    prev = -1
    try:
        f = open(t.ckpt_path + ".val", "rb")
    except OSError:
        return
    with f:
        while f.readinto(rec) == len(rec):
            seq, label = struct.unpack_from("<iB", rec, 0)
            if prev < seq <= t.last_seq and label < t.model.n_classes:
                t.add_validation(memoryview(rec)[5:], label)
                prev = seq


def serve(model="model.mtm", checkpoint=None, every=16, idle=60, check=None, fresh=0):
    """Run one framed session on stdin/stdout until BYE, interrupt or `idle` seconds of silence;
    returns why it ended.  The trainer stays loaded for the next session in this process."""
    if checkpoint is None:
        checkpoint = model.rsplit(".", 1)[0] + ".ckpt"
    if check is not None and check != start_check(model, checkpoint, every, idle, fresh):
        raise ValueError("start command corrupted in transit")
    st = _open(model, checkpoint, fresh)
    s = st.session
    if s is None or s.every != every or s.idle != idle * 1000:
        st.session = s = None
        collect()
        st.session = s = Session(st, every, idle)
    s.closed = False
    s.pb = None
    kbd_intr(-1)
    try:
        st.ended = s.run()
    finally:
        kbd_intr(3)
        st.t.telemetry.sink = None
    return st.ended

"""The serial link, host side: stream samples to a board's trainer and read its telemetry.

    with Link("/dev/ttyACM0", model_path_on_board="model.mtm") as link:
        print(link.hello)                         # protocol version, model, last_seq, steps ...
        stats = link.stream(X, y, progress=print) # samples/s, wire bytes per sample, retransmissions
        link.command("evaluate")
        records = link.telemetry()

Over mpremote's serial transport (no subprocess): enter the raw REPL, start
`microtrain.link.serve(...)` on the board, then framed messages both ways (the frame layout and
the board's rules are in firmware/microtrain/link.py, imported here as microtrain.board.link).

Host rules: SAMPLE frames carry consecutive sequence numbers, at most `window` unacknowledged;
ACK/NACK are cumulative (the highest seq the board applied); a NACK or `timeout` seconds
without progress resends everything after the last ack (go-back-N); after `retries` timeouts in a
row, a serial error or signs that the session ended (REPL prompt, reset banner), the link
reconnects: reopens the port, asks the running session for HELLO, else enters the raw REPL and
starts a new session, whose HELLO says the last seq the board holds (its checkpoint after a
reset) - streaming resumes right after it.  close() always leaves the board at the friendly
REPL: BYE, or interrupt the session, then leave the raw REPL.
"""

import contextlib
import io
import json
import random
import struct
import time
import zlib

import numpy as np
import serial
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from microtrain.board import link as proto
from microtrain.board.telemetry import RECORD_SIZE, decode

SYNC = proto.SYNC
HELLO, SAMPLE, ACK, NACK, TELEMETRY, CMD, RESULT, ERROR, BYE = (proto.HELLO, proto.SAMPLE, proto.ACK, proto.NACK,
                                                               proto.TELEMETRY, proto.CMD, proto.RESULT,
                                                               proto.ERROR, proto.BYE)
HELLO_FIELDS = ("version", "native", "in_size", "n_classes", "max_classes", "last_seq", "ckpt_seq", "steps",
                "samples", "val_n", "checkpoint_every", "max_payload", "lr_shift", "request", "trainer",
                "telemetry_written")
HELLO_SIZE = struct.calcsize(proto.HELLO_FMT)
REPL_MARKS = (b"\x04>", b">>> ", b"raw REPL; CTRL-B", b"MicroPython v", b"Traceback (most recent")
UNSAFE_AT_REPL = (2, 3, 4)       # Ctrl-B/C/D: bytes a probe frame avoids, in case no session reads it
MAX_ACK_TIMEOUT = 20.0      # s: however slow the board seemed (a stall inflates its measured pace)
SERIAL_ERRORS = (serial.SerialException, OSError, TransportError, struct.error)


class LinkError(RuntimeError):
    """The link cannot go on (board unreachable, sample rejected, board-side error)."""


class BoardError(LinkError):
    """The board raised while starting the session (its traceback is the message)."""


class _Lost(Exception):
    """Internal: the session is gone, reconnect."""


class DeadlineError(LinkError):
    """The overall deadline of a stream or command passed; what the board applied stays applied."""


def frame(typ, seq, payload=b"", flags=0):
    """The bytes of one frame."""
    head = struct.pack(proto.HEAD_FMT, len(payload), typ, flags, seq)
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    body = head + bytes(payload)
    return SYNC + body + struct.pack("<I", zlib.crc32(body))


class Frame:
    __slots__ = ("type", "flags", "seq", "payload")

    def __init__(self, typ, flags, seq, payload):
        self.type, self.flags, self.seq, self.payload = typ, flags, seq, payload

    def __repr__(self):
        name = proto.TYPE_NAMES[self.type] if self.type < len(proto.TYPE_NAMES) else self.type
        return f"<{name} seq={self.seq} flags={self.flags} {len(self.payload)}B>"


class FrameParser:
    """Incremental: feed() bytes, get the valid frames; everything else is junk (kept, last 4 KB,
    for error messages), in which a REPL prompt or banner sets `repl_seen`."""

    def __init__(self, max_payload=4096):
        self.max_payload = max_payload
        self.buf = bytearray()
        self.junk = bytearray()
        self.bad = 0
        self.repl_seen = False

    def reset(self):
        self.buf.clear()
        self.junk.clear()
        self.repl_seen = False

    def _junk(self, data):
        if not data:
            return
        self.junk += data
        tail = bytes(self.junk[-(len(data) + 32):])
        if any(m in tail for m in REPL_MARKS):
            self.repl_seen = True
        if len(self.junk) > 4096:
            del self.junk[:-4096]

    def feed(self, data):
        buf = self.buf
        buf += data
        out = []
        while True:
            i = buf.find(SYNC)
            if i < 0:
                keep = 1 if buf[-1:] == SYNC[:1] else 0
                self._junk(buf[:len(buf) - keep])
                del buf[:len(buf) - keep]
                break
            if i:
                self._junk(buf[:i])
                del buf[:i]
            if len(buf) < proto.HEAD_SIZE:
                break
            n, typ, flags, seq = struct.unpack_from(proto.HEAD_FMT, buf, 2)
            check = struct.unpack_from("<H", buf, 10)[0]
            if zlib.crc32(buf[2:10]) & 0xFFFF != check or n > self.max_payload or not 0 < typ <= proto.LAST_TYPE:
                self.bad += 1
                self._junk(buf[:1])
                del buf[:1]
                continue
            if len(buf) < proto.OVERHEAD + n:
                break
            if zlib.crc32(buf[2:12 + n]) != struct.unpack_from("<I", buf, 12 + n)[0]:
                self.bad += 1
                self._junk(buf[:1])
                del buf[:1]
                continue
            out.append(Frame(typ, flags, seq, bytes(buf[12:12 + n])))
            del buf[:proto.OVERHEAD + n]
        return out


def parse_hello(payload):
    info = dict(zip(HELLO_FIELDS, struct.unpack_from(proto.HELLO_FMT, payload, 0)))
    info["native"] = bool(info["native"])
    labels = payload[HELLO_SIZE:].decode("utf-8", "replace")
    info["labels"] = labels.split("\n") if labels else []
    return info


def _safe_nonce(typ, payload=b""):
    """A seq for a control frame whose bytes hold no Ctrl-B/C/D: harmless if a REPL reads it."""
    while True:
        seq = random.randrange(1 << 24, 1 << 30)
        f = frame(typ, seq, payload)
        if not any(b in UNSAFE_AT_REPL for b in f):
            return seq, f


class Link:
    """A framed session with the trainer on a board (see the module docstring).

    port                  serial device (or a VirtualBoard's `port`)
    model_path_on_board   the model file in the board's flash
    checkpoint_path       on the board; default: the model path with .ckpt
    checkpoint_every      the board checkpoints every K applied samples
    window                SAMPLE frames in flight
    timeout               seconds without an ack before resending
    retries               timeouts in a row before reconnecting
    reconnect_timeout     give up (LinkError) when the board stays unreachable this long
    idle_timeout          the board ends a session after this many seconds without frames
    """

    def __init__(self, port, model_path_on_board="model.mtm", checkpoint_path=None, checkpoint_every=16,
                 baudrate=115200, window=8, timeout=1.0, retries=3, reconnect_timeout=30.0, idle_timeout=60,
                 start_timeout=10.0, log=None, fresh=False):
        self.port = port
        self.model_path = model_path_on_board
        self.checkpoint_path = checkpoint_path or model_path_on_board.rsplit(".", 1)[0] + ".ckpt"
        self.checkpoint_every = int(checkpoint_every)
        self.baudrate = baudrate
        self.window = max(1, int(window))
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.reconnect_timeout = float(reconnect_timeout)
        self.idle_timeout = int(idle_timeout)
        self.start_timeout = float(start_timeout)
        self.log = log or (lambda msg: None)
        self.fresh = bool(fresh)      # the first session forgets the board's checkpoints (a new model)
        self.hello = None
        self.hellos = []              # every HELLO taken as the board state (open, probes, reconnects)
        self.last_seq = None          # highest seq the board acknowledged as applied
        self.ckpt_seq = None
        self.steps = None
        self.reconnects = 0
        self.errors = []              # non-fatal board errors (e.g. a failed checkpoint)
        self._tr = None
        self._parser = FrameParser()
        self._telemetry = {}              # (trainer id, record index on the board) -> record
        self._written = {}                # trainer id -> records it has written (as far as seen)
        self._before = {}                 # trainer id -> records it had written when this link met it
        self._trainers = []               # trainer ids in the order they were seen
        self._cmd_id = random.randrange(1, 1 << 30)
        self._up = self._down = 0
        self._in_session = False
        self._last_rx = 0.0
        self._deadline = None         # monotonic time after which stream/command give up
        self._stream_base = None
        self._stream_total = 0
        self.quiet = 0.5              # seconds without frames after which a session is probed first
        self._pace = 0.0              # running mean of seconds per acknowledged sample

    # ---- context ----
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self):
        """Connect and start the board-side session; returns the HELLO info."""
        self._reconnect("open", count=False)
        return self.hello

    # ---- serial plumbing ----
    def _open_port(self):
        tr = SerialTransport(self.port, self.baudrate)
        tr.serial.write_timeout = 5
        tr.serial.timeout = 2
        read_until = tr.read_until

        def bounded_read_until(min_num_bytes, ending, timeout=10, data_consumer=None, timeout_overall=None):
            # mpremote waits up to 10 s for a reply a garbled byte may have cost: retry sooner instead
            return read_until(min_num_bytes, ending, timeout=min(timeout or 2, 2), data_consumer=data_consumer,
                              timeout_overall=min(timeout_overall or 4, 4))

        tr.read_until = bounded_read_until
        tr.serial.reset_input_buffer()
        self._tr = tr
        self._parser.reset()

    def _close_port(self):
        tr, self._tr = self._tr, None
        self._in_session = False
        if tr is not None:
            try:
                tr.close()
            except Exception:  # noqa: BLE001 - a vanished pty: nothing left to close
                try:
                    tr.serial.close()
                except Exception:  # noqa: BLE001
                    pass

    @staticmethod
    def _quietly(fn, *args, **kw):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                return fn(*args, **kw)
        except TransportError as e:
            got = out.getvalue().strip()
            raise TransportError(f"{e} (got {got[-200:]})" if got else str(e)) from None

    def _write(self, data):
        self._tr.serial.write(data)
        self._up += len(data)

    def _send(self, typ, seq, payload=b"", flags=0):
        self._write(frame(typ, seq, payload, flags))

    def _receive(self, wait):
        """Frames that arrived within `wait` seconds (telemetry and errors handled here)."""
        ser = self._tr.serial
        n = ser.in_waiting
        if n:
            data = ser.read(n)
        else:
            ser.timeout = wait
            data = ser.read(1)
            if data:
                n = ser.in_waiting
                if n:
                    data += ser.read(n)
        self._down += len(data)
        frames = self._parser.feed(data) if data else []
        if frames:
            self._last_rx = time.monotonic()
        out = []
        for f in frames:
            if f.type == TELEMETRY:           # seq: the ring index of the first record
                trainer = self.hello["trainer"] if self.hello else 0
                for k, o in enumerate(range(0, len(f.payload) - RECORD_SIZE + 1, RECORD_SIZE)):
                    self._telemetry[(trainer, f.seq + k)] = decode(f.payload[o:o + RECORD_SIZE])
                self._note_written(trainer, f.seq + len(f.payload) // RECORD_SIZE)
            elif f.type == ERROR and not f.flags & proto.F_FATAL:
                self.errors.append(f.payload.decode("utf-8", "replace"))
                self.log("board: " + self.errors[-1])
            else:
                out.append(f)
        return out

    def _update(self, f):
        if f.type in (ACK, NACK) and len(f.payload) >= 8:
            self.ckpt_seq, self.steps = struct.unpack_from(proto.ACK_FMT, f.payload, 0)
        if f.type in (ACK, NACK, BYE, HELLO) and (self.last_seq is None or f.seq > self.last_seq):
            self.last_seq = f.seq

    def _set_hello(self, f, asked=None):
        """Take a HELLO as the board's state if it answers one of the requests `asked` (or is a new
        session's first, request 0); None for a stale one."""
        info = parse_hello(f.payload)
        if asked is not None and info["request"] not in asked:
            return None
        if info["version"] != proto.VERSION:
            raise LinkError(f"board speaks link protocol {info['version']}, this host {proto.VERSION}")
        self.hello = info
        self.hellos.append(info)
        self._note_written(info["trainer"], info["telemetry_written"], first=True)
        self.last_seq, self.ckpt_seq, self.steps = info["last_seq"], info["ckpt_seq"], info["steps"]
        self._in_session = True
        return info

    # ---- (re)connecting ----
    def _probe(self, wait=0.4, tries=2):
        """Ask a running session for HELLO."""
        for _ in range(tries):
            seq, data = _safe_nonce(HELLO)
            self._write(data)
            end = time.monotonic() + wait
            while time.monotonic() < end:
                for f in self._receive(0.05):
                    if f.type == HELLO and self._set_hello(f, (seq,)):
                        return True
            if self._parser.repl_seen:
                return False
        return False

    def _start_session(self):
        tr = self._tr
        tr.serial.timeout = 2
        self._write(b"\x03")                        # clear a half-typed line at either REPL
        time.sleep(0.02)
        self._quietly(tr.enter_raw_repl, soft_reset=False, timeout_overall=3)
        fresh = int(self.fresh)
        check = proto.start_check(self.model_path, self.checkpoint_path, self.checkpoint_every, self.idle_timeout,
                                  fresh)
        cmd = "import microtrain.link as L\nL.serve(%r, %r, %d, %d, %d, %d)\n" % (
            self.model_path, self.checkpoint_path, self.checkpoint_every, self.idle_timeout, check, fresh)
        self._parser.reset()
        self._quietly(tr.exec_raw_no_follow, cmd)
        end = self._until(self.start_timeout)
        ask = time.monotonic() + 0.5
        asked = [0]
        while time.monotonic() < end:
            if time.monotonic() > ask:                  # its first HELLO may have been garbled: ask
                seq, data = _safe_nonce(HELLO)
                asked.append(seq)
                self._write(data)
                ask = time.monotonic() + 0.5
            for f in self._receive(0.05):
                if f.type == HELLO and self._set_hello(f, asked):
                    self.fresh = False            # done once: a reconnect resumes, never restarts
                    return self.hello
            junk = bytes(self._parser.junk)
            if junk.count(b"\x04") >= 2 and junk.rstrip().endswith(b">"):  # serve() returned or raised
                text = junk.replace(b"\x04", b"").rstrip(b">").decode("utf-8", "replace").strip()
                if "ImportError" in text and "microtrain" in text:
                    raise BoardError("the board has no complete microtrain library (a push broke off?): "
                                     "run `microtrain push` again")
                raise BoardError(f"the board could not start the link session: {text or 'it returned at once'}")
        self._check_deadline("starting the board's link session")
        raise TimeoutError("no HELLO from the board session")

    def _reconnect(self, why, count=True):
        """Until a session answers: reopen the port, probe, else start a session."""
        self.log(f"link: connecting ({why})")
        if count:
            self.reconnects += 1
        self._in_session = False
        deadline = time.monotonic() + self.reconnect_timeout
        failures = []
        while True:
            try:
                if self._tr is None:
                    self._open_port()
                if not self.fresh and self._probe():     # --fresh: always a new session
                    return self.hello
                self._start_session()
                return self.hello
            except BoardError as e:
                failures.append(str(e).strip().splitlines()[-1] if str(e).strip() else repr(e))
                self.log(f"link: {e}")
                garbled = "SyntaxError" in str(e) or "corrupted in transit" in str(e)
                if not garbled and failures[-3:] == [failures[-1]] * 3:   # the same error each time: not line noise
                    raise
                self._close_port()
            except (TimeoutError, *SERIAL_ERRORS) as e:
                failures.append(f"{type(e).__name__}: {e}")
                self.log(f"link: {failures[-1]}")
                self._close_port()
            if time.monotonic() > deadline:
                raise LinkError(f"board on {self.port} unreachable for {self.reconnect_timeout:.0f} s "
                                f"({why}); last errors: {failures[-3:]}")
            self._check_deadline(f"reconnecting ({why}; last errors: {failures[-3:]})")
            time.sleep(0.1)

    def _ensure(self, probe=False):
        """A session that answers: with probe=True or after a quiet spell, ask it first (the board
        may have been reset meanwhile, and samples must not land in its REPL)."""
        if self._tr is not None and self._in_session and (probe or time.monotonic() - self._last_rx > self.quiet):
            try:
                if self._probe(tries=1, wait=max(0.3, min(self.timeout, 1.0))):
                    return
            except SERIAL_ERRORS:
                self._close_port()
            self._in_session = False
        if self._tr is None or not self._in_session:
            self._reconnect("no session")

    # ---- streaming ----
    def _until(self, seconds):
        """The monotonic time `seconds` from now, or the overall deadline if that comes first: every
        wait of the link ends there, so a DeadlineError comes on time (not after a long ack timeout)."""
        end = time.monotonic() + seconds
        return end if self._deadline is None else min(end, self._deadline)

    def _check_deadline(self, doing):
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise DeadlineError(f"gave up at the deadline while {doing}")

    @contextlib.contextmanager
    def deadline(self, seconds):
        """Within the block, stream() and command() give up with DeadlineError after `seconds`
        (None: no overall limit)."""
        outer = self._deadline
        if seconds is not None:
            end = time.monotonic() + max(0.0, float(seconds))
            self._deadline = end if outer is None else min(outer, end)
        try:
            yield
        finally:
            self._deadline = outer

    def stream(self, samples, labels, validation=False, progress=None, checkpoint=True, deadline=None):
        """Send samples (int8, each of the model's input size) with their labels; each is applied
        exactly once (trained on, or with validation=True kept for evaluate()).  `progress(done,
        total)` is called as acks arrive.  With checkpoint=True the board checkpoints at the end.
        `deadline`: seconds after which it gives up (DeadlineError, saying how far it got; the
        board keeps what it applied and a new stream resumes after it).
        Returns throughput and wire statistics."""
        with self.deadline(deadline):
            try:
                return self._stream(samples, labels, validation, progress, checkpoint)
            except DeadlineError as e:
                done = (self.last_seq - self._stream_base + 1) if self._stream_base is not None else 0
                total = self._stream_total
                raise DeadlineError(f"{e}: the board applied {max(done, 0)} of {total} samples "
                                    f"(through seq {self.last_seq}); run again to resume") from None

    def _stream(self, samples, labels, validation, progress, checkpoint):
        self._stream_base = None
        self._stream_total = len(labels)
        self._ensure(probe=True)
        in_size, n_classes = self.hello["in_size"], self.hello["n_classes"]
        payloads = []
        for x, y in zip(samples, labels):
            data = _sample_bytes(x)
            if len(data) != in_size:
                raise ValueError(f"sample of {len(data)} bytes, the model on the board takes {in_size}")
            if not 0 <= int(y) < n_classes:
                raise ValueError(f"label {int(y)} outside [0, {n_classes - 1}]")
            payloads.append(data + bytes((int(y),)))
        if len(payloads) != len(labels):
            raise ValueError("samples and labels differ in length")
        total = len(payloads)
        flags = proto.F_VALIDATION if validation else 0
        base = self.last_seq + 1
        last = base + total - 1
        self._stream_base = base
        st = {"samples": total, "first_seq": base, "retransmissions": 0, "timeouts": 0, "nacks": 0, "reconnects": 0,
              "resumed_from": []}
        up0, down0, bad0 = self._up, self._down, self._parser.bad
        t0 = time.monotonic()
        acked = base - 1
        nxt = base
        sent_hi = base - 1
        t_prog = time.monotonic()
        misses = 0
        back_at = (None, 0.0)
        while acked < last:
            try:
                while nxt <= last and nxt - acked <= self.window:
                    self._send(SAMPLE, nxt, payloads[nxt - base], flags)
                    if nxt <= sent_hi:
                        st["retransmissions"] += 1
                    sent_hi = max(sent_hi, nxt)
                    nxt += 1
                for f in self._receive(0.02):
                    if f.type in (ACK, NACK, BYE):
                        self._update(f)
                        if f.seq > acked:
                            now = time.monotonic()
                            if misses == 0 and acked >= base:   # the board's pace: time per sample
                                self._pace = 0.8 * self._pace + 0.2 * (now - t_prog) / (min(f.seq, last) - acked)
                            acked = min(f.seq, last)
                            t_prog = now
                            misses = 0
                            if nxt <= acked:
                                nxt = acked + 1
                            if progress:
                                progress(acked - base + 1, total)
                        if f.type == NACK:
                            st["nacks"] += 1
                            now = time.monotonic()
                            if back_at[0] != acked + 1 or now - back_at[1] > self.timeout / 2:
                                nxt = acked + 1
                                back_at = (nxt, now)
                        if f.type == BYE:
                            raise _Lost("the board ended the session")
                    elif f.type == ERROR:
                        raise LinkError("board rejected sample %d: %s" % (f.seq, f.payload.decode("utf-8", "replace")))
                    # a HELLO here answers an earlier request: stale, ignored (a board reset
                    # shows as NACKs or silence, then the reconnect asks afresh)
                if self._parser.repl_seen:
                    self._parser.repl_seen = False
                    raise _Lost("REPL output on the line")
                self._check_deadline(f"streaming (acknowledged through seq {acked})")
                if time.monotonic() - t_prog > self._ack_timeout():
                    st["timeouts"] += 1
                    misses += 1
                    if misses > self.retries:
                        raise _Lost(f"no ack for {misses} timeouts")
                    nxt = acked + 1
                    t_prog = time.monotonic()
            except (_Lost, *SERIAL_ERRORS) as e:
                acked, nxt = self._recover(e, base, last, st)
                t_prog = time.monotonic()
                misses = 0
        self.last_seq = max(self.last_seq, last)
        seconds = time.monotonic() - t0
        if checkpoint and total:
            self.command("checkpoint")
        up, down = self._up - up0, self._down - down0
        payload = total * (in_size + 1)
        wire = up + down
        st.update(seconds=seconds, samples_per_s=total / seconds if seconds > 0 else float("inf"),
                  payload_bytes=payload, bytes_up=up, bytes_down=down, wire_bytes=wire,
                  bytes_per_sample=wire / total if total else 0.0,
                  payload_efficiency=payload / wire if wire else 0.0,
                  uplink_efficiency=payload / up if up else 0.0,
                  bad_frames=self._parser.bad - bad0, last_seq=self.last_seq, steps=self.steps)
        return st

    def _recover(self, e, base, last, st):
        """After a lost session or a serial error in a stream from `base` to `last`: reconnect;
        returns (last applied seq, next seq) to go on with."""
        if not isinstance(e, _Lost):
            self._close_port()
        st["reconnects"] += 1
        self._reconnect(str(e) or type(e).__name__)
        return self._resume(base, last, st)

    def _resume(self, base, last, st):
        """After a reconnect: continue right after the board's last applied seq."""
        have = self.hello["last_seq"]
        if have < base - 1:
            raise LinkError(f"the board restored a checkpoint (seq {have}) older than this stream's start "
                            f"(seq {base}): samples of an earlier stream were lost")
        if have > last:
            raise LinkError(f"the board has applied seq {have}, beyond this stream (last seq {last})")
        st["resumed_from"].append(have + 1)
        self.log(f"link: resuming at seq {have + 1}")
        return have, have + 1

    def _ack_timeout(self):
        """`timeout`, or longer for a board that takes long per sample (pure-Python kernels)."""
        return min(max(self.timeout, 4 * self._pace * self.window ** 0.5), MAX_ACK_TIMEOUT)

    # ---- commands ----
    def command(self, name, timeout=None):
        """Run a board command: "checkpoint", "evaluate", "stats", "rollback", "clear_validation",
        "telemetry" (re-send the records the board still holds), "reload" (take the newest checkpoint
        the host wrote, e.g. a federated round's global).
        Resent until answered; the board runs each command id once.  Returns the result dict."""
        if name in ("bye", "close"):
            self.close()
            return {}
        self._ensure()
        cid, data = self._next_command(name)
        wait = timeout or max(self._ack_timeout(), 2.0)
        misses = 0
        while True:
            try:
                self._write(data)
                end = self._until(wait)
                while time.monotonic() < end:
                    for f in self._receive(0.02):
                        if f.type == RESULT and f.seq == cid:
                            r = json.loads(f.payload.decode("utf-8", "replace"))
                            if f.flags & proto.F_FAILED:
                                raise LinkError(f"board command {name!r} failed: {r.get('error')}")
                            if "last_seq" in r:
                                self.last_seq, self.ckpt_seq, self.steps = r["last_seq"], r["ckpt_seq"], r["steps"]
                            return r
                        if f.type in (ACK, NACK):
                            self._update(f)
                        elif f.type == BYE:
                            raise _Lost("the board ended the session")
                    if self._parser.repl_seen:
                        self._parser.repl_seen = False
                        raise _Lost("REPL output on the line")
                misses += 1
                self._check_deadline(f"waiting for the board's reply to {name!r}")
                if misses > self.retries:
                    raise _Lost(f"no reply to {name!r}")
            except (_Lost, json.JSONDecodeError, *SERIAL_ERRORS) as e:
                if not isinstance(e, (_Lost, json.JSONDecodeError)):
                    self._close_port()
                self._reconnect(str(e) or type(e).__name__)
                misses = 0

    def _next_command(self, name):
        """A new command id and its frame, harmless should a REPL read it: a random draw (counting
        up from the last id could meet 2^24 ids in a row with a Ctrl-B/C/D byte: a CPU-bound
        spin of a minute, found as a stall under load)."""
        while True:
            cid, data = _safe_nonce(CMD, name.encode())
            if cid != self._cmd_id:
                self._cmd_id = cid
                return cid, data

    def evaluate(self, samples, labels, capacity=8):
        """How many of the labelled samples the board's model gets right: `capacity` at a time
        (the plan's validation memory, `val_y` in the arena) through validation samples and the
        board's evaluate command.  Nothing is trained."""
        right = 0
        for i in range(0, len(labels), capacity):
            self.command("clear_validation")
            self.stream(samples[i:i + capacity], labels[i:i + capacity], validation=True, checkpoint=False)
            right += self.command("evaluate")["right"]
        return right

    def telemetry(self, fetch=True):
        """Telemetry records, decoded (dicts, see microtrain.board.telemetry), oldest first: those
        received so far, and with fetch=True also what the board's ring still holds."""
        if fetch:
            r = self.command("telemetry")
            self._note_written(self.hello["trainer"], r.get("written", 0))
        order = {t: k for k, t in enumerate(self._trainers)}
        return [self._telemetry[i] for i in sorted(self._telemetry, key=lambda i: (order[i[0]], i[1]))]

    def telemetry_counts(self, whole=False):
        """{'written', 'received', 'missed'}: telemetry records written by the board's trainers
        while this link talked to them (a reset starts a new trainer; whole=True: also what they
        wrote before), how many of them arrived, and how many did not: lost on the line, or
        overwritten in the board's ring (it keeps the last RING_RECORDS) before this host asked."""
        first = {t: 0 if whole else self._before[t] for t in self._trainers}
        written = sum(self._written[t] - first[t] for t in self._trainers)
        received = sum(1 for t, i in self._telemetry if i >= first[t])
        return {"written": written, "received": received, "missed": written - received}

    def _note_written(self, trainer, n, first=False):
        if trainer not in self._written:
            self._trainers.append(trainer)
            self._written[trainer] = 0
            self._before[trainer] = n if first else 0
        self._written[trainer] = max(self._written[trainer], n)

    # ---- leaving ----
    def close(self):
        """End the session and leave the board at its friendly REPL; never raises for a board
        that is gone.  Returns True when the board confirmed."""
        if self._tr is None:
            return False
        ok = False
        try:
            if self._in_session:
                for _ in range(3):
                    seq, data = _safe_nonce(BYE)
                    self._write(data)
                    end = time.monotonic() + 0.5
                    while time.monotonic() < end and not ok and not self._parser.repl_seen:
                        for f in self._receive(0.05):
                            self._update(f) if f.type in (ACK, NACK) else None
                            if f.type == BYE:
                                ok = True
                    if ok or self._parser.repl_seen:
                        break
            self._in_session = False
            if ok and b"\x04>" not in self._parser.junk:   # serve() returns: the raw REPL prompts
                self._tr.read_until(1, b"\x04>", timeout=1, timeout_overall=2)
            else:                                      # interrupt whatever runs
                self._tr.serial.timeout = 2
                self._quietly(self._tr.enter_raw_repl, soft_reset=False, timeout_overall=3)
            self._tr.exit_raw_repl()
            time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - the board may be gone; the port still gets closed
            self.log(f"link: close: {type(e).__name__}: {e}")
        finally:
            self._close_port()
        return ok


def _sample_bytes(x):
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    a = np.asarray(x)
    if a.dtype != np.int8:
        if a.size and (a.min() < -128 or a.max() > 127):
            raise ValueError("samples must be int8 (quantized with the model's input scale)")
        a = a.astype(np.int8)
    return a.tobytes()

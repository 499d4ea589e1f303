"""The serial session of split training, host side (the board side and the frames are in
firmware/microtrain/link.py: GRAD down, ACT up).

    link = SplitLink(port, "model.mtm")
    with link:
        stats = link.split("samples.bin", 64, host)       # 64 of the board's own samples

The host sends GRAD frames and the board answers each with the ACT of the sample it wants a
gradient for; a lost, garbled or duplicated frame on either side only makes the host send the
same GRAD again (its reply to one sample is computed once and cached), and a reset or a board
rollback takes the host's layers back to the snapshot of the checkpoint the board went back to
(`host.snapshot` / `host.restore`).  So each sample is applied once, on both sides.
"""

import time

import numpy as np

from microtrain.device import link as L
from microtrain.device.link import ERROR, LinkError, _Lost, SERIAL_ERRORS
from microtrain.board import link as proto
from microtrain.split.host import ACT_TAIL, grad_payload, parse_act

GRAD, ACT = proto.GRAD, proto.ACT


def sample_file(x, y):
    """The bytes of a board sample file (what the board's recorder writes): per sample its
    label byte, then its int8 values."""
    x = np.asarray(x, np.int8).reshape(len(x), -1)
    out = bytearray()
    for xi, yi in zip(x, y):
        out.append(int(yi))
        out += xi.tobytes()
    return bytes(out)


class SplitLink(L.Link):
    """A Link that also runs split-training streams."""

    def __init__(self, port, model_path_on_board="model.mtm", **kw):
        super().__init__(port, model_path_on_board, **kw)
        self._parser.max_payload = 65535

    def split(self, path, count, host, progress=None, deadline=None, losses=None):
        """Train on `count` of the board's samples in `path` (records from seq last_seq + 1, the
        file's record (seq - first) mod n); the host runs its layers with `host`.  Checkpoints at
        the end (the host snapshots its layers there).  `losses`: a list the loss of each sample
        is appended to.  Returns throughput and wire figures."""
        with self.deadline(deadline):
            return self._split(path, count, host, progress, losses)

    def _split(self, path, count, host, progress, losses):
        self._ensure(probe=True)
        base = self.last_seq + 1
        last = base + count - 1
        if host.at is None:
            host.at = self.last_seq
        if host.at != self.last_seq:
            raise LinkError(f"the host's layers hold sample {host.at}, the board's {self.last_seq}: they belong to "
                            f"different runs (start both over with --fresh)")
        host.snapshot(self.last_seq)
        cut = host.cut
        n_act = host.model.layers[cut - 1].out_size
        records = self.command(f"split {path} {base} {count}")["records"]
        st = {"samples": count, "first_seq": base, "records": records, "retransmissions": 0, "timeouts": 0,
              "reconnects": 0, "host_rollbacks": 0, "host_s": 0.0, "resumed_from": []}
        up0, down0 = self._up, self._down
        t0 = time.monotonic()
        seen = None                          # (trainer, rollbacks) of the last ACT
        cache = None                         # (seq, GRAD payload) of the last sample the host computed
        pending = L.frame(GRAD, self.last_seq, b"")
        n_mask = None
        acked = base - 1
        misses = 0
        self._write(pending)
        t_prog = time.monotonic()
        while acked < last:
            try:
                for f in self._receive(0.02):
                    if f.type == ERROR:
                        raise LinkError(f"board, sample {f.seq}: {f.payload.decode('utf-8', 'replace')}")
                    if f.type != ACT:
                        if f.type == L.BYE:
                            raise _Lost("the board ended the session")
                        continue
                    s = f.seq
                    if s - 1 > acked:
                        acked = min(s - 1, last)
                        self.last_seq = acked
                        t_prog, misses = time.monotonic(), 0
                        if progress:
                            progress(acked - base + 1, count)
                    if s > last or not f.payload:
                        if s <= last:
                            raise LinkError(f"the board has no sample {s} in its stream")
                        continue
                    if n_mask is None:
                        n_mask = len(f.payload) - n_act - ACT_TAIL
                    act, mask, label, lr, rng, rb, ckpt = parse_act(f.payload, n_act, n_mask)
                    who = (self.hello["trainer"], rb)
                    if seen is not None and who != seen:          # the board rolled back or reset
                        host.restore(ckpt)
                        host.at = s - 1
                        cache = None
                        st["host_rollbacks"] += 1
                    seen = who
                    if cache is not None and cache[0] == s:
                        payload = cache[1]
                        st["retransmissions"] += 1
                    else:
                        if host.at != s - 1:
                            if s - 1 not in host.snapshots:
                                raise LinkError(f"the board asks for sample {s}, the host's layers hold sample "
                                                f"{host.at} and no snapshot of {s - 1}")
                            host.restore(s - 1)
                            st["host_rollbacks"] += 1
                        if ckpt == s - 1:
                            host.snapshot(ckpt)
                        h0 = time.monotonic()
                        gx, e, p, ok, rng2 = host.step(act, mask, label, lr, rng)
                        if losses is not None:
                            losses.append(-np.log(max(p / 256.0, 1.0 / 512)))
                        st["host_s"] += time.monotonic() - h0
                        payload = grad_payload(gx, e, p, ok, rng2)
                        host.at = s
                        cache = (s, payload)
                    pending = L.frame(GRAD, s, payload)
                    self._write(pending)
                if self._parser.repl_seen:
                    self._parser.repl_seen = False
                    raise _Lost("REPL output on the line")
                self._check_deadline(f"split training (applied through seq {acked})")
                if time.monotonic() - t_prog > max(self._ack_timeout(), 1.0):
                    st["timeouts"] += 1
                    misses += 1
                    if misses > self.retries:
                        raise _Lost(f"no ACT for {misses} timeouts")
                    self._write(pending)
                    t_prog = time.monotonic()
            except (_Lost, *SERIAL_ERRORS) as e:
                have, _ = self._recover(e, base, last, st)
                acked = have
                self.command(f"split {path} {base} {count}")
                pending = L.frame(GRAD, have, b"")
                self._write(pending)
                t_prog, misses = time.monotonic(), 0
        seconds = time.monotonic() - t0
        self.command("checkpoint")
        host.snapshot(last)
        up, down = self._up - up0, self._down - down0
        st.update(seconds=seconds, samples_per_s=count / seconds if seconds > 0 else float("inf"), bytes_up=up,
                  bytes_down=down, wire_bytes=up + down, bytes_per_sample=(up + down) / count if count else 0.0,
                  last_seq=self.last_seq, steps=self.steps)
        return st


def merged_model(host, board_ckpt):
    """The whole trained model: the host's layers as they are, the board's from its checkpoint."""
    from microtrain.device.board_io import apply_checkpoint
    m = host.trained_model()
    return apply_checkpoint(m, board_ckpt)

# Telemetry: aggregates only (never the samples), as compact fixed-size records that the serial
# protocol sends as they are and the host decodes with the same format string.
#
# record '<BBhIiIihH': kind, flags, lr_shift, step, loss in 1/1000, step time in us,
#                      heap free in bytes, value (accuracy in 1/1000, or 0), parameters updated

import struct

RECORD_FMT = "<BBhIiIihH"
RECORD_SIZE = struct.calcsize(RECORD_FMT)
RING_RECORDS = 32      # records the ring keeps (the planner reserves them in the arena)
STEP, EPOCH, EVAL, CHECKPOINT, ROLLBACK, CLASS = 1, 2, 3, 4, 5, 6
KINDS = {STEP: "step", EPOCH: "epoch", EVAL: "evaluate", CHECKPOINT: "checkpoint", ROLLBACK: "rollback",
         CLASS: "class"}
EVENTS = {"checkpoint": CHECKPOINT, "rollback": ROLLBACK, "class": CLASS}
FLAG_CORRECT = 1


class Telemetry:
    """A ring of the last records in a preallocated buffer (the trainer's arena), plus running
    aggregates."""

    def __init__(self, buf=None, sink=None):
        self.buf = buf if buf is not None else bytearray(RING_RECORDS * RECORD_SIZE)
        self.capacity = len(self.buf) // RECORD_SIZE
        self.head = 0          # records written in total
        self.sink = sink       # optional callable(record_bytes), e.g. the serial link
        self.correct = 0
        self.seen = 0
        self.peak_us = 0
        self.notes = []        # (step, text) of events, for humans at the REPL

    def _put(self, kind, flags, lr_shift, step, loss_milli, us, heap, value, n):
        """One record, written in place (nothing is allocated); the sink gets (ring, offset)."""
        off = (self.head % self.capacity) * RECORD_SIZE
        struct.pack_into(RECORD_FMT, self.buf, off, kind, flags, lr_shift, step, loss_milli,
                         us & 0xFFFFFFFF, heap, value, n & 0xFFFF)
        self.head += 1
        if self.sink:
            self.sink(self.buf, off)

    def step(self, step, loss, correct, lr_shift, us, heap_free, n_params):
        """loss: in 1/1000 (an integer)."""
        self.seen += 1
        self.correct += 1 if correct else 0
        if us > self.peak_us:
            self.peak_us = us
        self._put(STEP, FLAG_CORRECT if correct else 0, lr_shift, step, loss, us, heap_free, 0, n_params)

    def epoch(self, step, mean_loss, lr_shift):
        acc = (1000 * self.correct) // self.seen if self.seen else 0
        self._put(EPOCH, 0, lr_shift, step, int(mean_loss * 1000) if mean_loss == mean_loss else -1, self.peak_us, 0,
                  acc, 0)
        self.correct = self.seen = self.peak_us = 0

    def evaluate(self, step, accuracy):
        self._put(EVAL, 0, 0, step, 0, 0, 0, int(accuracy * 1000), 0)

    def event(self, name, step, text=""):
        self._put(EVENTS[name], 0, 0, step, 0, 0, 0, 0, 0)
        if len(self.notes) > 16:
            self.notes.pop(0)
        self.notes.append((step, name + (": " + text if text else "")))

    def records(self, since=0):
        """Decoded records written since record number `since` (still in the ring)."""
        out = []
        first = max(since, self.head - self.capacity)
        for i in range(first, self.head):
            off = (i % self.capacity) * RECORD_SIZE
            out.append(decode(memoryview(self.buf)[off:off + RECORD_SIZE]))
        return out


def decode(rec):
    kind, flags, lr, step, loss, us, heap, value, n = struct.unpack(RECORD_FMT, bytes(rec))
    return {"kind": KINDS.get(kind, kind), "step": step, "loss": loss / 1000, "correct": bool(flags & FLAG_CORRECT),
            "lr_shift": lr, "us": us, "heap_free": heap, "value": value / 1000, "params": n}

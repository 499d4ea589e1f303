"""`make bench` (reliability): the real `microtrain train` CLI streaming to the virtual board through
a faulty line (tests/faultproxy.py), one fault kind at a time, at rates 1e-4 ... 1e-2, plus a
pulled cable and a board reset mid-run.  Each trial is classified by what the user sees and what
the board learned:

  finished      exit 0;
  clear error   exit 1 with one line on stderr and no traceback;
  other         anything else (a traceback, a hang past the deadline, another exit code);
  wrong state   the board's trainable bytes differ from the simulator run on exactly the first
                `steps` samples in order (a sample lost or applied twice), or its counters disagree.

Rates: drop/flip/dup per byte (both directions), garbage/delay per chunk the proxy forwards.
Writes bench/reliability.json.

    python -m bench.reliability [--rates 1e-4,1e-3,1e-2] [--trials 2] [--deadline 40]
    python -m bench.reliability --board pico --rates 1e-3 --trials 1 --epochs 1 --deadline 90

--board pico runs the same trials on official MicroPython 1.27 on the emulated RP2040 (firmware/rp2040,
each trial from a copy of one flash file with the library and model pushed), a power cut for the
reset; it writes bench/reliability_pico.json.
"""

import argparse
import binascii
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from microtrain.device.virtualboard import VirtualBoard  # noqa: E402
from microtrain.model import modelfile  # noqa: E402
from microtrain.plan import planner  # noqa: E402
from microtrain.sim import simulator  # noqa: E402
from research import zoo  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

BIN = os.path.dirname(sys.executable)
LIB = os.path.join(os.environ.get("MICROTRAIN_DIST", os.path.join(ROOT, "dist")), "lib", "microtrain")
RATE_KINDS = ("drop", "flip", "dup", "garbage", "delay")
EVENT_KINDS = ("disconnect", "reset")
# the board's trainable bytes; NOSESSION when no session ever started (nothing trained, nothing to read)
STATE_CODE = ("import microtrain.link as L, struct, binascii\n"
              "t = L.trainer()\n"
              "if t is None:\n"
              "    print('NOSESSION')\n"
              "else:\n"
              "    b = b''.join(bytes(v) for _, v in t._state_blobs()) + struct.pack('<II', t.rng[0], t.steps)\n"
              "    print('STATE', binascii.hexlify(b).decode(), t.last_seq, t.steps)\n")


class Workload:
    """The reference IMU model, its samples (n of them, epochs times) and the simulator's trainable
    bytes after each prefix of the stream: what the board must hold after `steps` steps."""

    def __init__(self, n=60, epochs=4):
        _, self.model, (Xtr, ytr), _ = zoo.imu_reference(seed=0)
        self.plan = planner.plan(self.model, "sparse")
        self.x = self.model.quantize_input(Xtr)[:n]
        self.y = np.asarray(ytr[:n], int)
        self.epochs = epochs
        self.total = n * epochs
        sim = simulator.Simulator(self.model, self.plan)
        self.states = [self._state(sim)]
        for _ in range(epochs):
            for x, label in zip(self.x, self.y):
                sim.step(x, int(label))
                self.states.append(self._state(sim))

    @staticmethod
    def _state(sim):
        state, rng, steps = sim.trainable_state()
        return state + struct.pack("<II", rng, steps)

    def files(self, folder):
        np.savez(os.path.join(folder, "samples.npz"), x=self.x, y=self.y)
        modelfile.save(os.path.join(folder, "model.mtm"), self.model, self.plan)


def board_state(port):
    r = subprocess.run([os.path.join(BIN, "mpremote"), "connect", port, "resume", "exec", STATE_CODE],
                       capture_output=True, text=True, timeout=60)
    if "NOSESSION" in r.stdout.split():
        return None, -1, 0                    # the board never started a session: it learned nothing
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("STATE ")]
    if not line:
        return None
    _, hexed, last, steps = line[0].split()
    return binascii.unhexlify(hexed), int(last), int(steps)


def virtual_board(work, folder):
    """A fresh virtual board with the library and the model on its flash."""
    vb = VirtualBoard(heap="192K")
    vb.install(LIB)
    modelfile.save(vb.path("model.mtm"), work.model, work.plan)
    return vb.start()


class EmulatedPico:
    """Fresh emulated Picos (official MicroPython 1.27 on rp2040js): the library and the model are
    pushed once into a flash file, and every trial starts from a copy of it."""

    def __init__(self, work, folder):
        sys.path.insert(0, os.path.join(ROOT, "firmware", "rp2040"))
        from pico_board import PicoBoard
        from microtrain.device import board_io
        self.PicoBoard = PicoBoard
        self.pristine = os.path.join(folder, "pico-flash.bin")
        with PicoBoard(flash=self.pristine) as b, board_io.Session(b.port) as s:
            board_io.install(s, os.path.dirname(os.path.dirname(LIB)), modelfile.to_bytes(work.model, work.plan),
                             log=lambda *a: None)

    def __call__(self, work, folder):
        import shutil
        flash = os.path.join(folder, "trial-flash.bin")
        shutil.copyfile(self.pristine, flash)
        return self.PicoBoard(flash=flash, image=None).start()


def trial(work, folder, kind, rate, seed, deadline, board=virtual_board):
    """One CLI run through the proxy; returns its record."""
    p = dict(drop=0, flip=0, dup=0, garbage=0, delay=0, reorder=0)
    if kind in RATE_KINDS:
        p[kind] = rate
    vb = board(work, folder)
    proxy = None
    try:
        proxy = FaultProxy(vb.port, os.path.join(folder, "ttyFAULT"), seed=seed, **p)
        cmd = [os.path.join(BIN, "microtrain"), "train", os.path.join(folder, "samples.npz"), "--port",
               proxy.link, "--epochs", str(work.epochs), "--deadline", str(deadline)]
        t0 = time.monotonic()
        cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fired = []
        for line in cli.stdout:                       # progress lines: fire the event mid-run
            if kind in EVENT_KINDS and not fired and line.startswith("training:"):
                done = int(line.split()[1].split("/")[0])
                if done >= work.total // 3:
                    if kind == "disconnect":
                        fired.append(threading.Thread(target=proxy.disconnect, args=(1.0,)))
                    else:
                        vb.kill()
                        fired.append(threading.Timer(1.0, vb.start))
                    fired[0].start()
        try:
            cli.wait(timeout=deadline + 30)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()
        seconds = time.monotonic() - t0
        err = cli.stderr.read()
        for f in fired:
            f.join()
        counts = dict(proxy.counts)
        proxy.close()
        proxy = None
        state = board_state(vb.port) if vb.wait_alive() else None
    finally:
        if proxy is not None:
            proxy.close()
        vb.stop()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if cli.returncode == 0:
        outcome = "finished"
    elif cli.returncode == 1 and len(lines) == 1 and "Traceback" not in err:
        outcome = "clear error"
    else:
        outcome = "other"
    wrong = False                     # only a state that was read can be judged
    steps = None
    if state is not None:
        blob, last, steps = state
        wrong = not (steps <= work.total and (blob == work.states[steps] or blob is None and steps == 0)
                     and last == steps - 1 and (outcome != "finished" or steps == work.total))
    faults = sum(v for k, v in counts.items() if k != "reordered")
    return {"kind": kind, "rate": rate if kind in RATE_KINDS else None, "seed": seed, "outcome": outcome,
            "wrong_state": wrong, "state_read": state is not None, "steps": steps, "seconds": round(seconds, 2), "faults": faults,
            "event_fired": bool(fired) if kind in EVENT_KINDS else None, "error": lines[-1] if lines and
            outcome != "finished" else None}


def campaign(rates=(1e-4, 1e-3, 1e-2), trials=2, deadline=40.0, kinds=RATE_KINDS + EVENT_KINDS, epochs=4,
             log=print, board="virtual"):
    work = Workload(epochs=epochs)
    records = []
    with tempfile.TemporaryDirectory() as folder:
        work.files(folder)
        make = EmulatedPico(work, folder) if board == "pico" else virtual_board
        for kind in kinds:
            for rate in (rates if kind in RATE_KINDS else (None,)):
                for seed in range(trials):
                    r = trial(work, folder, kind, rate, seed, deadline, make)
                    r["board"] = board
                    shown = "" if rate is None else f"{rate:g}"
                    log(f"{kind:10} {shown:7} seed {seed}: {r['outcome']:11} "
                        f"{'WRONG STATE ' if r['wrong_state'] else ''}steps {r['steps']} faults {r['faults']} "
                        f"{r['seconds']:.1f} s {r['error'] or ''}")
                    records.append(r)
    return records


def summary(records):
    """Per (kind, rate): trials, finished, clear error, other, wrong state, seconds (max)."""
    out = {}
    for r in records:
        key = (r["kind"], r["rate"])
        s = out.setdefault(key, {"kind": r["kind"], "rate": r["rate"], "trials": 0, "finished": 0,
                                 "clear_error": 0, "other": 0, "wrong_state": 0, "max_seconds": 0.0})
        s["trials"] += 1
        s[r["outcome"].replace(" ", "_")] += 1
        s["wrong_state"] += r["wrong_state"]
        s["max_seconds"] = max(s["max_seconds"], r["seconds"])
    return list(out.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1e-4,1e-3,1e-2")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=40.0)
    ap.add_argument("--board", choices=["virtual", "pico"], default="virtual",
                    help="virtual: the unix port; pico: official MicroPython 1.27 on the emulated RP2040")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out")
    a = ap.parse_args()
    out = a.out or os.path.join(ROOT, "bench", "reliability.json" if a.board == "virtual" else "reliability_pico.json")
    records = campaign([float(v) for v in a.rates.split(",")], a.trials, a.deadline, epochs=a.epochs, board=a.board)
    rows = summary(records)
    for s in rows:
        rate = "" if s["rate"] is None else f"{s['rate']:g}"
        print(f"{s['kind']:10} {rate:7} {s['trials']} trials: "
              f"{s['finished']} finished, {s['clear_error']} clear error, {s['other']} other, "
              f"{s['wrong_state']} wrong state, max {s['max_seconds']:.1f} s")
    write_records(out, [{"summary": rows, "trials": records}])


if __name__ == "__main__":
    main()

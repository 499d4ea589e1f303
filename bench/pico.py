"""`make bench` (emulated Pico): cycles per training step and per inference of the reference IMU
model on official MicroPython v1.27.0 on rp2040js (firmware/rp2040), next to the qemu estimate of
bench/board.py.  Writes bench/pico.json.

    python -m bench.pico [--steps 16] [--out bench/pico.json]

How cycles are counted.  rp2040js prices every instruction with the Cortex-M0+ timings and advances
the chip's clock by those cycles at 125 MHz (8 ns each); the RP2040's 1 MHz timer, which
time.ticks_us() reads, runs off that clock.  So on the board ticks_us x 125 is the cycles the core
spent (1 us = 125 cycles of resolution, against ~2 M cycles per step).  The harness's own cycle
counter is read before and after the whole run as a cross-check.  What the board runs is what a
user has: the stock firmware, the board library as .mpy bytecode and the armv6m native module
(dist/armv6m_6.3/mtkernels.mpy) in /lib, installed by `microtrain push`'s code.
"""

import argparse
import ast
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "host"))
sys.path.insert(0, os.path.join(ROOT, "firmware", "rp2040"))

from bench import write_records  # noqa: E402
from bench.board import POLICIES, imu_data  # noqa: E402
from microtrain.device import board_io  # noqa: E402
from microtrain.model import modelfile  # noqa: E402
from microtrain.plan import planner  # noqa: E402
from pico_board import CLOCK_HZ, PicoBoard  # noqa: E402

BENCH_SCRIPT = """
import gc, time, microtrain
N = {n}
def empty():
    c0 = time.ticks_us()
    c1 = time.ticks_us()
    return time.ticks_diff(c1, c0)
E = min(empty() for i in range(8))
m = microtrain.load('bench.mtm')
t = microtrain.Trainer(m, checkpoint_path='bench.ckpt')
labels = open('bench_labels.bin', 'rb').read()
size = m.in_size
f = open('bench_samples.bin', 'rb')
xs = [f.read(size) for i in range(len(labels))]
f.close()
def steps(n, off):
    tot = []
    for i in range(n):
        j = (off + i) % len(labels)
        c0 = time.ticks_us()
        t.step(xs[j], labels[j])
        tot.append(time.ticks_diff(time.ticks_us(), c0) - E)
    return tot
def infer(n):
    tot = []
    for i in range(n):
        c0 = time.ticks_us()
        m.predict(xs[i % len(xs)])
        tot.append(time.ticks_diff(time.ticks_us(), c0) - E)
    return tot
steps(2, 0)
infer(2)
gc.collect()
tr = steps(N, 2)
inf = infer(N)
print('RESULT', repr({{'train_us': tr, 'infer_us': inf, 'backend': microtrain.backend.NAME,
    'heap': gc.mem_alloc() + gc.mem_free()}}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=16, help="timed training steps / inferences per policy")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "pico.json"))
    args = ap.parse_args(argv)
    qemu = {}
    qemu_path = os.path.join(ROOT, "bench", "board.json")
    if os.path.exists(qemu_path):
        qemu = {r["policy"]: r for r in json.load(open(qemu_path))}
    model, xq, labels = imu_data(max(args.steps, 8))
    dist = os.environ.get("MICROTRAIN_DIST", os.path.join(ROOT, "dist"))
    records = []
    wall0 = time.time()
    with PicoBoard() as b:
        with board_io.Session(b.port) as s:
            board_io.install(s, dist, log=lambda *a: None)
            s.t.fs_writefile("bench_samples.bin", xq.tobytes())
            s.t.fs_writefile("bench_labels.bin", labels.astype("uint8").tobytes())
            c_start, ns_start = b.cycles()
            for policy in POLICIES:
                plan = planner.plan(model, policy, word_bytes=4)
                s.t.fs_writefile("bench.mtm", modelfile.to_bytes(model, plan))
                out, err = s.t.exec_raw(BENCH_SCRIPT.format(n=args.steps), timeout=900)
                if err:
                    raise RuntimeError(err.decode(errors="replace"))
                r = ast.literal_eval(out.decode().split("RESULT", 1)[1].strip())
                tr = sum(r["train_us"]) / args.steps * CLOCK_HZ / 1e6
                inf = sum(r["infer_us"]) / args.steps * CLOCK_HZ / 1e6
                q = qemu.get(policy, {})
                qt = q.get("train_step_ms_125mhz")
                qi = q.get("inference_ms_125mhz")
                rec = {
                    "policy": policy,
                    "train_step_cycles": round(tr),
                    "inference_cycles": round(inf),
                    "train_step_ms_125mhz": round(tr / CLOCK_HZ * 1e3, 3),
                    "inference_ms_125mhz": round(inf / CLOCK_HZ * 1e3, 3),
                    "train_step_cycles_min_max": [min(r["train_us"]) * 125, max(r["train_us"]) * 125],
                    "qemu_estimate_train_step_ms": qt,
                    "qemu_estimate_inference_ms": qi,
                    "qemu_train_step_instructions": q.get("train_step_instructions"),
                    "ratio_to_qemu_train": round(tr / CLOCK_HZ * 1e3 / qt, 3) if qt else None,
                    "ratio_to_qemu_inference": round(inf / CLOCK_HZ * 1e3 / qi, 3) if qi else None,
                    "backend": r["backend"],
                    "heap_bytes": r["heap"],
                }
                records.append(rec)
                print(f"{policy:9} step {rec['train_step_cycles']:>9} cycles = {rec['train_step_ms_125mhz']:.2f} ms "
                      f"(qemu estimate {qt} ms) | inference {rec['inference_cycles']:>8} cycles = "
                      f"{rec['inference_ms_125mhz']:.2f} ms (qemu {qi} ms) | backend {r['backend']}", flush=True)
            c_end, ns_end = b.cycles()
    wall = time.time() - wall0
    meta = {
        "board": "rp2040js 1.4.1 running official MicroPython v1.27.0 RPI_PICO (unmodified UF2), "
                 "board library .mpy + dist/armv6m_6.3/mtkernels.mpy in /lib",
        "model": "reference IMU model (zoo.imu_reference(0)), batch 1, planner word_bytes=4",
        "method": "time.ticks_us() around each step on the board; the emulated clock advances by the "
                  "Cortex-M0+ cycles of each instruction at 125 MHz, so us x 125 = cycles",
        "clock_hz": CLOCK_HZ,
        "steps_timed": args.steps,
        "harness_cycles_during_run": c_end - c_start,
        "emulated_seconds_during_run": round((ns_end - ns_start) / 1e9, 3),
        "wall_seconds": round(wall, 1),
    }
    write_records(args.out, [dict(r, **meta) for r in records])
    print(f"emulated {meta['emulated_seconds_during_run']} s in {wall:.0f} s wall "
          f"({meta['emulated_seconds_during_run'] / wall:.2f}x real time); wrote {args.out}")


if __name__ == "__main__":
    main()

"""`make bench` (adapt): adaptation without backprop on real data (microtrain.adapt.scenario:
the digits CNN through a device's own camera, the IMU model on BasicMotions through a watch worn
rotated with other gains).  Writes bench/adapt.json.

- held-out device accuracy for K = 1, 4, 16 anchors per class (BasicMotions: a device has 5
  samples per class, so K = 16 is all of them), 5 seeds (each seed: its own pretraining split
  and device): no adaptation; the board's imprint and restats; the host's head, correct and
  generator; and on-board backprop fine-tuning (the sparse plan, 3 epochs) on the same anchors;
- bytes up (the anchors file) and down (the delta) per method;
- on a virtual board (unix port, 192 KB heap) and the emulated Cortex-M0 (qemu micro:bit):
  board time of the anchors pass and of each method against one training step, and the heap the
  anchors pass allocates against the training plan's arena.

    python -m bench.adapt [--seeds 5] [--domains 60]
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from microtrain.adapt import adaptors, core, scenario  # noqa: E402
from microtrain.board import adapt as B  # noqa: E402
from microtrain.plan import planner  # noqa: E402
from microtrain.sim.simulator import Simulator  # noqa: E402

KS = (1, 4, 16)
METHODS = ("none", "imprint", "restats", "head", "correct", "generator", "backprop")


def backprop(model, x, y, picked, seed, epochs=3):
    sim = Simulator(model, planner.plan(model, "sparse", lr=0.05))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for i in rng.permutation(picked):
            sim.step(x[i], int(y[i]))
    return sim.model


def anchors_bytes(model, E, y, picked, st):
    blobs = [("ANCL", bytes(np.asarray(y, np.uint8))), ("ANCI", np.asarray(picked, "<u2").tobytes()),
             ("ANCE", np.asarray(E, np.int8).tobytes())] + [(t.decode(), v) for t, v in B.stats_blobs(st)]
    return len(core.to_bytes(0, blobs))


def accuracy_table(seeds, domains):
    rows = []
    for name in ("digits", "imu"):
        for seed in range(seeds):
            t0 = time.time()
            s = getattr(scenario, name)(seed)
            m = s["model"]
            acc = lambda mm: scenario.accuracy(mm, s["xt"], s["yt"])   # noqa: E731
            none = acc(m)
            for k in KS:
                picked, E, ya, st = core.anchors(m, s["x"], s["y"], k)
                gen = adaptors.Generator(m, s["source"]).fit(s["X_src"], s["y_src"], s["distort"], k, domains,
                                                             seed=seed)
                deltas = {"imprint": core.imprint(m, E, ya), "restats": core.restats(m, s["x"], picked, s["source"]),
                          "head": adaptors.head(m, E, ya), "correct": adaptors.correct(m, s["source"], st),
                          "generator": gen.delta(st)}
                r = {"dataset": name, "seed": seed, "k": k, "anchors": len(picked), "none": none,
                     "bytes_up": anchors_bytes(m, E, ya, picked, st)}
                for meth, d in deltas.items():
                    r[meth] = acc(core.apply(m, d))
                    r[f"bytes_down_{meth}"] = len(core.to_bytes(0, d)) if meth not in ("imprint", "restats") else 0
                r["backprop"] = acc(backprop(m, s["x"], s["y"], picked, seed))
                rows.append(r)
            print(f"  {name} seed {seed}: done in {time.time() - t0:.0f} s")
    summary = []
    for name in ("digits", "imu"):
        for k in KS:
            sel = [r for r in rows if r["dataset"] == name and r["k"] == k]
            line = {"dataset": name, "k": k, "seeds": len(sel), "bytes_up": int(np.mean([r["bytes_up"] for r in sel]))}
            for meth in METHODS:
                v = [r[meth] for r in sel]
                line[meth] = [round(float(np.mean(v)), 3), round(float(np.std(v)), 3)]
            for meth in ("head", "correct", "generator"):
                line[f"bytes_down_{meth}"] = int(np.mean([r[f"bytes_down_{meth}"] for r in sel]))
            summary.append(line)
            print(f"  {name} K={k:2d}: " + ", ".join(f"{meth} {line[meth][0]:.3f}±{line[meth][1]:.3f}" for meth in METHODS)
                  + f"; up {line['bytes_up']} B, down head {line['bytes_down_head']} / correct "
                  f"{line['bytes_down_correct']} / generator {line['bytes_down_generator']} B")
    return rows, summary


def on_boards():
    """The whole exchange on the virtual board and the emulated M0: times and heap."""
    from bench.board import ensure_firmware
    from microtrain.adapt.session import exchange
    from microtrain.device import board_io
    from microtrain.device.link import Link
    from microtrain.device.virtualboard import VirtualBoard
    from microtrain.model import modelfile
    from microtrain.device.unixport import dist_dir
    import tempfile
    sys.path.insert(0, os.path.join(ROOT, "firmware", "qemuport"))
    from qemu_board import QemuBoard
    s = scenario.digits(0)
    m = s["model"]
    out = []
    for where, n, k in (("virtual board (unix port, 192 KB)", 200, 4), ("emulated Cortex-M0 (qemu micro:bit)", 40, 2)):
        work = tempfile.mkdtemp()
        path = os.path.join(work, "model.mtm")
        plan = planner.plan(m, "sparse", lr=0.05, word_bytes=8 if "virtual" in where else 4)
        modelfile.save(path, m, plan)
        data = open(path, "rb").read()
        mid = board_io.model_id(data)
        x, y = s["x"][:n], s["y"][:n]
        if "virtual" in where:
            board = VirtualBoard(heap="192K")
            board.install(os.path.join(dist_dir(), "lib", "microtrain"))
            open(board.path("model.mtm"), "wb").write(data)
            board.start()
            close = board.stop
        else:
            board = QemuBoard(variant="natmod", elf=ensure_firmware("natmod", "microbit"))
            from click.testing import CliRunner
            from microtrain import cli
            r = CliRunner().invoke(cli.main, ["push", path, "--port", board.port])
            assert r.exit_code == 0, r.output
            close = board.close
        try:
            with Link(board.port, "model.mtm", fresh=True) as link:      # one training step's time
                link.stream(x[:16], y[:16])
                steps = [t["us"] for t in link.telemetry() if t["kind"] == "step"]
            step_us = int(np.median(steps))
            row = {"board": where, "samples": n, "k": k, "train_step_us": step_us, "arena_bytes": plan.arena_size}
            for meth in ("imprint", "restats", "head", "correct"):
                r = exchange(board.port, "model.mtm", m, mid, x, y, k, meth, source=s["source"], fresh=True)
                row[f"{meth}_us"] = r["compute_us"] + r["us"] if meth in ("imprint", "restats") else r["us"]
                row["anchors_us"] = r["anchors"]["us"]
                row["anchors_heap"] = r["anchors"]["heap_used"]
                row["bytes_up"] = r["bytes_up"]
                row[f"bytes_down_{meth}"] = r["bytes_down"]
            out.append(row)
            print(f"  {where}: {n} samples, K={k}: anchors pass {row['anchors_us'] / 1000:.0f} ms "
                  f"(= {row['anchors_us'] / step_us:.1f} training steps of {step_us / 1000:.1f} ms), "
                  + ", ".join(f"{meth} {row[meth + '_us'] / 1000:.1f} ms" for meth in ("imprint", "restats", "head", "correct"))
                  + f"; heap of the anchors pass {row['anchors_heap']} B vs training arena {plan.arena_size} B; "
                  f"up {row['bytes_up']} B, down head {row['bytes_down_head']} B")
        finally:
            close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--domains", type=int, default=60)
    a = ap.parse_args()
    print("adaptation without backprop, held-out device accuracy (mean ± sd over seeds):")
    rows, summary = accuracy_table(a.seeds, a.domains)
    print("the exchange on boards:")
    boards = on_boards()
    write_records(os.path.join(ROOT, "bench", "adapt.json"), [{"summary": summary, "boards": boards, "runs": rows}])


if __name__ == "__main__":
    main()

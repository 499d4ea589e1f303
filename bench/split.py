"""`make bench` (split): split training between a board and the host on the digits CNN
(microtrain.split.scenario: pretrained on half of scikit-learn's digits, each device sees the rest
through its own camera distortion).  Writes bench/split.json.

- accuracy on every device's held-out samples (5 devices): pretrained; the board alone under a
  budget where only split training keeps every layer trainable (the planner's best policy that
  fits: it must freeze more); split training at the cut the planner picks for that budget (board
  + integer host, i.e. the simulator of the combined plan with the board's divergence guard,
  which the tests show bit-identical with the board); fp32 fine-tuning of the float net;
- per cut: the board's planned heap, wire bytes per sample, and on a virtual board (the unix
  port, 192 KB heap): samples/s, wire bytes per sample, heap in use after training (after a
  collection, the trainer still loaded: library code + model + arena) - against the
  board training alone on samples streamed to it.

    python -m bench.split [--epochs 2]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from microtrain.device import boards  # noqa: E402
from microtrain.federated.boards import SimulatedBoard  # noqa: E402
from microtrain.model import modelfile  # noqa: E402
from microtrain.plan import planner, split  # noqa: E402
from microtrain.split import scenario  # noqa: E402

DEVICES = 5


def budget_for(model, word_bytes):
    """A budget that the cut at layer 2 fits and the deeper cuts (and the board alone) do not."""
    need = {c.cut: c.board_bytes for c in split.choose(model, word_bytes=word_bytes).candidates}
    return (need[2] + min(need[3], need[4])) // 2


def alone_plan(model, budget, word_bytes):
    for pol in ("full", "sparse", "last-2", "last-1", "bias-only"):
        try:
            return planner.plan(model, pol, budget=budget, word_bytes=word_bytes), pol
        except planner.PlanError:
            continue
    raise SystemExit("no policy fits the budget")


def accuracy(epochs):
    net, model, X, y = scenario.pretrained(seed=0)
    wb = boards.get("rpi_pico").object_word_bytes
    budget = budget_for(model, wb)
    sp = split.choose(model, "sparse", "full", budget=budget, word_bytes=wb)
    alone, alone_pol = alone_plan(model, budget, wb)
    rows = {"pretrained": [], f"board alone ({alone_pol})": [], f"split at {sp.cut} (integer host)": [],
            "fp32 fine-tuning": []}
    for k in range(DEVICES):
        x, yy, xt, yt, (fa, ft) = scenario.device(model, X, y, k)
        rows["pretrained"].append(SimulatedBoard(model, alone).evaluate(xt, yt))
        b = SimulatedBoard(model, alone)
        b.train(x, yy, epochs)
        rows[f"board alone ({alone_pol})"].append(b.evaluate(xt, yt))
        s = SimulatedBoard(model, sp.combined)
        s.train(x, yy, epochs)
        rows[f"split at {sp.cut} (integer host)"].append(s.evaluate(xt, yt))
        n = net.copy()
        n.fit(fa, yy, epochs=epochs * 4, lr=1e-3, seed=k)
        rows["fp32 fine-tuning"].append(float(n.accuracy(ft, yt)))
    print(f"budget {budget} B (rpi_pico words): split cut {sp.cut} needs {sp.board.budget_bytes} B, the board alone "
          f"{alone_pol} {alone.budget_bytes} B, the whole split policy alone {sp.alone_bytes} B")
    out = []
    for name, accs in rows.items():
        out.append({"method": name, "per_device": [round(a, 4) for a in accs], "mean": round(float(np.mean(accs)), 4)})
        print(f"  {name:<32} mean {np.mean(accs):.3f}  " + " ".join(f"{a:.3f}" for a in accs))
    return {"budget": budget, "cut": sp.cut, "board_bytes": sp.board.budget_bytes, "alone_policy": alone_pol,
            "alone_bytes": alone.budget_bytes, "epochs": epochs, "accuracy": out}


def on_board(n=96):
    """Each cut on a virtual board vs the board alone streaming raw samples."""
    import tempfile
    from microtrain.device import board_io
    from microtrain.device.link import Link
    from microtrain.device.virtualboard import VirtualBoard
    from microtrain.split.host import IntegerHost
    from microtrain.split.session import SplitLink, sample_file
    _, model, X, y = scenario.pretrained(seed=0)
    x, yy, _, _, _ = scenario.device(model, X, y, 0)
    x, yy = x[:n], yy[:n]
    wb = boards.get("virtual").object_word_bytes
    rows = []
    lib = os.path.join(ROOT, "dist", "lib", "microtrain")
    with tempfile.TemporaryDirectory() as d:
        cands = split.choose(model, word_bytes=wb).candidates
        for c in [None] + sorted(cands, key=lambda c: c.cut):
            plan = planner.plan(model, split.spec(model, "sparse", "full", 5), word_bytes=wb) if c is None else c.board
            path = os.path.join(d, "m.mtm")
            modelfile.save(path, model, plan)
            with VirtualBoard(heap="192K") as vb:
                vb.install(lib)
                open(vb.path("model.mtm"), "wb").write(open(path, "rb").read())
                open(vb.path("samples.bin"), "wb").write(sample_file(x, yy))
                if c is None:
                    with Link(vb.port, "model.mtm", fresh=True) as link:
                        st = link.stream(x, yy)
                else:
                    m, p = modelfile.load(path)
                    host = IntegerHost(m, split.from_file(m, p), c.cut, bool(p.train))
                    with SplitLink(vb.port, "model.mtm", fresh=True) as link:
                        st = link.split("samples.bin", n, host)
                with board_io.Session(vb.port) as s:      # the trainer stays loaded between sessions
                    s.exec("import gc\ngc.collect()")
                    free = int(s.eval("gc.mem_free()"))
            r = {"cut": c.cut if c else None, "planned_bytes": plan.budget_bytes,
                 "heap_in_use": 192 * 1024 - free, "samples_per_s": round(st["samples_per_s"], 1),
                 "bytes_per_sample": round(st["bytes_per_sample"], 1)}
            if c is not None:
                r.update(up_bytes_planned=c.up_bytes, down_bytes_planned=c.down_bytes,
                         host_ms=round(1000 * st["host_s"] / n, 2))
            rows.append(r)
            print("  " + ("board alone (samples streamed)" if c is None else f"cut {c.cut}") +
                  f": planned {r['planned_bytes']} B, heap in use {r['heap_in_use']} B, {r['samples_per_s']} samples/s, "
                  f"{r['bytes_per_sample']} B/sample")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    print("split training, held-out accuracy per device (digits, 5 devices):")
    acc = accuracy(a.epochs)
    print("on a virtual board (192 KB heap, 96 samples):")
    board = on_board()
    write_records(os.path.join(ROOT, "bench", "split.json"), [{"accuracy": acc, "board": board}])


if __name__ == "__main__":
    main()

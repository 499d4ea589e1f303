"""`make bench` (scale, measured): the MLPerf Tiny models on the emulated Pico - official MicroPython
v1.27.0 on rp2040js, the board library and armv6m native module as `microtrain push` installs them,
frozen weights read in place from the flash region (the UF2 `push` writes, flashed as the boot
ROM's drive takes it).  Per model and policy: cycles of one inference and of a training step at
125 MHz, and the heap after import, after load (which allocates the training arena first), with the
trainer, and after the steps.  A model that does not fit says where it ran out.

    python -m bench.scale_pico [--out bench/scale_pico.json] [--only vww_96_int8:sparse ...]

Cycles as in bench/pico.py: rp2040js advances the clock by each instruction's Cortex-M0+ cycles, the
1 MHz timer runs off it, so ticks_us x 125 = cycles.  The board is soft-reset before each model (a
fresh heap, as after plugging in).  The sample is random int8 data written to a file and read into
the trainer's input view (no second 27 KB buffer on a heap this tight).
"""

import argparse
import ast
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "host"))
sys.path.insert(0, os.path.join(ROOT, "firmware", "rp2040"))

from bench import write_records  # noqa: E402
from bench.scale import MLPERF  # noqa: E402
from microtrain.convert.from_tflite import load_tflite  # noqa: E402
from microtrain.device import board_io, boards, flashing  # noqa: E402
from microtrain.model import modelfile  # noqa: E402
from microtrain.plan import planner  # noqa: E402
from pico_board import CLOCK_HZ, PicoBoard  # noqa: E402

RUNS = (("vww_96_int8", "last-1"), ("vww_96_int8", "sparse"), ("pretrainedResnet_quant", "sparse"),
        ("kws_ref_model", "last-1"), ("kws_ref_model", "sparse"), ("ad01_int8", "last-1"), ("ad01_int8", "sparse"))

SCRIPT = """
import gc, time, microtrain
gc.collect()
r = {'import': gc.mem_alloc(), 'heap': gc.mem_alloc() + gc.mem_free()}
try:
    m = microtrain.load('model.mtm')
    gc.collect()
    r['load'] = gc.mem_alloc()
    r['in_flash'] = m.weights_in_flash
    t = microtrain.Trainer(m, checkpoint_path='scale.ckpt')
    gc.collect()
    r['trainer'] = gc.mem_alloc()
    x = m.input_view
    f = open('x.bin', 'rb')
    f.readinto(x)
    f.close()
    c0 = time.ticks_us()
    t.predict(x)
    r['infer_us'] = time.ticks_diff(time.ticks_us(), c0)
    us = []
    for i in range(2):
        c0 = time.ticks_us()
        t.step(x, i & 1)
        us.append(time.ticks_diff(time.ticks_us(), c0))
        r['after_step'] = gc.mem_alloc()
    r['step_us'] = us
except MemoryError as e:
    gc.collect()
    r['error'] = 'MemoryError: %s' % e
print('RESULT', repr(r))
"""


def run_one(pb, s, name, policy, tmp):
    model = load_tflite(os.path.join(MLPERF, name + ".tflite"))
    board = boards.get("rpi_pico")
    p = planner.plan(model, policy, budget=board.heap_bytes, weights_flash_bytes=board.weights_flash_bytes,
                     word_bytes=board.object_word_bytes)
    data = modelfile.to_bytes(model, p)
    written, _, info = board_io.install(s, os.environ.get("MICROTRAIN_DIST", os.path.join(ROOT, "dist")), data,
                                        log=lambda *a: None)
    offset, size, held, _ = info["flash_region"]
    if held != board_io.model_id(data):
        uf2 = os.path.join(tmp, name + ".weights.uf2")
        with open(uf2, "wb") as f:
            f.write(flashing.weights_uf2(data, offset, size))
        s.close()
        pb.flash_uf2(uf2)
        s = board_io.Session(pb.port)
    x = np.random.default_rng(0).integers(-128, 128, model.layers[0].in_size).astype(np.int8)
    s.t.fs_writefile("x.bin", x.tobytes())
    s.t.exit_raw_repl()
    s.t.enter_raw_repl(soft_reset=True)
    out, err = s.t.exec_raw(SCRIPT, timeout=1800)
    if err:
        raise RuntimeError(err.decode(errors="replace"))
    r = ast.literal_eval(out.decode().split("RESULT", 1)[1].strip())
    rec = {"model": name, "policy": policy, "macs": model.macs, "planned_peak_training_ram": p.peak_bytes,
           "planned_training_arena": p.arena_size, "model_file_bytes": len(data), "heap_total": r["heap"],
           "heap_after_import": r["import"]}
    for k in ("load", "trainer", "after_step"):
        if k in r:
            rec["heap_after_" + k] = r[k]
    if "error" in r:
        rec["error"] = r["error"]
    else:
        rec.update(weights_in_flash=r["in_flash"], inference_cycles=r["infer_us"] * CLOCK_HZ // 10**6,
                   inference_ms=round(r["infer_us"] / 1e3, 1), step_cycles=[u * CLOCK_HZ // 10**6 for u in r["step_us"]],
                   step_ms=round(sum(r["step_us"]) / len(r["step_us"]) / 1e3, 1))
    return rec, s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "scale_pico.json"))
    ap.add_argument("--only", action="append", metavar="MODEL:POLICY", help="run these only (repeatable)")
    args = ap.parse_args(argv)
    runs = [tuple(o.split(":", 1)) for o in args.only] if args.only else RUNS
    import tempfile
    records = []
    wall = time.time()
    with tempfile.TemporaryDirectory() as tmp, PicoBoard(flash=os.path.join(tmp, "flash.bin")) as pb:
        s = board_io.Session(pb.port)
        try:
            for name, policy in runs:
                rec, s = run_one(pb, s, name, policy, tmp)
                records.append(rec)
                if "error" in rec:
                    print(f"{name:24} {policy:7} planned {rec['planned_peak_training_ram']:>7} B | heap after import "
                          f"{rec['heap_after_import']}, load {rec.get('heap_after_load', '-')}: {rec['error']}", flush=True)
                else:
                    print(f"{name:24} {policy:7} inference {rec['inference_ms']:8.1f} ms  step {rec['step_ms']:8.1f} ms"
                          f" | heap: import {rec['heap_after_import']}, load {rec['heap_after_load']}, trainer "
                          f"{rec['heap_after_trainer']}, after a step {rec['heap_after_after_step']} of "
                          f"{rec['heap_total']} (planned peak {rec['planned_peak_training_ram']})", flush=True)
        finally:
            s.close()
    meta = {"board": "rp2040js 1.4.1, official MicroPython v1.27.0 RPI_PICO, weights in the flash region",
            "clock_hz": CLOCK_HZ, "wall_seconds": round(time.time() - wall)}
    write_records(args.out, [dict(r, **meta) for r in records])
    print(f"wrote {args.out} in {meta['wall_seconds']} s")


if __name__ == "__main__":
    main()

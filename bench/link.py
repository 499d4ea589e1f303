"""`make bench` (link): streaming throughput and payload efficiency on the virtual board's pty,
the time to push a model (library, native module, model; then again with nothing to rewrite),
and the CLI's start-up time.  Writes bench/link.json.

    python -m bench.link
"""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from microtrain.device import board_io
from microtrain.model import modelfile
from microtrain.plan import planner
from microtrain.device import unixport
from research import zoo  # noqa: E402
from microtrain.device.link import Link  # noqa: E402
from microtrain.device.virtualboard import VirtualBoard  # noqa: E402


def cli_startup_seconds(n=5):
    exe = os.path.join(os.path.dirname(sys.executable), "microtrain")
    best = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], capture_output=True, check=True)
        best.append(time.perf_counter() - t0)
    code = "import sys, microtrain.cli; print(int(any(m.split('.')[0] in ('numpy', 'onnx') for m in sys.modules)))"
    heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    return min(best), heavy == "1"


def main():
    _, model, (Xtr, ytr), _ = zoo.imu_reference(0)
    plan = planner.plan(model, "sparse", word_bytes=8)
    rec = {}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "imu.mtm")
        size = modelfile.save(path, model, plan)
        data = open(path, "rb").read()
        with VirtualBoard(heap="192K") as vb:
            t0 = time.perf_counter()
            with board_io.Session(vb.port) as s:
                written, _, _ = board_io.install(s, unixport.dist_dir(), data, "model.mtm", log=lambda *_: None)
            rec["push_seconds_first"] = round(time.perf_counter() - t0, 2)
            rec["push_files"] = len(written)
            rec["model_bytes"] = size
            t0 = time.perf_counter()
            with board_io.Session(vb.port) as s:
                again, _, _ = board_io.install(s, unixport.dist_dir(), data, "model.mtm", log=lambda *_: None)
            rec["push_seconds_up_to_date"] = round(time.perf_counter() - t0, 2)
            assert not again
            xq = model.quantize_input(Xtr.reshape(len(Xtr), -1))
            reps = 5
            x = np.concatenate([xq] * reps)
            y = np.concatenate([ytr] * reps)
            with Link(vb.port, "model.mtm") as link:
                st = link.stream(x, y)
            rec.update({"samples": int(st["samples"]), "sample_bytes": int(xq.shape[1]),
                        "samples_per_s": round(st["samples_per_s"], 1),
                        "wire_bytes_per_sample": round(st["bytes_per_sample"], 1),
                        "payload_efficiency": round(st["payload_efficiency"], 3),
                        "uplink_efficiency": round(st["uplink_efficiency"], 3),
                        "retransmissions": int(st["retransmissions"])})
    rec["cli_help_seconds"], rec["cli_help_imports_numpy_or_onnx"] = cli_startup_seconds()
    rec["cli_help_seconds"] = round(rec["cli_help_seconds"], 3)
    out = os.path.join(ROOT, "bench", "link.json")
    write_records(out, [rec])
    for k, v in rec.items():
        print(f"{k:32} {v}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

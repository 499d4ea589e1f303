"""`make bench` (training): accuracy per dataset and policy (pretrained / fp32 / int8 / int8+QAS,
means over 5 seeds, learning rates tuned on validation splits), the training heap measured in the
MicroPython unix port against the planner's estimate, steady-state heap per step, step time per
backend, and whether the board and the simulator end bit-identical.  Writes bench/training.json.

    python -m bench.training [--seeds 5] [--out bench/training.json]
"""

import argparse
import os
import struct
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from microtrain import datasets
from research import experiments
from microtrain.plan import planner
from microtrain.convert import quantize
from microtrain.sim import simulator
from microtrain.device import unixport  # noqa: E402

POLICIES = ("sparse", "full", "bias-only")


def reference_model(sc, seed=0):
    X, y = sc.load()
    (Xp, yp), (Xf, yf), _, _ = datasets.split(X, y, sc.fractions, seed=seed)
    net = sc.make_net(seed)
    net.fit(Xp, yp, epochs=sc.pretrain_epochs, lr=sc.pretrain_lr, seed=seed)
    model = quantize.quantize(net, np.concatenate([Xp, Xf]), sc.labels)
    return model, model.quantize_input(sc.shift(Xf, seed)), yf.astype(np.uint8)


STEP_TIME_SCRIPT = """
import time, microtrain
microtrain.backend.use('{backend}')
m = microtrain.load('{path}')
t = microtrain.Trainer(m, checkpoint_path='{path}.ck')
x = bytearray(m.in_size)
t.step(x, 0)
n = {n}
t0 = time.ticks_us()
for i in range(n):
    t.step(x, i % m.n_classes)
print('US', time.ticks_diff(time.ticks_us(), t0) // n)
"""


def step_time_us(model, plan, backend, n):
    import tempfile
    from microtrain.model import modelfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.mtm")
        modelfile.save(path, model, plan)
        out = unixport.run(STEP_TIME_SCRIPT.format(backend=backend, path=path, n=n), backend=backend)
    return int(out.split("US")[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "training.json"))
    args = ap.parse_args(argv)
    records = []
    for sc in (experiments.digits_scenario(), experiments.imu_scenario()):
        model, xq, yq = reference_model(sc)
        for policy in POLICIES:
            t0 = time.time()
            results, mean, n_test = experiments.run(sc, policy, seeds=range(args.seeds), workers=2)
            plan64 = planner.plan(model, policy, word_bytes=8)       # the unix port: 64-bit objects
            mem = unixport.training_memory(model, plan64, xq, yq, heap="160K")
            alloc = unixport.step_allocation(model, plan64, xq[:20], yq[:20])   # gc off, native kernels
            sim = simulator.Simulator(model, plan64)
            for x, y in zip(xq[:20], yq[:20]):
                sim.step(x, int(y))
            state, rng, n = sim.trainable_state()
            board = unixport.trained_state(model, plan64, xq[:20], yq[:20])
            rec = {
                "dataset": sc.name, "policy": policy, "model_macs": model.macs, "test_samples": n_test,
                "seeds": args.seeds,
                "pretrained_accuracy": round(mean["pretrained"], 4), "fp32_accuracy": round(mean["fp32"], 4),
                "int8_accuracy": round(mean["int8"], 4), "int8_qas_accuracy": round(mean["int8_qas"], 4),
                "peak_heap_bytes": mem["peak"], "live_heap_bytes": mem["live"],
                "planned_bytes": plan64.peak_bytes, "planned_bytes_32bit": planner.plan(model, policy).peak_bytes,
                "heap_bytes_per_step": mem["per_step"],
                "alloc_bytes_per_train_step_native": alloc[0], "alloc_bytes_per_step_native": alloc[1],
                "bit_identical": board == state + struct.pack("<II", rng, n),
                "step_us_unix_native": step_time_us(model, plan64, "native", 50),
                "step_us_unix_python": step_time_us(model, plan64, "python", 3),
                "learning_rates": [r.lrs for r in results],
            }
            records.append(rec)
            print(f"{sc.name:14} {policy:9} pre {rec['pretrained_accuracy']:.3f} fp32 {rec['fp32_accuracy']:.3f} "
                  f"int8 {rec['int8_accuracy']:.3f} int8+QAS {rec['int8_qas_accuracy']:.3f} | heap {mem['live']} B "
                  f"(plan {plan64.peak_bytes} B) {mem['per_step']} B/step, allocated per train_step {alloc[0]:.0f} B | step {rec['step_us_unix_native']} us native, "
                  f"{rec['step_us_unix_python']} us python | bit-identical {rec['bit_identical']} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    write_records(args.out, records)
    print(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()

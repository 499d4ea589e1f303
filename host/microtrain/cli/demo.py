"""`microtrain demo`: the whole story on one screen.

A student's smartwatch-like IMU sees the world slightly differently from the one the model was
trained on (BasicMotions seen through a fixed rotation and gain: a "new device").  The bundled
pretrained float model (examples/imu_basic_motions.onnx) is converted for the board, pushed,
the device's labelled samples are streamed and trained on the board, telemetry comes back, and
the accuracy on held-out samples of the device is measured on the board before and after; the
trained weights are pulled and checked against the host simulation of the same samples.
"""

import os
import shutil
import tempfile
import time

from microtrain.device import board_io
from microtrain import data
from microtrain import datasets
from microtrain.model import modelfile
from microtrain.plan import planner
from microtrain.sim import simulator
from microtrain.device import unixport

try:
    EXAMPLES = data.find("examples")
except FileNotFoundError:
    EXAMPLES = os.path.join(unixport.repo_root(), "examples")        # named when it is opened
PRETRAINED = os.path.join(EXAMPLES, "imu_basic_motions.onnx")
DEVICE_SEED = 3


def demo_data():
    X, y, names = datasets.load_basic_motions()
    (Xp, yp), (Xf, yf), (Xt, yt) = datasets.split(X, y, [0.5, 0.25, 0.25], seed=0)
    shift = lambda A: datasets.shift_imu(A, DEVICE_SEED, max_deg=180, gain_sd=0.5)[0]   # noqa: E731
    return (Xp, yp), (shift(Xf), yf), (shift(Xt), yt), names


def run_demo(port=None, epochs=3, png=None, echo=print):
    from microtrain.device.link import Link
    from microtrain.device.virtualboard import VirtualBoard
    t_start = time.time()
    (Xp, yp), (Xf, yf), (Xt, yt), names = demo_data()
    work = tempfile.mkdtemp(prefix="microtrain-demo-")
    vb = None
    try:
        if port is None:
            vb = VirtualBoard(heap="192K")
            vb.start()
            port = vb.port
            echo(f"[1/7] no board given: virtual board (MicroPython unix port, 192 K heap) on {port}")
        else:
            echo(f"[1/7] board on {port}")
        # convert the bundled pretrained model
        from microtrain.convert.from_onnx import onnx_to_qmodel
        model = onnx_to_qmodel(PRETRAINED, Xp, names)
        plan = planner.plan(model, "sparse", lr=0.05, word_bytes=8 if vb else 4)
        path = os.path.join(work, "imu.mtm")
        modelfile.save(path, model, plan)
        echo(f"[2/7] converted examples/{os.path.basename(PRETRAINED)}: {model.macs} MACs, plan '{plan.policy}' trains "
             f"{sum(t.n_params(model.layers[t.layer]) for t in plan.train)} parameters, peak RAM {plan.peak_bytes} B")
        with board_io.Session(port) as s:
            written, backend, info = board_io.install(s, unixport.dist_dir(), open(path, "rb").read(), "model.mtm",
                                                      log=echo)
        echo(f"[3/7] pushed {len(written)} files to {info['version'].split(';')[-1].strip()} ({info['arch']}), "
             f"backend {backend}")
        xf, xt = model.quantize_input(Xf.reshape(len(Xf), -1)), model.quantize_input(Xt.reshape(len(Xt), -1))
        cap = plan.buffers["val_y"].size
        with Link(port, "model.mtm") as link:
            before = link.evaluate(xt, yt, cap)
            echo(f"[4/7] accuracy of the pretrained model on this device: {before}/{len(yt)} = {before / len(yt):.2f}")
            t0 = time.time()
            for e in range(epochs):
                stats = link.stream(xf, yf)
            echo(f"[5/7] streamed {epochs} x {len(xf)} samples: {stats['samples_per_s']:.0f} samples/s, "
                 f"{stats['bytes_per_sample']:.0f} B/sample on the wire, {stats['retransmissions']} retransmissions "
                 f"({time.time() - t0:.1f} s)")
            link.command("checkpoint")
            after = link.evaluate(xt, yt, cap)
            records = link.telemetry()
        steps = [r for r in records if r["kind"] == "step"]
        if steps:
            k = max(1, len(steps) // 4)
            first = sum(r["loss"] for r in steps[:k]) / k
            last = sum(r["loss"] for r in steps[-k:]) / k
            us = sorted(r["us"] for r in steps)[len(steps) // 2]
            echo(f"[6/7] telemetry: {len(steps)} steps, loss {first:.2f} -> {last:.2f}, step {us} us, "
                 f"heap free {steps[-1]['heap_free']} B; accuracy {before / len(yt):.2f} -> {after / len(yt):.2f}")
        if png:
            from microtrain.cli.report import plot_records
            plot_records(records, png)
        # pull and check against the host simulation of the same samples
        with board_io.Session(port) as s:
            ck = board_io.read_checkpoint(s, "model.ckpt")
        sim = simulator.Simulator(model, plan)
        for _ in range(epochs):
            for x, y in zip(xf, yf):
                sim.step(x, int(y))
        state, rng, n = sim.trainable_state()
        pulled = b"".join(ck["blobs"][t] for t in ck["blobs"] if t[0] in "WB")
        same = pulled == state and ck["rng"] == rng and ck["steps"] == n
        trained = board_io.apply_checkpoint(modelfile.load(path)[0], ck)
        out = os.path.join(os.getcwd(), "imu_trained.mtm")
        with open(out, "wb") as f:
            f.write(modelfile.replace_tensors(open(path, "rb").read(), trained))
        echo(f"[7/7] pulled the trained weights ({ck['steps']} steps) -> {out}; "
             f"identical to the host simulation: {'yes' if same else 'NO'}")
        echo(f"done in {time.time() - t_start:.0f} s")
        return {"before": before, "after": after, "n_test": len(yt), "bit_identical": same}
    finally:
        if vb is not None:
            vb.stop()
        shutil.rmtree(work, ignore_errors=True)

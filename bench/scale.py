"""`make bench` (scale): the MLPerf Tiny models (../shared/models/mlperf_tiny) and the IMU reference
model, per model and policy: MAC, the planner's memory (inference arena, the training step's arena,
the whole training arena with the samples the board keeps, the sum of its tensors without sharing,
peak training RAM) on the rpi_pico budget with frozen weights in flash, and Cortex-M0+ time.

Time is an estimate from measured kernels, not a whole-model run: every kind of layer a model has
(1x1 / kxk convolution, depthwise, dense, ADD, average pool; forward, input gradient and weight
update) is run on the emulated Cortex-M0+ (tools/m0sim, the shipped armv6m kernels with the
assembly inner loops, checked bit-exact against the reference) on that layer's own channels and
kernel (the inner loop) on at most 4x4 positions and 16 output channels; its cycles per MAC (per element for ADD
and pooling) times the full layer's MACs, summed over the layers a pass runs, at 125 MHz.  The
MicroPython interpreter's per-layer overhead (a few hundred microseconds per call on the board) is
not in it.

    python -m bench.scale [--out bench/scale.json] [--png docs/scale.png]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from bench.kernels import _p, build, forward, input_grad, weight_grad  # noqa: E402
from microtrain.convert.from_tflite import load_tflite  # noqa: E402
from microtrain.device import boards  # noqa: E402
from microtrain.model.fixedpoint import quantize_multipliers  # noqa: E402
from microtrain.plan import planner  # noqa: E402
from microtrain.sim import reference as ref  # noqa: E402
from tools.m0sim import pack_struct  # noqa: E402

MLPERF = os.path.join(os.path.dirname(ROOT), "shared", "models", "mlperf_tiny")
MODELS = ("vww_96_int8", "pretrainedResnet_quant", "kws_ref_model", "ad01_int8")
POLICIES = ("sparse", "last-1", "bias-only")
CLOCK = 125e6


def _small(g, dw=False):
    """The layer's input channels and kernel (the inner loop's length) on at most 4x4 output
    positions and 16 output channels (the outer loops)."""
    oh, ow = min(g.out_h, 4), min(g.out_w, 4)
    ih = min(g.in_h, (oh - 1) * g.stride_h + g.k_h)
    iw = min(g.in_w, (ow - 1) * g.stride_w + g.k_w)
    in_c = min(g.in_c, 16) if dw else g.in_c
    out_c = in_c * g.depth_mult if dw else min(g.out_c, 16)
    return ref.Geom(ih, iw, in_c, oh, ow, out_c, g.k_h, g.k_w, g.stride_h, g.stride_w,
                    min(g.pad_t, g.k_h - 1), min(g.pad_l, g.k_w - 1), g.depth_mult)


def _dw_forward(sim, g, rng):
    x = rng.integers(-128, 128, g.in_h * g.in_w * g.in_c).astype(np.int8)
    w = rng.integers(-127, 128, g.taps * g.out_c).astype(np.int8)
    bias = rng.integers(-5000, 5000, g.out_c).astype(np.int32)
    mult, shift = quantize_multipliers(np.full(g.out_c, 0.002))
    sim.reset_heap()
    y = sim.zeros(g.positions * g.out_c)
    rq = sim.alloc(pack_struct([("p", _p(sim, mult)), ("p", _p(sim, shift)), ("i", 1), ("i", 5), ("i", -128),
                                ("i", 127), ("i", 1)], 4))
    _, prof = sim.call("mt_dwconv_forward", _p(sim, g.array()), _p(sim, x), -3, _p(sim, w), _p(sim, bias), rq, y, 0,
                       profile=True)
    exp, _ = ref.dwconv_forward(g, x, -3, w, bias, mult, shift, 5, -128, 127, True)
    assert sim.read(y, exp.size) == exp.tobytes(), "depthwise forward differs from the reference"
    return prof


def _dw_input_grad(sim, g, rng):
    w = rng.integers(-127, 128, g.taps * g.out_c).astype(np.int8)
    gy = rng.integers(-2000, 2000, g.positions * g.out_c).astype(np.int16)
    sim.reset_heap()
    gx = sim.zeros(4 * g.in_h * g.in_w * g.in_c)
    _, prof = sim.call("mt_dwconv_input_grad", _p(sim, g.array()), _p(sim, gy), _p(sim, w), gx, profile=True)
    exp = ref.dwconv_input_grad(g, gy, w).astype(np.int32)
    assert sim.read(gx, exp.nbytes) == exp.tobytes(), "depthwise input gradient differs from the reference"
    return prof


def _elementwise(sim, l, rng):
    n = l.out_size if l.op == "add" else l.in_size
    n = min(n, 1024)
    sim.reset_heap()
    x = rng.integers(-128, 128, n).astype(np.int8)
    if l.op == "add":
        y = sim.zeros(n)
        _, prof = sim.call("mt_add_forward", n, _p(sim, x), _p(sim, x[::-1].copy()),
                           _p(sim, l.add.array()), y, 0, profile=True)
        exp, _ = ref.add_forward(x, x[::-1], l.add)
    else:
        g = l.geom
        c = g.in_c
        hw = max(1, n // c)
        gg = ref.Geom.pool(hw, 1, c, hw, 1)
        x = x[:hw * c]
        y = sim.zeros(c)
        _, prof = sim.call("mt_avgpool_forward", _p(sim, gg.array()), _p(sim, x), -128, 127, y, profile=True)
        exp = ref.avgpool_forward(gg, x)
        n = hw * c
    assert sim.read(y, exp.size) == exp.tobytes(), f"{l.op} differs from the reference"
    return prof.cycles / n


def kind(l):
    g = l.geom
    if l.op == "conv":
        return "dense" if g.in_h == 1 and g.k_h == 1 and g.k_w == 1 and g.out_h == 1 else \
            "conv 1x1" if g.k_h * g.k_w == 1 else f"conv {g.k_h}x{g.k_w}"
    return {"dwconv": f"depthwise {g.k_h}x{g.k_w}"}.get(l.op, l.op)


def layer_cycles(sim, model, rng):
    """Per layer: (kind, forward cycles, input-gradient cycles, weight-update cycles) of the full layer."""
    out = []
    seen = {}
    for l in model.layers:
        g = l.geom
        if l.op in ("conv", "dwconv"):
            s = _small(g, l.op == "dwconv")
            key = (l.op, tuple(s.array()))
            if key in seen:
                f, ig, wg = seen[key]
                out.append((kind(l), f * l.macs, ig * l.macs, wg * l.macs, f))
                continue
            small_macs = s.positions * s.out_c * s.taps * (s.in_c if l.op == "conv" else 1)
            if l.op == "conv":
                f, ig, wg = (p.cycles / small_macs for p in (forward(sim, s, rng), input_grad(sim, s, rng),
                                                              weight_grad(sim, s, rng)))
            else:
                f, ig = (p.cycles / small_macs for p in (_dw_forward(sim, s, rng), _dw_input_grad(sim, s, rng)))
                wg = ig                  # the depthwise update is the same loop shape as its input gradient
            seen[key] = (f, ig, wg)
            out.append((kind(l), f * l.macs, ig * l.macs, wg * l.macs, f))
        elif l.op in ("add", "avgpool"):
            c = _elementwise(sim, l, rng)
            n = l.out_size if l.op == "add" else l.in_size
            out.append((kind(l), c * n, c * n, 0.0, c))
        else:
            out.append((kind(l), 0.0, 0.0, 0.0, 0.0))
    return out


def step_cycles(cyc, p):
    """The training step: the forward pass, then the backward layers of the plan (input gradient
    where it goes down, the update of the trained ones in proportion to what trains)."""
    total = sum(c[1] for c in cyc)
    by = {t.layer: t for t in p.train}
    top = len(cyc) - 2
    for i in range(top, p.first_backward - 1, -1):
        if i > p.first_backward:
            total += cyc[i][2]
        t = by.get(i)
        if t is not None and t.weights:
            total += cyc[i][3] * len(t.rows) / max(1, int(np.max(t.rows)) + 1)
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "scale.json"))
    ap.add_argument("--png", default=None, help="the plot of memory and time against MACs (needs matplotlib)")
    args = ap.parse_args(argv)
    board = boards.get("rpi_pico")
    sim = build("asm")
    rng = np.random.default_rng(0)
    models = {m: load_tflite(os.path.join(MLPERF, m + ".tflite")) for m in MODELS}
    from research import zoo
    models["imu (reference)"] = zoo.imu_reference(seed=0)[1]
    records, kinds = [], {}
    print(f"{'model':24} {'policy':9} {'MMAC':>6} {'infer ms':>8} {'step ms':>8} {'inf arena':>9} {'step arena':>10} "
          f"{'train arena':>11} {'no sharing':>10} {'peak RAM':>8}  fits pico")
    for name, model in models.items():
        cyc = layer_cycles(sim, model, rng)
        for c in cyc:
            if c[4]:
                kinds.setdefault(c[0], []).append(round(c[4], 2))
        infer = sum(c[1] for c in cyc)
        for pol in POLICIES:
            try:
                p = planner.plan(model, pol, budget=board.heap_bytes, weights_flash_bytes=board.weights_flash_bytes,
                                 word_bytes=board.object_word_bytes)
            except planner.PlanError as e:
                records.append({"model": name, "policy": pol, "error": str(e)})
                print(f"{name:24} {pol:9} refused: {str(e)[:90]}")
                continue
            st = step_cycles(cyc, p)
            rec = {"model": name, "policy": pol, "macs": model.macs, "inference_cycles": round(infer),
                   "inference_ms": round(infer / CLOCK * 1e3, 1), "step_cycles": round(st),
                   "step_ms": round(st / CLOCK * 1e3, 1), "inference_arena": p.inference_arena,
                   "step_arena": p.step_arena, "training_arena": p.arena_size, "sum_of_tensors": p.sum_of_tensors,
                   "trainable_bytes": p.weight_bytes_ram, "peak_training_ram": p.peak_bytes,
                   "budget_bytes": p.budget_bytes, "weights_in_flash": p.weights_in_flash,
                   "first_backward": p.first_backward, "notes": p.notes[:1]}
            records.append(rec)
            print(f"{name:24} {pol:9} {model.macs / 1e6:6.2f} {rec['inference_ms']:8.1f} {rec['step_ms']:8.1f} "
                  f"{p.inference_arena:9} {p.step_arena:10} {p.arena_size:11} {p.sum_of_tensors:10} {p.peak_bytes:8}  "
                  f"{p.budget_bytes <= board.heap_bytes}")
    per_kind = {k: {"cycles_per_mac_min": min(v), "cycles_per_mac_max": max(v)} for k, v in sorted(kinds.items())}
    print("cycles per MAC (forward; ADD / pooling: per element), by layer kind:")
    for k, v in per_kind.items():
        print(f"  {k:14} {v['cycles_per_mac_min']:.2f} .. {v['cycles_per_mac_max']:.2f}")
    write_records(args.out, {"models": records, "cycles_per_mac_forward": per_kind})
    if args.png:
        plot(records, args.png)


def plot(records, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in records if "error" not in r and r["policy"] == "sparse"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        m = r["macs"] / 1e6
        ax[0].scatter(m, r["peak_training_ram"] / 1024, color="C0")
        ax[0].scatter(m, r["inference_arena"] / 1024, color="C1", marker="s")
        ax[0].scatter(m, r["sum_of_tensors"] / 1024, color="C3", marker="x")
        ax[0].annotate(r["model"].split("_")[0], (m, r["peak_training_ram"] / 1024), fontsize=7)
        ax[1].scatter(m, r["inference_ms"], color="C1", marker="s")
        ax[1].scatter(m, r["step_ms"], color="C0")
    ax[0].set(xscale="log", xlabel="MMAC per inference", ylabel="KB", title="peak training RAM (o), inference arena (s), no sharing (x)")
    ax[1].set(xscale="log", yscale="log", xlabel="MMAC per inference", ylabel="ms at 125 MHz",
              title="inference (s) and sparse step (o), Cortex-M0+")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()

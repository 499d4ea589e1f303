"""`make bench` (kernels): instructions and estimated Cortex-M0+ cycles per MAC of the shipped
kernels, compiled with the armv6m native-module flags and run on the emulated core (tools/m0sim).

What is measured is the kernel as the trainer calls it: mt_conv_forward (im2col/zero-point packing,
the dot products and the requantizing epilogue), mt_conv_input_grad (the transposed product and the
col2im scatter), mt_conv_update (transposing the operands, the weight-gradient products and the
in-place stochastic-rounding SGD step of every weight).  The requantization epilogue is counted
separately (cycles per output) and the forward product figure excludes it.  Every run is checked
bit-exact against the numpy reference.

    python -m bench.kernels [--out bench/kernels.json] [--impl asm,c]
"""

import argparse
import glob
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from microtrain.sim import reference as ref  # noqa: E402
from microtrain.model.fixedpoint import quantize_multipliers  # noqa: E402
from tools.m0sim import M0Sim, pack_struct  # noqa: E402

KERNELS = os.path.join(ROOT, "native_modules", "mtkernels", "kernels")
REQUANT_FUNCTIONS = ("mt_store_run", "mt_requant_run", "mt_requant_prepare", "mt_put_mask_bits", "mt_store_outputs",
                     "mt_requantize", "mt_scale_round", "mt_mul_hi", "mt_srdhm", "mt_rdbpot")


def build(impl):
    srcs = sorted(glob.glob(os.path.join(KERNELS, "*.c")))
    if impl == "asm":
        return M0Sim.build(srcs + sorted(glob.glob(os.path.join(KERNELS, "*_armv6m.S"))), cflags=["-DMT_ARMV6M_ASM"])
    return M0Sim.build(srcs)


def _p(sim, a):
    return sim.alloc(np.ascontiguousarray(a).tobytes())


def forward(sim, g, rng):
    K = g.taps * g.in_c
    x = rng.integers(-128, 128, g.in_h * g.in_w * g.in_c).astype(np.int8)
    w = rng.integers(-127, 128, g.out_c * K).astype(np.int8)
    bias = rng.integers(-5000, 5000, g.out_c).astype(np.int32)
    mult, shift = quantize_multipliers(np.full(g.out_c, 30.0 / (np.sqrt(K) * 74 * 74)))
    zx, zy = -3, 5
    sim.reset_heap()
    y = sim.zeros(g.positions * g.out_c)
    mask = sim.zeros((g.positions * g.out_c + 7) // 8)
    scratch = sim.zeros(ref.conv_forward_scratch(g))
    rq = sim.alloc(pack_struct([("p", _p(sim, mult)), ("p", _p(sim, shift)), ("i", 1), ("i", zy), ("i", -128),
                                ("i", 127), ("i", 0)], 4))
    _, prof = sim.call("mt_conv_forward", _p(sim, g.array()), _p(sim, x), zx, _p(sim, w), _p(sim, bias), rq, y, mask,
                       scratch, profile=True)
    exp, _ = ref.conv_forward(g, x, zx, w, bias, mult, shift, zy, -128, 127)
    assert sim.read(y, exp.size) == exp.tobytes(), "forward result differs from the reference"
    return prof


def input_grad(sim, g, rng):
    w = rng.integers(-127, 128, g.out_c * g.taps * g.in_c).astype(np.int8)
    gy = rng.integers(-2000, 2000, g.positions * g.out_c).astype(np.int16)
    sim.reset_heap()
    gx = sim.zeros(4 * g.in_h * g.in_w * g.in_c)
    _, prof = sim.call("mt_conv_input_grad", _p(sim, g.array()), _p(sim, gy), _p(sim, w), gx, profile=True)
    exp = ref.conv_input_grad(g, gy, w).astype(np.int32)
    assert sim.read(gx, exp.nbytes) == exp.tobytes(), "input gradient differs from the reference"
    return prof


def weight_grad(sim, g, rng):
    x = rng.integers(-128, 128, g.in_h * g.in_w * g.in_c).astype(np.int8)
    w = rng.integers(-127, 128, g.out_c * g.taps * g.in_c).astype(np.int8)
    gy = rng.integers(-2000, 2000, g.positions * g.out_c).astype(np.int16)
    bias = np.zeros(g.out_c, np.int32)
    rows = np.arange(g.out_c, dtype=np.uint16)
    wm, ws = quantize_multipliers(np.full(g.out_c, 0.01))
    bm, bs = quantize_multipliers(np.full(g.out_c, 100.0))
    state = 0x12345678
    sim.reset_heap()
    wp, bp = _p(sim, w), _p(sim, bias)
    rng_p = _p(sim, np.array([state], np.uint32))
    kc = g.taps * g.in_c
    scratch = sim.zeros(((2 * kc * g.positions + 3) & ~3) + ((4 * g.positions + 3) & ~3) + 8 * kc)
    up = sim.alloc(pack_struct([("p", _p(sim, rows)), ("i", g.out_c), ("i", 0), ("i", g.in_c), ("p", _p(sim, wm)),
                                ("p", _p(sim, ws)), ("p", _p(sim, bm)), ("p", _p(sim, bs)), ("p", rng_p)], 4))
    _, prof = sim.call("mt_conv_update", _p(sim, g.array()), _p(sim, x), -3, _p(sim, gy), -20, wp, bp, up, scratch,
                       profile=True)
    w2, b2, s2 = ref.conv_update(g, x, -3, gy, -20, w, bias, rows, 0, g.in_c, wm, ws, bm, bs, state)
    assert sim.read(wp, w.size) == w2.astype(np.int8).tobytes(), "update differs from the reference"
    return prof


CASES = [
    # kernel, label, geometry (M = positions, N = out_c, K = k_h * k_w * in_c)
    ("forward", "dense 64x64x64", ref.Geom.dense(64, 64, 64)),
    ("forward", "dense 1x64x128 (one sample)", ref.Geom.dense(1, 128, 64)),
    ("forward", "conv 3x3, 32 in, 16 out, 4x8 SAME", ref.Geom.conv(4, 8, 32, 16, 3, 3, 1, "same")),
    ("input_grad", "dense 64x64x64", ref.Geom.dense(64, 64, 64)),
    ("weight_grad", "dense 64x64x64", ref.Geom.dense(64, 64, 64)),
]
RUN = {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "kernels.json"))
    ap.add_argument("--impl", default="asm,c", help="dot-product implementations to measure")
    args = ap.parse_args(argv)
    records = []
    print(f"{'kernel':12} {'impl':4} {'shape M,N,K':14} {'instr/MAC':>9} {'cycles/MAC':>10} {'requant cyc/out':>15}  case")
    for impl in args.impl.split(","):
        sim = build(impl)
        for kernel, label, g in CASES:
            rng = np.random.default_rng(1)
            prof = RUN[kernel](sim, g, rng)
            M, N, K = g.positions, g.out_c, g.taps * g.in_c
            macs = M * N * K
            rec = {"kernel": kernel, "arch": "armv6m", "impl": impl, "shape": [M, N, K], "case": label,
                   "instructions": prof.instructions, "cycles": prof.cycles}
            if kernel == "forward":
                rq_cycles = prof.cycles_in(REQUANT_FUNCTIONS)
                rq_insns = prof.instructions_in(REQUANT_FUNCTIONS)
                rec["requant_cycles_per_output"] = round(rq_cycles / (M * N), 1)
                rec["requant_instructions_per_output"] = round(rq_insns / (M * N), 1)
                rec["instructions_per_mac"] = round((prof.instructions - rq_insns) / macs, 3)
                rec["cycles_per_mac"] = round((prof.cycles - rq_cycles) / macs, 3)
                rec["cycles_per_mac_with_requant"] = round(prof.cycles / macs, 3)
            else:
                rec["instructions_per_mac"] = round(prof.instructions / macs, 3)
                rec["cycles_per_mac"] = round(prof.cycles / macs, 3)
            records.append(rec)
            rq = rec.get("requant_cycles_per_output", "")
            print(f"{kernel:12} {impl:4} {f'{M},{N},{K}':14} {rec['instructions_per_mac']:9.3f} "
                  f"{rec['cycles_per_mac']:10.3f} {rq!s:>15}  {label}")
    write_records(args.out, records)
    print(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()

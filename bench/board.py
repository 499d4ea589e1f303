"""`make bench` (emulated board): instructions per training step and per inference of the reference
IMU model on the emulated 256 KB Cortex-M0 board (MicroPython in qemu, firmware/qemuport), per
update policy, turned into an estimate at 125 MHz.  Writes bench/board.json.

    python -m bench.board [--steps 16] [--traced 2] [--out bench/board.json]

How instructions are counted.  qemu runs with `-icount shift=0`: every guest instruction advances
virtual time by exactly 1 ns, so the board's virtual clock (qemu.clock_ns(), the nRF51 TIMER0 at
16 MHz, 62.5 ns resolution, extended to 64 bits) counts executed instructions; runs are
deterministic.  On the board:
  - total: each training step (Trainer.step) / inference (Model.predict) is timed on its own, with
    the plain kernels, minus the cost of an empty measurement;
  - kernels: the same steps again with the kernel module replaced by qemu.profile(mtkernels),
    which accumulates the virtual time spent inside every mtkernels call (the C binding's argument
    checks and the kernel itself).  The profiler's own cost inside a call (two clock reads, the
    call dispatch) is measured with a profiled no-op taking the same arguments and subtracted per
    call.
  - orchestration = total - kernels: the interpreter running the board library (trainer.py,
    model.py, telemetry), including the call dispatch of every kernel call.
Estimated time at 125 MHz = kernel instructions x CPI of the kernels + orchestration instructions
x CPI of interpreter code.  Both CPIs are measured on the board: qemu's monitor switches it to one
instruction per translation block and logs every block executed while it runs --traced training
steps and inferences; every instruction of that trace is priced with the Cortex-M0+ cycle model of
tools/m0sim.py (single-cycle multiplier, zero-wait-state memory) and attributed to the kernels (code
linked from the mtkernels objects, by the linker map) or to the rest (interpreter, runtime, library).
As a cross-check, the kernel CPI of this model's conv kernels alone on tools/m0sim is recorded too.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "host"))
sys.path.insert(0, os.path.join(ROOT, "firmware", "qemuport"))

from bench import write_records  # noqa: E402
from microtrain import datasets
from microtrain.model import modelfile
from microtrain.plan import planner
from research import zoo  # noqa: E402
from qemu_board import QemuBoard, exec_raw, firmware_path  # noqa: E402

POLICIES = ("sparse", "full", "bias-only")
CLOCK_HZ = 125_000_000
BARS = {"train_step_ms_125mhz": 20.0, "inference_ms_125mhz": 6.0, "orchestration_fraction": 0.30}


def ensure_firmware(variant="kernels", board="microbit"):
    """Build (incrementally) the firmware; returns the ELF path."""
    py = sys.executable
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "firmware", "qemuport"), f"BOARD={board}",
                    f"VARIANT={variant}", f"PYTHON={py}", "-j8"], check=True, stdout=subprocess.DEVNULL)
    return firmware_path(board, variant)


def sram_split(elf):
    """{'data', 'bss', 'heap', 'stack', 'linked'} in bytes, from the firmware's linker symbols."""
    out = subprocess.run(["arm-none-eabi-nm", elf], capture_output=True, text=True, check=True).stdout
    sym = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            sym[parts[2]] = int(parts[0], 16)
    split = {"data": sym["_edata"] - sym["_sdata"], "bss": sym["_ebss"] - sym["_sbss"],
             "heap": sym["_heap_end"] - sym["_heap_start"], "stack": sym["_estack"] - sym["_sstack"]}
    split["linked"] = sym["_estack"] - sym["_sram_start"]
    split["sram"] = sym["_sram_end"] - sym["_sram_start"]
    return split


def imu_data(steps, seed=5):
    """The reference IMU model, and `steps` int8 samples from a shifted device with labels."""
    _, model, (Xtr, ytr), _ = zoo.imu_reference(0)
    Xs, _ = datasets.shift_imu(Xtr, seed=seed)       # a new device: the model has to learn
    xq = model.quantize_input(Xs)
    idx = np.arange(steps) % len(ytr)
    return model, np.asarray(xq[idx], np.int8), ytr[idx].astype(np.uint8)


def put_files(t, folder, files):
    """Copy {name: bytes} into `folder` on the board (mpremote transport)."""
    if not t.fs_exists(folder):
        t.fs_mkdir(folder)
    for name, data in files.items():
        t.fs_writefile(f"{folder}/{name}", data)


# Train on the samples, then write the trainable state in the order of
# simulator.Simulator.trainable_state() + '<II' (PRNG state, steps) (as host/microtrain/device/unixport.py).
TRAIN_SCRIPT = """
import gc, struct, microtrain
gc.collect()
base = gc.mem_alloc()
D = '{dir}'
m = microtrain.load(D + '/m.mtm')
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
gc.collect()
loaded = gc.mem_alloc()
size = m.in_size
x = bytearray(size)
f = open(D + '/samples.bin', 'rb')
labels = open(D + '/labels.bin', 'rb').read()
peak = 0
for i in range(len(labels)):
    f.seek(i * size)
    f.readinto(x)
    t.step(x, labels[i])
    a = gc.mem_alloc()
    if a > peak:
        peak = a
f.close()
out = open(D + '/state.bin', 'wb')
for tag, buf in t._state_blobs():
    out.write(buf)
out.write(struct.pack('<II', t.rng[0], t.steps))
out.close()
print('RESULT', microtrain.backend.NAME, base, loaded, peak, gc.mem_alloc() + gc.mem_free())
"""


def train_on_board(t, model, plan, xq, labels, folder="/train", timeout=600):
    """Train on the board; returns (state bytes, {'backend', 'base', 'loaded', 'peak', 'heap'})."""
    put_files(t, folder, {"m.mtm": modelfile.to_bytes(model, plan), "samples.bin": xq.tobytes(),
                          "labels.bin": np.asarray(labels, np.uint8).tobytes()})
    out = exec_raw(t, TRAIN_SCRIPT.format(dir=folder), timeout=timeout)
    words = out.split("RESULT")[1].split()
    info = {"backend": words[0], "base": int(words[1]), "loaded": int(words[2]), "peak": int(words[3]),
            "heap": int(words[4])}
    return t.fs_readfile(f"{folder}/state.bin"), info


# Instruction counts of training steps and inferences (see the module docstring).
BENCH_SCRIPT = """
import gc, qemu, microtrain, mtkernels
D = '{dir}'
N = {n}
def empty():
    c0 = qemu.clock_ns()
    c1 = qemu.clock_ns()
    return c1 - c0
E = min(empty() for i in range(8))
# the profiler's own cost inside a call: a profiled no-op with a kernel's 16 arguments
Q = qemu.profile(qemu)
a = [0] * 16
for i in range(16):
    Q.nop(*a)
qemu.prof_reset()
for i in range(64):
    Q.nop(*a)
PROF_INSIDE = qemu.prof()[1] // 64
m = microtrain.load(D + '/m.mtm')
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
labels = open(D + '/labels.bin', 'rb').read()
size = m.in_size
f = open(D + '/samples.bin', 'rb')
xs = []
for i in range(len(labels)):
    xs.append(f.read(size))
f.close()
P = qemu.profile(mtkernels)
plain = t.k
def use(k):
    t.k = k
    m.kernels = k
def steps(n, off):
    tot = []
    for i in range(n):
        j = (off + i) % len(labels)
        c0 = qemu.clock_ns()
        t.step(xs[j], labels[j])
        c1 = qemu.clock_ns()
        tot.append(c1 - c0 - E)
    return tot
def infer(n):
    tot = []
    for i in range(n):
        c0 = qemu.clock_ns()
        m.predict(xs[i % len(xs)])
        c1 = qemu.clock_ns()
        tot.append(c1 - c0 - E)
    return tot
steps(2, 0)
infer(2)
train_total = steps(N, 2)
infer_total = infer(N)
use(P)
qemu.prof_reset()
qemu.prof_detail(P, True)
steps(N, 2 + N)
train_calls, train_kernel = qemu.prof()
train_detail = qemu.prof_detail(P, True)
qemu.prof_reset()
infer(N)
infer_calls, infer_kernel = qemu.prof()
infer_detail = qemu.prof_detail(P, True)
use(plain)
c0 = qemu.clock_ns()
gc.mem_free()
c1 = qemu.clock_ns()
print('RESULT', repr({{'E': E, 'prof_inside': PROF_INSIDE, 'mem': qemu.memory(),
    'train_total': train_total, 'infer_total': infer_total,
    'train_calls': train_calls, 'train_kernel': train_kernel, 'train_detail': train_detail,
    'infer_calls': infer_calls, 'infer_kernel': infer_kernel, 'infer_detail': infer_detail,
    'mem_free_ns': c1 - c0 - E, 'backend': microtrain.backend.NAME}}))
"""


# Heap while training (after a soft reset, nothing else on the heap): in use after the library
# import (base), after loading the model and one inference (model), after creating the trainer
# (loaded), and at most during steps, with the garbage of the step (peak) and after a collection
# (live).
MEMORY_SCRIPT = """
import gc, microtrain
gc.collect()
base = gc.mem_alloc()
D = '{dir}'
m = microtrain.load(D + '/m.mtm')
m.predict(bytes(m.in_size))
gc.collect()
model = gc.mem_alloc()
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
gc.collect()
loaded = gc.mem_alloc()
size = m.in_size
x = bytearray(size)
f = open(D + '/samples.bin', 'rb')
labels = open(D + '/labels.bin', 'rb').read()
peak = live = 0
for i in range(len(labels)):
    f.seek(i * size)
    f.readinto(x)
    t.step(x, labels[i])
    peak = max(peak, gc.mem_alloc())
    gc.collect()
    live = max(live, gc.mem_alloc())
print('RESULT', base, model, loaded, peak, live, gc.mem_alloc() + gc.mem_free())
"""


def measure_policy(t, model, policy, xq, labels, n):
    import ast
    plan = planner.plan(model, policy, word_bytes=4)
    folder = "/bench"
    put_files(t, folder, {"m.mtm": modelfile.to_bytes(model, plan), "samples.bin": xq.tobytes(),
                          "labels.bin": labels.tobytes()})
    t.enter_raw_repl(soft_reset=True)
    words = exec_raw(t, MEMORY_SCRIPT.format(dir=folder), timeout=600).split("RESULT", 1)[1].split()
    mem = dict(zip(("base", "model", "loaded", "peak", "live", "heap"), (int(w) for w in words)))
    t.enter_raw_repl(soft_reset=True)
    out = exec_raw(t, BENCH_SCRIPT.format(dir=folder, n=n), timeout=600)
    r = ast.literal_eval(out.split("RESULT", 1)[1].strip())
    r.update(mem)
    r["planned_bytes"] = plan.peak_bytes
    return r


# ---- cycles per instruction from an instruction trace of the board --------------------------------
#
# qemu's monitor switches the running board to one instruction per translation block and logs every
# block executed (`-d exec,nochain`), so the log is the board's instruction trace: the program
# counter of every instruction.  Each one is priced with the Cortex-M0+ cycle model of tools/m0sim.py
# (the opcode from the firmware image, a branch taken when the next PC is not the next
# instruction), and attributed to the kernels (binding and kernels: code from the objects under
# mtkernels/ in the linker map) or to everything else (the interpreter, the runtime, the library).

TRACE_RUN = "qemu.nop()\nsteps({n}, 0)\ninfer({n})\nqemu.nop()\n"


def kernel_ranges(elf):
    """Sorted [start, end) address ranges of the code linked from the mtkernels objects (firmware.map)."""
    import re
    ranges = []
    text = open(os.path.splitext(elf)[0] + ".map").read()
    text = text[text.index("Linker script and memory map"):]
    for m in re.finditer(r"^ \.text\S*\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S+\.o)$", text, re.M):
        a, n, obj = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
        if n and "/mtkernels/" in obj:
            ranges.append((a, a + n))
    return sorted(ranges)


def trace_cycles(trace_path, elf):
    """{'kernels': [instructions, cycles], 'other': [...]} of the trace between the first and the
    last call of qemu.nop() (the markers of TRACE_RUN)."""
    import bisect
    from tools.m0sim import insn_cycles
    image_path = elf + ".text.bin"
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", "-j", ".isr_vector", "-j", ".text", elf, image_path],
                   check=True)
    image = open(image_path, "rb").read()
    os.remove(image_path)
    ranges = kernel_ranges(elf)
    starts = [a for a, _ in ranges]

    def is_kernel(pc):
        i = bisect.bisect_right(starts, pc) - 1
        return i >= 0 and pc < ranges[i][1]

    pcs = []
    marks = []
    with open(trace_path) as f:
        for line in f:
            if not line.startswith("Trace "):
                continue
            pc = int(line.split("[", 1)[1].split("/", 2)[1], 16)
            if line.rstrip().endswith(" qemu_nop"):
                marks.append(len(pcs))
            pcs.append(pc)
    if len(marks) < 2:
        raise RuntimeError(f"{trace_path}: the qemu.nop() markers are missing")
    acc = {"kernels": [0, 0], "other": [0, 0]}
    kcache = {}
    for j in range(marks[0], marks[-1]):
        pc, nxt = pcs[j], pcs[j + 1]
        op = image[pc] | image[pc + 1] << 8
        size = 4 if op >> 11 in (0b11101, 0b11110, 0b11111) else 2
        op2 = image[pc + 2] | image[pc + 3] << 8 if size == 4 else 0
        k = kcache.get(pc)
        if k is None:
            k = kcache[pc] = is_kernel(pc)
        a = acc["kernels" if k else "other"]
        a[0] += 1
        a[1] += insn_cycles(op, op2, nxt != pc + size)
    return acc


def traced_cpi(board, t, elf, n=2):
    """Run n training steps and n inferences of the BENCH_SCRIPT session traced (see above);
    returns {'kernels': cpi, 'other': cpi, 'instructions': {...}}."""
    trace = board.logfile
    board.monitor("singlestep on")
    board.monitor("log exec,nochain")
    try:
        exec_raw(t, TRACE_RUN.format(n=n), timeout=600)
    finally:
        board.monitor("log none")
        board.monitor("singlestep off")
    acc = trace_cycles(trace, elf)
    os.remove(trace)
    return {"kernels": acc["kernels"][1] / acc["kernels"][0], "other": acc["other"][1] / acc["other"][0],
            "instructions": {k: v[0] for k, v in acc.items()}, "cycles": {k: v[1] for k, v in acc.items()}}


def kernel_cpi(model):
    """Cycles per instruction of this model's conv kernels in the Cortex-M0+ cycle model (tools/m0sim,
    ARMv6-M assembly dot products): forward, input gradient and update of every conv layer."""
    from bench import kernels as bk
    sim = bk.build("asm")
    ins = cyc = 0
    per = {}
    for i, l in enumerate(model.layers):
        if l.op != "conv":
            continue
        for kind in ("forward", "input_grad", "weight_grad"):
            prof = bk.RUN[kind](sim, l.geom, np.random.default_rng(i))
            ins += prof.instructions
            cyc += prof.cycles
            per[f"layer{i}_{kind}"] = round(prof.cycles / prof.instructions, 3)
    return cyc / ins, per


def estimate_ms(kernel_instr, other_instr, cpi_k, cpi_i):
    return (kernel_instr * cpi_k + other_instr * cpi_i) / CLOCK_HZ * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=16, help="timed training steps / inferences per policy")
    ap.add_argument("--traced", type=int, default=2, help="training steps and inferences in the CPI trace")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "board.json"))
    args = ap.parse_args(argv)
    t_start = time.time()
    elf = ensure_firmware("kernels")
    split = sram_split(elf)
    model, xq, labels = imu_data(max(args.steps, 8))
    cpi_m0sim, cpi_per = kernel_cpi(model)
    runs = {}
    work = os.path.join(ROOT, "build", "bench")
    os.makedirs(work, exist_ok=True)
    with QemuBoard(variant="kernels", monitor=os.path.join(work, "monitor.sock"),
                   logfile=os.path.join(work, "trace.log")) as b:
        t = b.transport()
        for policy in POLICIES:
            runs[policy] = measure_policy(t, model, policy, xq, labels, args.steps)
            if policy == "sparse":      # the session of the default policy is traced
                cpi = traced_cpi(b, t, elf, n=args.traced)
    cpi_k, cpi_i = cpi["kernels"], cpi["other"]
    records = []
    for policy in POLICIES:
        r = runs[policy]
        n = args.steps
        ti = sum(r["train_total"]) / n
        ii = sum(r["infer_total"]) / n
        inside = r["prof_inside"]
        tk = (r["train_kernel"] - r["train_calls"] * inside) / n
        ik = (r["infer_kernel"] - r["infer_calls"] * inside) / n
        rec = {
            "policy": policy,
            "train_step_ms_125mhz": round(estimate_ms(tk, ti - tk, cpi_k, cpi_i), 3),
            "inference_ms_125mhz": round(estimate_ms(ik, ii - ik, cpi_k, cpi_i), 3),
            "orchestration_fraction": round((ti - tk) / ti, 4),
            "inference_orchestration_fraction": round((ii - ik) / ii, 4),
            "peak_heap_bytes": r["peak"],
            "live_heap_bytes": r["live"],
            "library_heap_bytes": r["base"],
            "model_heap_bytes": r["model"] - r["base"],
            "trainer_heap_bytes": r["loaded"] - r["model"],
            "planned_bytes": r["planned_bytes"],
            "heap_bytes": r["heap"],
            "sram_linked_bytes": split["linked"],
            "train_step_instructions": round(ti),
            "train_step_kernel_instructions": round(tk),
            "train_step_kernel_calls": r["train_calls"] // n,
            "inference_instructions": round(ii),
            "inference_kernel_instructions": round(ik),
            "train_step_instructions_min_max": [min(r["train_total"]), max(r["train_total"])],
            "kernels_per_step": {name: {"calls": c // n, "instructions": round((ns - c * inside) / n)}
                                 for name, c, ns in sorted(r["train_detail"])},
            "kernels_per_inference": {name: {"calls": c // n, "instructions": round((ns - c * inside) / n)}
                                      for name, c, ns in sorted(r["infer_detail"])},
            # Trainer.step calls gc.mem_free() once (telemetry); in MicroPython 1.23 that walks
            # the whole allocation table of the heap.  What the step would cost without it:
            "gc_mem_free_instructions": r["mem_free_ns"],
            "train_step_ms_125mhz_without_mem_free": round(
                estimate_ms(tk, ti - tk - r["mem_free_ns"], cpi_k, cpi_i), 3),
            "orchestration_fraction_without_mem_free": round(
                (ti - tk - r["mem_free_ns"]) / (ti - r["mem_free_ns"]), 4),
            "backend": r["backend"],
        }
        if policy == "sparse":
            rec["bars"] = {k: {"bar": v, "value": rec[k], "met": rec[k] <= v} for k, v in BARS.items()}
        records.append(rec)
        print(f"{policy:9} step {rec['train_step_instructions']:>9} instr ({rec['train_step_kernel_instructions']:>8} "
              f"in kernels, orchestration {rec['orchestration_fraction']:.1%}) -> {rec['train_step_ms_125mhz']:.2f} ms"
              f" | inference {rec['inference_instructions']:>8} instr -> {rec['inference_ms_125mhz']:.2f} ms"
              f" | heap peak {rec['peak_heap_bytes']} / {rec['heap_bytes']} B", flush=True)
    print(f"cycles per instruction (traced, M0+ model): kernels {cpi_k:.3f}, other code {cpi_i:.3f}; "
          f"kernels on tools/m0sim: {cpi_m0sim:.3f}")
    meta = {
        "board": "qemu-system-arm -M microbit, Cortex-M0, 256 KB SRAM (firmware/qemuport, kernels built in)",
        "model": "reference IMU model (zoo.imu_reference(0)), batch 1, planner word_bytes=4",
        "method": ("-icount shift=0: 1 virtual ns = 1 instruction; totals timed without profiling, kernel "
                   "instructions = time inside mtkernels calls (binding + kernel) with qemu.profile, minus the "
                   "profiler's own cost per call (profiled no-op)"),
        "clock_hz": CLOCK_HZ,
        "cpi_kernels": round(cpi_k, 3),
        "cpi_interpreter": round(cpi_i, 3),
        "cpi_source": (f"measured: an instruction trace of {args.traced} training steps and {args.traced} "
                       "inferences of the sparse policy on the board (qemu singlestep + exec log), each "
                       "instruction priced with the Cortex-M0+ cycle model of tools/m0sim.py (zero-wait-state "
                       "memory); kernels = code of the mtkernels objects (linker map), interpreter = all other code"),
        "cpi_traced_instructions": cpi["instructions"],
        "cpi_kernels_m0sim": round(cpi_m0sim, 3),
        "cpi_kernels_m0sim_per_layer": cpi_per,
        "cpi_kernels_m0sim_source": "cross-check: this model's conv kernels alone on tools/m0sim (bench/kernels.py)",
        "steps_timed": args.steps,
        "sram": split,
        "profiler_inside_instructions_per_call": r["prof_inside"],
    }
    result = [dict(rec, **meta) for rec in records]     # a list of records, one per policy
    write_records(args.out, result)
    sparse = records[0]
    for k, v in sparse["bars"].items():
        print(f"bar {k} <= {v['bar']}: {v['value']} -> {'met' if v['met'] else 'NOT met'}")
    print(f"wrote {args.out} ({time.time() - t_start:.0f} s)")
    return result


if __name__ == "__main__":
    main()

"""The pure-Python kernels (firmware/microtrain/pykernels.py), twin of the native `mtkernels`.

The shared random cases (tests/kernel_cases.py) run as generated scripts
  - under CPython, in-process, against the module loaded from its file, and
  - in the MicroPython unix port, importing `microtrain.pykernels` from firmware/, both as native
    code (the default where the port can) and as bytecode,
with typed arrays and raw bytes; results bit-exact with the numpy reference.  Then: every other
buffer flavour the binding takes, bad arguments (ValueError/TypeError naming the argument), and,
when the host runner is built, a differential run against the C kernels on odd geometries and
extreme parameters that the reference-driven cases do not reach.
"""

import contextlib
import importlib.util
import io
import os
import sys

import numpy as np
import pytest

from microtrain.sim import reference as ref
from tests.conftest import HOSTPORT, ROOT, micropython_unix, run_micropython
from tests.kernel_cases import (FILL, Case, Expr, In, InOut, Out, GENERATORS, _TYPECODE, all_cases,
                                check_errors, mpy_script, parse_mpy_output)

FIRMWARE = os.path.join(ROOT, "firmware")
# `microtrain` on the host is the host package, so under CPython the board module is loaded from
# its file under a name of its own (firmware/ on sys.path would clash with it)
CPY_NAME = "microtrain_board_pykernels"
MPY_NAME = "microtrain.pykernels"


@pytest.fixture(scope="module")
def pyk():
    spec = importlib.util.spec_from_file_location(CPY_NAME, os.path.join(FIRMWARE, "microtrain", "pykernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[CPY_NAME] = mod
    yield mod
    sys.modules.pop(CPY_NAME, None)


def run_cpython(text):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(text, "<mpy_script>", "exec"), {"__name__": "__mpy_script__"})
    return out.getvalue()


def run_mpy(tmp_path, text, native=True, exe=None):
    """Run a generated script in MicroPython with microtrain.pykernels (bytecode if not native)."""
    head, rest = text.split("\n", 1)
    text = "\n".join([head, f"print('NATIVE', mtkernels.use_native({native}))", rest])
    script = tmp_path / "script.py"
    script.write_text(text)
    r = run_micropython(exe or micropython_unix(), str(script), [FIRMWARE], heap="16M")
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


# ---- the shared cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("typed", [True, False], ids=["typed-arrays", "raw-bytearrays"])
def test_cpython_matches_reference(pyk, typed):
    cases = all_cases(seed=40 + typed, per_kernel=8)
    out = run_cpython(mpy_script(cases, typed=typed, module=CPY_NAME))
    assert parse_mpy_output(out, cases) == len(cases) == 8 * len(GENERATORS)


@pytest.mark.parametrize("native", [True, False], ids=["native", "bytecode"])
@pytest.mark.parametrize("typed", [True, False], ids=["typed-arrays", "raw-bytearrays"])
def test_micropython_matches_reference(tmp_path, typed, native):
    cases = all_cases(seed=50 + typed, per_kernel=4)
    out = run_mpy(tmp_path, mpy_script(cases, typed=typed, module=MPY_NAME), native)
    assert f"NATIVE {native}" in out.splitlines()   # the unix port compiles native code
    assert parse_mpy_output(out, cases) == len(cases) == 4 * len(GENERATORS)


# ---- every buffer flavour ------------------------------------------------------------------------


def _out_bytes(v):
    return v.n * np.dtype(v.dtype).itemsize


def _flavoured(case, flavour):
    """The case with every buffer passed as another kind of object holding the same bytes."""
    args = []
    for i, v in enumerate(case.args):
        if isinstance(v, Out) and i not in case.expected:      # scratch: raw bytes only
            v = Expr(f"bytearray({_out_bytes(v)})")
        elif isinstance(v, (In, InOut, Out)):
            if isinstance(v, Out):
                data = bytes([FILL]) * _out_bytes(v)
                tc = _TYPECODE[v.dtype]
            else:
                a = np.asarray(v.a)
                data = a.tobytes()
                tc = _TYPECODE[str(a.dtype)]
            if flavour == "arena-slices":           # memoryview slices of a bytearray, misaligned too
                v = Expr(f"memoryview(bytearray(3) + bytearray({data!r}))[3:]")
            elif flavour == "array-B":
                v = Expr(f"array.array('B', {data!r})")
            else:                                   # memoryview of a typed array
                code = None if tc == "B" else tc
                v = Expr(f"memoryview(_buf({code!r}, {data!r}))")
        args.append(v)
    return Case(case.name, args, case.expected, case.ret)


FLAVOURS = ["arena-slices", "array-B", "typed-memoryviews"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_buffer_flavours_cpython(pyk, flavour):
    cases = [_flavoured(c, flavour) for c in all_cases(seed=60, per_kernel=3)]
    out = run_cpython(mpy_script(cases, module=CPY_NAME))
    assert parse_mpy_output(out, cases) == len(cases)


def test_buffer_flavours_micropython(tmp_path):
    cases = [_flavoured(c, f) for f in FLAVOURS for c in all_cases(seed=61, per_kernel=2)]
    out = run_mpy(tmp_path, mpy_script(cases, module=MPY_NAME))
    assert parse_mpy_output(out, cases) == len(cases)


def test_numpy_buffers_and_aliasing(pyk):
    """On the host, numpy arrays are buffers too; clamp_forward may write over its input."""
    c = all_cases(seed=62, per_kernel=1)[0]
    assert c.name == "conv_forward"
    args = [np.array(v.a) if isinstance(v, In) else np.full(v.n, FILL, v.dtype) if isinstance(v, Out) else v
            for v in c.args]
    args[13] = bytearray(_out_bytes(c.args[13]))           # scratch: raw bytes only
    pyk.conv_forward(*args)
    assert args[11].tobytes() == c.expected[11] and args[12].tobytes() == c.expected[12]
    for kind in ("b", None):
        x = pyk.array.array("b", [-5, 0, 3, 100, -128]) if kind else bytearray(b"\xfb\x00\x03\x64\x80")
        mask = bytearray(b"\xff")
        pyk.clamp_forward(x, -4, 50, x, mask)
        assert bytes(x) == bytes([0xFC, 0, 3, 50, 0xFC]) and mask == bytearray([0b11100110])


def frozen_weight_cases():
    """Bias-only updates with the weights in read-only memory (bytes), as the trainer leaves them."""
    from tests import kernel_cases as kc
    rng = np.random.default_rng(63)
    out = []
    for gen in (kc.conv_update_case, kc.dwconv_update_case):
        while len(out) < (3 if gen is kc.conv_update_case else 6):
            c = gen(rng)
            if c.args[8] == c.args[9] and c.args[12] is not None:
                out.append(Case(c.name, _with(c, 5, Expr(f"bytes({c.args[5].a.tobytes()!r})")), c.expected))
    return out


def test_frozen_weights_may_be_read_only(pyk, tmp_path):
    cases = frozen_weight_cases()
    assert parse_mpy_output(run_cpython(mpy_script(cases, module=CPY_NAME)), cases) == len(cases)
    assert parse_mpy_output(run_mpy(tmp_path, mpy_script(cases, module=MPY_NAME)), cases) == len(cases)


# ---- bad arguments -------------------------------------------------------------------------------


def _with(case, idx, value):
    args = list(case.args)
    args[idx] = value
    return args


def bad_argument_cases():
    """(function, args, exception type, message regex) with one wrong argument each."""
    from microtrain.sim import reference as ref
    from tests import kernel_cases as kc
    rng = np.random.default_rng(11)
    conv = kc.conv_forward_case(rng, "conv2d")
    upd = kc._update_case(rng, ref.Geom.dense(300, 3, 4), False)
    while upd.args[9] <= upd.args[8] or upd.args[12] is None:   # weights and biases train
        upd = kc._update_case(rng, ref.Geom.dense(300, 3, 4), False)
    x = conv.args[1].a
    n_out = conv.args[11].n
    z8 = lambda n: np.zeros(n, np.int8)       # noqa: E731
    z32 = lambda n: np.zeros(n, np.int32)     # noqa: E731
    out = [
        ("conv_forward", _with(conv, 1, In(x[:-1])), "ValueError", r"^x: expected \d+ bytes, got \d+"),
        ("conv_forward", _with(conv, 1, In(x.astype(np.int16))), "TypeError", r"^x: expected int8 elements"),
        ("conv_forward", _with(conv, 1, Expr("3")), "TypeError", r"^x: expected a int8 buffer"),
        ("conv_forward", _with(conv, 11, Expr(f"bytes({n_out})")), "TypeError", r"^y: expected a writable int8"),
        ("conv_forward", _with(conv, 11, Expr(f"memoryview(bytes({n_out}))")), "TypeError", r"^y: expected a writable"),
        ("conv_forward", _with(conv, 12, Out("uint8", 0)), "ValueError", r"^mask: needs at least"),
        ("conv_forward", _with(conv, 10, 2), "ValueError", r"^rounding: must be in \[0, 1\], got 2"),
        ("conv_forward", _with(conv, 2, 200), "ValueError", r"^zx: must be in \[-128, 127\], got 200"),
        ("conv_forward", _with(conv, 2, Expr("'a'")), "TypeError", r"^zx: expected an int"),
        ("conv_forward", _with(conv, 6, In(np.full(conv.args[6].a.size, 40, np.int32))), "ValueError",
         r"^shift: must be in"),
        ("conv_forward", _with(conv, 5, In(np.zeros(3, np.int16))), "TypeError", r"^mult: expected int32"),
        ("conv_forward", _with(conv, 13, Out("int8", 3)), "ValueError", r"^scratch: needs at least"),
        ("conv_forward", [1, 2], "TypeError", r"argument"),
    ]
    for field, value, pattern in ((2, 0, r"^geom.in_c: must be in \[1, 4096\], got 0"),
                                  (10, 99, r"^geom.pad_t: must be in"),
                                  (12, 2, r"^geom: depth_mult must be 1"),
                                  (6, 65, r"^geom.k_h: must be in \[1, 64\]")):
        g = conv.args[0].a.copy()
        g[field] = value
        out.append(("conv_forward", _with(conv, 0, In(g)), "ValueError", pattern))
    out.append(("conv_forward", _with(conv, 0, In(conv.args[0].a[:12])), "ValueError", r"^geom: expected 52 bytes"))
    rows = upd.args[7].a
    if rows.size >= 2:
        out.append(("conv_update", _with(upd, 7, In(rows[::-1].copy())), "ValueError", r"^rows: must be ascending"))
    out += [
        ("conv_update", _with(upd, 7, In(np.array([9999], np.uint16))), "ValueError", r"^rows: must be ascending"),
        ("conv_update", _with(upd, 14, InOut(np.array([0], np.uint32))), "ValueError", r"^rng: state must not be 0"),
        ("conv_update", _with(upd, 10, None), "TypeError", r"^w_mult: expected a int32 buffer"),
        ("conv_update", _with(upd, 6, None), "ValueError", r"^bias: required when b_mult is given"),
        ("conv_update", _with(upd, 11, In(np.full(upd.args[11].a.size, 65, np.int32))), "ValueError",
         r"^w_shift/b_shift"),
        ("conv_update", _with(upd, 3, In(np.full(upd.args[3].a.size, 32767, np.int16))), "ValueError",
         r"^gy: max\|gy\| \* 255"),
        ("conv_update", _with(upd, 8, 5000), "ValueError", r"^cin_lo: must be in"),
        ("conv_update", _with(upd, 5, Expr(f"bytes({upd.args[5].a.nbytes})")), "TypeError", r"^w: expected a writable"),
        ("conv_update", _with(upd, 4, 65), "ValueError", r"^g_exp: must be in \[-64, 64\]"),
        ("softmax_grad", [In(z8(4)), 4, Out("int16", 4)], "ValueError", r"^label: must be in \[0, 3\]"),
        ("softmax_forward", [In(z8(4)), 1, 0, 1 << 30, 20, -100, Out("int8", 4)], "ValueError", r"^depth: must be in"),
        ("grad_narrow", [In(z32(4)), Out("uint8", 0), Out("int16", 4)], "ValueError", r"^mask: needs at least 1 bytes"),
        ("grad_rescale", [In(np.zeros(4, np.int16)), 1 << 13, 1 << 12, In(z32(1)), In(z32(1)), Out("int16", 4)],
         "ValueError", r"^m: m \* n must be <= 2\^24"),
        ("requantize", [1, -5, 0, 0], "ValueError", r"^mult: must be in \[0, 2147483647\], got -5"),
        ("requantize", [1 << 31, 5, 0, 0], "ValueError", r"^acc: must be in"),
        ("add_forward", [In(z8(3)), In(z8(4)), In(z32(12)), Out("int8", 3), None], "ValueError",
         r"^x2: expected 3 bytes"),
        ("add_forward", [In(z8(3)), In(z8(3)), In(z32(12) + 1), Out("int8", 3), None], "ValueError",
         r"^params: out of range"),
        ("clamp_forward", [Expr("None"), 0, 1, Out("int8", 1), None], "TypeError", r"^x: expected an int8 buffer"),
        ("grad_mask", [In(np.zeros(3, np.int16)), Out("uint8", 0)], "ValueError", r"^mask: needs at least 1 bytes"),
        ("crc32", [In(np.zeros(3, np.uint8)), Expr("'a'")], "TypeError", r"^crc: expected an int"),
        ("crc32", [Expr("3")], "TypeError", r"^data: expected a buffer"),
    ]
    return out


def test_bad_arguments_cpython(pyk):
    bad = bad_argument_cases()
    cases = [Case(name, args, {}) for name, args, _, _ in bad]
    check_errors(run_cpython(mpy_script(cases, module=CPY_NAME)), bad)


def test_bad_arguments_micropython(tmp_path):
    bad = bad_argument_cases()
    cases = [Case(name, args, {}) for name, args, _, _ in bad]
    check_errors(run_mpy(tmp_path, mpy_script(cases, module=MPY_NAME)), bad)


# ---- differential run against the C kernels (host runner with the user C module) ----------------


def odd_cases(rng, n):
    """Valid arguments the reference-driven cases avoid: geometries whose windows run off the
    input (out_h/out_w not derived from in_h/in_w), requantization that saturates and wraps,
    negative or huge update factors, saturating biases, -128 weights, any PRNG state."""
    ri = lambda lo, hi: int(rng.integers(lo, hi + 1))        # noqa: E731
    i8 = lambda k, lo=-128, hi=127: rng.integers(lo, hi + 1, k).astype(np.int8)   # noqa: E731
    i32 = lambda k, lo=-(1 << 31), hi=(1 << 31) - 1: rng.integers(lo, hi + 1, k).astype(np.int32)   # noqa: E731

    def geom(kind):
        kh, kw, ic = ri(1, 3), ri(1, 3), ri(1, 4)
        dm = ri(1, 3) if kind == "dw" else 1
        oc = ic * dm if kind in ("dw", "pool") else ri(1, 5)
        return np.array([ri(1, 6), ri(1, 6), ic, ri(1, 6), ri(1, 6), oc, kh, kw, ri(1, 3), ri(1, 3),
                         ri(0, kh - 1), ri(0, kw - 1), dm], np.int32)

    def grad(k, bound):
        g = rng.integers(-bound, bound + 1, k)
        g[rng.random(k) < 0.3] = 0
        return g.astype(np.int16)

    def requant(oc):
        k = oc if rng.integers(0, 2) else 1
        shift = rng.integers(-31, 31, k) if rng.integers(0, 2) else rng.integers(-12, 3, k)
        act = sorted([ri(-128, 127), ri(-128, 127)])
        return [In(i32(k, 0)), In(shift.astype(np.int32)), ri(-128, 127)] + act + [ri(0, 1)]

    def update(g, taps, M, oc, ic, dw, nw):
        rows = np.flatnonzero(rng.random(oc) < 0.6).astype(np.uint16)
        rows = rows if rows.size else np.array([ri(0, oc - 1)], np.uint16)
        lo = ri(0, ic)
        hi = ri(lo, ic)
        wm = In(i32(oc)) if hi > lo or rng.integers(0, 2) else None
        ws = None if wm is None else In(i32(oc, -64, 64))
        bm, bs = (In(i32(oc)), In(i32(oc, -64, 64))) if rng.integers(0, 2) else (None, None)
        w = i8(nw)
        w[rng.random(nw) < 0.1] = -128
        bias = (InOut(rng.choice([-(1 << 31), (1 << 31) - 1, 0, 5], oc).astype(np.int32))
                if bm is not None or rng.integers(0, 2) else None)
        gy = grad(M * oc, min(32767, ((1 << 31) - 1) // (255 * M)) if hi > lo else 32767)
        G = ref.Geom(*(int(v) for v in g))
        scratch = ref.dwconv_update_scratch(G) if dw else ref.conv_update_scratch(G, lo, hi)
        args = [In(g), In(i8(int(g[0] * g[1] * ic))), ri(-128, 127), In(gy), ri(-64, 64), InOut(w), bias, In(rows),
                lo, hi, wm, ws, bm, bs, InOut(np.array([ri(1, (1 << 32) - 1)], np.uint32)), Out("int8", scratch)]
        return Case("dwconv_update" if dw else "conv_update", args, {5: 0, 14: 0, **({6: 0} if bias else {})})

    cases = []
    while len(cases) < n:
        k = ri(0, 11)
        if k < 6:
            dw = k >= 3
            g = geom("dw" if dw else "conv")
            taps, ic, oc, M = int(g[6] * g[7]), int(g[2]), int(g[5]), int(g[3] * g[4])
            nw = taps * oc if dw else oc * taps * ic
            nin = int(g[0] * g[1] * ic)
            if k % 3 == 0:
                bias = In(i32(oc)) if rng.integers(0, 2) else None
                args = [In(g), In(i8(nin)), ri(-128, 127), In(i8(nw)), bias] + requant(oc)
                args += [Out("int8", M * oc), Out("uint8", (M * oc + 7) // 8 + ri(0, 2))]
                if not dw:
                    args.append(Out("int8", ref.conv_forward_scratch(ref.Geom(*(int(v) for v in g)))))
                cases.append(Case("dwconv_forward" if dw else "conv_forward", args, {11: 0, 12: 0}))
            elif k % 3 == 1:
                bound = ((1 << 31) - 1) // (128 * taps * (int(g[12]) if dw else oc))
                cases.append(Case("dwconv_input_grad" if dw else "conv_input_grad",
                                  [In(g), In(grad(M * oc, min(bound, 32767))), In(i8(nw)), Out("int32", nin)], {3: 0}))
            else:
                cases.append(update(g, taps, M, oc, ic, dw, nw))
        elif k < 10:
            g = geom("pool")
            c, nin, nout = int(g[2]), int(g[0] * g[1] * g[2]), int(g[3] * g[4] * g[2])
            x = In(i8(nin, -3, 3))
            cases.append([Case("maxpool_forward", [In(g), x, Out("int8", nout)], {2: 0}),
                          Case("maxpool_input_grad", [In(g), x, In(grad(nout, 32767)), Out("int32", nin)], {3: 0}),
                          Case("avgpool_forward", [In(g), In(i8(nin)), -128 + c, 120, Out("int8", nout)], {4: 0}),
                          Case("avgpool_input_grad", [In(g), In(grad(nout, 32767)), Out("int32", nin)], {2: 0})][k - 6])
        elif k == 10:
            m = ri(0, 300)
            p = np.array([ri(-128, 127), ri(-128, 127), ri(-128, 127), ri(0, 22), ri(0, (1 << 31) - 1), ri(-31, 0),
                          ri(0, (1 << 31) - 1), ri(-31, 0), ri(0, (1 << 31) - 1), ri(-31, 0), -100, 100], np.int32)
            cases.append(Case("add_forward", [In(i8(m)), In(i8(m)), In(p), Out("int8", m), Out("uint8", (m + 7) // 8)],
                              {3: 0, 4: 0}))
        else:
            rows, depth = ri(1, 3), ri(1, 60)
            cases.append(Case("softmax_forward", [In(i8(rows * depth)), rows, depth, ri(0, (1 << 31) - 1), ri(0, 31),
                                                  int(rng.choice([0, -100, -(1 << 31), ri(-(1 << 31), 0)])),
                                                  Out("int8", rows * depth)], {6: 0}))
    return cases


def test_matches_native_kernels_on_odd_arguments(tmp_path):
    if not os.path.exists(HOSTPORT):
        pytest.skip(f"{HOSTPORT} missing: run `make hostport`")
    cases = odd_cases(np.random.default_rng(7), 250)
    for typed in (True, False):
        script = tmp_path / "native.py"
        script.write_text(mpy_script(cases, typed=typed))
        r = run_micropython(HOSTPORT, str(script), heap="16M")
        assert r.returncode == 0 and r.stdout.rstrip().endswith("E"), r.stderr[-2000:]
        want = r.stdout.splitlines()
        assert not [line for line in want if line.startswith("X ")], "the C kernels rejected a case"
        got = run_mpy(tmp_path, mpy_script(cases, typed=typed, module=MPY_NAME)).splitlines()[1:]
        assert len(got) == len(want)
        for a, b in zip(want, got):
            assert a == b, f"{cases[int(a.split()[1])].name}: native {a[:300]!r}, python {b[:300]!r}"


# ---- fuzzed arguments ----------------------------------------------------------------------------


def fuzzed_cases(seed):
    """Valid cases with one argument replaced by something wrong (or merely odd)."""
    rng = np.random.default_rng(seed)
    junk = [None, Expr("'x'"), Expr("3.5"), -1, 1 << 31, -(1 << 40), 70000, 0, Expr("()")]
    out = []
    for case in all_cases(seed=seed, per_kernel=6):
        for _ in range(3):
            args = list(case.args)
            i = int(rng.integers(0, len(args)))
            v = args[i]
            choice = int(rng.integers(0, 8))
            if isinstance(v, (In, InOut)) and choice < 5:
                a = np.asarray(v.a)
                if choice == 0:
                    args[i] = type(v)(a[:-1].copy())
                elif choice == 1:
                    args[i] = type(v)(np.concatenate([a, a[:1]]))
                elif choice == 2:
                    args[i] = type(v)(a.astype(np.int32 if a.dtype != np.int32 else np.int8))
                elif choice == 3:
                    args[i] = type(v)(rng.integers(-(1 << 31), 1 << 31, a.size).astype(a.dtype))   # any bits
                else:
                    args[i] = Expr(f"memoryview(bytearray({a.nbytes + 4}))[1:{a.nbytes + 1}]")
            elif isinstance(v, Out) and choice < 4:
                args[i] = Out(v.dtype, max(0, v.n + int(rng.integers(-3, 3))))
            else:
                args[i] = junk[int(rng.integers(0, len(junk)))]
            out.append(Case(case.name, args, {}))
        if case.args and isinstance(case.args[0], In) and case.args[0].a.size == 13:
            g = case.args[0].a.copy()
            g[int(rng.integers(0, 13))] = int(rng.integers(-3, 70))
            out.append(Case(case.name, [In(g)] + list(case.args[1:]), {}))
    return out


def _only_argument_errors(out, n):
    assert out.rstrip().endswith("E"), "the script did not reach its end"
    errors = [line.split(" ", 3) for line in out.splitlines() if line.startswith("X ")]
    assert {e[2] for e in errors} <= {"TypeError", "ValueError"}, [" ".join(e) for e in errors
                                                                   if e[2] not in ("TypeError", "ValueError")][:5]
    assert len(errors) > n // 2
    return errors


def test_fuzzed_arguments_cpython(pyk):
    cases = fuzzed_cases(70)
    _only_argument_errors(run_cpython(mpy_script(cases, module=CPY_NAME)), len(cases))


def test_fuzzed_arguments_micropython(tmp_path):
    cases = fuzzed_cases(71)
    _only_argument_errors(run_mpy(tmp_path, mpy_script(cases, module=MPY_NAME)), len(cases))

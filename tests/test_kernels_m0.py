"""Tier 3: the kernels compiled for the Cortex-M0+ with the armv6m native-module flags
(arm-none-eabi-gcc -mcpu=cortex-m0 -mthumb -fpic -O2) and run on the unicorn emulator, both the
portable C dot products and the ARMv6-M assembly ones, bit-exact against the numpy reference."""

import glob
import os
import subprocess
import zlib

import numpy as np
import pytest

from tests.conftest import KERNELS_DIR
from tests.kernel_cases import Backend, GENERATORS, call_c, check
from tools.m0sim import M0Sim

C_SOURCES = sorted(glob.glob(os.path.join(KERNELS_DIR, "*.c")))
ASM = sorted(glob.glob(os.path.join(KERNELS_DIR, "*_armv6m.S")))


class M0Backend(Backend):
    ptr_size = 4

    def __init__(self, sim):
        self.sim = sim

    def put(self, data):
        return self.sim.alloc(data)

    def read(self, addr, n):
        return self.sim.read(addr, n)

    def call(self, name, *args):
        return self.sim.call(name, *args)


@pytest.fixture(scope="module", params=["c", "asm"])
def sim(request, tmp_path_factory):
    work = str(tmp_path_factory.mktemp(f"m0-{request.param}"))
    if request.param == "asm":
        return M0Sim.build(C_SOURCES + ASM, cflags=["-DMT_ARMV6M_ASM"], workdir=work)
    return M0Sim.build(C_SOURCES, workdir=work)


def test_no_library_calls(tmp_path):
    """The armv6m objects must be freestanding: no libgcc/libc symbols (mpy_ld links none)."""
    for src in C_SOURCES + ASM:
        obj = str(tmp_path / (os.path.basename(src) + ".o"))
        subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m0", "-mthumb", "-fpic", "-O2",
                        "-fno-tree-loop-distribute-patterns", "-DMT_ARMV6M_ASM", "-c", src, "-o", obj], check=True)
        undefined = subprocess.run(["arm-none-eabi-nm", "-u", obj], capture_output=True, text=True,
                                   check=True).stdout.split()
        external = [s for s in undefined if s != "U" and not s.startswith("mt_")]
        assert not external, f"{os.path.basename(src)} calls {external}"


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda g: g.__name__.replace("_case", ""))
def test_kernel_matches_reference_on_m0(sim, gen):
    rng = np.random.default_rng(zlib.crc32(gen.__name__.encode()) ^ 0x5EED)
    be = M0Backend(sim)
    for _ in range(25):
        sim.reset_heap()
        case = gen(rng)
        outs, ret = call_c(be, case)
        check(case, outs, ret)


def test_dot_kernels_odd_lengths(sim):
    """The micro-kernels directly, every length 0..40 and a long one, extreme values."""
    rng = np.random.default_rng(7)
    be = M0Backend(sim)
    for n in list(range(41)) + [257]:
        sim.reset_heap()
        a0 = rng.integers(-32768, 32768, n).astype(np.int16)
        a1 = rng.integers(-32768, 32768, n).astype(np.int16)
        b = rng.integers(-128, 128, (2, n)).astype(np.int8)
        if n:
            a0[0], b[0, 0] = -32768, -128
        out = be.put(bytes(16))
        p = [be.put(v.tobytes() + b"\xa5") for v in (a0, a1, b[0], b[1])]   # a guard byte after each
        sim.call("mt_dot2x2_s16s8", p[0], p[1], p[2], p[3], n, out)
        got = np.frombuffer(sim.read(out, 16), np.int32)
        exp = [int(np.dot(x.astype(np.int64), y.astype(np.int64))) for x in (a0, a1) for y in (b[0], b[1])]
        assert list(got) == exp, n
        sim.call("mt_dot1x2_s16s8", p[0], p[2], p[3], n, out)
        assert list(np.frombuffer(sim.read(out, 8), np.int32)) == exp[:2], n
        # all column pairs of a 4 x n matrix in one call, from a bias (and from 0)
        w4 = rng.integers(-128, 128, (4, n)).astype(np.int8)
        bias = rng.integers(-(1 << 20), 1 << 20, 4).astype(np.int32)
        pw, pb = be.put(w4.tobytes() + b"\xa5"), be.put(bias.tobytes())
        o0, o1 = be.put(bytes(20)), be.put(bytes(20))
        for bp, bv in ((pb, bias), (0, np.zeros(4, np.int32))):
            sim.call("mt_dot2xn_s16s8", p[0], p[1], pw, n, 4, bp, o0, o1)
            for o, x in ((o0, a0), (o1, a1)):
                exp_n = [int(bv[j]) + int(np.dot(x.astype(np.int64), w4[j].astype(np.int64))) for j in range(4)]
                assert list(np.frombuffer(sim.read(o, 20), np.int32)) == exp_n + [0], n
        # column form: b as an n x 3 matrix, columns 0 and 1
        m = rng.integers(-128, 128, (n, 3)).astype(np.int8)
        pm = be.put(m.tobytes())
        sim.call("mt_dot2x2_s16s8_col", p[0], p[1], pm, 3, n, out)
        exp_c = [int(np.dot(x.astype(np.int64), m[:, j].astype(np.int64))) for x in (a0, a1) for j in (0, 1)]
        assert list(np.frombuffer(sim.read(out, 16), np.int32)) == exp_c, n
        sim.call("mt_dot1x2_s16s8_col", p[0], pm, 3, n, out)
        assert list(np.frombuffer(sim.read(out, 8), np.int32)) == exp_c[:2], n
        # the weight-gradient operands: (x - zx) in [-255, 255], so 257 terms cannot overflow
        c0 = rng.integers(-255, 256, n).astype(np.int16)
        c1 = rng.integers(-255, 256, n).astype(np.int16)
        pc = [be.put(c0.tobytes()), be.put(c1.tobytes())]
        sim.call("mt_dot2x2_s16s16", p[0], p[1], pc[0], pc[1], n, out)
        exp16 = [int(np.dot(x.astype(np.int64), y.astype(np.int64))) for x in (a0, a1) for y in (c0, c1)]
        assert list(np.frombuffer(sim.read(out, 16), np.int32)) == exp16, n

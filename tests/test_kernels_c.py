"""Tier 2: the C kernels built for the host with -fsanitize=address,undefined, called through
ctypes on buffers from the sanitizer's malloc, bit-exact against the numpy reference."""

import ctypes
import os
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from microtrain.sim import reference as ref
from tests.conftest import BUILD
from tests.kernel_cases import Backend, GENERATORS, call_c, check

pytestmark = pytest.mark.sanitized

LIB_PATH = os.path.join(BUILD, "host", "libmtkernels_sanitized.so")


@pytest.fixture(scope="module")
def lib():
    if not os.path.exists(LIB_PATH):
        pytest.fail(f"{LIB_PATH} missing: run `make host-kernels`")
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        pytest.fail("run through `make test`: the sanitized library needs LD_PRELOAD of libasan")
    return ctypes.CDLL(LIB_PATH)


class CtypesBackend(Backend):
    ptr_size = 8

    def __init__(self, lib):
        self.lib = lib
        libc = ctypes.CDLL(None)
        self.malloc = libc.malloc
        self.malloc.restype = ctypes.c_void_p
        self.malloc.argtypes = [ctypes.c_size_t]
        self.free = libc.free
        self.free.argtypes = [ctypes.c_void_p]
        self.blocks = []

    def put(self, data):
        # exactly-sized blocks from the sanitizer's malloc: one byte too far is reported
        p = self.malloc(max(len(data), 1))
        ctypes.memmove(p, bytes(data), len(data))
        self.blocks.append(p)
        return p

    def read(self, addr, n):
        return ctypes.string_at(addr, n)

    def call(self, name, *args):
        f = getattr(self.lib, name)
        f.restype = ctypes.c_int32
        f.argtypes = [ctypes.c_int64] * len(args)
        return f(*[int(a) for a in args])

    def release(self):
        for p in self.blocks:
            self.free(p)
        self.blocks = []


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda g: g.__name__.replace("_case", ""))
def test_kernel_matches_reference(lib, gen):
    rng = np.random.default_rng(zlib.crc32(gen.__name__.encode()))
    be = CtypesBackend(lib)
    for _ in range(60):
        case = gen(rng)
        try:
            outs, ret = call_c(be, case)
            check(case, outs, ret)
        finally:
            be.release()


I32 = st.integers(-(1 << 31), (1 << 31) - 1)


@settings(max_examples=3000, deadline=None)
@given(acc=I32, mult=st.integers(0, (1 << 31) - 1), shift=st.integers(-31, 30), double=st.booleans())
def test_requantize_property(lib, acc, mult, shift, double):
    f = lib.mt_requantize
    f.restype, f.argtypes = ctypes.c_int32, [ctypes.c_int32] * 4
    assert f(acc, mult, shift, int(double)) == int(ref.requantize(acc, mult, shift, double))


@settings(max_examples=3000, deadline=None)
@given(x=I32, mult=I32, shift=st.integers(-40, 40))
def test_scale_round_property(lib, x, mult, shift):
    f = lib.mt_scale_round
    f.restype, f.argtypes = ctypes.c_int32, [ctypes.c_int32] * 3
    assert f(x, mult, shift) == int(ref.scale_round(x, mult, shift))


@settings(max_examples=3000, deadline=None)
@given(a=I32, b=I32)
def test_mul_hi_is_the_64bit_product(lib, a, b):
    f = lib.mt_mul_hi
    lo = ctypes.c_uint32()
    f.restype, f.argtypes = ctypes.c_int32, [ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint32)]
    hi = f(a, b, ctypes.byref(lo))
    assert (hi << 32) | lo.value == a * b


@settings(max_examples=2000, deadline=None)
@given(n=st.integers(-(1 << 23), 1 << 23), d=st.integers(1, 1 << 16))
def test_division_helpers(lib, n, d):
    f = lib.mt_div_round_away
    f.restype, f.argtypes = ctypes.c_int32, [ctypes.c_int32] * 2
    assert f(n, d) == int(ref.div_round_away(n, d))
    u = lib.mt_udiv
    u.restype, u.argtypes = ctypes.c_uint32, [ctypes.c_uint32] * 2
    assert u(abs(n), d) == abs(n) // d


def test_xorshift_sequence(lib):
    f = lib.mt_xorshift32
    f.restype, f.argtypes = ctypes.c_uint32, [ctypes.POINTER(ctypes.c_uint32)]
    state = ctypes.c_uint32(2463534242)
    draws, final = ref.xorshift32_draws(2463534242, 1000)
    got = [f(ctypes.byref(state)) for _ in range(1000)]
    assert got == list(draws) and state.value == final

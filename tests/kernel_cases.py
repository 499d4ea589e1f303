"""Random cases for every kernel, with expected outputs from the numpy reference.

A case is a call of the MicroPython binding (`mtkernels.<name>(*args)`) described with plain
values: ints, None, In(array) for inputs, Out(dtype, n) for outputs and InOut(array) for buffers
updated in place.  The same cases drive every tier:

  - tier 2: `call_c` translates the call to the C kernel API and runs it through ctypes (host,
    sanitizers) or the unicorn Cortex-M0+ emulator (tools/m0sim.py);
  - tiers 4 and 6: `mpy_script` turns a batch of cases into a MicroPython script that calls
    `mtkernels` and prints every output buffer.
"""

from dataclasses import dataclass

import numpy as np

from microtrain.sim import reference as ref
from microtrain.model.fixedpoint import quantize_multipliers, softmax_params


@dataclass
class In:
    a: np.ndarray


@dataclass
class InOut:
    a: np.ndarray


@dataclass
class Out:
    dtype: str
    n: int      # elements


@dataclass
class Expr:
    """A MicroPython expression used verbatim as an argument (fuzzing and bad-argument tests)."""
    code: str


@dataclass
class Case:
    name: str
    args: list
    expected: dict          # argument index -> expected bytes of that output buffer
    ret: object = None      # expected return value (None: not checked)


FILL = 0x5A  # outputs start as this pattern, so untouched elements are noticed


def _out_len(arg):
    return arg.n * np.dtype(arg.dtype).itemsize


# ---------------------------------------------------------------------------------------------
# random building blocks


def _int8(rng, n, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, n).astype(np.int8)


def _weights(rng, n):
    w = _int8(rng, n, -127, 127)
    k = rng.integers(0, 4)
    if k == 0:
        w[rng.integers(0, n, max(1, n // 8))] = rng.choice([-127, 127])   # extremes
    return w


def _requant(rng, out_c, k, per_channel):
    n = out_c if per_channel else 1
    # scale so that a typical accumulator lands around the int8 range, sometimes saturating
    typical = np.sqrt(k) * 74.0 * 74.0
    real = 40.0 / typical * np.exp2(rng.uniform(-2, 3, n))
    mult, shift = quantize_multipliers(real)
    return mult, shift


def _activation(rng, zy):
    kind = rng.integers(0, 3)
    if kind == 0:
        return -128, 127
    if kind == 1:
        return zy, 127                       # ReLU
    return zy, min(127, zy + int(rng.integers(20, 120)))   # ReLU6-like


def random_geom(rng, kind):
    stride = int(rng.integers(1, 3))
    padding = str(rng.choice(["same", "valid"]))
    if kind == "dense":
        return ref.Geom.dense(int(rng.integers(1, 6)), int(rng.integers(1, 70)), int(rng.integers(1, 20)))
    if kind == "conv1d":
        k = int(rng.integers(1, 6))
        return ref.Geom.conv(1, int(rng.integers(k, 30)), int(rng.integers(1, 10)), int(rng.integers(1, 12)),
                             1, k, (1, stride), padding)
    if kind == "conv2d":
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        return ref.Geom.conv(int(rng.integers(kh, 9)), int(rng.integers(kw, 9)), int(rng.integers(1, 7)),
                             int(rng.integers(1, 9)), kh, kw, stride, padding)
    if kind == "depthwise":
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        return ref.Geom.depthwise(int(rng.integers(kh, 9)), int(rng.integers(kw, 9)), int(rng.integers(1, 6)),
                                  int(rng.integers(1, 4)), kh, kw, stride, padding)
    if kind == "pool":
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        s = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        return ref.Geom.pool(int(rng.integers(kh, 9)), int(rng.integers(kw, 9)), int(rng.integers(1, 6)),
                             kh, kw, s, padding)
    raise ValueError(kind)


def _grad(rng, n, bound):
    """int16 gradient with max|g| <= bound, some extremes."""
    bound = int(max(1, min(bound, 32767)))
    g = rng.integers(-bound, bound + 1, n)
    if rng.integers(0, 3) == 0:
        g[rng.integers(0, n, max(1, n // 10))] = rng.choice([-bound, bound])
    if rng.integers(0, 4) == 0:
        g[rng.random(n) < 0.5] = 0
    return g.astype(np.int16)


def _mask_bits(rng, n):
    return ref.pack_mask(rng.random(n) < 0.7)


# ---------------------------------------------------------------------------------------------
# cases per kernel


def conv_forward_case(rng, kind=None):
    g = random_geom(rng, kind or rng.choice(["dense", "conv1d", "conv2d"]))
    K = g.taps * g.in_c
    x = _int8(rng, g.in_h * g.in_w * g.in_c)
    zx = int(rng.integers(-128, 128))
    w = _weights(rng, g.out_c * K)
    bias = rng.integers(-20000, 20000, g.out_c).astype(np.int32) if rng.integers(0, 4) else None
    mult, shift = _requant(rng, g.out_c, K, bool(rng.integers(0, 2)))
    zy = int(rng.integers(-128, 100))
    amin, amax = _activation(rng, zy)
    dr = int(rng.integers(0, 2))
    y, mask = ref.conv_forward(g, x, zx, w, bias, mult, shift, zy, amin, amax, dr)
    n = g.positions * g.out_c
    scratch = Out("int8", ref_scratch_forward(g))
    args = [In(g.array()), In(x), zx, In(w), None if bias is None else In(bias), In(mult), In(shift), zy, amin,
            amax, dr, Out("int8", n), Out("uint8", (n + 7) // 8), scratch]
    return Case("conv_forward", args, {11: y.tobytes(), 12: _mask_expect(mask, n)})


def _mask_expect(mask, n):
    """Expected mask bytes: bits beyond n keep the FILL pattern."""
    bits = np.unpackbits(np.full((n + 7) // 8, FILL, np.uint8), bitorder="little")
    bits[:n] = mask
    return np.packbits(bits, bitorder="little").tobytes()


def ref_scratch_forward(g):
    return ref.conv_forward_scratch(g)


def ref_scratch_update(g, cin_lo, cin_hi):
    return ref.conv_update_scratch(g, cin_lo, cin_hi)


def conv_input_grad_case(rng, kind=None):
    g = random_geom(rng, kind or rng.choice(["dense", "conv1d", "conv2d"]))
    w = _weights(rng, g.out_c * g.taps * g.in_c)
    bound = ((1 << 31) - 1) // (128 * g.out_c * g.taps)
    gy = _grad(rng, g.positions * g.out_c, bound if rng.integers(0, 3) else min(bound, 300))
    gx = ref.conv_input_grad(g, gy, w)
    return Case("conv_input_grad", [In(g.array()), In(gy), In(w), Out("int32", g.in_h * g.in_w * g.in_c)],
                {3: gx.astype(np.int32).tobytes()})


def _update_args(rng, g, depthwise):
    out_c = g.out_c
    rows = np.flatnonzero(rng.random(out_c) < rng.uniform(0.3, 1.0)).astype(np.uint16)
    if rows.size == 0:
        rows = np.array([int(rng.integers(0, out_c))], np.uint16)
    if depthwise:
        lo, hi = (0, 1) if rng.integers(0, 4) else (0, 0)
        if g.in_c == 0:
            lo, hi = 0, 0
    else:
        lo = int(rng.integers(0, g.in_c))
        hi = int(rng.integers(lo, g.in_c + 1)) if rng.integers(0, 4) else lo
        if rng.integers(0, 3) == 0:
            lo, hi = 0, g.in_c
    real_w = np.exp2(rng.uniform(-8, 6, out_c))
    w_mult, w_shift = quantize_multipliers(real_w)
    if rng.integers(0, 3):
        b_mult, b_shift = quantize_multipliers(np.exp2(rng.uniform(0, 16, out_c)))
    else:
        b_mult = b_shift = None
    g_exp = int(rng.integers(-24, -6))
    state = int(rng.integers(1, 1 << 32))
    return rows, lo, hi, w_mult, w_shift, b_mult, b_shift, g_exp, state


def _update_case(rng, g, depthwise):
    rows, lo, hi, w_mult, w_shift, b_mult, b_shift, g_exp, state = _update_args(rng, g, depthwise)
    x = _int8(rng, g.in_h * g.in_w * g.in_c)
    zx = int(rng.integers(-128, 128))
    nw = g.taps * g.out_c if depthwise else g.out_c * g.taps * g.in_c
    w = _weights(rng, nw)
    bias = rng.integers(-(1 << 20), 1 << 20, g.out_c).astype(np.int32)
    if rng.integers(0, 8) == 0:
        bias[0] = (1 << 31) - 1                       # saturating bias
    if b_mult is None and rng.integers(0, 2):
        bias = None
    bound = ((1 << 31) - 1) // (255 * g.positions)
    gy = _grad(rng, g.positions * g.out_c, bound if rng.integers(0, 2) else min(bound, 2000))
    fn = ref.dwconv_update if depthwise else ref.conv_update
    w2, b2, s2 = fn(g, x, zx, gy, g_exp, w, bias, rows, lo, hi, w_mult, w_shift, b_mult, b_shift, state)
    scratch = ref.dwconv_update_scratch(g) if depthwise else ref_scratch_update(g, lo, hi)
    args = [In(g.array()), In(x), zx, In(gy), g_exp, InOut(w), None if bias is None else InOut(bias),
            In(rows), lo, hi, In(w_mult), In(w_shift), None if b_mult is None else In(b_mult),
            None if b_shift is None else In(b_shift), InOut(np.array([state], np.uint32)), Out("int8", scratch)]
    expected = {5: w2.astype(np.int8).tobytes(), 14: np.array([s2], np.uint32).tobytes()}
    if bias is not None:
        expected[6] = b2.astype(np.int32).tobytes()
    return Case("dwconv_update" if depthwise else "conv_update", args, expected)


def conv_update_case(rng, kind=None):
    return _update_case(rng, random_geom(rng, kind or rng.choice(["dense", "conv1d", "conv2d"])), False)


def dwconv_forward_case(rng):
    g = random_geom(rng, "depthwise")
    x = _int8(rng, g.in_h * g.in_w * g.in_c)
    zx = int(rng.integers(-128, 128))
    w = _weights(rng, g.taps * g.out_c)
    bias = rng.integers(-20000, 20000, g.out_c).astype(np.int32) if rng.integers(0, 4) else None
    mult, shift = _requant(rng, g.out_c, g.taps, bool(rng.integers(0, 2)))
    zy = int(rng.integers(-128, 100))
    amin, amax = _activation(rng, zy)
    dr = int(rng.integers(0, 2))
    y, mask = ref.dwconv_forward(g, x, zx, w, bias, mult, shift, zy, amin, amax, dr)
    n = g.positions * g.out_c
    args = [In(g.array()), In(x), zx, In(w), None if bias is None else In(bias), In(mult), In(shift), zy, amin,
            amax, dr, Out("int8", n), Out("uint8", (n + 7) // 8)]
    return Case("dwconv_forward", args, {11: y.tobytes(), 12: _mask_expect(mask, n)})


def dwconv_input_grad_case(rng):
    g = random_geom(rng, "depthwise")
    w = _weights(rng, g.taps * g.out_c)
    bound = ((1 << 31) - 1) // (128 * g.taps * g.depth_mult)
    gy = _grad(rng, g.positions * g.out_c, bound)
    gx = ref.dwconv_input_grad(g, gy, w)
    return Case("dwconv_input_grad", [In(g.array()), In(gy), In(w), Out("int32", g.in_h * g.in_w * g.in_c)],
                {3: gx.astype(np.int32).tobytes()})


def dwconv_update_case(rng):
    return _update_case(rng, random_geom(rng, "depthwise"), True)


def maxpool_forward_case(rng):
    g = random_geom(rng, "pool")
    x = _int8(rng, g.in_h * g.in_w * g.in_c, *(sorted(rng.integers(-128, 128, 2))))   # ties likely
    y = ref.maxpool_forward(g, x)
    return Case("maxpool_forward", [In(g.array()), In(x), Out("int8", y.size)], {2: y.tobytes()})


def maxpool_input_grad_case(rng):
    g = random_geom(rng, "pool")
    x = _int8(rng, g.in_h * g.in_w * g.in_c, -3, 3)      # many ties: first maximum wins
    gy = _grad(rng, g.positions * g.out_c, 32767)
    gx = ref.maxpool_input_grad(g, x, gy)
    return Case("maxpool_input_grad", [In(g.array()), In(x), In(gy), Out("int32", x.size)],
                {3: gx.astype(np.int32).tobytes()})


def avgpool_forward_case(rng):
    g = random_geom(rng, "pool")
    x = _int8(rng, g.in_h * g.in_w * g.in_c)
    amin, amax = _activation(rng, int(rng.integers(-128, 100)))
    y = ref.avgpool_forward(g, x, amin, amax)
    return Case("avgpool_forward", [In(g.array()), In(x), amin, amax, Out("int8", y.size)], {4: y.tobytes()})


def avgpool_input_grad_case(rng):
    g = random_geom(rng, "pool")
    gy = _grad(rng, g.positions * g.out_c, 32767)
    gx = ref.avgpool_input_grad(g, gy)
    return Case("avgpool_input_grad", [In(g.array()), In(gy), Out("int32", g.in_h * g.in_w * g.in_c)],
                {2: gx.astype(np.int32).tobytes()})


def add_forward_case(rng):
    n = int(rng.integers(1, 100))
    s1, s2 = np.exp2(rng.uniform(-8, -4, 2))
    sy = max(s1, s2) * np.exp2(rng.uniform(0, 2))
    left = 20
    twice = 2 * max(s1, s2)
    m1, sh1 = quantize_multipliers([s1 / twice])
    m2, sh2 = quantize_multipliers([s2 / twice])
    my, shy = quantize_multipliers([twice / ((1 << left) * sy)])
    zy = int(rng.integers(-128, 100))
    amin, amax = _activation(rng, zy)
    p = ref.AddParams(int(rng.integers(-128, 128)), int(rng.integers(-128, 128)), zy, left,
                      int(m1[0]), int(sh1[0]), int(m2[0]), int(sh2[0]), int(my[0]), int(shy[0]), amin, amax)
    x1, x2 = _int8(rng, n), _int8(rng, n)
    y, mask = ref.add_forward(x1, x2, p)
    return Case("add_forward", [In(x1), In(x2), In(p.array()), Out("int8", n), Out("uint8", (n + 7) // 8)],
                {3: y.tobytes(), 4: _mask_expect(mask, n)})


def clamp_forward_case(rng):
    n = int(rng.integers(1, 100))
    lo = int(rng.integers(-128, 100))
    hi = int(rng.integers(lo, 128))
    x = _int8(rng, n)
    y, mask = ref.clamp_forward(x, lo, hi)
    return Case("clamp_forward", [In(x), lo, hi, Out("int8", n), Out("uint8", (n + 7) // 8)],
                {3: y.tobytes(), 4: _mask_expect(mask, n)})


def softmax_forward_case(rng):
    rows, depth = int(rng.integers(1, 4)), int(rng.integers(1, 40))
    scale = float(np.exp2(rng.uniform(-6, 1)))
    mult, shift, diff_min = softmax_params(scale, beta=float(rng.choice([1.0, 0.5, 2.0])))
    x = _int8(rng, rows * depth)
    y = ref.softmax_forward(x.reshape(rows, depth), mult, shift, diff_min).ravel()
    return Case("softmax_forward", [In(x), rows, depth, mult, shift, diff_min, Out("int8", rows * depth)],
                {6: y.tobytes()})


def softmax_grad_case(rng):
    depth = int(rng.integers(1, 20))
    y = _int8(rng, depth)
    label = int(rng.integers(0, depth))
    return Case("softmax_grad", [In(y), label, Out("int16", depth)], {2: ref.softmax_grad(y, label).tobytes()})


def grad_rescale_case(rng):
    m, n = int(rng.integers(1, 6)), int(rng.integers(1, 20))
    gy = _grad(rng, m * n, 32767)
    mult, shift = quantize_multipliers(np.exp2(rng.uniform(-10, 3, n)))
    out = ref.grad_rescale(gy.reshape(m, n), mult, shift).ravel()
    return Case("grad_rescale", [In(gy), m, n, In(mult), In(shift), Out("int16", m * n)], {5: out.tobytes()})


def grad_narrow_case(rng):
    n = int(rng.integers(1, 80))
    acc = (rng.integers(-(1 << 31), 1 << 31, n) >> int(rng.integers(0, 31))).astype(np.int32)
    if rng.integers(0, 6) == 0:
        acc[0] = -(1 << 31)
    mask = rng.random(n) < 0.6 if rng.integers(0, 2) else None
    out, r = ref.grad_narrow(acc, mask)
    margs = None if mask is None else In(ref.pack_mask(mask))
    return Case("grad_narrow", [In(acc), margs, Out("int16", n)], {2: out.tobytes()}, ret=r)


def grad_mask_case(rng):
    n = int(rng.integers(1, 80))
    g = _grad(rng, n, 32767)
    mask = rng.random(n) < 0.5
    return Case("grad_mask", [InOut(g), In(ref.pack_mask(mask))], {0: ref.grad_mask(g, mask).tobytes()})


def requantize_case(rng):
    acc = int(rng.choice([rng.integers(-(1 << 31), 1 << 31), rng.integers(-5000, 5000), -(1 << 31), (1 << 31) - 1]))
    mult = int(rng.choice([rng.integers(1 << 30, 1 << 31), (1 << 31) - 1, 1 << 30, 0, rng.integers(0, 1 << 31)]))
    shift = int(rng.integers(-31, 31))
    dr = int(rng.integers(0, 2))
    return Case("requantize", [acc, mult, shift, dr], {}, ret=int(ref.requantize(acc, mult, shift, dr)))


def crc32_case(rng):
    import zlib
    data = rng.integers(0, 256, int(rng.integers(0, 300))).astype(np.uint8)
    start = int(rng.choice([0, rng.integers(0, 1 << 32)]))
    return Case("crc32", [In(data), start], {}, ret=zlib.crc32(data.tobytes(), start))


GENERATORS = [
    conv_forward_case, conv_input_grad_case, conv_update_case, dwconv_forward_case, dwconv_input_grad_case,
    dwconv_update_case, maxpool_forward_case, maxpool_input_grad_case, avgpool_forward_case,
    avgpool_input_grad_case, add_forward_case, clamp_forward_case, softmax_forward_case, softmax_grad_case,
    grad_rescale_case, grad_narrow_case, grad_mask_case, requantize_case, crc32_case,
]


def all_cases(seed, per_kernel):
    rng = np.random.default_rng(seed)
    return [gen(rng) for gen in GENERATORS for _ in range(per_kernel)]


# ---------------------------------------------------------------------------------------------
# running a case through the C API (ctypes or the M0 emulator)


class Backend:
    """Memory + call interface: CtypesBackend (host .so) or M0Backend (unicorn)."""

    ptr_size = 8

    def put(self, data):
        raise NotImplementedError

    def read(self, addr, n):
        raise NotImplementedError

    def call(self, name, *args):
        raise NotImplementedError


def _pack(fields, ptr_size):
    from tools.m0sim import pack_struct
    return pack_struct(fields, ptr_size)


def call_c(be, case):
    """Run one case through the C kernels; returns (outputs {index: bytes}, return value)."""
    a = case.args
    ptr = {}

    def addr(i):
        v = a[i]
        if v is None:
            return 0
        if i not in ptr:
            if isinstance(v, (In, InOut)):
                ptr[i] = be.put(np.ascontiguousarray(v.a).tobytes())
            elif isinstance(v, Out):
                ptr[i] = be.put(bytes([FILL]) * _out_len(v))
        return ptr[i]

    def struct(fields):
        return be.put(_pack(fields, be.ptr_size))

    def geom():
        return addr(0)

    def requant(first, out_c):
        mult = a[first].a
        per_channel = 1 if (mult.size != 1 or out_c == 1) else 0
        return struct([("p", addr(first)), ("p", addr(first + 1)), ("i", per_channel), ("i", a[first + 2]),
                       ("i", a[first + 3]), ("i", a[first + 4]), ("i", a[first + 5])])

    def update(first):
        rows = a[first].a
        return struct([("p", addr(first)), ("i", rows.size), ("i", a[first + 1]), ("i", a[first + 2]),
                       ("p", addr(first + 3)), ("p", addr(first + 4)), ("p", addr(first + 5)),
                       ("p", addr(first + 6)), ("p", addr(first + 7))])

    n = case.name
    ret = None
    if n == "conv_forward":
        out_c = int(a[0].a[5])
        be.call("mt_conv_forward", geom(), addr(1), a[2], addr(3), addr(4), requant(5, out_c), addr(11), addr(12),
                addr(13))
    elif n == "dwconv_forward":
        out_c = int(a[0].a[5])
        be.call("mt_dwconv_forward", geom(), addr(1), a[2], addr(3), addr(4), requant(5, out_c), addr(11), addr(12))
    elif n in ("conv_input_grad", "dwconv_input_grad"):
        be.call("mt_" + n, geom(), addr(1), addr(2), addr(3))
    elif n in ("conv_update", "dwconv_update"):
        be.call("mt_" + n, geom(), addr(1), a[2], addr(3), a[4], addr(5), addr(6), update(7), addr(15))
    elif n == "maxpool_forward":
        be.call("mt_maxpool_forward", geom(), addr(1), addr(2))
    elif n == "maxpool_input_grad":
        be.call("mt_maxpool_input_grad", geom(), addr(1), addr(2), addr(3))
    elif n == "avgpool_forward":
        be.call("mt_avgpool_forward", geom(), addr(1), a[2], a[3], addr(4))
    elif n == "avgpool_input_grad":
        be.call("mt_avgpool_input_grad", geom(), addr(1), addr(2))
    elif n == "add_forward":
        be.call("mt_add_forward", a[0].a.size, addr(0), addr(1), addr(2), addr(3), addr(4))
    elif n == "clamp_forward":
        be.call("mt_clamp_forward", a[0].a.size, addr(0), a[1], a[2], addr(3), addr(4))
    elif n == "softmax_forward":
        be.call("mt_softmax_forward", a[1], a[2], addr(0), a[3], a[4], a[5], addr(6))
    elif n == "softmax_grad":
        be.call("mt_softmax_grad", a[0].a.size, addr(0), a[1], addr(2))
    elif n == "grad_rescale":
        be.call("mt_grad_rescale", a[1], a[2], addr(0), addr(3), addr(4), addr(5))
    elif n == "grad_narrow":
        ret = be.call("mt_grad_narrow", a[0].a.size, addr(0), addr(1), addr(2))
    elif n == "grad_mask":
        be.call("mt_grad_mask", a[0].a.size, addr(0), addr(1))
    elif n == "requantize":
        ret = be.call("mt_requantize", a[0], a[1], a[2], a[3])
    elif n == "crc32":
        ret = be.call("mt_crc32", a[1], addr(0), a[0].a.size) & 0xFFFFFFFF
        return {}, ret
    else:
        raise KeyError(n)
    outs = {}
    for i in case.expected:
        v = a[i]
        size = _out_len(v) if isinstance(v, Out) else np.asarray(v.a).nbytes
        outs[i] = be.read(addr(i), size)
    if ret is not None:
        ret = int(np.int32(np.uint32(ret & 0xFFFFFFFF)))
    return outs, ret


def check(case, outs, ret):
    for i, exp in case.expected.items():
        got = outs[i]
        if got != exp:
            g = np.frombuffer(got, np.uint8)
            e = np.frombuffer(exp, np.uint8)
            bad = np.flatnonzero(g != e) if g.size == e.size else []
            raise AssertionError(f"{case.name}: argument {i} differs ({len(bad)} bytes, first at byte "
                                 f"{bad[0] if len(bad) else '?'}; sizes {g.size}/{e.size})")
    if case.ret is not None and ret != case.ret:
        raise AssertionError(f"{case.name}: returned {ret}, expected {case.ret}")


# ---------------------------------------------------------------------------------------------
# running cases inside MicroPython


_TYPECODE = {"int8": "b", "uint8": "B", "int16": "h", "int32": "i", "uint16": "H", "uint32": "I"}


def mpy_script(cases, typed=True, module="mtkernels"):
    """A MicroPython script that runs the cases and prints, per case, 'R <ret>' and one
    'O <index> <bytes repr>' line per checked output, then 'E' (or 'X <exception>').
    `module` is the kernel module to call (the native `mtkernels` or a pure-Python twin)."""
    lines = [f"import {module} as mtkernels", "import struct", "import array", "",
             "def _buf(tc, data):",
             "    if tc is None:",
             "        return bytearray(data)",
             "    n = len(data) // struct.calcsize(tc)",
             "    return array.array(tc, struct.unpack('<%d%s' % (n, tc), data))",
             "",
             "def _run(i, f, args, outs):",
             "    try:",
             "        r = f(*args)",
             "    except Exception as e:",
             "        print('X', i, type(e).__name__, e)",
             "        return",
             "    print('R', i, r)",
             "    for k in outs:",
             "        print('O', i, k, bytes(args[k]))",
             "",
             ]
    for ci, case in enumerate(cases):
        exprs = []
        for v in case.args:
            if v is None:
                exprs.append("None")
            elif isinstance(v, (int, np.integer)):
                exprs.append(str(int(v)))
            elif isinstance(v, (In, InOut)):
                arr = np.asarray(v.a)
                tc = _TYPECODE[str(arr.dtype)] if typed else None
                if tc == "B":
                    tc = None
                exprs.append(f"_buf({tc!r}, {arr.tobytes()!r})")
            elif isinstance(v, Out):
                exprs.append(f"bytearray({bytes([FILL]) * _out_len(v)!r})")
            elif isinstance(v, Expr):
                exprs.append(v.code)
            else:
                raise TypeError(v)
        lines.append(f"_run({ci}, mtkernels.{case.name}, [{', '.join(exprs)}], {sorted(case.expected)!r})")
    lines.append("print('E')")
    return "\n".join(lines) + "\n"


def parse_mpy_output(text, cases):
    """Check the script's output against the cases; returns the number checked."""
    import ast
    outs = {i: {} for i in range(len(cases))}
    rets = {}
    done = False
    for line in text.splitlines():
        if line == "E":
            done = True
        elif line.startswith("X "):
            _, i, rest = line.split(" ", 2)
            raise AssertionError(f"case {i} ({cases[int(i)].name}) raised {rest}")
        elif line.startswith("R "):
            _, i, r = line.split(" ", 2)
            rets[int(i)] = None if r == "None" else int(r)
        elif line.startswith("O "):
            _, i, k, data = line.split(" ", 3)
            outs[int(i)][int(k)] = ast.literal_eval(data)
    if not done:
        raise AssertionError("script did not finish:\n" + text[-2000:])
    for i, case in enumerate(cases):
        check(case, outs[i], rets.get(i))
    return len(cases)


def check_errors(out, bad):
    """Check a script's output for bad-argument cases: (name, args, exception type, message regex)."""
    import re
    results = {}
    for line in out.splitlines():
        if line.startswith("X "):
            _, i, exc, msg = (line.split(" ", 3) + [""])[:4]
            results[int(i)] = (exc, msg)
        elif line.startswith("R "):
            results.setdefault(int(line.split()[1]), ("returned", ""))
    for i, (name, _, exc, pattern) in enumerate(bad):
        got_exc, msg = results.get(i, ("nothing", ""))
        assert got_exc == exc and re.search(pattern, msg), \
            f"{name} case {i}: {got_exc} {msg!r}, expected {exc} {pattern}"

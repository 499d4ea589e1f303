"""numpy reference of every C kernel in native_modules/mtkernels/kernels, same integer semantics.

It is the test oracle of the C kernels on every target and the engine of the host simulator:
a function here and its C twin produce identical bits.  Arithmetic is done in int64 and the
documented int32 bounds are asserted (``OverflowError``), so a silent wrap-around in C would
show up here as an error, never as a difference.

Layouts follow mt_kernels.h: activations [H][W][C] int8; conv weights [out_c][k_h][k_w][in_c];
depthwise weights [k_h][k_w][out_c]; gradients int16 with a power-of-two scale 2^g_exp;
masks are boolean arrays here (bit arrays in C, see ``pack_mask``).
"""

from dataclasses import dataclass, astuple

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
AVGPOOL_GRAD_BITS = 13
SOFTMAX_GRAD_EXP = -15


# ---------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class Geom:
    """Shape of a convolution-like layer (the int32[13] ``geom`` argument of the C kernels)."""

    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    k_h: int = 1
    k_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_t: int = 0
    pad_l: int = 0
    depth_mult: int = 1

    @classmethod
    def conv(cls, in_h, in_w, in_c, out_c, k_h=1, k_w=1, stride=1, padding="valid", depth_mult=1):
        """TFLite output size and padding for SAME / VALID."""
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if padding == "same":
            out_h, out_w = -(-in_h // sh), -(-in_w // sw)
            pad_t = max((out_h - 1) * sh + k_h - in_h, 0) // 2
            pad_l = max((out_w - 1) * sw + k_w - in_w, 0) // 2
        elif padding == "valid":
            out_h, out_w = (in_h - k_h) // sh + 1, (in_w - k_w) // sw + 1
            pad_t = pad_l = 0
        else:
            raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
        if out_h < 1 or out_w < 1:
            raise ValueError("kernel larger than the input")
        return cls(in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w, sh, sw, pad_t, pad_l, depth_mult)

    @classmethod
    def dense(cls, rows, in_features, out_features):
        return cls(1, rows, in_features, 1, rows, out_features)

    @classmethod
    def depthwise(cls, in_h, in_w, in_c, depth_mult, k_h, k_w, stride=1, padding="valid"):
        return cls.conv(in_h, in_w, in_c, in_c * depth_mult, k_h, k_w, stride, padding, depth_mult)

    @classmethod
    def pool(cls, in_h, in_w, c, k_h, k_w, stride=None, padding="valid"):
        return cls.conv(in_h, in_w, c, c, k_h, k_w, stride or (k_h, k_w), padding)

    def array(self):
        return np.array(astuple(self), dtype=np.int32)

    @property
    def taps(self):
        return self.k_h * self.k_w

    @property
    def positions(self):
        return self.out_h * self.out_w


# ---------------------------------------------------------------------------------------------
# fixed point (mt_fixedpoint.c)


def _i64(a):
    return np.asarray(a, dtype=np.int64)


def wrap32(v):
    v = _i64(v)
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def check32(v, what):
    v = _i64(v)
    if v.size and (v.min() < INT32_MIN or v.max() > INT32_MAX):
        raise OverflowError(f"{what} overflows int32")
    return v


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul: round(a*b / 2^31), ties up."""
    a, b = _i64(a), _i64(b)
    r = (a * b + (1 << 30)) >> 31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, r)


def rdbpot(x, e):
    """RoundingDivideByPOT: x / 2^e rounded to nearest, ties away from zero."""
    x, e = _i64(x), _i64(e)
    mask = (np.int64(1) << e) - 1
    return (x >> e) + ((x & mask) > ((mask >> 1) + (x < 0)))


def scale_round(x, mult, shift):
    """round(x * mult * 2^(shift-31)), ties up, shift clamped to [-31, 31], saturated to int32."""
    x, mult = _i64(x), _i64(mult)
    r = 31 - np.clip(_i64(shift), -31, 31)
    p = x * mult
    half = np.where(r > 0, np.int64(1) << np.maximum(r - 1, 0), 0)
    return np.clip((p + half) >> r, INT32_MIN, INT32_MAX)


def requantize(acc, mult, shift, double_rounding=False):
    """TFLite MultiplyByQuantizedMultiplier.  Single rounding (saturated) is what ai-edge-litert's
    reference FULLY_CONNECTED does; double rounding (SRDHM then RDBPOT, the left shift wraps) what
    its CONV_2D / DEPTHWISE_CONV_2D, TFLite Micro and CMSIS-NN do."""
    if not double_rounding:
        return scale_round(acc, mult, shift)
    shift = _i64(shift)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    return rdbpot(srdhm(wrap32(_i64(acc) << left), mult), right)


def div_round_away(n, d):
    """TFLite average-pool rounding: (n +/- d//2) / d truncated toward zero."""
    n, d = _i64(n), _i64(d)
    half = d >> 1
    return np.where(n > 0, (n + half) // d, -((half - n) // d))


def xorshift32(state):
    s = state & 0xFFFFFFFF
    s ^= (s << 13) & 0xFFFFFFFF
    s ^= s >> 17
    s ^= (s << 5) & 0xFFFFFFFF
    return s


def xorshift32_draws(state, n):
    """The next n PRNG outputs and the new state."""
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        state = xorshift32(state)
        out[i] = state
    return out, state


def sgd_step(grad, mult, shift, g_exp, draws):
    """mt_sgd_step for arrays: one PRNG draw per parameter (see mt_update.c)."""
    v = scale_round(grad, mult, _i64(shift) + g_exp + 16)
    v = np.minimum(v, INT32_MAX - 0xFFFF)
    return (v + (_i64(draws) >> 16)) >> 16


# ---------------------------------------------------------------------------------------------
# helpers


def pack_mask(mask):
    """Boolean array -> the C kernels' bit array (bit i of byte i//8, LSB first)."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel(), bitorder="little")


def unpack_mask(bits, n):
    return np.unpackbits(np.frombuffer(bytes(bits), dtype=np.uint8), bitorder="little")[:n].astype(bool)


def _requant_store(acc, bias, mult, shift, zy, act_min, act_max, double_rounding):
    acc = _i64(acc)
    if bias is not None:
        acc = check32(acc + _i64(bias), "accumulator + bias")
    v = wrap32(requantize(acc, mult, shift, double_rounding) + zy)
    mask = (v >= act_min) & (v <= act_max)
    return np.clip(v, act_min, act_max).astype(np.int8), mask


def _padded(g, x, fill):
    """x as [in_h + pads][in_w + pads][C] (int64), padding = fill, large enough for every window."""
    x = _i64(x).reshape(g.in_h, g.in_w, -1)
    H = max((g.out_h - 1) * g.stride_h + g.k_h, g.pad_t + g.in_h)
    W = max((g.out_w - 1) * g.stride_w + g.k_w, g.pad_l + g.in_w)
    p = np.full((H, W, x.shape[2]), fill, dtype=np.int64)
    p[g.pad_t:g.pad_t + g.in_h, g.pad_l:g.pad_l + g.in_w] = x
    return p


def _tap(g, p, kh, kw):
    """The [out_h][out_w][C] view of padded p seen by tap (kh, kw)."""
    return p[kh:kh + (g.out_h - 1) * g.stride_h + 1:g.stride_h, kw:kw + (g.out_w - 1) * g.stride_w + 1:g.stride_w]


def _crop(g, p):
    return p[g.pad_t:g.pad_t + g.in_h, g.pad_l:g.pad_l + g.in_w].reshape(-1)


def im2col(g, x, zx):
    """[M][k_h][k_w][in_c] of (x - zx), 0 for padding."""
    p = _padded(g, _i64(x) - zx, 0)
    cols = np.stack([_tap(g, p, kh, kw) for kh in range(g.k_h) for kw in range(g.k_w)], axis=2)
    return cols.reshape(g.positions, g.taps, g.in_c)


# ---------------------------------------------------------------------------------------------
# convolution / fully connected (mt_conv.c)


# Scratch sizes: the one statement of what each kernel needs.  The planner lays the arena out
# with these; the C binding (mtkernels.c) and the Python twin (pykernels.py) check the same
# sizes, and the kernel tests pass buffers of exactly these sizes to both.

def conv_forward_scratch(g):
    """Bytes of scratch mt_conv_forward needs: two int16 im2col rows, and with k_h == 1 one
    widened input row (unpadded windows are read from it in place)."""
    return 4 * g.taps * g.in_c + (2 * g.in_w * g.in_c if g.k_h == 1 else 0)


def conv_update_scratch(g, cin_lo, cin_hi):
    """Bytes of scratch mt_conv_update needs for input channels [cin_lo, cin_hi): the int16
    columns of every position, the int32 gradients of one row, and per column two int32 sums."""
    kc = g.taps * (cin_hi - cin_lo)
    return _align4(2 * kc * g.positions) + _align4(4 * g.positions) + 8 * kc


def dwconv_update_scratch(g):
    """Bytes of scratch mt_dwconv_update needs: one int32 per tap."""
    return 4 * g.taps


def _align4(n):
    return (n + 3) & ~3


def conv_forward(g, x, zx, w, bias, mult, shift, zy, act_min, act_max, double_rounding=False):
    """Returns (y int8 [M*out_c], mask bool)."""
    K = g.taps * g.in_c
    if K > 65536:
        raise OverflowError("k_h*k_w*in_c > 65536")
    cols = im2col(g, x, zx).reshape(g.positions, K)
    acc = cols @ _i64(w).reshape(g.out_c, K).T
    y, mask = _requant_store(acc, bias, mult, shift, zy, act_min, act_max, double_rounding)
    return y.ravel(), mask.ravel()


def conv_input_grad(g, gy, w):
    """int32 gradient w.r.t. the input [in_h*in_w*in_c] of the rescaled output gradient gy."""
    gy = _i64(gy).reshape(g.positions, g.out_c)
    if gy.size and np.abs(gy).max() * 128 * g.out_c * g.taps >= 1 << 31:
        raise OverflowError("max|gy| * 128 * out_c * k_h * k_w >= 2^31")
    gcols = (gy @ _i64(w).reshape(g.out_c, -1)).reshape(g.out_h, g.out_w, g.k_h, g.k_w, g.in_c)
    p = _padded(g, np.zeros(g.in_h * g.in_w * g.in_c), 0)
    for kh in range(g.k_h):
        for kw in range(g.k_w):
            _tap(g, p, kh, kw)[...] += gcols[:, :, kh, kw]
    return check32(_crop(g, p), "input gradient")


def _apply_updates(w_rows, bias, rows, gw, gsum, w_mult, w_shift, b_mult, b_shift, g_exp, rng):
    """Sequential in row order: the row's weights (ascending), then its bias. Returns new rng."""
    for r, c in enumerate(rows):
        if gw is not None:
            draws, rng = xorshift32_draws(rng, gw.shape[1])
            d = sgd_step(gw[r], w_mult[c], w_shift[c], g_exp, draws)
            w_rows[r] = np.clip(w_rows[r] - d, -127, 127)
        if b_mult is not None and bias is not None:
            draws, rng = xorshift32_draws(rng, 1)
            d = sgd_step(gsum[r], b_mult[c], b_shift[c], g_exp, draws)[0]
            bias[c] = np.clip(int(bias[c]) - int(d), INT32_MIN, INT32_MAX)
    return rng


def conv_update(g, x, zx, gy, g_exp, w, bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift, rng):
    """Fused weight/bias gradient + SGD step. Returns (w, bias, rng) as new arrays."""
    rows = np.asarray(rows, dtype=np.int64)
    gy = _i64(gy).reshape(g.positions, g.out_c)
    w = np.array(w, dtype=np.int8).reshape(g.out_c, g.taps, g.in_c)
    bias = None if bias is None else np.array(bias, dtype=np.int32)
    gsel = gy[:, rows]
    gsum = gsel.sum(axis=0)
    gw = None
    if cin_hi > cin_lo:
        if gy.size and np.abs(gy).max() * 255 * g.positions >= 1 << 31:
            raise OverflowError("max|gy| * 255 * out_h * out_w >= 2^31")
        cols = im2col(g, x, zx)[:, :, cin_lo:cin_hi].reshape(g.positions, -1)
        gw = gsel.T @ cols
    w_rows = w[rows, :, cin_lo:cin_hi].reshape(len(rows), -1).astype(np.int64)
    rng = _apply_updates(w_rows, bias, rows, gw, gsum, w_mult, w_shift, b_mult, b_shift, g_exp, rng)
    if gw is not None:
        w[rows, :, cin_lo:cin_hi] = w_rows.reshape(len(rows), g.taps, -1)
    return w.ravel(), bias, rng


# ---------------------------------------------------------------------------------------------
# depthwise (mt_depthwise.c)


def _dw_in(g, v):
    """[..., in_c] -> [..., out_c]: input channel ic feeds outputs ic*mult .. ic*mult+mult-1."""
    return np.repeat(v, g.depth_mult, axis=-1)


def dwconv_forward(g, x, zx, w, bias, mult, shift, zy, act_min, act_max, double_rounding=False):
    p = _padded(g, _i64(x) - zx, 0)
    w = _i64(w).reshape(g.k_h, g.k_w, g.out_c)
    acc = np.zeros((g.out_h, g.out_w, g.out_c), dtype=np.int64)
    for kh in range(g.k_h):
        for kw in range(g.k_w):
            acc += _dw_in(g, _tap(g, p, kh, kw)) * w[kh, kw]
    y, mask = _requant_store(acc.reshape(-1, g.out_c), bias, mult, shift, zy, act_min, act_max, double_rounding)
    return y.ravel(), mask.ravel()


def dwconv_input_grad(g, gy, w):
    gy = _i64(gy).reshape(g.out_h, g.out_w, g.out_c)
    if gy.size and np.abs(gy).max() * 128 * g.taps * g.depth_mult >= 1 << 31:
        raise OverflowError("max|gy| * 128 * k_h * k_w * depth_mult >= 2^31")
    w = _i64(w).reshape(g.k_h, g.k_w, g.out_c)
    p = _padded(g, np.zeros(g.in_h * g.in_w * g.in_c), 0)
    for kh in range(g.k_h):
        for kw in range(g.k_w):
            contrib = (gy * w[kh, kw]).reshape(g.out_h, g.out_w, g.in_c, g.depth_mult).sum(axis=3)
            _tap(g, p, kh, kw)[...] += contrib
    return check32(_crop(g, p), "input gradient")


def dwconv_update(g, x, zx, gy, g_exp, w, bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift, rng):
    """cin_hi > cin_lo: the taps of the given output channels train; else biases only."""
    rows = np.asarray(rows, dtype=np.int64)
    gy = _i64(gy).reshape(g.positions, g.out_c)
    w = np.array(w, dtype=np.int8).reshape(g.taps, g.out_c)
    bias = None if bias is None else np.array(bias, dtype=np.int32)
    gsum = gy[:, rows].sum(axis=0)
    gw = None
    if cin_hi > cin_lo:
        if gy.size and np.abs(gy).max() * 255 * g.positions >= 1 << 31:
            raise OverflowError("max|gy| * 255 * out_h * out_w >= 2^31")
        p = _padded(g, _i64(x) - zx, 0)
        taps = [_dw_in(g, _tap(g, p, kh, kw)).reshape(-1, g.out_c) for kh in range(g.k_h) for kw in range(g.k_w)]
        gw = np.stack([(t[:, rows] * gy[:, rows]).sum(axis=0) for t in taps], axis=1)   # rows x taps
    w_rows = w[:, rows].T.astype(np.int64).copy()
    rng = _apply_updates(w_rows, bias, rows, gw, gsum, w_mult, w_shift, b_mult, b_shift, g_exp, rng)
    if gw is not None:
        w[:, rows] = w_rows.T
    return w.ravel(), bias, rng


# ---------------------------------------------------------------------------------------------
# pooling (mt_pool.c)


def _windows(g, p):
    """[out_h][out_w][C][taps] of padded p, taps in row-major window order."""
    return np.stack([_tap(g, p, kh, kw) for kh in range(g.k_h) for kw in range(g.k_w)], axis=3)


def maxpool_forward(g, x):
    win = _windows(g, _padded(g, x, -129))
    return np.maximum(win.max(axis=3), -128).astype(np.int8).ravel()


def maxpool_input_grad(g, x, gy):
    win = _windows(g, _padded(g, x, -129))
    first = win.argmax(axis=3)                   # first maximum in window order
    gy = _i64(gy).reshape(g.out_h, g.out_w, g.in_c)
    p = _padded(g, np.zeros(g.in_h * g.in_w * g.in_c), 0)
    for t in range(g.taps):
        kh, kw = divmod(t, g.k_w)
        _tap(g, p, kh, kw)[...] += np.where(first == t, gy, 0)
    return check32(_crop(g, p), "input gradient")


def _counts(g):
    ones = _padded(g, np.ones(g.in_h * g.in_w), 0)
    return _windows(g, ones).sum(axis=3)[:, :, 0]      # [out_h][out_w]


def avgpool_forward(g, x, act_min=-128, act_max=127):
    win = _windows(g, _padded(g, x, 0))
    count = _counts(g)[:, :, None]
    v = np.where(count > 0, div_round_away(win.sum(axis=3), np.maximum(count, 1)), 0)
    return np.clip(v, act_min, act_max).astype(np.int8).ravel()


def avgpool_input_grad(g, gy):
    """gx_acc with scale 2^(g_exp - AVGPOOL_GRAD_BITS)."""
    count = _counts(g)
    recip = np.where(count > 0, ((1 << AVGPOOL_GRAD_BITS) + (count >> 1)) // np.maximum(count, 1), 0)
    v = _i64(gy).reshape(g.out_h, g.out_w, g.in_c) * recip[:, :, None]
    p = _padded(g, np.zeros(g.in_h * g.in_w * g.in_c), 0)
    for kh in range(g.k_h):
        for kw in range(g.k_w):
            _tap(g, p, kh, kw)[...] += v
    # padding cells received contributions too; _crop drops them
    return check32(_crop(g, p), "input gradient")


# ---------------------------------------------------------------------------------------------
# element-wise (mt_elementwise.c)


@dataclass(frozen=True)
class AddParams:
    """TFLite int8 ADD parameters (the int32[12] ``params`` argument of the C kernel)."""

    z1: int
    z2: int
    zy: int
    left_shift: int
    mult1: int
    shift1: int
    mult2: int
    shift2: int
    mult_y: int
    shift_y: int
    act_min: int = -128
    act_max: int = 127

    def array(self):
        return np.array(astuple(self), dtype=np.int32)


def add_forward(x1, x2, p):
    a = requantize(wrap32((_i64(x1) - p.z1) << p.left_shift), p.mult1, p.shift1, True)
    b = requantize(wrap32((_i64(x2) - p.z2) << p.left_shift), p.mult2, p.shift2, True)
    v = requantize(a + b, p.mult_y, p.shift_y, True) + p.zy
    mask = (v >= p.act_min) & (v <= p.act_max)
    return np.clip(v, p.act_min, p.act_max).astype(np.int8), mask


def clamp_forward(x, lo, hi):
    x = _i64(x)
    return np.clip(x, lo, hi).astype(np.int8), (x >= lo) & (x <= hi)


def _sat_mul_pot(x, e):
    x = _i64(x)
    if e > 0:
        thr = (1 << (31 - e)) - 1
        return np.where(x > thr, INT32_MAX, np.where(x < -thr, INT32_MIN, x << e))
    if e < 0:
        return rdbpot(x, -e)
    return x


def _exp_quarter(a):
    x = a + (1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    poly = _sat_mul_pot(srdhm(_sat_mul_pot(x4, -2) + x3, 715827883) + x2, -1)
    return 1895147668 + srdhm(1895147668, x + poly)


_EXP_MULTS = (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242)


def _exp_negative_q5_26(a):
    a = _i64(a)
    a_mod = (a & ((1 << 24) - 1)) - (1 << 24)
    result = _exp_quarter(_sat_mul_pot(a_mod, 5))
    remainder = a_mod - a
    for i, m in enumerate(_EXP_MULTS):
        result = np.where(remainder & (1 << (24 + i)), srdhm(result, m), result)
    return np.where(a == 0, INT32_MAX, result)


def _one_over_one_plus_x(a):
    half_den = (_i64(a) >> 1) + (1 << 30)
    x = 1515870810 + srdhm(half_den, -1010580540)
    for _ in range(3):
        x = x + _sat_mul_pot(srdhm(x, (1 << 29) - srdhm(half_den, x)), 2)
    return _sat_mul_pot(x, 1)


def softmax_forward(x, beta_mult, beta_left_shift, diff_min):
    """TFLite reference int8 softmax over the last axis (output scale 1/256, zero point -128)."""
    x = _i64(x)
    diff = x - x.max(axis=-1, keepdims=True)
    ok = diff >= diff_min
    e = _exp_negative_q5_26(srdhm(wrap32(diff << beta_left_shift), beta_mult))
    total = np.where(ok, rdbpot(e, 12), 0).sum(axis=-1, keepdims=True)
    headroom = np.array([32 - int(t).bit_length() for t in total.ravel()]).reshape(total.shape)
    shifted = ((total << headroom) & 0xFFFFFFFF) - (1 << 31)
    scale = _one_over_one_plus_x(shifted)
    out = rdbpot(srdhm(scale, e), (12 - headroom) + 31 - 8) - 128
    return np.where(ok, np.clip(out, -128, 127), -128).astype(np.int8)


def softmax_grad(y, label):
    """p - onehot as int16 with g_exp = -15 (p = (y + 128) / 256)."""
    g = (_i64(y) + 128) << 7
    g[label] -= 1 << 15
    return g.astype(np.int16)


def grad_rescale(gy, mult, shift):
    """Per-channel (last axis) rescale, saturated to int16."""
    return np.clip(scale_round(gy, mult, shift), -32768, 32767).astype(np.int16)


def grad_narrow(acc, mask=None):
    """Power-of-two narrowing to int16 (max < 2^14). Returns (g int16, r): g_exp grows by r."""
    acc = _i64(acc)
    keep = np.ones(acc.shape, bool) if mask is None else np.asarray(mask, bool)
    m = int(np.abs(acc[keep]).max()) if keep.any() else 0
    r = 0
    while (m >> r) >= (1 << 14):
        r += 1
    return np.where(keep, rdbpot(acc, r), 0).astype(np.int16), r


def grad_mask(g, mask):
    return np.where(mask, g, 0).astype(np.int16)

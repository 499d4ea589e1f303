"""Pure-Python twin of the native module `mtkernels` (native_modules/mtkernels/mtkernels.c).

Same function names, argument order, validation (ValueError/TypeError whose message starts with
the argument's name) and bit-identical integer results as the C kernels; used on a board when
the native module is absent (MicroPython without the .mpy, CircuitPython).  Runs under MicroPython
and CPython and imports nothing but `array`.

Buffers, as in the binding: an argument takes a typed `array.array` of its element type ('b',
'h', 'i', 'H', 'I') or raw bytes (bytes, bytearray, array('B'), memoryview of bytes) holding the
little-endian elements.  Typed arrays are read and written in place (the fast path: pass these);
raw buffers are copied to a typed array on entry and outputs are copied back before returning.
Scratch buffers are checked like the binding does, but not used.

Integer semantics follow mt_kernels.h: Python ints are unbounded, so the places where the C
wraps around (the left shift of the double-rounding requantization, acc + bias, r + zy, the
softmax's diff << beta_left_shift) wrap explicitly, and saturating steps saturate.

On MicroPython the hot functions are recompiled as native code at import when the port allows
it (see use_native() at the end).  Compiling this file from source takes about 200 KB of heap at
import (the module then holds about 32 KB): on a small board, precompile it with mpy-cross.

Differences from the binding: buffer alignment is not checked (nothing here needs it); a
MicroPython memoryview of a 16/32-bit array cannot tell its signedness, so it passes for either;
`str` is not taken as a raw buffer; raw bytes are read in the machine's byte order (little-endian
on every MicroPython target).
"""

import array

_A = array.array
_CPY = hasattr(_A('b'), 'typecode')          # CPython arrays know their typecode
try:
    _MV = memoryview
except NameError:                            # minimal MicroPython ports
    _MV = None

_I32MIN = -0x80000000
_I32MAX = 0x7FFFFFFF
_M32 = 0xFFFFFFFF
_B31 = 0x80000000
_B32 = 0x100000000
_MAX_DIM = 4096
_MAX_ELEMS = 1 << 24

_SZ = {'b': 1, 'B': 1, 'h': 2, 'H': 2, 'i': 4, 'I': 4}
_TN = {'b': 'int8', 'h': 'int16', 'i': 'int32', 'H': 'uint16', 'I': 'uint32', 'B': 'byte'}
_GNAMES = ('in_h', 'in_w', 'in_c', 'out_h', 'out_w', 'out_c', 'k_h', 'k_w', 'stride_h', 'stride_w',
           'pad_t', 'pad_l', 'depth_mult')


def _probe_raw_extend():
    # MicroPython's array.extend() copies the raw bytes of any buffer (an extension to CPython)
    try:
        a = _A('h')
        a.extend(bytearray(b'\x01\x80'))
        return len(a) == 1 and a[0] == -32767
    except Exception:
        return False


def _probe_slice_assign():
    try:
        t = bytearray(2)
        t[0:2] = b'\x01\x02'
        return t[1] == 2
    except Exception:
        return False


_RAW_EXTEND = (not _CPY) and _probe_raw_extend()
_SLICE = _probe_slice_assign()


# ---- argument checking -------------------------------------------------------------------------

def _range_error(name, lo, hi, v):
    raise ValueError('%s: must be in [%d, %d], got %d' % (name, lo, hi, v))


def _int(o, lo, hi, name):
    if not isinstance(o, int):
        raise TypeError(name + ': expected an int')
    if o < lo or o > hi:
        _range_error(name, lo, hi, o)
    return o


def _info(o):
    """(object, typecode or None, byte length, item size) of a buffer, or None.
    Raw bytes report typecode 'B'; None: a MicroPython memoryview of unknown signedness."""
    if isinstance(o, (bytes, bytearray)):
        return o, 'B', len(o), 1
    if isinstance(o, _A):
        if _CPY:
            return o, o.typecode, len(o) * o.itemsize, o.itemsize
        tc = repr(o[:0])[7]                  # "array('h')": MicroPython arrays hide their typecode
        sz = _SZ.get(tc, 1)
        return o, tc, len(o) * sz, sz
    if _MV is not None and isinstance(o, _MV):
        if _CPY:
            f = o.format
            if len(f) == 2 and f[0] in '<@=':
                f = f[1]
            if o.ndim != 1 or len(f) != 1:
                return None
            return o, f, o.nbytes, o.itemsize
        n = len(o)
        sz = len(bytes(o[:1])) if n else 1
        return o, ('B' if sz == 1 else None), n * sz, sz
    if _CPY and _MV is not None:             # other buffer exporters (numpy arrays on the host)
        try:
            m = _MV(o)
        except TypeError:
            return None
        return _info(m)
    return None


def _writable(o):
    if isinstance(o, bytes):
        return False
    if _MV is not None and isinstance(o, _MV):
        if _CPY:
            return not o.readonly
        try:
            if _SLICE:
                o[0:0] = o[0:0]
            elif len(o):
                o[0] = o[0]
            return True
        except Exception:
            return False
    return True


def _buf(o, tc, n, name, out=False, atleast=False):
    """The binding's buf_arg: returns (object, typecode, item size) of a valid buffer."""
    inf = _info(o)
    if inf is None or (out and not _writable(inf[0])):
        raise TypeError('%s: expected a %s%s buffer' % (name, 'writable ' if out else '', _TN[tc]))
    o, code, nb, sz = inf
    if code != tc and code != 'B' and not (code is None and sz == _SZ[tc] and tc != 'B'):
        raise TypeError("%s: expected %s elements (typecode '%s' or raw bytes)" % (name, _TN[tc], tc))
    need = n * _SZ[tc]
    if atleast:
        if nb < need:
            raise ValueError('%s: needs at least %d bytes, got %d' % (name, need, nb))
    elif nb != need:
        raise ValueError('%s: expected %d bytes, got %d' % (name, need, nb))
    return o, code, sz


def _from_raw(tc, o):
    """A new typed array holding the raw bytes of buffer o."""
    a = _A(tc)
    if _CPY:
        a.frombytes(o)
    elif _RAW_EXTEND:
        a.extend(o)
    else:
        a = _A(tc, bytes(o))
    return a


def _zeros(tc, n):
    return _A(tc, bytes(n * _SZ[tc]))


def _rd(o, tc, n, name, opt=False):
    """Readable typed view of an input buffer of n elements (None for None when optional)."""
    if opt and o is None:
        return None
    o, code, sz = _buf(o, tc, n, name)
    if code == tc:
        return o
    return _from_raw(tc, o)


def _wr(o, tc, n, name, opt=False):
    """(typed array to write, pending copy-back or None) of an output / in-out buffer."""
    if opt and o is None:
        return None, None
    o, code, sz = _buf(o, tc, n, name, True)
    if code == tc:
        return o, None
    return _from_raw(tc, o), (o, sz)


def _done(t, back):
    """Copy a raw output's typed working array back into the caller's buffer."""
    if back is None:
        return
    dst, sz = back
    if _CPY:
        _MV(dst).cast('B')[:] = _MV(t).cast('B')
        return
    src = t if _SZ.get(repr(t[:0])[7], 0) == sz else bytes(t)
    if _SLICE:
        dst[:] = src
    else:
        for i in range(len(src)):
            dst[i] = src[i]


def _raw(o, nbytes, name, out=False, opt=False):
    """A raw byte buffer (mask, scratch) of at least nbytes."""
    if opt and o is None:
        return None
    return _buf(o, 'B', nbytes, name, out, True)[0]


def _nbytes(o, name, what):
    inf = _info(o)
    if inf is None:
        raise TypeError('%s: expected a%s %s buffer' % (name, 'n' if what[0] == 'i' else '', what))
    return inf[2]


def _geom(o):
    a = _rd(o, 'i', 13, 'geom')
    g = tuple(a)
    for i in range(13):
        lo = 0 if i == 10 or i == 11 else 1
        if i == 10:
            hi = g[6] - 1                    # padding smaller than the kernel
        elif i == 11:
            hi = g[7] - 1
        elif i in (6, 7, 8, 9, 12):
            hi = 64
        else:
            hi = _MAX_DIM
        if g[i] < lo or g[i] > hi:
            _range_error('geom.' + _GNAMES[i], lo, hi, g[i])
    if g[0] * g[1] * g[2] > _MAX_ELEMS or g[3] * g[4] * g[5] > _MAX_ELEMS:
        raise ValueError('geom: more than 2^24 elements')
    return g


def _geom_kind(g, depthwise):
    if depthwise:
        if g[5] != g[2] * g[12]:
            raise ValueError('geom: out_c must be in_c * depth_mult')
    elif g[12] != 1:
        raise ValueError('geom: depth_mult must be 1')


def _pool_geom(o):
    g = _geom(o)
    if g[2] != g[5] or g[12] != 1:
        raise ValueError('geom: pooling needs in_c == out_c and depth_mult 1')
    return g


def _grad_bound(g, n, factor, what):
    mx = 0
    for i in range(n):
        v = g[i]
        if v < 0:
            v = -v
        if v > mx:
            mx = v
    if mx and factor > _I32MAX // mx:
        raise ValueError('gy: ' + what)


def _requant(mult, shift, zy, act_min, act_max, rounding, out_c):
    """Checks the requantization arguments; returns the per-channel tables of _store_row."""
    inf = _info(mult)
    n = 1 if inf is not None and inf[2] == 4 else out_c
    m = _rd(mult, 'i', n, 'mult')
    s = _rd(shift, 'i', n, 'shift')
    for i in range(n):
        if m[i] < 0:
            _range_error('mult', 0, _I32MAX, m[i])
        if s[i] < -31 or s[i] > 30:
            _range_error('shift', -31, 30, s[i])
    zy = _int(zy, -128, 127, 'zy')
    lo = _int(act_min, -128, 127, 'act_min')
    hi = _int(act_max, lo, 127, 'act_max')
    dr = _int(rounding, 0, 1, 'rounding')
    per_channel = n != 1 or out_c == 1
    mm = []
    t1 = []
    t2 = []
    t3 = []
    for c in range(out_c):
        k = c if per_channel else 0
        sh = s[k]
        mm.append(m[k])
        if dr:
            t1.append(sh if sh > 0 else 0)              # left shift (wraps)
            e = -sh if sh < 0 else 0
            t2.append(e)                                # rounding divide by 2^e
            t3.append((1 << e) - 1)
        else:
            r = 31 - sh                                 # r in [1, 62]
            t1.append(r)
            t2.append(1 << (r - 1))
    return dr, mm, t1, t2, t3, zy, lo, hi


def _clamp_store(y, i, v, lo, hi, mask):
    """y[i] = v clamped to [lo, hi]; mask bit i (if mask) = 1 iff v was not clamped."""
    if v < lo:
        y[i] = lo
    elif v > hi:
        y[i] = hi
    else:
        y[i] = v
        if mask is not None:
            mask[i >> 3] |= 1 << (i & 7)
        return
    if mask is not None:
        mask[i >> 3] &= 255 ^ (1 << (i & 7))


def _store_row(acc, bias, N, rq, y, i0, mask):
    """mt_store_outputs for the N channels of one position: y[i0 + c] and its mask bit."""
    dr, mm, t1, t2, t3, zy, lo, hi = rq
    i = i0
    for c in range(N):
        a = acc[c]
        if bias is not None:
            a += bias[c]
            if a > 0x7FFFFFFF or a < -0x80000000:
                a = ((a + 0x80000000) & 0xFFFFFFFF) - 0x80000000    # int32 wrap-around
        if dr:
            sh = t1[c]
            if sh:
                a = (((a << sh) + 0x80000000) & 0xFFFFFFFF) - 0x80000000  # wraps like TFLite
            a = (a * mm[c] + 0x40000000) >> 31          # SRDHM (mult >= 0: no saturation case)
            e = t2[c]
            if e:
                k = t3[c]
                a = (a >> e) + ((a & k) > (k >> 1) + (a < 0))
        else:
            a = (a * mm[c] + t2[c]) >> t1[c]
            if a > 0x7FFFFFFF:
                a = 0x7FFFFFFF
            elif a < -0x80000000:
                a = -0x80000000
        v = a + zy
        if v > 0x7FFFFFFF:
            v -= 0x100000000
        elif v < -0x80000000:
            v += 0x100000000
        _clamp_store(y, i, v, lo, hi, mask)
        i += 1


def _rows_of(w, rows, K):
    """Views of the rows of a row-major matrix with K columns."""
    if _MV is not None:
        mv = _MV(w)
        return [mv[n * K:n * K + K] for n in range(rows)]
    return [w[n * K:n * K + K] for n in range(rows)]


def _im2col(xz, row, ih0, iw0, in_h, in_w, C, k_h, k_w, lo, hi):
    """row = input channels [lo, hi) of every tap of the window at (ih0, iw0), 0 for padding."""
    j = 0
    nc = hi - lo
    for kh in range(k_h):
        ih = ih0 + kh
        okh = 0 <= ih < in_h
        for kw in range(k_w):
            iw = iw0 + kw
            if okh and 0 <= iw < in_w:
                s = (ih * in_w + iw) * C + lo
                if _SLICE and nc > 2:
                    row[j:j + nc] = xz[s:s + nc]
                else:
                    for t in range(nc):
                        row[j + t] = xz[s + t]
            else:
                for t in range(j, j + nc):
                    row[t] = 0
            j += nc


def _shifted(x, n, zx):
    """x - zx as int16."""
    xz = _zeros('h', n)
    for i in range(n):
        xz[i] = x[i] - zx
    return xz


# ---- fixed point (mt_fixedpoint.c) -------------------------------------------------------------

def _scale_round(x, mult, shift):
    """round(x * mult * 2^(shift - 31)), ties upward, shift clamped to [-31, 31], saturated."""
    if shift > 31:
        shift = 31
    elif shift < -31:
        shift = -31
    r = 31 - shift
    v = x * mult
    if r:
        v = (v + (1 << (r - 1))) >> r
    if v > _I32MAX:
        return _I32MAX
    if v < _I32MIN:
        return _I32MIN
    return v


def _srdhm(a, b):
    if a == _I32MIN and b == _I32MIN:
        return _I32MAX
    return (a * b + 0x40000000) >> 31


def _rdbpot(x, e):
    k = (1 << e) - 1
    return (x >> e) + ((x & k) > (k >> 1) + (x < 0))


def _requantize(acc, mult, shift, dr):
    if not dr:
        return _scale_round(acc, mult, shift)
    if shift > 0:
        acc = (((acc << shift) + _B31) & _M32) - _B31
        shift = 0
    return _rdbpot(_srdhm(acc, mult), -shift)


def _sat_mul_pot(x, e):
    if e > 0:
        t = (1 << (31 - e)) - 1
        if x > t:
            return _I32MAX
        if x < -t:
            return _I32MIN
        return x << e
    if e < 0:
        return _rdbpot(x, -e)
    return x


def _sgd_w(w, gw, taps, base, stride, lo, hi, mult, shift, state):
    """SGD steps of the weights w[base + t*stride + ci], t < taps, ci in [lo, hi), gradients gw
    in that order: mt_sgd_step (one xorshift32 draw each) and the clamp to [-127, 127]."""
    if shift > 31:
        shift = 31
    elif shift < -31:
        shift = -31
    r = 31 - shift
    half = (1 << (r - 1)) if r else 0
    j = 0
    for t in range(taps):
        p = base + t * stride
        for i in range(p + lo, p + hi):
            G = gw[j]
            j += 1
            s = state ^ ((state << 13) & 0xFFFFFFFF)
            s ^= s >> 17
            state = s ^ ((s << 5) & 0xFFFFFFFF)
            if G:
                v = (G * mult + half) >> r
                if v > 0x7FFF0000:
                    v = 0x7FFF0000
                elif v < -0x80000000:
                    v = -0x80000000
                v = w[i] - ((v + (state >> 16)) >> 16)
            else:                            # a zero gradient steps by 0, but -128 still clamps
                v = w[i]
                if v >= -127:
                    continue
            w[i] = -127 if v < -127 else (127 if v > 127 else v)
    return state


def _sgd_b(bias, c, G, mult, shift, state):
    """SGD step of bias[c] with a saturating int32 subtraction."""
    v = _scale_round(G, mult, shift)
    if v > 0x7FFF0000:
        v = 0x7FFF0000
    s = state ^ ((state << 13) & 0xFFFFFFFF)
    s ^= s >> 17
    state = s ^ ((s << 5) & 0xFFFFFFFF)
    v = bias[c] - ((v + (state >> 16)) >> 16)
    bias[c] = 0x7FFFFFFF if v > 0x7FFFFFFF else (-0x80000000 if v < -0x80000000 else v)
    return state


def _update_args(g, have_bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift, rng):
    """The binding's update_arg; returns (rows, lo, hi, w_mult, w_shift, b_mult, b_shift, rng, back)."""
    nb = _nbytes(rows, 'rows', 'uint16')
    rows = _rd(rows, 'H', nb >> 1, 'rows')
    out_c = g[5]
    prev = -1
    for r in rows:
        if r >= out_c or r <= prev:
            raise ValueError('rows: must be ascending output channels < out_c')
        prev = r
    lo = _int(cin_lo, 0, g[2], 'cin_lo')
    hi = _int(cin_hi, lo, g[2], 'cin_hi')
    weights = hi > lo
    wm = _rd(w_mult, 'i', out_c, 'w_mult', not weights)
    ws = _rd(w_shift, 'i', out_c, 'w_shift', not weights)
    bm = _rd(b_mult, 'i', out_c, 'b_mult', True)
    bs = _rd(b_shift, 'i', out_c, 'b_shift', bm is None)
    if bm is not None and not have_bias:
        raise ValueError('bias: required when b_mult is given')
    for c in range(out_c):
        if (ws is not None and (ws[c] < -64 or ws[c] > 64)) or (bs is not None and (bs[c] < -64 or bs[c] > 64)):
            raise ValueError('w_shift/b_shift: must be in [-64, 64]')
    st, back = _wr(rng, 'I', 1, 'rng')
    if st[0] == 0:
        raise ValueError('rng: state must not be 0')
    return rows, lo, hi, wm, ws, bm, bs, st, back


# ---- functions -----------------------------------------------------------------------------------

def requantize(acc, mult, shift, rounding):
    """TFLite MultiplyByQuantizedMultiplier of one value (rounding 0 single, 1 double)."""
    acc = _int(acc, _I32MIN, _I32MAX, 'acc')
    mult = _int(mult, 0, _I32MAX, 'mult')
    shift = _int(shift, -31, 30, 'shift')
    return _requantize(acc, mult, shift, _int(rounding, 0, 1, 'rounding'))


def _scratch_update(g, lo, hi):
    kc = g[6] * g[7] * (hi - lo)
    M = g[3] * g[4]
    return ((2 * kc * M + 3) & ~3) + ((4 * M + 3) & ~3) + 8 * kc


def _scratch_forward(g):
    return 4 * g[6] * g[7] * g[2] + (2 * g[1] * g[2] if g[6] == 1 else 0)


def conv_forward_scratch(geom):
    return _scratch_forward(_geom(geom))


def conv_update_scratch(geom, cin_lo, cin_hi):
    g = _geom(geom)
    lo = _int(cin_lo, 0, g[2], 'cin_lo')
    hi = _int(cin_hi, lo, g[2], 'cin_hi')
    return _scratch_update(g, lo, hi)


def conv_forward(geom, x, zx, w, bias, mult, shift, zy, act_min, act_max, rounding, y, mask, scratch):
    g = _geom(geom)
    _geom_kind(g, 0)
    in_h, in_w, C, out_h, out_w, N, k_h, k_w, s_h, s_w, p_t, p_l, _ = g
    K = k_h * k_w * C
    if K > 65536:
        raise ValueError('geom: k_h * k_w * in_c must be <= 65536')
    n_in = in_h * in_w * C
    M = out_h * out_w
    n_out = M * N
    x = _rd(x, 'b', n_in, 'x')
    zx = _int(zx, -128, 127, 'zx')
    w = _rd(w, 'b', N * K, 'w')
    bias = _rd(bias, 'i', N, 'bias', True)
    rq = _requant(mult, shift, zy, act_min, act_max, rounding, N)
    yt, yb = _wr(y, 'b', n_out, 'y')
    mask = _raw(mask, (n_out + 7) >> 3, 'mask', True, True)
    _raw(scratch, _scratch_forward(g), 'scratch', True)

    xz = _shifted(x, n_in, zx)
    if _MV is not None and not _CPY:         # slices without copies (CPython arrays take arrays only)
        xz = _MV(xz)
    wr = _rows_of(w, N, K)
    r0 = _zeros('h', K)
    r1 = _zeros('h', K)
    acc0 = [0] * N
    acc1 = [0] * N
    oh = ow = 0
    for m in range(0, M, 2):
        two = m + 1 < M
        _im2col(xz, r0, oh * s_h - p_t, ow * s_w - p_l, in_h, in_w, C, k_h, k_w, 0, C)
        ow += 1
        if ow == out_w:
            ow = 0
            oh += 1
        if two:
            _im2col(xz, r1, oh * s_h - p_t, ow * s_w - p_l, in_h, in_w, C, k_h, k_w, 0, C)
            ow += 1
            if ow == out_w:
                ow = 0
                oh += 1
        for n in range(0, N - 1, 2):
            b0 = wr[n]
            b1 = wr[n + 1]
            c00 = c01 = 0
            if two:
                c10 = c11 = 0
                for t in range(K):
                    x0 = r0[t]
                    x1 = r1[t]
                    w0 = b0[t]
                    w1 = b1[t]
                    c00 += x0 * w0
                    c01 += x0 * w1
                    c10 += x1 * w0
                    c11 += x1 * w1
                acc1[n] = c10
                acc1[n + 1] = c11
            else:
                for t in range(K):
                    x0 = r0[t]
                    c00 += x0 * b0[t]
                    c01 += x0 * b1[t]
            acc0[n] = c00
            acc0[n + 1] = c01
        if N & 1:
            b0 = wr[N - 1]
            c00 = c10 = 0
            if two:
                for t in range(K):
                    w0 = b0[t]
                    c00 += r0[t] * w0
                    c10 += r1[t] * w0
                acc1[N - 1] = c10
            else:
                for t in range(K):
                    c00 += r0[t] * b0[t]
            acc0[N - 1] = c00
        _store_row(acc0, bias, N, rq, yt, m * N, mask)
        if two:
            _store_row(acc1, bias, N, rq, yt, m * N + N, mask)
    _done(yt, yb)


def _scatter(gx, col, ih0, iw0, in_h, in_w, C, k_h, k_w):
    """col2im of one position: gx[input of tap (kh, kw), ci] += col[(kh*k_w + kw)*C + ci]."""
    j = 0
    for kh in range(k_h):
        ih = ih0 + kh
        if ih < 0 or ih >= in_h:
            j += k_w * C
            continue
        for kw in range(k_w):
            iw = iw0 + kw
            if 0 <= iw < in_w:
                s = (ih * in_w + iw) * C
                for t in range(C):
                    gx[s + t] += col[j + t]
            j += C


def conv_input_grad(geom, gy, w, gx_acc):
    g = _geom(geom)
    _geom_kind(g, 0)
    in_h, in_w, C, out_h, out_w, N, k_h, k_w, s_h, s_w, p_t, p_l, _ = g
    taps = k_h * k_w
    K = taps * C
    n_in = in_h * in_w * C
    M = out_h * out_w
    gy = _rd(gy, 'h', M * N, 'gy')
    w = _rd(w, 'b', N * K, 'w')
    gx, gxb = _wr(gx_acc, 'i', n_in, 'gx_acc')
    _grad_bound(gy, M * N, 128 * N * taps, 'max|gy| * 128 * out_c * k_h * k_w must be < 2^31')

    for i in range(n_in):
        gx[i] = 0
    wr = _rows_of(w, N, K)
    oh = ow = 0
    for m in range(0, M, 2):
        two = m + 1 < M
        col0 = [0] * K
        col1 = [0] * K if two else None
        p0 = m * N
        p1 = p0 + N
        for n in range(0, N - 1, 2):
            g00 = gy[p0 + n]
            g01 = gy[p0 + n + 1]
            b0 = wr[n]
            b1 = wr[n + 1]
            if two:
                g10 = gy[p1 + n]
                g11 = gy[p1 + n + 1]
                if not (g00 or g01 or g10 or g11):
                    continue
                for k in range(K):
                    w0 = b0[k]
                    w1 = b1[k]
                    col0[k] += g00 * w0 + g01 * w1
                    col1[k] += g10 * w0 + g11 * w1
            elif g00 or g01:
                for k in range(K):
                    col0[k] += g00 * b0[k] + g01 * b1[k]
        if N & 1:
            b0 = wr[N - 1]
            g00 = gy[p0 + N - 1]
            if g00:
                for k in range(K):
                    col0[k] += g00 * b0[k]
            if two:
                g10 = gy[p1 + N - 1]
                if g10:
                    for k in range(K):
                        col1[k] += g10 * b0[k]
        _scatter(gx, col0, oh * s_h - p_t, ow * s_w - p_l, in_h, in_w, C, k_h, k_w)
        ow += 1
        if ow == out_w:
            ow = 0
            oh += 1
        if two:
            _scatter(gx, col1, oh * s_h - p_t, ow * s_w - p_l, in_h, in_w, C, k_h, k_w)
            ow += 1
            if ow == out_w:
                ow = 0
                oh += 1
    _done(gx, gxb)


def _update_checks(g, x, zx, gy, g_exp, w, n_w, bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift,
                   rng):
    """The argument checks conv_update and dwconv_update share, in the binding's order (n_w: the
    layer's weight count).  Returns the checked values and the buffers to hand back (_done)."""
    n_in = g[0] * g[1] * g[2]
    M = g[3] * g[4]
    N = g[5]
    x = _rd(x, 'b', n_in, 'x')
    zx = _int(zx, -128, 127, 'zx')
    gy = _rd(gy, 'h', M * N, 'gy')
    g_exp = _int(g_exp, -64, 64, 'g_exp')
    rows, lo, hi, wm, ws, bm, bs, st, sb = _update_args(g, bias is not None, rows, cin_lo, cin_hi, w_mult,
                                                        w_shift, b_mult, b_shift, rng)
    weights = hi > lo
    if weights:
        w, wb = _wr(w, 'b', n_w, 'w')
    else:                                    # frozen weights may stay in read-only memory
        w, wb = _rd(w, 'b', n_w, 'w'), None
    bias, bb = _wr(bias, 'i', N, 'bias', True)
    _grad_bound(gy, M * N, 255 * M if weights else M, 'max|gy| * 255 * out_h * out_w must be < 2^31')
    return x, zx, gy, g_exp, w, wb, bias, bb, rows, lo, hi, wm, ws, bm, bs, st, sb


def conv_update(geom, x, zx, gy, g_exp, w, bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift,
                rng, scratch):
    g = _geom(geom)
    _geom_kind(g, 0)
    in_h, in_w, C, out_h, out_w, N, k_h, k_w, s_h, s_w, p_t, p_l, _ = g
    taps = k_h * k_w
    n_in = in_h * in_w * C
    M = out_h * out_w
    (x, zx, gy, g_exp, w, wb, bias, bb, rows, lo, hi, wm, ws, bm, bs, st, sb) = _update_checks(
        g, x, zx, gy, g_exp, w, N * taps * C, bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift, rng)
    weights = hi > lo
    _raw(scratch, _scratch_update(g, lo, hi), 'scratch', True)

    kc = taps * (hi - lo)
    cols = None
    if kc:
        xz = _shifted(x, n_in, zx)
        if _MV is not None and not _CPY:
            xz = _MV(xz)
        cols = []
        oh = ow = 0
        for m in range(M):
            row = _zeros('h', kc)
            _im2col(xz, row, oh * s_h - p_t, ow * s_w - p_l, in_h, in_w, C, k_h, k_w, lo, hi)
            cols.append(row)
            ow += 1
            if ow == out_w:
                ow = 0
                oh += 1
    state = st[0]
    do_bias = bm is not None and bias is not None
    nr = len(rows)
    for r in range(0, nr, 2):
        two = r + 1 < nr
        c0 = rows[r]
        c1 = rows[r + 1] if two else c0
        s0 = s1 = 0
        gw0 = [0] * kc
        gw1 = [0] * kc
        for m in range(0, M, 2):             # two positions at a time
            p0 = m * N
            v00 = gy[p0 + c0]
            v10 = gy[p0 + c1]
            if m + 1 < M:
                v01 = gy[p0 + N + c0]
                v11 = gy[p0 + N + c1]
            else:
                v01 = v11 = 0
            s0 += v00 + v01
            s1 += v10 + v11
            if not kc:
                continue
            if v01 or v11:
                xa = cols[m]
                xb = cols[m + 1]
                for j in range(kc):
                    xv = xa[j]
                    xw = xb[j]
                    gw0[j] += v00 * xv + v01 * xw
                    gw1[j] += v10 * xv + v11 * xw
            elif v00 or v10:
                xa = cols[m]
                for j in range(kc):
                    xv = xa[j]
                    gw0[j] += v00 * xv
                    gw1[j] += v10 * xv
        for c, gw, gs in ((c0, gw0, s0), (c1, gw1, s1)) if two else ((c0, gw0, s0),):
            if weights:
                state = _sgd_w(w, gw, taps, c * taps * C, C, lo, hi, wm[c], ws[c] + g_exp + 16, state)
            if do_bias:
                state = _sgd_b(bias, c, gs, bm[c], bs[c] + g_exp + 16, state)
    st[0] = state
    _done(w, wb)
    _done(bias, bb)
    _done(st, sb)


def _window_taps(g):
    """Per output position (row-major): (input offset of channel 0, tap index kh * k_w + kw) of
    every tap of its window that lies inside the input."""
    in_h, in_w, C, out_h, out_w, _, k_h, k_w, s_h, s_w, p_t, p_l, _ = g
    for oh in range(out_h):
        ih0 = oh * s_h - p_t
        for ow in range(out_w):
            iw0 = ow * s_w - p_l
            yield [(((ih0 + kh) * in_w + iw0 + kw) * C, kh * k_w + kw) for kh in range(k_h) for kw in range(k_w)
                   if 0 <= ih0 + kh < in_h and 0 <= iw0 + kw < in_w]


def dwconv_forward(geom, x, zx, w, bias, mult, shift, zy, act_min, act_max, rounding, y, mask):
    g = _geom(geom)
    _geom_kind(g, 1)
    in_h, in_w, C, out_h, out_w, N, k_h, k_w, s_h, s_w, p_t, p_l, dm = g
    n_in = in_h * in_w * C
    n_out = out_h * out_w * N
    x = _rd(x, 'b', n_in, 'x')
    zx = _int(zx, -128, 127, 'zx')
    w = _rd(w, 'b', k_h * k_w * N, 'w')
    bias = _rd(bias, 'i', N, 'bias', True)
    rq = _requant(mult, shift, zy, act_min, act_max, rounding, N)
    yt, yb = _wr(y, 'b', n_out, 'y')
    mask = _raw(mask, (n_out + 7) >> 3, 'mask', True, True)

    xz = _shifted(x, n_in, zx)
    acc = [0] * N
    i = 0
    for taps in _window_taps(g):
        for c in range(N):
            acc[c] = 0
        for xb, t in taps:
            wb = t * N
            if dm == 1:
                for c in range(N):
                    acc[c] += xz[xb + c] * w[wb + c]
            else:
                oc = 0
                for ic in range(C):
                    xv = xz[xb + ic]
                    for oc in range(oc, oc + dm):
                        acc[oc] += xv * w[wb + oc]
                    oc += 1
        _store_row(acc, bias, N, rq, yt, i, mask)
        i += N
    _done(yt, yb)


def dwconv_input_grad(geom, gy, w, gx_acc):
    g = _geom(geom)
    _geom_kind(g, 1)
    in_h, in_w, C, out_h, out_w, N, k_h, k_w, s_h, s_w, p_t, p_l, dm = g
    n_in = in_h * in_w * C
    n_out = out_h * out_w * N
    gy = _rd(gy, 'h', n_out, 'gy')
    w = _rd(w, 'b', k_h * k_w * N, 'w')
    gx, gxb = _wr(gx_acc, 'i', n_in, 'gx_acc')
    _grad_bound(gy, n_out, 128 * k_h * k_w * dm, 'max|gy| * 128 * k_h * k_w * depth_mult must be < 2^31')

    for i in range(n_in):
        gx[i] = 0
    gp = 0
    for taps in _window_taps(g):
        for dst, t in taps:
            wt = t * N - gp
            if dm == 1:
                for oc in range(gp, gp + N):
                    gx[dst] += gy[oc] * w[wt + oc]
                    dst += 1
            else:
                oc = gp
                for ic in range(dst, dst + C):
                    s = 0
                    for oc in range(oc, oc + dm):
                        s += gy[oc] * w[wt + oc]
                    gx[ic] += s
                    oc += 1
        gp += N
    _done(gx, gxb)


def dwconv_update(geom, x, zx, gy, g_exp, w, bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift,
                  rng, scratch):
    g = _geom(geom)
    _geom_kind(g, 1)
    in_h, in_w, C, out_h, out_w, N, k_h, k_w, s_h, s_w, p_t, p_l, dm = g
    taps = k_h * k_w
    (x, zx, gy, g_exp, w, wb, bias, bb, rows, lo, hi, wm, ws, bm, bs, st, sb) = _update_checks(
        g, x, zx, gy, g_exp, w, taps * N, bias, rows, cin_lo, cin_hi, w_mult, w_shift, b_mult, b_shift, rng)
    weights = hi > lo
    _raw(scratch, 4 * taps, 'scratch', True)

    state = st[0]
    do_bias = bm is not None and bias is not None
    acc = [0] * taps
    for oc in rows:
        ic = oc // dm
        for t in range(taps):
            acc[t] = 0
        gsum = 0
        gp = oc
        for oh in range(out_h):
            ih0 = oh * s_h - p_t
            for ow in range(out_w):
                gv = gy[gp]
                gp += N
                gsum += gv
                if not weights or not gv:
                    continue
                iw0 = ow * s_w - p_l
                for kh in range(k_h):
                    ih = ih0 + kh
                    if ih < 0 or ih >= in_h:
                        continue
                    xb = ih * in_w * C + ic
                    t = kh * k_w
                    for kw in range(k_w):
                        iw = iw0 + kw
                        if 0 <= iw < in_w:
                            acc[t + kw] += gv * (x[xb + iw * C] - zx)
        if weights:
            state = _sgd_w(w, acc, taps, oc, N, 0, 1, wm[oc], ws[oc] + g_exp + 16, state)
        if do_bias:
            state = _sgd_b(bias, oc, gsum, bm[oc], bs[oc] + g_exp + 16, state)
    st[0] = state
    _done(w, wb)
    _done(bias, bb)
    _done(st, sb)


def _pool_windows(g):
    """Per output position (row-major): the input offsets (channel 0) of its window clipped to the
    input, in row-major window order (mt_pool.c's window())."""
    in_h, in_w, C, out_h, out_w, _, k_h, k_w, s_h, s_w, p_t, p_l, _ = g
    for oh in range(out_h):
        ih0 = oh * s_h - p_t
        h0 = ih0 if ih0 > 0 else 0
        h1 = ih0 + k_h if ih0 + k_h < in_h else in_h
        for ow in range(out_w):
            iw0 = ow * s_w - p_l
            w0 = iw0 if iw0 > 0 else 0
            w1 = iw0 + k_w if iw0 + k_w < in_w else in_w
            yield [(ih * in_w + iw) * C for ih in range(h0, h1) for iw in range(w0, w1)]


def _zeroed_acc(gx_acc, n):
    gx, gxb = _wr(gx_acc, 'i', n, 'gx_acc')
    for i in range(n):
        gx[i] = 0
    return gx, gxb


def maxpool_forward(geom, x, y):
    g = _pool_geom(geom)
    C = g[2]
    x = _rd(x, 'b', g[0] * g[1] * C, 'x')
    yt, yb = _wr(y, 'b', g[3] * g[4] * C, 'y')
    i = 0
    for win in _pool_windows(g):
        for c in range(C):
            best = -128
            for p in win:
                v = x[p + c]
                if v > best:
                    best = v
            yt[i] = best
            i += 1
    _done(yt, yb)


def maxpool_input_grad(geom, x, gy, gx_acc):
    g = _pool_geom(geom)
    C = g[2]
    n_in = g[0] * g[1] * C
    x = _rd(x, 'b', n_in, 'x')
    gy = _rd(gy, 'h', g[3] * g[4] * C, 'gy')
    gx, gxb = _zeroed_acc(gx_acc, n_in)
    i = 0
    for win in _pool_windows(g):
        for c in range(C):
            best = -129
            at = -1
            for p in win:
                v = x[p + c]
                if v > best:
                    best = v
                    at = p + c
            if at >= 0:
                gx[at] += gy[i]
            i += 1
    _done(gx, gxb)


def avgpool_forward(geom, x, act_min, act_max, y):
    g = _pool_geom(geom)
    C = g[2]
    x = _rd(x, 'b', g[0] * g[1] * C, 'x')
    lo = _int(act_min, -128, 127, 'act_min')
    hi = _int(act_max, lo, 127, 'act_max')
    yt, yb = _wr(y, 'b', g[3] * g[4] * C, 'y')
    i = 0
    for win in _pool_windows(g):
        count = len(win)
        half = count >> 1
        for c in range(C):
            s = 0
            for p in win:
                s += x[p + c]
            if count > 0:
                v = (s + half) // count if s > 0 else -((half - s) // count)
            else:
                v = 0
            yt[i] = lo if v < lo else (hi if v > hi else v)
            i += 1
    _done(yt, yb)


def avgpool_input_grad(geom, gy, gx_acc):
    g = _pool_geom(geom)
    C = g[2]
    gy = _rd(gy, 'h', g[3] * g[4] * C, 'gy')
    gx, gxb = _zeroed_acc(gx_acc, g[0] * g[1] * C)
    i = 0
    for win in _pool_windows(g):
        count = len(win)
        recip = ((1 << 13) + (count >> 1)) // count if count > 0 else 0
        for c in range(C):
            v = gy[i] * recip
            i += 1
            if v:
                for p in win:
                    gx[p + c] += v
    _done(gx, gxb)


def _add_in(v, z, ls, m, e, k):
    """One input of the int8 ADD: ((v - z) << ls) wrapped, SRDHM by m, rounding divide by 2^e."""
    a = (((v - z) << ls) + _B31 & _M32) - _B31
    a = (a * m + 0x40000000) >> 31
    return (a >> e) + ((a & k) > (k >> 1) + (a < 0))


def add_forward(x1, x2, params, y, mask):
    n = _nbytes(x1, 'x1', 'int8')
    x1 = _rd(x1, 'b', n, 'x1')
    x2 = _rd(x2, 'b', n, 'x2')
    p = tuple(_rd(params, 'i', 12, 'params'))
    z1, z2, zy, ls, m1, s1, m2, s2, my, sy, lo, hi = p
    if (z1 < -128 or z1 > 127 or z2 < -128 or z2 > 127 or zy < -128 or zy > 127 or ls < 0 or ls > 22
            or m1 < 0 or m2 < 0 or my < 0 or s1 < -31 or s1 > 0 or s2 < -31 or s2 > 0 or sy < -31 or sy > 0
            or lo < -128 or hi > 127 or lo > hi):
        raise ValueError('params: out of range (zero points int8, left_shift 0..22, shifts -31..0)')
    yt, yb = _wr(y, 'b', n, 'y')
    mask = _raw(mask, (n + 7) >> 3, 'mask', True, True)
    e1 = -s1
    k1 = (1 << e1) - 1
    e2 = -s2
    k2 = (1 << e2) - 1
    ey = -sy
    ky = (1 << ey) - 1
    ty = ky >> 1
    lut = n > 256
    if lut:                                  # the inputs take 256 values: tabulate them
        l1 = [_add_in(v, z1, ls, m1, e1, k1) for v in range(-128, 128)]
        l2 = [_add_in(v, z2, ls, m2, e2, k2) for v in range(-128, 128)]
    for i in range(n):
        if lut:
            a = l1[x1[i] + 128] + l2[x2[i] + 128]
        else:
            a = _add_in(x1[i], z1, ls, m1, e1, k1) + _add_in(x2[i], z2, ls, m2, e2, k2)
        a = (a * my + 0x40000000) >> 31
        v = (a >> ey) + ((a & ky) > ty + (a < 0)) + zy
        _clamp_store(yt, i, v, lo, hi, mask)
    _done(yt, yb)


def clamp_forward(x, lo, hi, y, mask):
    n = _nbytes(x, 'x', 'int8')
    x = _rd(x, 'b', n, 'x')
    lo = _int(lo, -128, 127, 'lo')
    hi = _int(hi, lo, 127, 'hi')
    yt, yb = _wr(y, 'b', n, 'y')
    mask = _raw(mask, (n + 7) >> 3, 'mask', True, True)
    if mask is None:
        for i in range(n):
            v = x[i]
            yt[i] = lo if v < lo else (hi if v > hi else v)
    else:
        for i in range(n):
            _clamp_store(yt, i, x[i], lo, hi, mask)
    _done(yt, yb)


# ---- integer softmax (TFLite reference, gemmlowp fixed point) ----

_EXP_MULTS = (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242)


def _exp_quarter(a):
    x = a + (1 << 28)
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    poly = _sat_mul_pot(_srdhm(_sat_mul_pot(x4, -2) + x3, 715827883) + x2, -1)
    return 1895147668 + _srdhm(1895147668, x + poly)


def _exp_negative(a):
    a_mod = (a & 0xFFFFFF) - 0x1000000
    result = _exp_quarter(_sat_mul_pot(a_mod, 5))
    rem = a_mod - a
    for i in range(7):
        if rem & (1 << (24 + i)):
            result = _srdhm(result, _EXP_MULTS[i])
    if a == 0:
        result = _I32MAX
    return result


def _one_over_one_plus_x(a):
    hd = ((a & _M32) >> 1) + 0x40000000
    if hd > _I32MAX:
        hd -= _B32
    x = 1515870810 + _srdhm(hd, -1010580540)
    for _ in range(3):
        x = x + _sat_mul_pot(_srdhm(x, (1 << 29) - _srdhm(hd, x)), 2)
    return _sat_mul_pot(x, 1)


def softmax_forward(x, rows, depth, beta_mult, beta_left_shift, diff_min, y):
    rows = _int(rows, 1, _MAX_ELEMS, 'rows')
    depth = _int(depth, 1, 4096, 'depth')
    if rows * depth > _MAX_ELEMS:
        raise ValueError('rows: rows * depth must be <= 2^24')
    n = rows * depth
    x = _rd(x, 'b', n, 'x')
    bm = _int(beta_mult, 0, _I32MAX, 'beta_mult')
    bls = _int(beta_left_shift, 0, 31, 'beta_left_shift')
    diff_min = _int(diff_min, _I32MIN, 0, 'diff_min')
    yt, yb = _wr(y, 'b', n, 'y')
    lut = [None] * 256                       # exp of each diff in [-255, 0], filled on demand
    es = [0] * depth
    for base in range(0, n, depth):
        mx = -128
        for i in range(base, base + depth):
            if x[i] > mx:
                mx = x[i]
        total = 0
        for c in range(depth):
            d = x[base + c] - mx
            if d >= diff_min:
                e = lut[-d]
                if e is None:
                    s = (((d << bls) + _B31) & _M32) - _B31
                    e = lut[-d] = _exp_negative(_srdhm(s, bm))
                es[c] = e
                total += _rdbpot(e, 12)
            else:
                es[c] = None
        total &= _M32
        headroom = 32
        t = total
        while t:
            t >>= 1
            headroom -= 1
        shifted = ((total << headroom) & _M32) - _B31
        scale = _one_over_one_plus_x(shifted)
        ex = 12 - headroom + 31 - 8
        for c in range(depth):
            e = es[c]
            if e is None:
                v = -128
            else:
                v = _rdbpot(_srdhm(scale, e), ex) - 128
                v = 127 if v > 127 else (-128 if v < -128 else v)
            yt[base + c] = v
    _done(yt, yb)


def softmax_grad(y, label, gy):
    depth = _nbytes(y, 'y', 'int8')
    y = _rd(y, 'b', depth, 'y')
    label = _int(label, 0, depth - 1, 'label')
    gt, gb = _wr(gy, 'h', depth, 'gy')
    for c in range(depth):
        gt[c] = (y[c] + 128) << 7
    gt[label] -= 1 << 15
    _done(gt, gb)


def grad_rescale(gy, m, n, mult, shift, out):
    m = _int(m, 1, _MAX_ELEMS, 'm')
    n = _int(n, 1, _MAX_ELEMS, 'n')
    if m * n > _MAX_ELEMS:
        raise ValueError('m: m * n must be <= 2^24')
    gy = _rd(gy, 'h', m * n, 'gy')
    mult = _rd(mult, 'i', n, 'mult')
    shift = _rd(shift, 'i', n, 'shift')
    ot, ob = _wr(out, 'h', m * n, 'out')
    rs = []
    hs = []
    for c in range(n):
        s = shift[c]
        s = 31 if s > 31 else (-31 if s < -31 else s)
        rs.append(31 - s)
        hs.append((1 << (30 - s)) if s < 31 else 0)
    i = 0
    for _ in range(m):
        for c in range(n):
            v = (gy[i] * mult[c] + hs[c]) >> rs[c]
            ot[i] = 32767 if v > 32767 else (-32768 if v < -32768 else v)
            i += 1
    _done(ot, ob)


def grad_narrow(acc, mask, out):
    n = _nbytes(acc, 'acc', 'int32') >> 2
    acc = _rd(acc, 'i', n, 'acc')
    mask = _raw(mask, (n + 7) >> 3, 'mask', False, True)
    ot, ob = _wr(out, 'h', n, 'out')
    mx = 0
    for i in range(n):
        if mask is not None and not (mask[i >> 3] >> (i & 7)) & 1:
            continue
        a = acc[i]
        if a < 0:
            a = -a
        if a > mx:
            mx = a
    r = 0
    while (mx >> r) >= 16384:
        r += 1
    k = (1 << r) - 1
    h = k >> 1
    for i in range(n):
        if mask is not None and not (mask[i >> 3] >> (i & 7)) & 1:
            ot[i] = 0
        else:
            a = acc[i]
            ot[i] = (a >> r) + ((a & k) > h + (a < 0))
    _done(ot, ob)
    return r


def grad_mask(g, mask):
    n = _nbytes(g, 'g', 'int16') >> 1
    o, code, sz = _buf(g, 'h', n, 'g', True)
    mask = _raw(mask, (n + 7) >> 3, 'mask')
    for i in range(n):
        if not (mask[i >> 3] >> (i & 7)) & 1:
            if sz == 2:
                o[i] = 0
            else:                            # raw bytes: zero both bytes of the element
                o[2 * i] = 0
                o[2 * i + 1] = 0


_crc = None


def _crc_tables():
    # zlib's CRC-32 table split in 16-bit halves: no big ints on 32-bit MicroPython ports
    global _crc
    if _crc is None:
        hi = _A('H', bytes(512))
        lo = _A('H', bytes(512))
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ (0xEDB88320 if c & 1 else 0)
            hi[i] = c >> 16
            lo[i] = c & 0xFFFF
        _crc = (hi, lo)
    return _crc


def crc32(data, crc=0):
    """zlib's CRC-32 of a buffer's bytes, continuing from crc."""
    inf = _info(data)
    if inf is None:
        raise TypeError('data: expected a buffer')
    if not isinstance(crc, int):
        raise TypeError('crc: expected an int')
    d = inf[0]
    if inf[3] != 1 or not isinstance(d, (bytes, bytearray)):
        d = bytes(d)
    th, tl = _crc_tables()
    c = (crc & _M32) ^ _M32
    hi = c >> 16
    lo = c & 0xFFFF
    for b in d:
        k = (lo ^ b) & 255
        lo = tl[k] ^ (((hi & 255) << 8) | (lo >> 8))
        hi = th[k] ^ (hi >> 8)
    return ((hi << 16) | lo) ^ _M32


# ---- native code (MicroPython) ---------------------------------------------------------------------
#
# `@micropython.native` is a compile-time decorator: written in this file it would make the whole
# module a SyntaxError on ports without the native emitter.  So the file holds plain Python, and on
# MicroPython the import recompiles the hot functions from this same source file as native code
# (about twice as fast), when the port can: a native emitter, `exec`, and this module loaded from a
# .py file (not frozen, not an .mpy: compile those with `mpy-cross -X emit=native` instead).  Any
# failure keeps the bytecode versions.  use_native() switches between the two.

_HOT = ('_store_row', '_im2col', '_scatter', '_shifted', '_grad_bound', '_sgd_w', 'conv_forward',
        'conv_input_grad', 'conv_update', 'dwconv_forward', 'dwconv_input_grad', 'dwconv_update',
        'maxpool_forward', 'maxpool_input_grad', 'avgpool_forward', 'avgpool_input_grad', 'add_forward',
        'clamp_forward', 'softmax_forward', 'grad_rescale', 'grad_narrow', 'grad_mask', 'crc32')
_PLAIN = None
_NATIVE = None
NATIVE = False          # True while the hot functions run as MicroPython native code


def _compile_native():
    if not __file__.endswith('.py'):
        return None
    d = {}
    exec('@micropython.native\ndef f(a):\n    return a + 1\n', d)
    if d['f'](1) != 2:
        return None
    parts = []
    keep = False
    with open(__file__) as f:
        for line in f:
            if line[:1] not in ' \t\r\n':
                keep = False
                if line.startswith('def '):
                    keep = line[4:line.index('(')] in _HOT
                    if keep:
                        parts.append('@micropython.native\n')
            if keep:
                parts.append(line)
    g = dict(globals())
    exec(''.join(parts), g)                  # into a copy: the module stays intact on failure
    return g


def use_native(on=True):
    """Run the hot functions as native code (if the port could compile them) or as bytecode;
    returns whether native code now runs."""
    global NATIVE
    table = _NATIVE if on else _PLAIN
    if table is None:
        return NATIVE
    g = globals()
    for name in _HOT:
        g[name] = table[name]
    NATIVE = bool(on)
    return NATIVE


def _init_native():
    global _PLAIN, _NATIVE
    if _CPY:
        return
    try:
        g = _compile_native()
        if g is None:
            return
        nat = {}
        for name in _HOT:
            nat[name] = g[name]
        plain = {}
        for name in _HOT:
            plain[name] = globals()[name]
        _PLAIN = plain
        _NATIVE = nat
        use_native(True)
        y = bytearray(3)
        clamp_forward(bytearray(b'\x05\xfb\x80'), -4, 4, y, None)
        if crc32(b'123456789') != 0xCBF43926 or bytes(y) != b'\x04\xfc\xfc':
            use_native(False)
            _NATIVE = None
    except Exception:                        # no native emitter, no exec, no source, no memory
        if _PLAIN is not None:
            use_native(False)
        _PLAIN = _NATIVE = None


_init_native()

// MicroPython binding of the microtrain kernels: module `mtkernels`.
//
// One source for both builds: a user C module (micropython.mk / micropython.cmake, compiled into
// the firmware) and a dynamic native module (.mpy, Makefile + py/dynruntime.mk).
//
// Every function checks its arguments before any kernel runs: buffer element types, exact
// lengths, alignment, geometry limits and the int32 overflow bounds stated in the kernels.
// Errors are ValueError/TypeError whose message starts with the argument's name.
//
// Buffers: an int8 argument takes a buffer of typecode 'b' or raw bytes ('B': bytes, bytearray,
// memoryview slices of the arena); int16/int32/uint16/uint32 arguments take 'h'/'i'/'H'/'I'
// arrays or raw bytes of the right length.  Outputs must be writable.

#include <stdarg.h>  // first: py/mpprint.h declares mp_vprintf only when va_list is known

#ifdef MICROPY_ENABLE_DYNRUNTIME
#include "py/dynruntime.h"
#else
#include "py/runtime.h"
#endif

#include "kernels/mt_kernels.h"

// ---- the module's functions (qstrs spelled out: the natmod build scans the source text) -------

#define MTK_FUNCTIONS(F) \
    F(MP_QSTR_requantize, mtk_requantize_obj) \
    F(MP_QSTR_conv_forward_scratch, mtk_conv_forward_scratch_obj) \
    F(MP_QSTR_conv_update_scratch, mtk_conv_update_scratch_obj) \
    F(MP_QSTR_conv_forward, mtk_conv_forward_obj) \
    F(MP_QSTR_conv_input_grad, mtk_conv_input_grad_obj) \
    F(MP_QSTR_conv_update, mtk_conv_update_obj) \
    F(MP_QSTR_dwconv_forward, mtk_dwconv_forward_obj) \
    F(MP_QSTR_dwconv_input_grad, mtk_dwconv_input_grad_obj) \
    F(MP_QSTR_dwconv_update, mtk_dwconv_update_obj) \
    F(MP_QSTR_maxpool_forward, mtk_maxpool_forward_obj) \
    F(MP_QSTR_maxpool_input_grad, mtk_maxpool_input_grad_obj) \
    F(MP_QSTR_avgpool_forward, mtk_avgpool_forward_obj) \
    F(MP_QSTR_avgpool_input_grad, mtk_avgpool_input_grad_obj) \
    F(MP_QSTR_add_forward, mtk_add_forward_obj) \
    F(MP_QSTR_clamp_forward, mtk_clamp_forward_obj) \
    F(MP_QSTR_softmax_forward, mtk_softmax_forward_obj) \
    F(MP_QSTR_softmax_grad, mtk_softmax_grad_obj) \
    F(MP_QSTR_grad_rescale, mtk_grad_rescale_obj) \
    F(MP_QSTR_grad_narrow, mtk_grad_narrow_obj) \
    F(MP_QSTR_grad_mask, mtk_grad_mask_obj) \
    F(MP_QSTR_crc32, mtk_crc32_obj)

#define MTK_DECLARE(qstr, obj) static const mp_obj_fun_builtin_var_t obj;
MTK_FUNCTIONS(MTK_DECLARE)

#ifdef MICROPY_ENABLE_DYNRUNTIME
// The native module's entry point comes first in the file: the .mpy starts with a Thumb-1
// branch to it, which reaches only 2 KB.
mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY
    #define MTK_STORE(qstr, obj) mp_store_global(qstr, MP_OBJ_FROM_PTR(&obj));
    MTK_FUNCTIONS(MTK_STORE)
    MP_DYNRUNTIME_INIT_EXIT
}
#endif

// ---- argument checking -----------------------------------------------------------------------

enum { T_S8, T_S16, T_S32, T_U16, T_U32, T_RAW };
enum { F_OUT = 1, F_OPT = 2, F_ATLEAST = 4 };

#define MT_MAX_DIM 4096
#define MT_MAX_ELEMS (1 << 24)

// An error message being formatted: MicroPython's formatter prints into it via msg_strn
// (a message longer than 95 characters is cut).
typedef struct {
    char text[96];
    size_t len;
} msg_t;

static void msg_strn(void *data, const char *s, size_t n) {
    msg_t *m = data;
    while (n-- > 0 && m->len < sizeof(m->text) - 1) {
        m->text[m->len++] = *s++;
    }
}

// The one place that formats an argument error: raises `type` with the message
// "<name>: <fmt>", fmt and its arguments as for mp_printf (an mp_int_t prints with INT_FMT).
// The formatting runs in the firmware (mp_vprintf), so an ARMv6-M native module needs no divider.
static NORETURN void arg_error(const mp_obj_type_t *type, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static NORETURN void arg_error(const mp_obj_type_t *type, const char *name, const char *fmt, ...) {
    msg_t m;
    m.len = 0;
    mp_print_t print = { &m, msg_strn };
    mp_printf(&print, "%s: ", name);
    va_list ap;
    va_start(ap, fmt);
    mp_vprintf(&print, fmt, ap);
    va_end(ap);
    mp_raise_type_arg(type, mp_obj_new_str(m.text, m.len));
}

static NORETURN void range_error(const char *name, mp_int_t lo, mp_int_t hi, mp_int_t got) {
    arg_error(&mp_type_ValueError, name, "must be in [" INT_FMT ", " INT_FMT "], got " INT_FMT, lo, hi, got);
}

// An int in [lo, hi]: a TypeError for anything else than an int, a ValueError outside the range.
static mp_int_t int_arg(mp_obj_t o, mp_int_t lo, mp_int_t hi, const char *name) {
    if (!mp_obj_is_int(o)) {
        arg_error(&mp_type_TypeError, name, "expected an int");
    }
    if (!mp_obj_is_small_int(o)) {
        // a long int (on 32-bit ports anything beyond +-2^30): compare as Python ints first, since
        // converting to a machine word truncates (native module) or raises OverflowError (firmware)
        if (mp_obj_is_true(mp_binary_op(MP_BINARY_OP_LESS, o, mp_obj_new_int(lo)))
            || mp_obj_is_true(mp_binary_op(MP_BINARY_OP_MORE, o, mp_obj_new_int(hi)))) {
            arg_error(&mp_type_ValueError, name, "must be in [" INT_FMT ", " INT_FMT "], got an int beyond that", lo, hi);
        }
        return (mp_int_t)mp_obj_get_int_truncated(o);
    }
    mp_int_t v = MP_OBJ_SMALL_INT_VALUE(o);
    if (v < lo || v > hi) {
        range_error(name, lo, hi, v);
    }
    return v;
}

// Element types by if-chains rather than tables of pointers (no relocated data).
static const char *type_name(int t) {
    return t == T_S8 ? "int8" : t == T_S16 ? "int16" : t == T_S32 ? "int32" : t == T_U16 ? "uint16"
        : t == T_U32 ? "uint32" : "byte";
}

// log2 of the element size: byte lengths become element counts by a shift (no division on ARMv6-M)
static int type_shift(int t) {
    return t == T_S16 || t == T_U16 ? 1 : t == T_S32 || t == T_U32 ? 2 : 0;
}

static int type_size(int t) {
    return 1 << type_shift(t);
}

static char type_code(int t) {
    return t == T_S8 ? 'b' : t == T_S16 ? 'h' : t == T_S32 ? 'i' : t == T_U16 ? 'H' : t == T_U32 ? 'I' : 'B';
}

// The number of whole elements of type t in buffer `o`, for an argument whose length sets the
// size of the others (buf_arg then checks its typecode).  Its TypeError says "an int8 buffer",
// where buf_arg's says "a int8 buffer": both texts are kept as they were.
static mp_int_t buf_elems(mp_obj_t o, int t, const char *name) {
    mp_buffer_info_t bi;
    if (!mp_get_buffer(o, &bi, MP_BUFFER_READ)) {
        arg_error(&mp_type_TypeError, name, "expected %s %s buffer", t == T_S8 || t == T_S16 || t == T_S32 ? "an" : "a", type_name(t));
    }
    return (mp_int_t)(bi.len >> type_shift(t));
}

// Returns the buffer of `o` holding n elements of type t (at least n with F_ATLEAST), or NULL
// for None with F_OPT.
static void *buf_arg(mp_obj_t o, int t, mp_int_t n, int flags, const char *name) {
    if ((flags & F_OPT) && o == mp_const_none) {
        return NULL;
    }
    mp_buffer_info_t bi;
    if (!mp_get_buffer(o, &bi, (flags & F_OUT) ? MP_BUFFER_WRITE : MP_BUFFER_READ)) {
        arg_error(&mp_type_TypeError, name, "expected a %s%s buffer", (flags & F_OUT) ? "writable " : "", type_name(t));
    }
    // raw bytes: bytes and array('B') report 'B', bytearray and its memoryviews report 1
    int tc = bi.typecode;
    if (tc != type_code(t) && tc != 'B' && tc != 1) {
        arg_error(&mp_type_TypeError, name, "expected %s elements (typecode '%c' or raw bytes)", type_name(t), type_code(t));
    }
    mp_int_t need = n * type_size(t);
    mp_int_t have = (mp_int_t)bi.len;
    if ((flags & F_ATLEAST) ? have < need : have != need) {
        arg_error(&mp_type_ValueError, name, "%s " INT_FMT " bytes, got " INT_FMT,
            (flags & F_ATLEAST) ? "needs at least" : "expected", need, have);
    }
    if (((uintptr_t)bi.buf & (uintptr_t)(type_size(t) - 1)) != 0 || ((flags & F_ATLEAST) && t == T_RAW && ((uintptr_t)bi.buf & 3))) {
        arg_error(&mp_type_ValueError, name, "buffer is not aligned to its element size");
    }
    return bi.buf;
}

// The bit mask of n activations (1 = clamped): raw bytes, at least ceil(n / 8) of them, word-aligned.
static uint8_t *mask_arg(mp_obj_t o, mp_int_t n, int flags) {
    return buf_arg(o, T_RAW, (n + 7) >> 3, flags | F_ATLEAST, "mask");
}

// The names of the geometry fields, in order, each ended by a NUL.
#define GEOM_NAMES "geom.in_h\0geom.in_w\0geom.in_c\0geom.out_h\0geom.out_w\0geom.out_c\0geom.k_h\0" \
    "geom.k_w\0geom.stride_h\0geom.stride_w\0geom.pad_t\0geom.pad_l\0geom.depth_mult"

// The i-th string of a list of NUL-ended strings.
static const char *nth_string(const char *list, int i) {
    for (; i > 0; i--) {
        while (*list++) {
        }
    }
    return list;
}

static void geom_arg(mp_obj_t o, mt_geom_t *g) {
    const int32_t *a = buf_arg(o, T_S32, MT_GEOM_FIELDS, 0, "geom");
    for (int i = 0; i < MT_GEOM_FIELDS; i++) {
        int32_t lo = (i == 10 || i == 11) ? 0 : 1;
        int32_t hi = MT_MAX_DIM;
        if (i == 10) {
            hi = a[6] - 1;  // padding smaller than the kernel
        } else if (i == 11) {
            hi = a[7] - 1;
        } else if (i == 6 || i == 7 || i == 8 || i == 9 || i == 12) {
            hi = 64;
        }
        if (a[i] < lo || a[i] > hi) {
            range_error(nth_string(GEOM_NAMES, i), lo, hi, a[i]);
        }
    }
    g->in_h = a[0];
    g->in_w = a[1];
    g->in_c = a[2];
    g->out_h = a[3];
    g->out_w = a[4];
    g->out_c = a[5];
    g->k_h = a[6];
    g->k_w = a[7];
    g->stride_h = a[8];
    g->stride_w = a[9];
    g->pad_t = a[10];
    g->pad_l = a[11];
    g->depth_mult = a[12];
    if ((mp_int_t)g->in_h * g->in_w * g->in_c > MT_MAX_ELEMS || (mp_int_t)g->out_h * g->out_w * g->out_c > MT_MAX_ELEMS) {
        arg_error(&mp_type_ValueError, "geom", "more than 2^24 elements");
    }
}

// The geometry of a conv (dw 0: depth_mult 1) or a depthwise conv (dw 1: out_c = in_c * depth_mult).
static void conv_geom(mp_obj_t o, int dw, mt_geom_t *g) {
    geom_arg(o, g);
    if (dw ? g->out_c != g->in_c * g->depth_mult : g->depth_mult != 1) {
        arg_error(&mp_type_ValueError, "geom", dw ? "out_c must be in_c * depth_mult" : "depth_mult must be 1");
    }
}

static mp_int_t n_in(const mt_geom_t *g) {
    return (mp_int_t)g->in_h * g->in_w * g->in_c;
}

static mp_int_t n_out(const mt_geom_t *g) {
    return (mp_int_t)g->out_h * g->out_w * g->out_c;
}

static mp_int_t taps(const mt_geom_t *g) {
    return (mp_int_t)g->k_h * g->k_w;
}

// Requantization arguments (mult, shift, zy, act_min, act_max, rounding) starting at args[0].
static void requant_arg(const mp_obj_t *args, int32_t out_c, mt_requant_t *rq) {
    mp_buffer_info_t bi;
    mp_int_t n = mp_get_buffer(args[0], &bi, MP_BUFFER_READ) && bi.len == 4 ? 1 : out_c;
    rq->mult = buf_arg(args[0], T_S32, n, 0, "mult");
    rq->shift = buf_arg(args[1], T_S32, n, 0, "shift");
    rq->per_channel = n != 1 || out_c == 1;
    for (mp_int_t i = 0; i < n; i++) {
        if (rq->mult[i] < 0) {
            range_error("mult", 0, INT32_MAX, rq->mult[i]);
        }
        if (rq->shift[i] < -31 || rq->shift[i] > 30) {
            range_error("shift", -31, 30, rq->shift[i]);
        }
    }
    rq->zy = int_arg(args[2], -128, 127, "zy");
    rq->act_min = int_arg(args[3], -128, 127, "act_min");
    rq->act_max = int_arg(args[4], rq->act_min, 127, "act_max");
    rq->double_rounding = int_arg(args[5], 0, 1, "rounding");
}

// a * b < 2^31 for a, b >= 0, without a division or a 64-bit multiply (neither links on ARMv6-M)
static bool product_fits(uint32_t a, uint32_t b) {
    uint32_t lo;
    int32_t hi = mt_mul_hi((int32_t)a, (int32_t)b, &lo);
    return hi == 0 && lo < 0x80000000u;
}

// The overflow bound of the gradient kernels: max|g| * f1 * f2 * f3 < 2^31 (all factors < 2^31).
static void check_grad_bound(const int16_t *g, mp_int_t n, uint32_t f1, uint32_t f2, uint32_t f3, const char *what) {
    uint32_t max = 0;
    for (mp_int_t i = 0; i < n; i++) {
        uint32_t v = g[i] < 0 ? (uint32_t)(-g[i]) : (uint32_t)g[i];
        if (v > max) {
            max = v;
        }
    }
    if (max == 0) {
        return;
    }
    if (!product_fits(f1, f2) || !product_fits(f1 * f2, f3) || !product_fits(max, f1 * f2 * f3)) {
        arg_error(&mp_type_ValueError, "gy", "%s", what);
    }
}

// Update arguments shared by conv_update and dwconv_update: args[0] = rows ... args[7] = rng.
static void update_arg(const mp_obj_t *args, const mt_geom_t *g, bool have_bias, mt_update_t *u) {
    u->n_rows = (int32_t)buf_elems(args[0], T_U16, "rows");
    u->rows = buf_arg(args[0], T_U16, u->n_rows, 0, "rows");
    for (int32_t r = 0; r < u->n_rows; r++) {
        if (u->rows[r] >= g->out_c || (r > 0 && u->rows[r] <= u->rows[r - 1])) {
            arg_error(&mp_type_ValueError, "rows", "must be ascending output channels < out_c");
        }
    }
    u->cin_lo = int_arg(args[1], 0, g->in_c, "cin_lo");
    u->cin_hi = int_arg(args[2], u->cin_lo, g->in_c, "cin_hi");
    int weights = u->cin_hi > u->cin_lo;
    u->w_mult = buf_arg(args[3], T_S32, g->out_c, weights ? 0 : F_OPT, "w_mult");
    u->w_shift = buf_arg(args[4], T_S32, g->out_c, weights ? 0 : F_OPT, "w_shift");
    u->b_mult = buf_arg(args[5], T_S32, g->out_c, F_OPT, "b_mult");
    u->b_shift = buf_arg(args[6], T_S32, g->out_c, u->b_mult ? 0 : F_OPT, "b_shift");
    if (u->b_mult && !have_bias) {
        arg_error(&mp_type_ValueError, "bias", "required when b_mult is given");
    }
    for (int32_t c = 0; c < g->out_c; c++) {
        if ((u->w_shift && (u->w_shift[c] < -64 || u->w_shift[c] > 64)) || (u->b_shift && (u->b_shift[c] < -64 || u->b_shift[c] > 64))) {
            arg_error(&mp_type_ValueError, "w_shift/b_shift", "must be in [-64, 64]");
        }
    }
    u->rng = buf_arg(args[7], T_U32, 1, F_OUT, "rng");
    if (*u->rng == 0) {
        arg_error(&mp_type_ValueError, "rng", "state must not be 0");
    }
}

// ---- functions -------------------------------------------------------------------------------

// requantize(acc, mult, shift, rounding) -> int: TFLite MultiplyByQuantizedMultiplier of one
// value; rounding 0 = single (litert FULLY_CONNECTED), 1 = double (CONV_2D, DEPTHWISE_CONV_2D).
static mp_obj_t mtk_requantize(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    return mp_obj_new_int(mt_requantize(int_arg(args[0], INT32_MIN, INT32_MAX, "acc"),
        int_arg(args[1], 0, INT32_MAX, "mult"), int_arg(args[2], -31, 30, "shift"), int_arg(args[3], 0, 1, "rounding")));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_requantize_obj, 4, 4, mtk_requantize);

// conv_forward_scratch(geom) / conv_update_scratch(geom, cin_lo, cin_hi) -> bytes of scratch
static mp_obj_t mtk_conv_forward_scratch(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_obj_t geom = args[0];
    mt_geom_t g;
    geom_arg(geom, &g);
    return mp_obj_new_int(mt_conv_scratch_forward(&g));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_conv_forward_scratch_obj, 1, 1, mtk_conv_forward_scratch);

static mp_obj_t mtk_conv_update_scratch(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_obj_t geom = args[0], lo = args[1], hi = args[2];
    mt_geom_t g;
    geom_arg(geom, &g);
    mt_update_t u;
    u.cin_lo = int_arg(lo, 0, g.in_c, "cin_lo");
    u.cin_hi = int_arg(hi, u.cin_lo, g.in_c, "cin_hi");
    return mp_obj_new_int(mt_conv_scratch_update(&g, &u));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_conv_update_scratch_obj, 3, 3, mtk_conv_update_scratch);

// ---- conv and depthwise: one body per pass, `dw` picks the kernel (0 conv, 1 depthwise) --------

// Weights: out_c filters of k_h * k_w * in_c (conv), or k_h * k_w taps per output channel (depthwise).
static mp_int_t n_weights(const mt_geom_t *g, int dw) {
    return dw ? taps(g) * g->out_c : g->out_c * taps(g) * g->in_c;
}

// conv_forward(geom, x, zx, w, bias, mult, shift, zy, act_min, act_max, rounding, y, mask, scratch)
// dwconv_forward(geom, x, zx, w, bias, mult, shift, zy, act_min, act_max, rounding, y, mask)
static mp_obj_t conv_forward_kind(int dw, const mp_obj_t *args) {
    mt_geom_t g;
    conv_geom(args[0], dw, &g);
    if (!dw && taps(&g) * g.in_c > 65536) {
        arg_error(&mp_type_ValueError, "geom", "k_h * k_w * in_c must be <= 65536");
    }
    const int8_t *x = buf_arg(args[1], T_S8, n_in(&g), 0, "x");
    int32_t zx = int_arg(args[2], -128, 127, "zx");
    const int8_t *w = buf_arg(args[3], T_S8, n_weights(&g, dw), 0, "w");
    const int32_t *bias = buf_arg(args[4], T_S32, g.out_c, F_OPT, "bias");
    mt_requant_t rq;
    requant_arg(args + 5, g.out_c, &rq);
    int8_t *y = buf_arg(args[11], T_S8, n_out(&g), F_OUT, "y");
    uint8_t *mask = mask_arg(args[12], n_out(&g), F_OUT | F_OPT);
    if (dw) {
        mt_dwconv_forward(&g, x, zx, w, bias, &rq, y, mask);
    } else {
        int16_t *scratch = buf_arg(args[13], T_RAW, mt_conv_scratch_forward(&g), F_OUT | F_ATLEAST, "scratch");
        mt_conv_forward(&g, x, zx, w, bias, &rq, y, mask, scratch);
    }
    return mp_const_none;
}

// conv_input_grad(geom, gy, w, gx_acc) / dwconv_input_grad(geom, gy, w, gx_acc)
static mp_obj_t conv_input_grad_kind(int dw, const mp_obj_t *args) {
    mt_geom_t g;
    conv_geom(args[0], dw, &g);
    const int16_t *gy = buf_arg(args[1], T_S16, n_out(&g), 0, "gy");
    const int8_t *w = buf_arg(args[2], T_S8, n_weights(&g, dw), 0, "w");
    int32_t *gx = buf_arg(args[3], T_S32, n_in(&g), F_OUT, "gx_acc");
    if (dw) {
        check_grad_bound(gy, n_out(&g), 128, taps(&g), g.depth_mult, "max|gy| * 128 * k_h * k_w * depth_mult must be < 2^31");
        mt_dwconv_input_grad(&g, gy, w, gx);
    } else {
        check_grad_bound(gy, n_out(&g), 128, g.out_c, taps(&g), "max|gy| * 128 * out_c * k_h * k_w must be < 2^31");
        mt_conv_input_grad(&g, gy, w, gx);
    }
    return mp_const_none;
}

// conv_update / dwconv_update(geom, x, zx, gy, g_exp, w, bias, rows, cin_lo, cin_hi, w_mult,
// w_shift, b_mult, b_shift, rng, scratch): cin_hi > cin_lo trains the weights of `rows` (for
// depthwise, all of their taps), else only the bias.
static mp_obj_t conv_update_kind(int dw, const mp_obj_t *args) {
    mt_geom_t g;
    conv_geom(args[0], dw, &g);
    const int8_t *x = buf_arg(args[1], T_S8, n_in(&g), 0, "x");
    int32_t zx = int_arg(args[2], -128, 127, "zx");
    const int16_t *gy = buf_arg(args[3], T_S16, n_out(&g), 0, "gy");
    int32_t g_exp = int_arg(args[4], -64, 64, "g_exp");
    mt_update_t u;
    update_arg(args + 7, &g, args[6] != mp_const_none, &u);
    // frozen weights (bias-only update) may stay in read-only memory
    int8_t *w = buf_arg(args[5], T_S8, n_weights(&g, dw), u.cin_hi > u.cin_lo ? F_OUT : 0, "w");
    int32_t *bias = buf_arg(args[6], T_S32, g.out_c, F_OUT | F_OPT, "bias");
    mp_int_t M = (mp_int_t)g.out_h * g.out_w;
    check_grad_bound(gy, n_out(&g), u.cin_hi > u.cin_lo ? 255 : 1, M, 1, "max|gy| * 255 * out_h * out_w must be < 2^31");
    mp_int_t scratch_bytes = dw ? 4 * taps(&g) : mt_conv_scratch_update(&g, &u);
    void *scratch = buf_arg(args[15], T_RAW, scratch_bytes, F_OUT | F_ATLEAST, "scratch");
    if (dw) {
        mt_dwconv_update(&g, x, zx, gy, g_exp, w, bias, &u, scratch);
    } else {
        mt_conv_update(&g, x, zx, gy, g_exp, w, bias, &u, scratch);
    }
    return mp_const_none;
}

// Defines the module function `fun` (and its object fun_obj) of exactly n arguments as impl(dw, args).
#define MTK_CONV_FUN(fun, impl, dw, n) \
    static mp_obj_t fun(size_t n_args, const mp_obj_t *args) { \
        (void)n_args; \
        return impl(dw, args); \
    } \
    static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(fun##_obj, n, n, fun);

MTK_CONV_FUN(mtk_conv_forward, conv_forward_kind, 0, 14)
MTK_CONV_FUN(mtk_conv_input_grad, conv_input_grad_kind, 0, 4)
MTK_CONV_FUN(mtk_conv_update, conv_update_kind, 0, 16)
MTK_CONV_FUN(mtk_dwconv_forward, conv_forward_kind, 1, 13)
MTK_CONV_FUN(mtk_dwconv_input_grad, conv_input_grad_kind, 1, 4)
MTK_CONV_FUN(mtk_dwconv_update, conv_update_kind, 1, 16)

static void pool_geom(mp_obj_t o, mt_geom_t *g) {
    geom_arg(o, g);
    if (g->in_c != g->out_c || g->depth_mult != 1) {
        arg_error(&mp_type_ValueError, "geom", "pooling needs in_c == out_c and depth_mult 1");
    }
}

// maxpool_forward(geom, x, y)
static mp_obj_t mtk_maxpool_forward(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_obj_t geom = args[0], x_in = args[1], y_out = args[2];
    mt_geom_t g;
    pool_geom(geom, &g);
    const int8_t *x = buf_arg(x_in, T_S8, n_in(&g), 0, "x");
    int8_t *y = buf_arg(y_out, T_S8, n_out(&g), F_OUT, "y");
    mt_maxpool_forward(&g, x, y);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_maxpool_forward_obj, 3, 3, mtk_maxpool_forward);

// maxpool_input_grad(geom, x, gy, gx_acc)
static mp_obj_t mtk_maxpool_input_grad(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mt_geom_t g;
    pool_geom(args[0], &g);
    const int8_t *x = buf_arg(args[1], T_S8, n_in(&g), 0, "x");
    const int16_t *gy = buf_arg(args[2], T_S16, n_out(&g), 0, "gy");
    int32_t *gx = buf_arg(args[3], T_S32, n_in(&g), F_OUT, "gx_acc");
    mt_maxpool_input_grad(&g, x, gy, gx);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_maxpool_input_grad_obj, 4, 4, mtk_maxpool_input_grad);

// avgpool_forward(geom, x, act_min, act_max, y)
static mp_obj_t mtk_avgpool_forward(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mt_geom_t g;
    pool_geom(args[0], &g);
    const int8_t *x = buf_arg(args[1], T_S8, n_in(&g), 0, "x");
    int32_t lo = int_arg(args[2], -128, 127, "act_min");
    int32_t hi = int_arg(args[3], lo, 127, "act_max");
    int8_t *y = buf_arg(args[4], T_S8, n_out(&g), F_OUT, "y");
    mt_avgpool_forward(&g, x, lo, hi, y);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_avgpool_forward_obj, 5, 5, mtk_avgpool_forward);

// avgpool_input_grad(geom, gy, gx_acc): gx_acc scale is 2^(g_exp - 13)
static mp_obj_t mtk_avgpool_input_grad(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_obj_t geom = args[0], gy_in = args[1], gx_out = args[2];
    mt_geom_t g;
    pool_geom(geom, &g);
    const int16_t *gy = buf_arg(gy_in, T_S16, n_out(&g), 0, "gy");
    int32_t *gx = buf_arg(gx_out, T_S32, n_in(&g), F_OUT, "gx_acc");
    mt_avgpool_input_grad(&g, gy, gx);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_avgpool_input_grad_obj, 3, 3, mtk_avgpool_input_grad);

// add_forward(x1, x2, params, y, mask): params int32[12] (see mt_add_params_t)
static mp_obj_t mtk_add_forward(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_int_t n = buf_elems(args[0], T_S8, "x1");
    const int8_t *x1 = buf_arg(args[0], T_S8, n, 0, "x1");
    const int8_t *x2 = buf_arg(args[1], T_S8, n, 0, "x2");
    const int32_t *a = buf_arg(args[2], T_S32, MT_ADD_FIELDS, 0, "params");
    mt_add_params_t p;
    p.z1 = a[0];
    p.z2 = a[1];
    p.zy = a[2];
    p.left_shift = a[3];
    p.mult1 = a[4];
    p.shift1 = a[5];
    p.mult2 = a[6];
    p.shift2 = a[7];
    p.mult_y = a[8];
    p.shift_y = a[9];
    p.act_min = a[10];
    p.act_max = a[11];
    if (p.z1 < -128 || p.z1 > 127 || p.z2 < -128 || p.z2 > 127 || p.zy < -128 || p.zy > 127
        || p.left_shift < 0 || p.left_shift > 22 || p.mult1 < 0 || p.mult2 < 0 || p.mult_y < 0
        || p.shift1 < -31 || p.shift1 > 0 || p.shift2 < -31 || p.shift2 > 0 || p.shift_y < -31 || p.shift_y > 0
        || p.act_min < -128 || p.act_max > 127 || p.act_min > p.act_max) {
        arg_error(&mp_type_ValueError, "params", "out of range (zero points int8, left_shift 0..22, shifts -31..0)");
    }
    int8_t *y = buf_arg(args[3], T_S8, n, F_OUT, "y");
    uint8_t *mask = mask_arg(args[4], n, F_OUT | F_OPT);
    mt_add_forward((int32_t)n, x1, x2, &p, y, mask);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_add_forward_obj, 5, 5, mtk_add_forward);

// clamp_forward(x, lo, hi, y, mask): ReLU / ReLU6 on int8 (y may be x)
static mp_obj_t mtk_clamp_forward(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_int_t n = buf_elems(args[0], T_S8, "x");
    const int8_t *x = buf_arg(args[0], T_S8, n, 0, "x");
    int32_t lo = int_arg(args[1], -128, 127, "lo");
    int32_t hi = int_arg(args[2], lo, 127, "hi");
    int8_t *y = buf_arg(args[3], T_S8, n, F_OUT, "y");
    uint8_t *mask = mask_arg(args[4], n, F_OUT | F_OPT);
    mt_clamp_forward((int32_t)n, x, lo, hi, y, mask);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_clamp_forward_obj, 5, 5, mtk_clamp_forward);

// softmax_forward(x, rows, depth, beta_mult, beta_left_shift, diff_min, y)
static mp_obj_t mtk_softmax_forward(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    int32_t rows = int_arg(args[1], 1, MT_MAX_ELEMS, "rows");
    int32_t depth = int_arg(args[2], 1, 4096, "depth");
    if ((mp_int_t)rows * depth > MT_MAX_ELEMS) {
        arg_error(&mp_type_ValueError, "rows", "rows * depth must be <= 2^24");
    }
    const int8_t *x = buf_arg(args[0], T_S8, (mp_int_t)rows * depth, 0, "x");
    int32_t mult = int_arg(args[3], 0, INT32_MAX, "beta_mult");
    int32_t shift = int_arg(args[4], 0, 31, "beta_left_shift");
    int32_t diff_min = int_arg(args[5], INT32_MIN, 0, "diff_min");
    int8_t *y = buf_arg(args[6], T_S8, (mp_int_t)rows * depth, F_OUT, "y");
    mt_softmax_forward(rows, depth, x, mult, shift, diff_min, y);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_softmax_forward_obj, 7, 7, mtk_softmax_forward);

// softmax_grad(y, label, gy): gradient at the logits, g_exp = -15
static mp_obj_t mtk_softmax_grad(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_obj_t y_in = args[0], label_in = args[1], gy_out = args[2];
    int32_t depth = (int32_t)buf_elems(y_in, T_S8, "y");
    const int8_t *y = buf_arg(y_in, T_S8, depth, 0, "y");
    int32_t label = int_arg(label_in, 0, depth - 1, "label");
    int16_t *gy = buf_arg(gy_out, T_S16, depth, F_OUT, "gy");
    mt_softmax_grad(depth, y, label, gy);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_softmax_grad_obj, 3, 3, mtk_softmax_grad);

// grad_rescale(gy, m, n, mult, shift, out): per-channel (n channels) rescale to int16
static mp_obj_t mtk_grad_rescale(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    int32_t m = int_arg(args[1], 1, MT_MAX_ELEMS, "m");
    int32_t n = int_arg(args[2], 1, MT_MAX_ELEMS, "n");
    if ((mp_int_t)m * n > MT_MAX_ELEMS) {
        arg_error(&mp_type_ValueError, "m", "m * n must be <= 2^24");
    }
    const int16_t *gy = buf_arg(args[0], T_S16, (mp_int_t)m * n, 0, "gy");
    const int32_t *mult = buf_arg(args[3], T_S32, n, 0, "mult");
    const int32_t *shift = buf_arg(args[4], T_S32, n, 0, "shift");
    int16_t *out = buf_arg(args[5], T_S16, (mp_int_t)m * n, F_OUT, "out");
    mt_grad_rescale(m, n, gy, mult, shift, out);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_grad_rescale_obj, 6, 6, mtk_grad_rescale);

// grad_narrow(acc, mask, out) -> r: out = round(acc / 2^r) (0 where masked), max|out| < 2^14
static mp_obj_t mtk_grad_narrow(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_obj_t acc_in = args[0], mask_in = args[1], out_in = args[2];
    mp_int_t n = buf_elems(acc_in, T_S32, "acc");
    const int32_t *acc = buf_arg(acc_in, T_S32, n, 0, "acc");
    const uint8_t *mask = mask_arg(mask_in, n, F_OPT);
    int16_t *out = buf_arg(out_in, T_S16, n, F_OUT, "out");
    return mp_obj_new_int(mt_grad_narrow((int32_t)n, acc, mask, out));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_grad_narrow_obj, 3, 3, mtk_grad_narrow);

// grad_mask(g, mask): zero the gradient where the activation was clamped (in place)
static mp_obj_t mtk_grad_mask(size_t n_args, const mp_obj_t *args) {
    (void)n_args;
    mp_obj_t g_in = args[0], mask_in = args[1];
    mp_int_t n = buf_elems(g_in, T_S16, "g");
    int16_t *g = buf_arg(g_in, T_S16, n, F_OUT, "g");
    const uint8_t *mask = mask_arg(mask_in, n, 0);
    mt_grad_mask((int32_t)n, g, mask);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_grad_mask_obj, 2, 2, mtk_grad_mask);

// crc32(data, crc=0) -> int: zlib's CRC-32 of a buffer, continuing from crc
static mp_obj_t mtk_crc32(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t bi;
    if (!mp_get_buffer(args[0], &bi, MP_BUFFER_READ)) {
        arg_error(&mp_type_TypeError, "data", "expected a buffer");
    }
    uint32_t crc = n_args > 1 ? (uint32_t)mp_obj_get_int_truncated(args[1]) : 0;
    return mp_obj_new_int_from_uint(mt_crc32(crc, bi.buf, (int32_t)bi.len));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mtk_crc32_obj, 1, 2, mtk_crc32);

// ---- the user C module's globals ---------------------------------------------------------

#ifndef MICROPY_ENABLE_DYNRUNTIME

static const mp_rom_map_elem_t mtkernels_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_mtkernels) },
    #define MTK_ENTRY(qstr, obj) { MP_ROM_QSTR(qstr), MP_ROM_PTR(&obj) },
    MTK_FUNCTIONS(MTK_ENTRY)
};
static MP_DEFINE_CONST_DICT(mtkernels_globals, mtkernels_globals_table);

const mp_obj_module_t mtkernels_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&mtkernels_globals,
};

MP_REGISTER_MODULE(MP_QSTR_mtkernels, mtkernels_module);

#endif

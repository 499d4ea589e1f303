/*
 * `qemu`: what is special about the emulated board.
 *
 *   qemu.clock_ns()        virtual time since reset in ns (a 64-bit count).  Under
 *                          `-icount shift=0` qemu advances virtual time by exactly 1 ns
 *                          per instruction, so differences count executed instructions,
 *                          to the clock's resolution (qemu.clock_res_ns(): 62.5 ns on the
 *                          nRF51's 16 MHz timer; errors are below one tick per reading).
 *   qemu.profile(obj)      a namespace with obj's attributes, each callable wrapped so
 *                          that the virtual time spent inside its calls is accumulated:
 *                          e.g. microtrain.backend.kernels = qemu.profile(mtkernels).
 *   qemu.prof()            (calls, ns) accumulated by profiled callables since the last
 *   qemu.prof_reset()      reset (nested profiled calls count once, in the outermost).
 *   qemu.prof_detail(p[, reset])  [(name, calls, ns)] per callable of namespace p.
 *   qemu.nop(*args)        does nothing: profile(qemu).nop calibrates the profiler's own cost.
 *   qemu.memory()          {'sram', 'data', 'bss', 'heap', 'stack'}: the link-time split
 *                          of the SRAM, in bytes.
 *   qemu.format_fs()       erase the flash file system (close open files first).
 */

#include "py/obj.h"
#include "py/objmodule.h"
#include "py/runtime.h"

#include "board.h"
#include "flashfs.h"

extern uint32_t _sram_start, _sram_end, _sdata, _edata, _sbss, _ebss, _heap_start, _heap_end, _sstack, _estack;

static uint64_t prof_ns;
static uint32_t prof_calls;
static uint32_t prof_depth;

static mp_obj_t qemu_clock_ns(void) {
    return mp_obj_new_int_from_ull(board_time_ns());
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_clock_ns_obj, qemu_clock_ns);

static mp_obj_t qemu_clock_res_ns(void) {
    return MP_OBJ_NEW_SMALL_INT(board_time_res_ns);
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_clock_res_ns_obj, qemu_clock_res_ns);

/******************************************************************************/
// Profiled callables

typedef struct {
    mp_obj_base_t base;
    mp_obj_t fun;
    mp_obj_t name;
    uint32_t calls;
    uint64_t ns;
} prof_fun_obj_t;

static mp_obj_t prof_fun_call(mp_obj_t self_in, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    prof_fun_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (prof_depth++ != 0) {
        mp_obj_t r = mp_call_function_n_kw(self->fun, n_args, n_kw, args);
        --prof_depth;
        return r;
    }
    nlr_buf_t nlr;
    uint64_t t0 = board_time_ns();
    if (nlr_push(&nlr) == 0) {
        mp_obj_t r = mp_call_function_n_kw(self->fun, n_args, n_kw, args);
        nlr_pop();
        uint64_t dt = board_time_ns() - t0;
        prof_ns += dt;
        ++prof_calls;
        self->ns += dt;
        ++self->calls;
        prof_depth = 0;
        return r;
    } else {
        uint64_t dt = board_time_ns() - t0;
        prof_ns += dt;
        ++prof_calls;
        self->ns += dt;
        ++self->calls;
        prof_depth = 0;
        nlr_jump(nlr.ret_val);
    }
}

static void prof_fun_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    prof_fun_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_print_str(print, "<profiled ");
    mp_obj_print_helper(print, self->fun, PRINT_REPR);
    mp_print_str(print, ">");
}

static MP_DEFINE_CONST_OBJ_TYPE(
    prof_fun_type,
    MP_QSTR_profiled,
    MP_TYPE_FLAG_NONE,
    call, prof_fun_call,
    print, prof_fun_print
    );

typedef struct {
    mp_obj_base_t base;
    mp_obj_t target;
    mp_obj_dict_t *attrs;
} prof_ns_obj_t;

static void prof_ns_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    prof_ns_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] == MP_OBJ_NULL) {
        mp_map_elem_t *e = mp_map_lookup(&self->attrs->map, MP_OBJ_NEW_QSTR(attr), MP_MAP_LOOKUP);
        if (e != NULL) {
            dest[0] = e->value;
        }
    }
}

static MP_DEFINE_CONST_OBJ_TYPE(
    prof_ns_type,
    MP_QSTR_profile,
    MP_TYPE_FLAG_NONE,
    attr, prof_ns_attr
    );

static mp_obj_t qemu_profile(mp_obj_t target) {
    if (!mp_obj_is_type(target, &mp_type_module)) {
        mp_raise_TypeError(MP_ERROR_TEXT("profile() takes a module"));
    }
    mp_obj_dict_t *globals = mp_obj_module_get_globals(target);
    prof_ns_obj_t *o = mp_obj_malloc(prof_ns_obj_t, &prof_ns_type);
    o->target = target;
    o->attrs = MP_OBJ_TO_PTR(mp_obj_new_dict(globals->map.used));
    for (size_t i = 0; i < globals->map.alloc; ++i) {
        mp_map_elem_t *e = &globals->map.table[i];
        if (!mp_map_slot_is_filled(&globals->map, i)) {
            continue;
        }
        mp_obj_t v = e->value;
        if (mp_obj_is_callable(v) && !mp_obj_is_type(v, &mp_type_type)) {
            prof_fun_obj_t *f = mp_obj_malloc(prof_fun_obj_t, &prof_fun_type);
            f->fun = v;
            f->name = e->key;
            f->calls = 0;
            f->ns = 0;
            v = MP_OBJ_FROM_PTR(f);
        }
        mp_obj_dict_store(MP_OBJ_FROM_PTR(o->attrs), e->key, v);
    }
    return MP_OBJ_FROM_PTR(o);
}
static MP_DEFINE_CONST_FUN_OBJ_1(qemu_profile_obj, qemu_profile);

static mp_obj_t qemu_prof(void) {
    mp_obj_t t[2] = { mp_obj_new_int_from_uint(prof_calls), mp_obj_new_int_from_ull(prof_ns) };
    return mp_obj_new_tuple(2, t);
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_prof_obj, qemu_prof);

// Per function of a profile() namespace: [(name, calls, ns)] of those called, and reset.
static mp_obj_t qemu_prof_detail(size_t n_args, const mp_obj_t *args) {
    if (!mp_obj_is_type(args[0], &prof_ns_type)) {
        mp_raise_TypeError(MP_ERROR_TEXT("expected a profile() namespace"));
    }
    bool reset = n_args > 1 && mp_obj_is_true(args[1]);
    prof_ns_obj_t *o = MP_OBJ_TO_PTR(args[0]);
    mp_obj_t list = mp_obj_new_list(0, NULL);
    mp_map_t *map = &o->attrs->map;
    for (size_t i = 0; i < map->alloc; ++i) {
        if (!mp_map_slot_is_filled(map, i) || !mp_obj_is_type(map->table[i].value, &prof_fun_type)) {
            continue;
        }
        prof_fun_obj_t *f = MP_OBJ_TO_PTR(map->table[i].value);
        if (f->calls != 0) {
            mp_obj_t t[3] = { f->name, mp_obj_new_int_from_uint(f->calls), mp_obj_new_int_from_ull(f->ns) };
            mp_obj_list_append(list, mp_obj_new_tuple(3, t));
        }
        if (reset) {
            f->calls = 0;
            f->ns = 0;
        }
    }
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(qemu_prof_detail_obj, 1, 2, qemu_prof_detail);

static mp_obj_t qemu_prof_reset(void) {
    prof_ns = 0;
    prof_calls = 0;
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_prof_reset_obj, qemu_prof_reset);

// Does nothing (any arguments): calibrates the cost of a profiled call.
static mp_obj_t qemu_nop(size_t n_args, const mp_obj_t *args) {
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR(qemu_nop_obj, 0, qemu_nop);

/******************************************************************************/

static void store_int(mp_obj_t d, qstr key, uintptr_t v) {
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(key), mp_obj_new_int_from_uint(v));
}

static mp_obj_t qemu_memory(void) {
    mp_obj_t d = mp_obj_new_dict(5);
    store_int(d, MP_QSTR_sram, (uintptr_t)&_sram_end - (uintptr_t)&_sram_start);
    store_int(d, MP_QSTR_data, (uintptr_t)&_edata - (uintptr_t)&_sdata);
    store_int(d, MP_QSTR_bss, (uintptr_t)&_ebss - (uintptr_t)&_sbss);
    store_int(d, MP_QSTR_heap, (uintptr_t)&_heap_end - (uintptr_t)&_heap_start);
    store_int(d, MP_QSTR_stack, (uintptr_t)&_estack - (uintptr_t)&_sstack);
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_memory_obj, qemu_memory);

static mp_obj_t qemu_format_fs(void) {
    flashfs_format();
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_format_fs_obj, qemu_format_fs);

static const mp_rom_map_elem_t qemu_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_qemu) },
    { MP_ROM_QSTR(MP_QSTR_clock_ns), MP_ROM_PTR(&qemu_clock_ns_obj) },
    { MP_ROM_QSTR(MP_QSTR_clock_res_ns), MP_ROM_PTR(&qemu_clock_res_ns_obj) },
    { MP_ROM_QSTR(MP_QSTR_profile), MP_ROM_PTR(&qemu_profile_obj) },
    { MP_ROM_QSTR(MP_QSTR_prof), MP_ROM_PTR(&qemu_prof_obj) },
    { MP_ROM_QSTR(MP_QSTR_prof_reset), MP_ROM_PTR(&qemu_prof_reset_obj) },
    { MP_ROM_QSTR(MP_QSTR_prof_detail), MP_ROM_PTR(&qemu_prof_detail_obj) },
    { MP_ROM_QSTR(MP_QSTR_nop), MP_ROM_PTR(&qemu_nop_obj) },
    { MP_ROM_QSTR(MP_QSTR_memory), MP_ROM_PTR(&qemu_memory_obj) },
    { MP_ROM_QSTR(MP_QSTR_format_fs), MP_ROM_PTR(&qemu_format_fs_obj) },
};
static MP_DEFINE_CONST_DICT(qemu_module_globals, qemu_module_globals_table);

const mp_obj_module_t mp_module_qemu = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&qemu_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_qemu, mp_module_qemu);

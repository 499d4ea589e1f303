/*
 * A minimal `machine` module: what mpremote's `reset` and scripts expecting a board use.
 * The emulated board has no pins, ADC or I2C (sensor code is tested with fakes).
 *
 *   machine.reset()        system reset (qemu reloads the firmware; the file system,
 *                          in flash, is kept)
 *   machine.soft_reset()   soft reset of the interpreter, like Ctrl-D
 *   machine.idle()         wait for the next interrupt
 *   machine.unique_id()    8 bytes from the nRF51 FICR DEVICEID (constant under qemu)
 */

#include "py/runtime.h"
#include "shared/runtime/pyexec.h"

static mp_obj_t machine_reset(void) {
    __asm volatile ("dsb");
    *(volatile uint32_t *)0xE000ED0Cu = 0x05FA0004u;    // SCB AIRCR: VECTKEY | SYSRESETREQ
    for (;;) {
        __asm volatile ("wfi");
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(machine_reset_obj, machine_reset);

static mp_obj_t machine_soft_reset(void) {
    pyexec_system_exit = PYEXEC_FORCED_EXIT;
    mp_raise_type(&mp_type_SystemExit);
}
static MP_DEFINE_CONST_FUN_OBJ_0(machine_soft_reset_obj, machine_soft_reset);

static mp_obj_t machine_idle(void) {
    __asm volatile ("wfi");
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(machine_idle_obj, machine_idle);

static mp_obj_t machine_unique_id(void) {
    #if defined(MICROTRAIN_BOARD_microbit)
    const uint32_t *id = (const uint32_t *)0x10000060u;    // FICR DEVICEID[0..1]
    uint32_t words[2] = { id[0], id[1] };
    #else
    uint32_t words[2] = { 0x4d505332u, 0x414e3338u };
    #endif
    return mp_obj_new_bytes((const byte *)words, sizeof(words));
}
static MP_DEFINE_CONST_FUN_OBJ_0(machine_unique_id_obj, machine_unique_id);

static const mp_rom_map_elem_t machine_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_machine) },
    { MP_ROM_QSTR(MP_QSTR_reset), MP_ROM_PTR(&machine_reset_obj) },
    { MP_ROM_QSTR(MP_QSTR_soft_reset), MP_ROM_PTR(&machine_soft_reset_obj) },
    { MP_ROM_QSTR(MP_QSTR_idle), MP_ROM_PTR(&machine_idle_obj) },
    { MP_ROM_QSTR(MP_QSTR_unique_id), MP_ROM_PTR(&machine_unique_id_obj) },
};
static MP_DEFINE_CONST_DICT(machine_module_globals, machine_module_globals_table);

const mp_obj_module_t mp_module_machine = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&machine_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_machine, mp_module_machine);

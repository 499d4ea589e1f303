/*
 * The `os` module of the emulated board, on flashfs: the calls mpremote and the
 * microtrain library use (listdir, ilistdir, stat, remove, rename, mkdir, rmdir,
 * getcwd, chdir, statvfs, sync, uname, sep).
 */

#include <string.h>

#include "py/mperrno.h"
#include "py/mpconfig.h"
#include "py/objstr.h"
#include "py/objtuple.h"
#include "py/runtime.h"
#include "genhdr/mpversion.h"

#include "flashfs.h"

static void check(int r) {
    if (r < 0) {
        mp_raise_OSError(-r);
    }
}

static const char *path_arg(size_t n_args, const mp_obj_t *args) {
    return n_args == 0 ? "" : mp_obj_str_get_str(args[0]);
}

// Listing: a list built at once (the directory holds at most 64 entries).
static mp_obj_t list_entries(const char *path, bool tuples, bool bytes_names) {
    mp_obj_t list = mp_obj_new_list(0, NULL);
    int iter = 0;
    for (;;) {
        const char *name;
        size_t len;
        uint32_t mode, size;
        int r = flashfs_listdir(path, &iter, &name, &len, &mode, &size);
        check(r);
        if (r == 0) {
            break;
        }
        mp_obj_t n = bytes_names ? mp_obj_new_bytes((const byte *)name, len) : mp_obj_new_str(name, len);
        if (tuples) {
            mp_obj_t t[4] = { n, MP_OBJ_NEW_SMALL_INT(mode), MP_OBJ_NEW_SMALL_INT(0), mp_obj_new_int_from_uint(size) };
            mp_obj_list_append(list, mp_obj_new_tuple(4, t));
        } else {
            mp_obj_list_append(list, n);
        }
    }
    return list;
}

static bool bytes_arg(size_t n_args, const mp_obj_t *args) {
    return n_args > 0 && mp_obj_is_type(args[0], &mp_type_bytes);
}

static mp_obj_t os_listdir(size_t n_args, const mp_obj_t *args) {
    return list_entries(path_arg(n_args, args), false, bytes_arg(n_args, args));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(os_listdir_obj, 0, 1, os_listdir);

static mp_obj_t os_ilistdir(size_t n_args, const mp_obj_t *args) {
    mp_obj_t list = list_entries(path_arg(n_args, args), true, bytes_arg(n_args, args));
    return mp_getiter(list, NULL);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(os_ilistdir_obj, 0, 1, os_ilistdir);

static mp_obj_t os_stat(mp_obj_t path_in) {
    uint32_t mode, size;
    check(flashfs_stat(mp_obj_str_get_str(path_in), &mode, &size));
    mp_obj_tuple_t *t = MP_OBJ_TO_PTR(mp_obj_new_tuple(10, NULL));
    t->items[0] = MP_OBJ_NEW_SMALL_INT(mode);
    for (int i = 1; i < 10; ++i) {
        t->items[i] = MP_OBJ_NEW_SMALL_INT(0);
    }
    t->items[6] = mp_obj_new_int_from_uint(size);
    return MP_OBJ_FROM_PTR(t);
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_stat_obj, os_stat);

static mp_obj_t os_statvfs(mp_obj_t path_in) {
    uint32_t bsize, blocks, bfree, files, ffree;
    mp_obj_str_get_str(path_in);
    flashfs_usage(&bsize, &blocks, &bfree, &files, &ffree);
    mp_obj_t items[10] = {
        mp_obj_new_int_from_uint(bsize), mp_obj_new_int_from_uint(bsize),
        mp_obj_new_int_from_uint(blocks), mp_obj_new_int_from_uint(bfree), mp_obj_new_int_from_uint(bfree),
        mp_obj_new_int_from_uint(files), mp_obj_new_int_from_uint(ffree), mp_obj_new_int_from_uint(ffree),
        MP_OBJ_NEW_SMALL_INT(0), MP_OBJ_NEW_SMALL_INT(FLASHFS_NAME_MAX),
    };
    return mp_obj_new_tuple(10, items);
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_statvfs_obj, os_statvfs);

static mp_obj_t os_remove(mp_obj_t path_in) {
    check(flashfs_remove(mp_obj_str_get_str(path_in)));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_remove_obj, os_remove);

static mp_obj_t os_rename(mp_obj_t old_in, mp_obj_t new_in) {
    check(flashfs_rename(mp_obj_str_get_str(old_in), mp_obj_str_get_str(new_in)));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(os_rename_obj, os_rename);

static mp_obj_t os_mkdir(mp_obj_t path_in) {
    check(flashfs_mkdir(mp_obj_str_get_str(path_in)));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_mkdir_obj, os_mkdir);

static mp_obj_t os_rmdir(mp_obj_t path_in) {
    check(flashfs_rmdir(mp_obj_str_get_str(path_in)));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_rmdir_obj, os_rmdir);

static mp_obj_t os_chdir(mp_obj_t path_in) {
    check(flashfs_chdir(mp_obj_str_get_str(path_in)));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_chdir_obj, os_chdir);

static mp_obj_t os_getcwd(void) {
    const char *cwd = flashfs_getcwd();
    size_t n = strlen(cwd);
    vstr_t v;
    vstr_init(&v, n + 1);
    vstr_add_char(&v, '/');
    vstr_add_strn(&v, cwd, n);
    return mp_obj_new_str_from_vstr(&v);
}
static MP_DEFINE_CONST_FUN_OBJ_0(os_getcwd_obj, os_getcwd);

static mp_obj_t os_sync(void) {
    return mp_const_none;   // writes go straight to flash; files sync on flush/close
}
static MP_DEFINE_CONST_FUN_OBJ_0(os_sync_obj, os_sync);

static const qstr os_uname_fields[] = {
    MP_QSTR_sysname, MP_QSTR_nodename, MP_QSTR_release, MP_QSTR_version, MP_QSTR_machine
};
static const MP_DEFINE_STR_OBJ(os_uname_sysname_obj, "qemu");
static const MP_DEFINE_STR_OBJ(os_uname_release_obj, MICROPY_VERSION_STRING);
static const MP_DEFINE_STR_OBJ(os_uname_version_obj, MICROPY_BANNER_NAME_AND_VERSION);
static const MP_DEFINE_STR_OBJ(os_uname_machine_obj, MICROPY_HW_BOARD_NAME " with " MICROPY_HW_MCU_NAME);
static MP_DEFINE_ATTRTUPLE(
    os_uname_info_obj,
    os_uname_fields,
    5,
    MP_ROM_PTR(&os_uname_sysname_obj),
    MP_ROM_PTR(&os_uname_sysname_obj),
    MP_ROM_PTR(&os_uname_release_obj),
    MP_ROM_PTR(&os_uname_version_obj),
    MP_ROM_PTR(&os_uname_machine_obj)
    );

static mp_obj_t os_uname(void) {
    return MP_OBJ_FROM_PTR(&os_uname_info_obj);
}
static MP_DEFINE_CONST_FUN_OBJ_0(os_uname_obj, os_uname);

static const mp_rom_map_elem_t os_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_os) },
    { MP_ROM_QSTR(MP_QSTR_sep), MP_ROM_QSTR(MP_QSTR__slash_) },
    { MP_ROM_QSTR(MP_QSTR_listdir), MP_ROM_PTR(&os_listdir_obj) },
    { MP_ROM_QSTR(MP_QSTR_ilistdir), MP_ROM_PTR(&os_ilistdir_obj) },
    { MP_ROM_QSTR(MP_QSTR_stat), MP_ROM_PTR(&os_stat_obj) },
    { MP_ROM_QSTR(MP_QSTR_statvfs), MP_ROM_PTR(&os_statvfs_obj) },
    { MP_ROM_QSTR(MP_QSTR_remove), MP_ROM_PTR(&os_remove_obj) },
    { MP_ROM_QSTR(MP_QSTR_unlink), MP_ROM_PTR(&os_remove_obj) },
    { MP_ROM_QSTR(MP_QSTR_rename), MP_ROM_PTR(&os_rename_obj) },
    { MP_ROM_QSTR(MP_QSTR_mkdir), MP_ROM_PTR(&os_mkdir_obj) },
    { MP_ROM_QSTR(MP_QSTR_rmdir), MP_ROM_PTR(&os_rmdir_obj) },
    { MP_ROM_QSTR(MP_QSTR_chdir), MP_ROM_PTR(&os_chdir_obj) },
    { MP_ROM_QSTR(MP_QSTR_getcwd), MP_ROM_PTR(&os_getcwd_obj) },
    { MP_ROM_QSTR(MP_QSTR_sync), MP_ROM_PTR(&os_sync_obj) },
    { MP_ROM_QSTR(MP_QSTR_uname), MP_ROM_PTR(&os_uname_obj) },
};
static MP_DEFINE_CONST_DICT(os_module_globals, os_module_globals_table);

const mp_obj_module_t mp_module_os = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&os_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_os, mp_module_os);

// `vfs`: only vfs.mount() without arguments (the list of mounts, as mpremote's `df`
// asks for it): the flash file system is always mounted at "/".
static const MP_DEFINE_STR_OBJ(vfs_flashfs_name_obj, "flashfs");

static mp_obj_t vfs_mount(size_t n_args, const mp_obj_t *args) {
    if (n_args != 0) {
        mp_raise_OSError(MP_EPERM);
    }
    mp_obj_t t[2] = { MP_OBJ_FROM_PTR(&vfs_flashfs_name_obj), MP_OBJ_NEW_QSTR(MP_QSTR__slash_) };
    mp_obj_t m = mp_obj_new_tuple(2, t);
    return mp_obj_new_list(1, &m);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(vfs_mount_obj, 0, 3, vfs_mount);

static const mp_rom_map_elem_t vfs_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_vfs) },
    { MP_ROM_QSTR(MP_QSTR_mount), MP_ROM_PTR(&vfs_mount_obj) },
};
static MP_DEFINE_CONST_DICT(vfs_module_globals, vfs_module_globals_table);

const mp_obj_module_t mp_module_vfs = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&vfs_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_vfs, mp_module_vfs);

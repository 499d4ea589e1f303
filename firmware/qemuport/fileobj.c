/*
 * open() and the file objects of the emulated board (on flashfs), plus the two
 * hooks the core needs to import from the file system: mp_import_stat() and
 * mp_reader_new_file() (.py sources and .mpy files, native modules included).
 *
 * Modes: 'r', 'w', 'a', 'x', each optionally with 'b' (bytes) or 't' (text, the
 * default) and '+'.  Files support read, readinto, readline, readlines, write,
 * seek, tell, flush, close, iteration and `with`; an unclosed file is closed by
 * the garbage collector (finaliser), and at soft reset.
 */

#include <string.h>

#include "py/builtin.h"
#include "py/lexer.h"
#include "py/mperrno.h"
#include "py/reader.h"
#include "py/runtime.h"
#include "py/stream.h"

#include "flashfs.h"

typedef struct _file_obj_t {
    mp_obj_base_t base;
    flashfs_file_t f;
} file_obj_t;

static const mp_obj_type_t file_type_binary;
static const mp_obj_type_t file_type_text;

static void file_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    file_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "<io.%s %d>", mp_obj_get_type_str(self_in), self->f.entry);
}

static mp_uint_t file_read(mp_obj_t self_in, void *buf, mp_uint_t size, int *errcode) {
    file_obj_t *self = MP_OBJ_TO_PTR(self_in);
    int r = flashfs_read(&self->f, buf, size);
    if (r < 0) {
        *errcode = -r;
        return MP_STREAM_ERROR;
    }
    return r;
}

static mp_uint_t file_write(mp_obj_t self_in, const void *buf, mp_uint_t size, int *errcode) {
    file_obj_t *self = MP_OBJ_TO_PTR(self_in);
    int r = flashfs_write(&self->f, buf, size);
    if (r < 0) {
        *errcode = -r;
        return MP_STREAM_ERROR;
    }
    return r;
}

static mp_uint_t file_ioctl(mp_obj_t self_in, mp_uint_t request, uintptr_t arg, int *errcode) {
    file_obj_t *self = MP_OBJ_TO_PTR(self_in);
    int r;
    switch (request) {
        case MP_STREAM_FLUSH:
            r = flashfs_sync(&self->f);
            break;
        case MP_STREAM_SEEK: {
            struct mp_stream_seek_t *s = (struct mp_stream_seek_t *)arg;
            r = flashfs_seek(&self->f, (int32_t)s->offset, s->whence);
            if (r == 0) {
                s->offset = self->f.pos;
            }
            break;
        }
        case MP_STREAM_CLOSE:
            r = flashfs_close(&self->f);
            break;
        case MP_STREAM_GET_BUFFER_SIZE:
            return 256;
        case MP_STREAM_POLL: {
            mp_uint_t ret = 0;
            if (self->f.entry >= 0) {
                ret = arg & (MP_STREAM_POLL_RD | MP_STREAM_POLL_WR);
            }
            return ret;
        }
        default:
            *errcode = MP_EINVAL;
            return MP_STREAM_ERROR;
    }
    if (r < 0) {
        *errcode = -r;
        return MP_STREAM_ERROR;
    }
    return 0;
}

static const mp_rom_map_elem_t file_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_read), MP_ROM_PTR(&mp_stream_read_obj) },
    { MP_ROM_QSTR(MP_QSTR_readinto), MP_ROM_PTR(&mp_stream_readinto_obj) },
    { MP_ROM_QSTR(MP_QSTR_readline), MP_ROM_PTR(&mp_stream_unbuffered_readline_obj) },
    { MP_ROM_QSTR(MP_QSTR_readlines), MP_ROM_PTR(&mp_stream_unbuffered_readlines_obj) },
    { MP_ROM_QSTR(MP_QSTR_write), MP_ROM_PTR(&mp_stream_write_obj) },
    { MP_ROM_QSTR(MP_QSTR_flush), MP_ROM_PTR(&mp_stream_flush_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&mp_stream_close_obj) },
    { MP_ROM_QSTR(MP_QSTR_seek), MP_ROM_PTR(&mp_stream_seek_obj) },
    { MP_ROM_QSTR(MP_QSTR_tell), MP_ROM_PTR(&mp_stream_tell_obj) },
    { MP_ROM_QSTR(MP_QSTR___del__), MP_ROM_PTR(&mp_stream_close_obj) },
    { MP_ROM_QSTR(MP_QSTR___enter__), MP_ROM_PTR(&mp_identity_obj) },
    { MP_ROM_QSTR(MP_QSTR___exit__), MP_ROM_PTR(&mp_stream___exit___obj) },
};
static MP_DEFINE_CONST_DICT(file_locals_dict, file_locals_dict_table);

static const mp_stream_p_t file_stream_binary = {
    .read = file_read,
    .write = file_write,
    .ioctl = file_ioctl,
};

static const mp_stream_p_t file_stream_text = {
    .read = file_read,
    .write = file_write,
    .ioctl = file_ioctl,
    .is_text = true,
};

static MP_DEFINE_CONST_OBJ_TYPE(
    file_type_binary,
    MP_QSTR_FileIO,
    MP_TYPE_FLAG_ITER_IS_STREAM,
    print, file_print,
    protocol, &file_stream_binary,
    locals_dict, &file_locals_dict
    );

static MP_DEFINE_CONST_OBJ_TYPE(
    file_type_text,
    MP_QSTR_TextIOWrapper,
    MP_TYPE_FLAG_ITER_IS_STREAM,
    print, file_print,
    protocol, &file_stream_text,
    locals_dict, &file_locals_dict
    );

static void raise_errno(int r) {
    mp_raise_OSError(-r);
}

mp_obj_t mp_builtin_open(size_t n_args, const mp_obj_t *args, mp_map_t *kwargs) {
    enum { ARG_file, ARG_mode };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_file, MP_ARG_OBJ | MP_ARG_REQUIRED, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_mode, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_QSTR(MP_QSTR_r)} },
        { MP_QSTR_buffering, MP_ARG_INT, {.u_int = -1} },
        { MP_QSTR_encoding, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    };
    mp_arg_val_t a[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args, args, kwargs, MP_ARRAY_SIZE(allowed_args), allowed_args, a);

    const char *path = mp_obj_str_get_str(a[ARG_file].u_obj);
    const char *mode = mp_obj_str_get_str(a[ARG_mode].u_obj);
    int flags = 0;
    bool text = true;
    int kinds = 0;
    for (const char *m = mode; *m; ++m) {
        switch (*m) {
            case 'r':
                flags |= FLASHFS_O_READ;
                ++kinds;
                break;
            case 'w':
                flags |= FLASHFS_O_WRITE | FLASHFS_O_CREATE | FLASHFS_O_TRUNC;
                ++kinds;
                break;
            case 'a':
                flags |= FLASHFS_O_WRITE | FLASHFS_O_CREATE | FLASHFS_O_APPEND;
                ++kinds;
                break;
            case 'x':
                flags |= FLASHFS_O_WRITE | FLASHFS_O_CREATE | FLASHFS_O_EXCL;
                ++kinds;
                break;
            case '+':
                flags |= FLASHFS_O_READ | FLASHFS_O_WRITE;
                break;
            case 'b':
                text = false;
                break;
            case 't':
                text = true;
                break;
            default:
                mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("invalid mode: '%s'"), mode);
        }
    }
    if (kinds != 1) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("invalid mode: '%s'"), mode);
    }

    file_obj_t *o = mp_obj_malloc_with_finaliser(file_obj_t, text ? &file_type_text : &file_type_binary);
    int r = flashfs_open(&o->f, path, flags);
    if (r < 0) {
        raise_errno(r);
    }
    return MP_OBJ_FROM_PTR(o);
}
MP_DEFINE_CONST_FUN_OBJ_KW(mp_builtin_open_obj, 1, mp_builtin_open);

/******************************************************************************/
// Imports from the file system.

mp_import_stat_t mp_import_stat(const char *path) {
    uint32_t mode, size;
    if (flashfs_stat(path, &mode, &size) == 0) {
        return mode == FLASHFS_MODE_DIR ? MP_IMPORT_STAT_DIR : MP_IMPORT_STAT_FILE;
    }
    return MP_IMPORT_STAT_NO_EXIST;
}

typedef struct {
    flashfs_file_t f;
    uint16_t len;
    uint16_t pos;
    byte buf[64];
} file_reader_t;

static mp_uint_t file_reader_readbyte(void *data) {
    file_reader_t *r = data;
    if (r->pos >= r->len) {
        int n = flashfs_read(&r->f, r->buf, sizeof(r->buf));
        if (n <= 0) {
            return MP_READER_EOF;
        }
        r->len = n;
        r->pos = 0;
    }
    return r->buf[r->pos++];
}

static void file_reader_close(void *data) {
    file_reader_t *r = data;
    flashfs_close(&r->f);
    m_del_obj(file_reader_t, r);
}

void mp_reader_new_file(mp_reader_t *reader, qstr filename) {
    file_reader_t *r = m_new_obj(file_reader_t);
    int err = flashfs_open(&r->f, qstr_str(filename), FLASHFS_O_READ);
    if (err < 0) {
        m_del_obj(file_reader_t, r);
        raise_errno(err);
    }
    r->len = 0;
    r->pos = 0;
    reader->data = r;
    reader->readbyte = file_reader_readbyte;
    reader->close = file_reader_close;
}

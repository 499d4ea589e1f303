/*
 * flashfs: the emulated board's small file system in (emulated NOR) flash.
 *
 * C-level API; Python sees it through open() (fileobj.c), the `os` module (modos.c)
 * and imports (mp_import_stat, mp_reader_new_file).  Errors are returned as negative
 * MicroPython errno values (-MP_ENOENT, ...).  Paths are '/'-separated, absolute or
 * relative to the current directory; the root is "/".
 */
#ifndef MICROPY_INCLUDED_QEMUPORT_FLASHFS_H
#define MICROPY_INCLUDED_QEMUPORT_FLASHFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FLASHFS_OK (0)
#define FLASHFS_FORMATTED (1)

#define FLASHFS_NAME_MAX (47)       // longest absolute path, without the leading '/'
#define FLASHFS_MODE_DIR (0x4000)
#define FLASHFS_MODE_FILE (0x8000)

#define FLASHFS_O_READ (1)
#define FLASHFS_O_WRITE (2)
#define FLASHFS_O_CREATE (4)
#define FLASHFS_O_TRUNC (8)
#define FLASHFS_O_APPEND (16)
#define FLASHFS_O_EXCL (32)

typedef struct _flashfs_file_t {
    int16_t entry;          // directory slot, -1 when closed
    uint8_t flags;          // FLASHFS_O_*
    uint8_t dirty;          // size changed since the last sync
    uint16_t first;         // first block, 0xFFFF if none
    uint16_t blk;           // cached: block number of chain position blk_index (0xFFFF: none)
    uint32_t blk_index;
    uint32_t size;
    uint32_t pos;
} flashfs_file_t;

// Mount the file system (formatting the region if it holds none): FLASHFS_OK or
// FLASHFS_FORMATTED.
int flashfs_mount(void);
int flashfs_format(void);
void flashfs_reset_cwd(void);

int flashfs_stat(const char *path, uint32_t *mode, uint32_t *size);
int flashfs_mkdir(const char *path);
int flashfs_rmdir(const char *path);
int flashfs_remove(const char *path);
int flashfs_rename(const char *old_path, const char *new_path);
int flashfs_chdir(const char *path);
const char *flashfs_getcwd(void);  // without the leading '/': "" is the root

// Directory listing: call with *iter = 0, then repeatedly; returns 1 with an entry,
// 0 at the end, or a negative errno.  *name points into flash (valid until the next
// file system change).
int flashfs_listdir(const char *path, int *iter, const char **name, size_t *name_len,
    uint32_t *mode, uint32_t *size);

// Totals for statvfs: block size, blocks, free blocks, directory slots, free slots.
void flashfs_usage(uint32_t *bsize, uint32_t *blocks, uint32_t *bfree, uint32_t *files, uint32_t *ffree);

int flashfs_open(flashfs_file_t *f, const char *path, int flags);
int flashfs_read(flashfs_file_t *f, void *buf, size_t len);       // bytes read or -errno
int flashfs_write(flashfs_file_t *f, const void *buf, size_t len); // bytes written or -errno
int flashfs_seek(flashfs_file_t *f, int32_t offset, int whence);  // 0 or -errno; f->pos is the result
int flashfs_sync(flashfs_file_t *f);
int flashfs_close(flashfs_file_t *f);

#endif // MICROPY_INCLUDED_QEMUPORT_FLASHFS_H

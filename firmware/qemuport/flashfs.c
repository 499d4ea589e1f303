/*
 * flashfs: a small FAT-style file system in the emulated board's flash.
 *
 * The flash is memory mapped, so everything is *read* in place (no RAM caches:
 * the file system costs 1 KB of SRAM, a page buffer, plus 28 bytes per open file
 * on the heap).  Writing follows NOR rules: a page (1 KB) is erased to 0xFF, and
 * programming a word can only clear bits.  flash_update() programs in place when
 * the new bytes only clear bits (appending to a fresh block, allocating blocks,
 * linking chains) and otherwise re-writes the page (read, erase, program).
 *
 * Layout, in 1 KB blocks of the region [_fs_start, _fs_end):
 *   block 0          superblock (magic, version, geometry)
 *   blocks 1-4       64 directory slots of 64 bytes: state, size, first block,
 *                    full path (files and directories; the root is implicit)
 *   blocks 5-6       allocation table: uint16 per block, 0xFFFF free, 0x7FFF end
 *                    of a chain, 0x7FFE reserved, else the next block of the file
 *   blocks 7-1023    file data
 * With a 1 MB region: 1017 KB of data, 64 files and directories, paths of up to
 * 47 characters.
 *
 * A write that grows a file records the new size at once (one directory-page
 * re-write), so data written to a file that is never closed is kept, as with POSIX.
 * Not crash-safe against a power cut in the middle of a page re-write (the
 * emulator has no power cut); a rename is a single directory-slot update.
 */

#include <string.h>

#include "py/mperrno.h"
#include "py/mpconfig.h"

#include "board.h"
#include "flashfs.h"

#define PAGE (1024u)
#define FS_MAGIC (0x5346544Du)      // "MTFS"
#define FS_VERSION (1u)
#define N_ENTRIES (64u)
#define ENTRY_BYTES (64u)
#define DIR_BLOCK (1u)
#define DIR_BLOCKS ((N_ENTRIES * ENTRY_BYTES) / PAGE)
#define FAT_BLOCK (DIR_BLOCK + DIR_BLOCKS)

#define ST_FREE (0xFFFFFFFFu)
#define ST_FILE (0x454C4946u)       // "FILE"
#define ST_DIR (0x20524944u)        // "DIR "

#define FAT_FREE (0xFFFFu)
#define FAT_END (0x7FFFu)
#define FAT_RESERVED (0x7FFEu)
#define NO_BLOCK (0xFFFFu)

typedef struct {
    uint32_t magic;
    uint32_t version;
    uint32_t n_blocks;
    uint32_t n_entries;
    uint32_t fat_block;
    uint32_t data_block;
} superblock_t;

typedef struct {
    uint32_t state;
    uint32_t size;
    uint16_t first;
    uint16_t reserved0;
    uint32_t reserved1;
    char name[FLASHFS_NAME_MAX + 1];
} entry_t;

_Static_assert(sizeof(entry_t) == ENTRY_BYTES, "directory slot size");

static uintptr_t fs_base;
static uint32_t n_blocks;
static uint32_t data_block;
static uint32_t alloc_hint;
static uint32_t page_buf[PAGE / 4];
static char cwd[FLASHFS_NAME_MAX + 1];

static inline uintptr_t block_addr(uint32_t b) {
    return fs_base + b * PAGE;
}

static inline const entry_t *entry_at(uint32_t i) {
    return (const entry_t *)(block_addr(DIR_BLOCK) + i * ENTRY_BYTES);
}

static inline const uint16_t *fat(void) {
    return (const uint16_t *)block_addr(FAT_BLOCK);
}

/******************************************************************************/
// Flash writes

static void flash_update(uintptr_t addr, const void *src, size_t len) {
    const uint8_t *s = src;
    while (len > 0) {
        uintptr_t page = addr & ~(uintptr_t)(PAGE - 1);
        size_t off = addr - page;
        size_t n = PAGE - off;
        if (n > len) {
            n = len;
        }
        const uint8_t *cur = (const uint8_t *)addr;
        bool changed = false;
        bool erase = false;
        for (size_t i = 0; i < n; ++i) {
            if (cur[i] != s[i]) {
                changed = true;
                if ((cur[i] & s[i]) != s[i]) {
                    erase = true;
                    break;
                }
            }
        }
        if (erase) {
            memcpy(page_buf, (const void *)page, PAGE);
            memcpy((uint8_t *)page_buf + off, s, n);
            board_flash_erase_page(page);
            board_flash_program(page, page_buf, PAGE / 4);
        } else if (changed) {
            // Program only the words touched; other bytes are 0xFF (unchanged by AND).
            uintptr_t w0 = addr & ~(uintptr_t)3;
            uintptr_t w1 = (addr + n + 3) & ~(uintptr_t)3;
            memset(page_buf, 0xFF, w1 - w0);
            memcpy((uint8_t *)page_buf + (addr - w0), s, n);
            board_flash_program(w0, page_buf, (w1 - w0) / 4);
        }
        addr += n;
        s += n;
        len -= n;
    }
}

static void fat_set(uint32_t b, uint16_t v) {
    flash_update((uintptr_t)&fat()[b], &v, sizeof(v));
}

static void entry_write(uint32_t i, const entry_t *e) {
    flash_update((uintptr_t)entry_at(i), e, sizeof(*e));
}

static void entry_free(uint32_t i) {
    entry_t e;
    memset(&e, 0xFF, sizeof(e));
    entry_write(i, &e);
}

/******************************************************************************/
// Mount and format

int flashfs_format(void) {
    for (uint32_t b = 0; b < n_blocks; ++b) {
        const uint32_t *p = (const uint32_t *)block_addr(b);
        for (uint32_t i = 0; i < PAGE / 4; ++i) {
            if (p[i] != 0xFFFFFFFFu) {
                board_flash_erase_page(block_addr(b));
                break;
            }
        }
    }
    for (uint32_t b = 0; b < data_block; ++b) {
        fat_set(b, FAT_RESERVED);
    }
    superblock_t sb = { FS_MAGIC, FS_VERSION, n_blocks, N_ENTRIES, FAT_BLOCK, data_block };
    flash_update(block_addr(0), &sb, sizeof(sb));
    alloc_hint = data_block;
    cwd[0] = '\0';
    return FLASHFS_FORMATTED;
}

int flashfs_mount(void) {
    fs_base = board_fs_start();
    n_blocks = (board_fs_end() - fs_base) / PAGE;
    if (n_blocks > FAT_RESERVED) {
        n_blocks = FAT_RESERVED;
    }
    uint32_t fat_blocks = (n_blocks * 2 + PAGE - 1) / PAGE;
    data_block = FAT_BLOCK + fat_blocks;
    alloc_hint = data_block;
    cwd[0] = '\0';
    const superblock_t *sb = (const superblock_t *)fs_base;
    if (sb->magic != FS_MAGIC || sb->version != FS_VERSION || sb->n_blocks != n_blocks
        || sb->n_entries != N_ENTRIES || sb->fat_block != FAT_BLOCK || sb->data_block != data_block) {
        return flashfs_format();
    }
    return FLASHFS_OK;
}

void flashfs_reset_cwd(void) {
    cwd[0] = '\0';
}

/******************************************************************************/
// Paths

// `path` made absolute and normalised into out (no leading '/', "" is the root).
static int abspath(const char *path, char *out) {
    char buf[2 * (FLASHFS_NAME_MAX + 1)];
    size_t n = 0;
    if (path[0] != '/') {
        n = strlen(cwd);
        memcpy(buf, cwd, n);
    }
    for (const char *p = path; *p != '\0';) {
        while (*p == '/') {
            ++p;
        }
        const char *c = p;
        while (*p != '\0' && *p != '/') {
            ++p;
        }
        size_t len = p - c;
        if (len == 0 || (len == 1 && c[0] == '.')) {
            continue;
        }
        if (len == 2 && c[0] == '.' && c[1] == '.') {
            while (n > 0 && buf[n - 1] != '/') {
                --n;
            }
            if (n > 0) {
                --n;    // the '/' before the removed component
            }
            continue;
        }
        if (n + (n > 0) + len > FLASHFS_NAME_MAX) {
            return -MP_EINVAL;  // path too long for a directory slot
        }
        if (n > 0) {
            buf[n++] = '/';
        }
        memcpy(buf + n, c, len);
        n += len;
    }
    memcpy(out, buf, n);
    out[n] = '\0';
    return 0;
}

static int find(const char *abs) {
    for (uint32_t i = 0; i < N_ENTRIES; ++i) {
        const entry_t *e = entry_at(i);
        if ((e->state == ST_FILE || e->state == ST_DIR) && strcmp(e->name, abs) == 0) {
            return i;
        }
    }
    return -1;
}

// 0 if `abs` is the root or a directory, else -ENOENT / -ENOTDIR.
static int check_dir(const char *abs) {
    if (abs[0] == '\0') {
        return 0;
    }
    int i = find(abs);
    if (i < 0) {
        return -MP_ENOENT;
    }
    return entry_at(i)->state == ST_DIR ? 0 : -MP_ENOTDIR;
}

static int check_parent(const char *abs) {
    char parent[FLASHFS_NAME_MAX + 1];
    const char *slash = strrchr(abs, '/');
    size_t n = slash == NULL ? 0 : (size_t)(slash - abs);
    memcpy(parent, abs, n);
    parent[n] = '\0';
    return check_dir(parent);
}

static int new_entry(const char *abs, uint32_t state) {
    for (uint32_t i = 0; i < N_ENTRIES; ++i) {
        if (entry_at(i)->state == ST_FREE) {
            entry_t e;
            memset(&e, 0xFF, sizeof(e));
            e.state = state;
            e.size = 0;
            memset(e.name, 0, sizeof(e.name));
            strcpy(e.name, abs);
            e.first = NO_BLOCK;
            entry_write(i, &e);
            return i;
        }
    }
    return -MP_ENOSPC;
}

/******************************************************************************/
// Blocks

static int block_alloc(void) {
    const uint16_t *t = fat();
    for (uint32_t k = 0; k < n_blocks - data_block; ++k) {
        uint32_t b = alloc_hint + k;
        if (b >= n_blocks) {
            b -= n_blocks - data_block;
        }
        if (t[b] == FAT_FREE) {
            const uint32_t *p = (const uint32_t *)block_addr(b);
            for (uint32_t i = 0; i < PAGE / 4; ++i) {
                if (p[i] != 0xFFFFFFFFu) {
                    board_flash_erase_page(block_addr(b));
                    break;
                }
            }
            fat_set(b, FAT_END);
            alloc_hint = b + 1 < n_blocks ? b + 1 : data_block;
            return b;
        }
    }
    return -MP_ENOSPC;
}

static void chain_free(uint32_t b) {
    const uint16_t *t = fat();
    while (b >= data_block && b < n_blocks) {
        uint32_t next = t[b];
        fat_set(b, FAT_FREE);
        b = next;
    }
}

/******************************************************************************/
// Names and directories

int flashfs_stat(const char *path, uint32_t *mode, uint32_t *size) {
    char abs[FLASHFS_NAME_MAX + 1];
    int r = abspath(path, abs);
    if (r < 0) {
        return r;
    }
    if (abs[0] == '\0') {
        *mode = FLASHFS_MODE_DIR;
        *size = 0;
        return 0;
    }
    int i = find(abs);
    if (i < 0) {
        return -MP_ENOENT;
    }
    const entry_t *e = entry_at(i);
    *mode = e->state == ST_DIR ? FLASHFS_MODE_DIR : FLASHFS_MODE_FILE;
    *size = e->state == ST_DIR ? 0 : e->size;
    return 0;
}

int flashfs_mkdir(const char *path) {
    char abs[FLASHFS_NAME_MAX + 1];
    int r = abspath(path, abs);
    if (r < 0) {
        return r;
    }
    if (abs[0] == '\0' || find(abs) >= 0) {
        return -MP_EEXIST;
    }
    r = check_parent(abs);
    if (r < 0) {
        return r;
    }
    r = new_entry(abs, ST_DIR);
    return r < 0 ? r : 0;
}

static bool dir_has_children(const char *abs) {
    size_t n = strlen(abs);
    for (uint32_t i = 0; i < N_ENTRIES; ++i) {
        const entry_t *e = entry_at(i);
        if ((e->state == ST_FILE || e->state == ST_DIR) && strncmp(e->name, abs, n) == 0 && e->name[n] == '/') {
            return true;
        }
    }
    return false;
}

int flashfs_rmdir(const char *path) {
    char abs[FLASHFS_NAME_MAX + 1];
    int r = abspath(path, abs);
    if (r < 0) {
        return r;
    }
    if (abs[0] == '\0') {
        return -MP_EPERM;
    }
    int i = find(abs);
    if (i < 0) {
        return -MP_ENOENT;
    }
    if (entry_at(i)->state != ST_DIR) {
        return -MP_ENOTDIR;
    }
    if (dir_has_children(abs)) {
        return -MP_EACCES;      // not empty
    }
    entry_free(i);
    return 0;
}

static int remove_abs(const char *abs) {
    if (abs[0] == '\0') {
        return -MP_EISDIR;
    }
    int i = find(abs);
    if (i < 0) {
        return -MP_ENOENT;
    }
    const entry_t *e = entry_at(i);
    if (e->state != ST_FILE) {
        return -MP_EISDIR;
    }
    uint32_t first = e->first;
    entry_free(i);
    chain_free(first);
    return 0;
}

int flashfs_remove(const char *path) {
    char abs[FLASHFS_NAME_MAX + 1];
    int r = abspath(path, abs);
    if (r < 0) {
        return r;
    }
    return remove_abs(abs);
}

int flashfs_rename(const char *old_path, const char *new_path) {
    char from[FLASHFS_NAME_MAX + 1];
    char to[FLASHFS_NAME_MAX + 1];
    int r = abspath(old_path, from);
    if (r == 0) {
        r = abspath(new_path, to);
    }
    if (r < 0) {
        return r;
    }
    if (from[0] == '\0' || to[0] == '\0') {
        return -MP_EPERM;
    }
    int i = find(from);
    if (i < 0) {
        return -MP_ENOENT;
    }
    if (strcmp(from, to) == 0) {
        return 0;
    }
    bool is_dir = entry_at(i)->state == ST_DIR;
    size_t nf = strlen(from);
    if (is_dir && strncmp(to, from, nf) == 0 && to[nf] == '/') {
        return -MP_EINVAL;      // into itself
    }
    r = check_parent(to);
    if (r < 0) {
        return r;
    }
    int j = find(to);
    if (j >= 0) {
        // Replace an existing file (POSIX rename); never a directory.
        if (is_dir || entry_at(j)->state != ST_FILE) {
            return -MP_EEXIST;
        }
        r = remove_abs(to);
        if (r < 0) {
            return r;
        }
    }
    size_t nt = strlen(to);
    if (is_dir) {
        // children first: check every new name fits
        for (uint32_t k = 0; k < N_ENTRIES; ++k) {
            const entry_t *e = entry_at(k);
            if ((e->state == ST_FILE || e->state == ST_DIR) && strncmp(e->name, from, nf) == 0 && e->name[nf] == '/'
                && nt + strlen(e->name) - nf > FLASHFS_NAME_MAX) {
                return -MP_EINVAL;
            }
        }
        for (uint32_t k = 0; k < N_ENTRIES; ++k) {
            const entry_t *e = entry_at(k);
            if ((e->state == ST_FILE || e->state == ST_DIR) && strncmp(e->name, from, nf) == 0 && e->name[nf] == '/') {
                entry_t c = *e;
                memset(c.name, 0, sizeof(c.name));
                memcpy(c.name, to, nt);
                strcpy(c.name + nt, e->name + nf);
                entry_write(k, &c);
            }
        }
    }
    entry_t e = *entry_at(i);
    memset(e.name, 0, sizeof(e.name));
    memcpy(e.name, to, nt);
    entry_write(i, &e);
    return 0;
}

int flashfs_chdir(const char *path) {
    char abs[FLASHFS_NAME_MAX + 1];
    int r = abspath(path, abs);
    if (r < 0) {
        return r;
    }
    r = check_dir(abs);
    if (r < 0) {
        return r;
    }
    strcpy(cwd, abs);
    return 0;
}

const char *flashfs_getcwd(void) {
    return cwd;
}

int flashfs_listdir(const char *path, int *iter, const char **name, size_t *name_len,
    uint32_t *mode, uint32_t *size) {
    char abs[FLASHFS_NAME_MAX + 1];
    int r = abspath(path, abs);
    if (r < 0) {
        return r;
    }
    if (*iter == 0) {
        r = check_dir(abs);
        if (r < 0) {
            return r;
        }
    }
    size_t n = strlen(abs);
    for (uint32_t i = *iter; i < N_ENTRIES; ++i) {
        const entry_t *e = entry_at(i);
        if (e->state != ST_FILE && e->state != ST_DIR) {
            continue;
        }
        const char *rest;
        if (n == 0) {
            rest = e->name;
        } else if (strncmp(e->name, abs, n) == 0 && e->name[n] == '/') {
            rest = e->name + n + 1;
        } else {
            continue;
        }
        if (strchr(rest, '/') != NULL) {
            continue;
        }
        *iter = i + 1;
        *name = rest;
        *name_len = strlen(rest);
        *mode = e->state == ST_DIR ? FLASHFS_MODE_DIR : FLASHFS_MODE_FILE;
        *size = e->state == ST_DIR ? 0 : e->size;
        return 1;
    }
    *iter = N_ENTRIES;
    return 0;
}

void flashfs_usage(uint32_t *bsize, uint32_t *blocks, uint32_t *bfree, uint32_t *files, uint32_t *ffree) {
    uint32_t free_blocks = 0;
    const uint16_t *t = fat();
    for (uint32_t b = data_block; b < n_blocks; ++b) {
        free_blocks += t[b] == FAT_FREE;
    }
    uint32_t free_entries = 0;
    for (uint32_t i = 0; i < N_ENTRIES; ++i) {
        free_entries += entry_at(i)->state == ST_FREE;
    }
    *bsize = PAGE;
    *blocks = n_blocks - data_block;
    *bfree = free_blocks;
    *files = N_ENTRIES;
    *ffree = free_entries;
}

/******************************************************************************/
// Files

int flashfs_open(flashfs_file_t *f, const char *path, int flags) {
    char abs[FLASHFS_NAME_MAX + 1];
    f->entry = -1;
    int r = abspath(path, abs);
    if (r < 0) {
        return r;
    }
    if (abs[0] == '\0') {
        return -MP_EISDIR;
    }
    int i = find(abs);
    if (i < 0) {
        if (!(flags & FLASHFS_O_CREATE)) {
            return -MP_ENOENT;
        }
        r = check_parent(abs);
        if (r < 0) {
            return r;
        }
        i = new_entry(abs, ST_FILE);
        if (i < 0) {
            return i;
        }
    } else {
        const entry_t *e = entry_at(i);
        if (e->state == ST_DIR) {
            return -MP_EISDIR;
        }
        if (flags & FLASHFS_O_EXCL) {
            return -MP_EEXIST;
        }
        if ((flags & FLASHFS_O_TRUNC) && (e->size != 0 || e->first != NO_BLOCK)) {
            entry_t c = *e;
            uint32_t first = c.first;
            c.size = 0;
            c.first = NO_BLOCK;
            entry_write(i, &c);
            if (first != NO_BLOCK) {
                chain_free(first);
            }
        }
    }
    const entry_t *e = entry_at(i);
    f->entry = i;
    f->flags = flags;
    f->dirty = 0;
    f->first = e->first;
    f->blk = NO_BLOCK;
    f->blk_index = 0;
    f->size = e->size;
    f->pos = (flags & FLASHFS_O_APPEND) ? e->size : 0;
    return 0;
}

// Block number of chain position `index` of the file, allocating blocks (when
// `alloc`) up to it.
static int file_block(flashfs_file_t *f, uint32_t index, bool alloc) {
    uint32_t b;
    uint32_t i;
    if (f->blk != NO_BLOCK && f->blk_index <= index) {
        b = f->blk;
        i = f->blk_index;
    } else {
        if (f->first == NO_BLOCK) {
            if (!alloc) {
                return -MP_EIO;
            }
            int nb = block_alloc();
            if (nb < 0) {
                return nb;
            }
            f->first = nb;
            entry_t c = *entry_at(f->entry);
            c.first = nb;
            entry_write(f->entry, &c);
        }
        b = f->first;
        i = 0;
    }
    const uint16_t *t = fat();
    while (i < index) {
        uint32_t next = t[b];
        if (next == FAT_END) {
            if (!alloc) {
                return -MP_EIO;
            }
            int nb = block_alloc();
            if (nb < 0) {
                return nb;
            }
            fat_set(b, nb);
            next = nb;
        } else if (next < data_block || next >= n_blocks) {
            return -MP_EIO;     // corrupted chain
        }
        b = next;
        ++i;
    }
    f->blk = b;
    f->blk_index = i;
    return b;
}

int flashfs_read(flashfs_file_t *f, void *buf, size_t len) {
    if (f->entry < 0 || !(f->flags & FLASHFS_O_READ)) {
        return -MP_EBADF;
    }
    if (f->pos >= f->size) {
        return 0;
    }
    if (len > f->size - f->pos) {
        len = f->size - f->pos;
    }
    uint8_t *d = buf;
    size_t done = 0;
    while (done < len) {
        uint32_t off = f->pos % PAGE;
        size_t n = PAGE - off;
        if (n > len - done) {
            n = len - done;
        }
        int b = file_block(f, f->pos / PAGE, false);
        if (b < 0) {
            return done ? (int)done : b;
        }
        memcpy(d + done, (const void *)(block_addr(b) + off), n);
        done += n;
        f->pos += n;
    }
    return done;
}

static int write_bytes(flashfs_file_t *f, const uint8_t *s, size_t len) {
    size_t done = 0;
    while (done < len) {
        uint32_t off = f->pos % PAGE;
        size_t n = PAGE - off;
        if (n > len - done) {
            n = len - done;
        }
        int b = file_block(f, f->pos / PAGE, true);
        if (b < 0) {
            return done ? (int)done : b;
        }
        flash_update(block_addr(b) + off, s + done, n);
        done += n;
        f->pos += n;
        if (f->pos > f->size) {
            f->size = f->pos;
            f->dirty = 1;
        }
    }
    return done;
}

int flashfs_write(flashfs_file_t *f, const void *buf, size_t len) {
    if (f->entry < 0 || !(f->flags & FLASHFS_O_WRITE)) {
        return -MP_EBADF;
    }
    if (f->flags & FLASHFS_O_APPEND) {
        f->pos = f->size;
    }
    if (f->pos > f->size) {
        // a seek past the end: fill the gap with zeros
        static const uint8_t zeros[64];
        uint32_t target = f->pos;
        f->pos = f->size;
        while (f->pos < target) {
            size_t n = target - f->pos < sizeof(zeros) ? target - f->pos : sizeof(zeros);
            int r = write_bytes(f, zeros, n);
            if (r < 0) {
                return r;
            }
        }
    }
    int r = write_bytes(f, buf, len);
    // Record the new size at once (like a POSIX write): a file that is never closed keeps
    // its data.  Costs a rewrite of one directory page per growing write.
    int s = flashfs_sync(f);
    return r < 0 ? r : s < 0 ? s : r;
}

int flashfs_seek(flashfs_file_t *f, int32_t offset, int whence) {
    if (f->entry < 0) {
        return -MP_EBADF;
    }
    int64_t base = whence == 0 ? 0 : whence == 1 ? (int64_t)f->pos : (int64_t)f->size;
    int64_t pos = base + offset;
    if (whence < 0 || whence > 2 || pos < 0 || pos > 0x7FFFFFFF) {
        return -MP_EINVAL;
    }
    f->pos = (uint32_t)pos;
    return 0;
}

int flashfs_sync(flashfs_file_t *f) {
    if (f->entry < 0) {
        return -MP_EBADF;
    }
    if (f->dirty) {
        const entry_t *e = entry_at(f->entry);
        if (e->state != ST_FILE || e->first != f->first) {
            f->entry = -1;
            return -MP_EIO;     // removed while open
        }
        entry_t c = *e;
        c.size = f->size;
        entry_write(f->entry, &c);
        f->dirty = 0;
    }
    return 0;
}

int flashfs_close(flashfs_file_t *f) {
    if (f->entry < 0) {
        return 0;
    }
    int r = flashfs_sync(f);
    f->entry = -1;
    return r;
}

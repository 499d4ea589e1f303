# Frozen weights read in place from memory-mapped flash: no copy in the heap.
#
# The RP2040 maps its flash at 0x10000000 (XIP), and stock MicroPython gives a zero-copy view of
# any address (uctypes.bytearray_at).  The file system (LittleFS) does not keep a file's bytes
# contiguous, so the weights get their own region: the flash between the end of the firmware
# image and the start of the file system, otherwise unused (315 KB with MicroPython 1.27 on a
# 2 MB Pico).  MicroPython cannot write there (rp2.Flash reaches only the file system's range):
# the host writes it as a UF2 (`microtrain push` makes it, the boot ROM's drive takes it, as it
# takes firmware), which leaves the firmware and the file system as they are.
#
#   region: | header block (4 KB) | the model file's bytes from WGHT on (BIAS, QPAR when they fit) |
#   header: '<4sIIII' b'MTWF', model id (the file header's CRC), length, crc32 of the bytes,
#           the file offset they start at (WGHT's)
#
# The model file stays the source of truth: load() uses the region only when its header names
# this model file and the CRC of the mapped bytes is the header's (a half-written or stale
# region is ignored); a section is read in place only when the span covers all of it.  The firmware's end and the file system's start come from the pico-sdk's
# binary info in the image (BINARY_INFO_ID_RP_BINARY_END; MicroPython's block device).
# Elsewhere (no rp2, no binary info) region() is None and weights are read into the heap.

import struct

try:
    import machine
    import rp2                                    # noqa: F401 - the RP2040 port
    import uctypes
except ImportError:
    rp2 = None

try:
    from mtkernels import crc32
except ImportError:
    try:
        from binascii import crc32
    except ImportError:
        from .pykernels import crc32

XIP_BASE = 0x10000000
BLOCK = 4096
MAGIC = b"MTWF"
HEADER_FMT = "<4sIIII"
_BI_MARKER_START = 0x7188EBF2
_BI_MARKER_END = 0xE71AA390
_BI_TYPE_ID_AND_INT = 5
_BI_TAG_RP = 0x5052
_BI_ID_BINARY_END = 0x68F465DE
_BI_TYPE_BLOCK_DEVICE = 7
_BI_TAG_MP = 0x504D


def _u32(a):
    # binary info entries are only 2-byte aligned (mem32 wants 4)
    m = machine.mem16
    return m[a] | (m[a + 2] << 16)


def _binary_info():
    """(end of the firmware image, start of MicroPython's file system) as flash offsets, from the
    pico-sdk's binary info (what `picotool info` shows), or None."""
    for a in range(XIP_BASE + 0x100, XIP_BASE + 0x400, 4):
        if _u32(a) == _BI_MARKER_START and _u32(a + 16) == _BI_MARKER_END:
            start, end = _u32(a + 4), _u32(a + 8)
            if not (XIP_BASE <= start <= end < XIP_BASE + 0x1000000):
                return None
            image_end = fs_start = None
            for p in range(start, end, 4):
                e = _u32(p)
                if e & 1 or not XIP_BASE <= e < XIP_BASE + 0x1000000:
                    continue                      # an entry copied to RAM: not ours
                kind = _u32(e)
                if kind == _BI_TYPE_ID_AND_INT | (_BI_TAG_RP << 16) and _u32(e + 4) == _BI_ID_BINARY_END:
                    image_end = _u32(e + 8) - XIP_BASE
                elif kind == _BI_TYPE_BLOCK_DEVICE | (_BI_TAG_MP << 16):
                    fs_start = _u32(e + 8) - XIP_BASE      # name, address, size, ...
            return None if image_end is None or fs_start is None else (image_end, fs_start)
    return None


def region():
    """(flash offset, bytes) of the weights region on this board, or None."""
    if rp2 is None:
        return None
    try:
        bi = _binary_info()
    except (ValueError, OSError):                 # no readable binary info
        return None
    if bi is None:
        return None
    start = (bi[0] + BLOCK - 1) // BLOCK * BLOCK
    size = bi[1] - start
    return (start, size) if size >= 2 * BLOCK else None


def _view(offset, n):
    return memoryview(uctypes.bytearray_at(XIP_BASE + offset, n))


def _header(offset):
    return struct.unpack(HEADER_FMT, bytes(_view(offset, struct.calcsize(HEADER_FMT))))


def state():
    """What the region holds: None (no region), or (offset, size, model id or None, length)."""
    reg = region()
    if reg is None:
        return None
    magic, mid, n, _, _ = _header(reg[0])
    return (reg[0], reg[1], mid if magic == MAGIC else None, n if magic == MAGIC else 0)


# the model file's constant sections the region may hold, in file order: WGHT always, BIAS and
# QPAR (biases, requantization and training factors) when they follow it and fit
SPAN_TAGS = ("WGHT", "BIAS", "QPAR")


def mapped(reg, model_id, entries):
    """{tag: read-only view} of the sections of this model file (section table `entries`) the
    region holds, or {} when it holds another model's, a torn copy, or nothing."""
    start, size = reg
    magic, mid, n, c, first = _header(start)
    if magic != MAGIC or mid != model_id or n + BLOCK > size:
        return {}
    view = _view(start + BLOCK, n)
    if crc32(view) & 0xFFFFFFFF != c:              # torn by a reset mid-copy, or overwritten
        return {}
    out = {}
    for tag, off, length, _crc in entries:
        tag = bytes(tag).decode()
        if tag in SPAN_TAGS and first <= off and off + length <= first + n:
            out[tag] = view[off - first:off - first + length]
    return out if "WGHT" in out else {}

# Training state on flash that survives any sequence of resets, bound to its model file.
# The one home of the checkpoint format: the board's trainer writes and reads it with this code,
# the host reads what it pulls with the same code (microtrain.board.checkpoint).
#
#   header  '<4sHHIIIIiiIH'  magic b"MTCK", version 2, flags 0, generation, model id, steps,
#                            samples, last sample seq, lr_shift, PRNG state, n_classes
#   blobs   '<4sI' tag, length, then the bytes (W<layer>, B<layer>, after class addition CL..)
#   crc     '<I' CRC-32 of everything before it
#
# A store is two slots, <path>.0 and <path>.1.  save() writes the slot that does NOT hold the
# newest valid state, so a reset at any moment (mid-write, twice in a row, during recovery)
# leaves the newest complete state intact: load() takes the valid slot with the highest
# generation.  The model id is the CRC in the model file's header (it covers every section's
# CRC): a checkpoint of another model is refused, never half-applied.

import struct

from ._compat import exists, remove

MAGIC = b"MTCK"
VERSION = 2
HEADER_FMT = "<4sHHIIIIiiIH"
HEADER_SIZE = struct.calcsize(HEADER_FMT)
BLOB_FMT = "<4sI"
SLOTS = (".0", ".1")

try:
    from mtkernels import crc32
except ImportError:
    try:
        from binascii import crc32
    except ImportError:
        from .pykernels import crc32


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupted, newer, or of another model."""


class State:
    """What a checkpoint holds besides the tensors."""

    def __init__(self, generation=0, model_id=0, steps=0, samples=0, last_seq=-1, lr_shift=0, rng=1,
                 n_classes=0):
        self.generation = generation
        self.model_id = model_id
        self.steps = steps
        self.samples = samples
        self.last_seq = last_seq
        self.lr_shift = lr_shift
        self.rng = rng
        self.n_classes = n_classes


def write(f, state, blobs):
    """Write one checkpoint to the open binary file f; blobs: (4-byte tag, buffer) pairs."""
    head = struct.pack(HEADER_FMT, MAGIC, VERSION, 0, state.generation & 0xFFFFFFFF, state.model_id,
                       state.steps, state.samples, state.last_seq, state.lr_shift, state.rng, state.n_classes)
    f.write(head)
    c = crc32(head)
    for tag, buf in blobs:
        rec = struct.pack(BLOB_FMT, tag, len(buf))
        f.write(rec)
        f.write(buf)
        c = crc32(buf, crc32(rec, c))
    f.write(struct.pack("<I", c & 0xFFFFFFFF))


def scan(f):
    """(State, {tag bytes: (offset, size)}) of an open checkpoint file, its CRC checked by
    streaming it through a small buffer (nothing the size of the state is allocated);
    CheckpointError says what is wrong."""
    try:
        n = f.seek(0, 2)
        f.seek(0)
    except (AttributeError, OSError):
        raise CheckpointError("cannot seek in the checkpoint file")
    if n < HEADER_SIZE + 4:
        raise CheckpointError("truncated (%d bytes)" % n)
    head = f.read(HEADER_SIZE)
    h = struct.unpack(HEADER_FMT, head)
    if h[0] != MAGIC:
        raise CheckpointError("not a microtrain checkpoint")
    if h[1] != VERSION:
        raise CheckpointError("checkpoint version %d, this microtrain reads %d" % (h[1], VERSION))
    c = crc32(head)
    index = {}
    buf = bytearray(64)
    mv = memoryview(buf)
    pos = HEADER_SIZE
    end = n - 4
    while pos < end:
        if pos + 8 > end:
            raise CheckpointError("a tensor record runs past the end")
        rec = f.read(8)
        c = crc32(rec, c)
        tag, size = struct.unpack(BLOB_FMT, rec)
        pos += 8
        if pos + size > end:
            raise CheckpointError("tensor %s runs past the end" % bytes(tag).decode("ascii", "replace"))
        index[bytes(tag)] = (pos, size)
        left = size
        while left:
            k = f.readinto(mv[:min(left, 64)])
            if not k:
                raise CheckpointError("truncated")
            c = crc32(mv[:k], c)
            left -= k
        pos += size
    tail = f.read(4)
    if len(tail) != 4 or c & 0xFFFFFFFF != struct.unpack("<I", tail)[0]:
        raise CheckpointError("corrupted (CRC mismatch)")
    st = State(h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10])
    if st.rng == 0 or st.last_seq < -1 or not -31 <= st.lr_shift <= 0:
        raise CheckpointError("impossible values (PRNG %d, last seq %d, lr shift %d)" % (st.rng, st.last_seq, st.lr_shift))
    return st, index


def parse(data):
    """(State, {tag bytes: memoryview}) of checkpoint bytes (the host's pulled copy)."""
    try:
        from io import BytesIO
    except ImportError:                   # pragma: no cover - very small ports
        from uio import BytesIO
    st, index = scan(BytesIO(bytes(data)))
    mv = memoryview(data)
    return st, {tag: mv[off:off + size] for tag, (off, size) in index.items()}


class Store:
    """Two slots of one checkpoint: `save` never touches the newest complete one.  The slot and
    generation this store last read or wrote are remembered, so a save reads nothing back."""

    def __init__(self, path):
        self.path = path
        self.slots = (path + SLOTS[0], path + SLOTS[1])
        self.current = None           # (slot index, generation) of the newest complete state
        self.scanned = False          # current is known (read or written by this store)
        self.skipped = []

    def has(self):
        """Whether a complete state exists; the slots are read once, then remembered."""
        if not self.scanned:
            self.newest()
        return self.current is not None

    def newest(self):
        """(slot index, State, index) of the valid slot with the highest generation, or None;
        the reasons the others were passed over are in `self.skipped`."""
        best = None
        self.skipped = []
        for i in (0, 1):
            p = self.slots[i]
            if not exists(p):
                continue
            try:
                with open(p, "rb") as f:
                    st, index = scan(f)
            except (CheckpointError, OSError, ValueError) as e:
                self.skipped.append("%s: %s" % (p, e))
                continue
            if best is None or _newer(st.generation, best[1].generation):
                best = (i, st, index)
        self.current = None if best is None else (best[0], best[1].generation)
        self.scanned = True
        return best

    def read_into(self, slot, index, tag, buf):
        """Copy tensor `tag` of a scanned slot into buf (same length)."""
        off, size = index[tag]
        if size != len(buf):
            raise CheckpointError("tensor %s holds %d bytes, the model needs %d" % (tag.decode(), size, len(buf)))
        with open(self.slots[slot], "rb") as f:
            f.seek(off)
            if f.readinto(buf) != size:
                raise CheckpointError("tensor %s truncated" % tag.decode())

    def save(self, state, blobs):
        """Write the state to the slot not holding the newest complete one, next generation."""
        cur = self.current
        if cur is None:
            self.newest()
            cur = self.current
        state.generation = 1 if cur is None else (cur[1] + 1) & 0xFFFFFFFF
        i = 0 if cur is None or cur[0] == 1 else 1
        with open(self.slots[i], "wb") as f:
            write(f, state, blobs)
        self.current = (i, state.generation)
        self.scanned = True
        return self.slots[i]

    def clear(self):
        for p in self.slots:
            if exists(p):
                remove(p)
        self.current = None
        self.scanned = True


def _newer(a, b):
    """Generation a after b (wrap-around safe)."""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000

"""Writing MicroPython firmware to a board: RP2040 by copying a UF2 file to the RPI-RP2 drive
(recognised by its INFO_UF2.TXT), ESP32-S3 through esptool's Python API; and the UF2 that puts a
model's frozen weights in the RP2040's flash for the board to read in place (board flashmap)."""

import getpass
import glob
import io
import os
import shutil
import struct
import zlib


class FlashError(RuntimeError):
    pass


def find_uf2_drive(label="RPI-RP2", roots=None):
    """Mounted drives that look like the RP2040 bootloader: INFO_UF2.TXT naming the board."""
    user = getpass.getuser()
    roots = roots or [f"/media/{user}/*", "/media/*", f"/run/media/{user}/*", "/mnt/*", "/Volumes/*"]
    found = []
    for pattern in roots:
        for d in glob.glob(pattern):
            info = os.path.join(d, "INFO_UF2.TXT")
            if os.path.isfile(info):
                with open(info, errors="replace") as f:
                    text = f.read()
                if label in text or os.path.basename(d) == label or "RP2" in text:
                    found.append(d)
    return found


def flash_uf2(firmware, drive=None, label="RPI-RP2", roots=None):
    if not firmware.lower().endswith(".uf2"):
        raise FlashError(f"{firmware}: the RP2040 bootloader takes a .uf2 file")
    with open(firmware, "rb") as f:
        head = f.read(8)
    if head[:4] != b"UF2\n":
        raise FlashError(f"{firmware} is not a UF2 file (bad magic)")
    if drive:
        if not os.path.isfile(os.path.join(drive, "INFO_UF2.TXT")):
            raise FlashError(f"{drive} has no INFO_UF2.TXT: not a UF2 bootloader drive")
        drives = [drive]
    else:
        drives = find_uf2_drive(label, roots)
    if not drives:
        raise FlashError(f"no {label} drive found: hold BOOTSEL while plugging the Pico in, then retry "
                         "(or pass --drive /path/to/RPI-RP2)")
    if len(drives) > 1:
        raise FlashError(f"several UF2 drives ({', '.join(drives)}): pass --drive")
    dest = os.path.join(drives[0], os.path.basename(firmware))
    shutil.copyfile(firmware, dest)
    return dest


def flash_esptool(firmware, port, chip="esp32s3", offset=0, baud=460800):
    try:
        import esptool
    except ImportError as e:
        raise FlashError("esptool is not installed (pip install esptool)") from e
    if not port:
        raise FlashError("no serial port: plug the ESP32-S3 in (hold BOOT if it does not enumerate) and pass --port")
    args = ["--chip", chip, "--port", port, "--baud", str(baud), "write_flash", hex(offset), firmware]
    try:
        esptool.main(args)
    except SystemExit as e:          # esptool exits on usage errors
        if e.code:
            raise FlashError(f"esptool failed ({e.code})") from e
    except Exception as e:           # noqa: BLE001 - esptool.FatalError, serial errors
        raise FlashError(f"esptool: {e}") from e
    return args


# ---- frozen weights as a UF2 (read in place by firmware/microtrain/flashmap.py) --------------

UF2_MAGIC = (0x0A324655, 0x9E5D5157, 0x0AB16F30)
UF2_FLAG_FAMILY = 0x00002000
RP2040_FAMILY = 0xE48BFF56
XIP_BASE = 0x10000000
UF2_PAYLOAD = 256


def uf2_blocks(data, address, family=RP2040_FAMILY):
    """`data` written at flash `address` (256-byte aligned), as UF2 blocks of 256 bytes."""
    if address % UF2_PAYLOAD:
        raise FlashError(f"UF2 data must start on a 256-byte page, not at 0x{address:x}")
    data = bytes(data) + b"\xff" * (-len(data) % UF2_PAYLOAD)
    n = len(data) // UF2_PAYLOAD
    out = bytearray()
    for i in range(n):
        head = struct.pack("<8I", UF2_MAGIC[0], UF2_MAGIC[1], UF2_FLAG_FAMILY, address + i * UF2_PAYLOAD,
                           UF2_PAYLOAD, i, n, family)
        out += head + data[i * UF2_PAYLOAD:(i + 1) * UF2_PAYLOAD] + bytes(476 - UF2_PAYLOAD) \
            + struct.pack("<I", UF2_MAGIC[2])
    return bytes(out)


def weights_image(model_bytes, region_size=None):
    """(header + the bytes the board's flash region holds, WGHT length) of a model file: its
    frozen weights (WGHT), then the biases and requantization factors (BIAS, QPAR) as far as they
    follow WGHT in the file and fit `region_size` (all of them when None)."""
    from microtrain.board import flashmap, modelfile
    where = {}
    modelfile.read_sections(io.BytesIO(model_bytes), where=where)
    first, length, _ = where["WGHT"]
    end = first + length
    for tag in flashmap.SPAN_TAGS[1:]:
        off, n, _ = where.get(tag, (None, 0, 0))
        if off is None or off - end > 3 or (region_size is not None and off + n - first + flashmap.BLOCK > region_size):
            break
        end = off + n
    span = model_bytes[first:end]
    model_id = struct.unpack_from("<I", model_bytes, 8)[0]
    header = struct.pack(flashmap.HEADER_FMT, flashmap.MAGIC, model_id, len(span), zlib.crc32(span), first)
    header += b"\xff" * (flashmap.BLOCK - len(header))
    return header + span, length


def weights_uf2(model_bytes, region_offset, region_size):
    """The UF2 that writes a model's frozen weights into the board's flash region (offset and
    size as the board's flashmap.region() reports them)."""
    image, length = weights_image(model_bytes, region_size)
    if len(image) > region_size:
        raise FlashError(f"the frozen weights ({length} B) do not fit this board's flash region "
                         f"({region_size - 4096} B between the firmware and the file system)")
    return uf2_blocks(image, XIP_BASE + region_offset)

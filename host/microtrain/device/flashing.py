"""Writing MicroPython firmware to a board: RP2040 by copying a UF2 file to the RPI-RP2 drive
(recognised by its INFO_UF2.TXT), ESP32-S3 through esptool's Python API."""

import getpass
import glob
import os
import shutil


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

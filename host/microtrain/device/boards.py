"""Board definitions (boards/*.toml) and the boards plugged in now.

Kept free of numpy so that `microtrain boards` and `microtrain --help` start fast.
"""

import os
import tomllib
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))

# sys.implementation._mpy >> 10: the native architecture MicroPython reports
MPY_ARCHS = {0: None, 1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp",
             8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}


def boards_dir():
    from microtrain import data
    return data.find("boards")


@dataclass
class Board:
    name: str
    description: str
    port: str
    micropython_board: str
    arch: str
    sram_bytes: int
    heap_bytes: int
    flash_bytes: int
    clock_hz: int
    object_word_bytes: int
    flash_method: str
    weights_flash_bytes: int = 0    # weights the board reads in place from flash (0: into the heap)
    usb_ids: list = field(default_factory=list)
    pins: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def load_all():
    out = {}
    d = boards_dir()
    for f in sorted(os.listdir(d)):
        if not f.endswith(".toml"):
            continue
        with open(os.path.join(d, f), "rb") as fh:
            data = tomllib.load(fh)
        known = {k: data.pop(k) for k in list(data) if k in Board.__dataclass_fields__}
        b = Board(**known, extra=data)
        out[b.name] = b
    return out


def get(name):
    boards = load_all()
    aliases = {"rp2040": "rpi_pico", "pico": "rpi_pico", "esp32s3": "esp32_s3", "esp32-s3": "esp32_s3"}
    key = aliases.get(name.lower(), name.lower())
    if key not in boards:
        raise KeyError(f"unknown board {name!r}; known: {', '.join(sorted(boards))}")
    return boards[key]


def plugged():
    """(device, 'vid:pid', board name or None, description) of the serial ports present now."""
    from serial.tools import list_ports
    by_id = {}
    for b in load_all().values():
        for u in b.usb_ids:
            by_id.setdefault(u.lower(), b.name)
    out = []
    for p in list_ports.comports():
        if p.vid is None:
            continue
        vp = f"{p.vid:04x}:{p.pid:04x}"
        out.append((p.device, vp, by_id.get(vp), p.description or ""))
    return out

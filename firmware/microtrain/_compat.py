# Small helpers so the board library runs on MicroPython, CircuitPython and CPython alike.

import array

try:
    import time

    ticks_us = time.ticks_us
    ticks_diff = time.ticks_diff
except (ImportError, AttributeError):
    import time

    def ticks_us():
        return int(time.monotonic_ns() // 1000) if hasattr(time, "monotonic_ns") else int(time.time() * 1e6)

    def ticks_diff(a, b):
        return a - b

try:
    import gc

    mem_free = gc.mem_free
    mem_alloc = gc.mem_alloc
    collect = gc.collect
except (ImportError, AttributeError):
    def mem_free():
        return -1

    def mem_alloc():
        return -1

    def collect():
        pass

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

try:
    import micropython

    mem_peak = micropython.mem_peak if hasattr(micropython, "mem_peak") else None
except ImportError:
    mem_peak = None

try:
    import os

    rename = os.rename
    remove = os.remove
    stat = os.stat
except (ImportError, AttributeError):  # pragma: no cover
    rename = remove = stat = None


def typed(tc, data):
    """array(tc) holding the raw little-endian bytes `data`."""
    try:
        return array.array(tc, bytes(data))       # MicroPython: raw initialisation from bytes
    except TypeError:                             # CPython
        a = array.array(tc)
        a.frombytes(bytes(data))
        return a


def nonce16():
    """A non-zero 16-bit number that differs from boot to boot (hardware randomness where the
    port has os.urandom; else the microsecond clock)."""
    try:
        b = os.urandom(2)
        n = b[0] | b[1] << 8
    except (AttributeError, NameError, OSError):
        n = ticks_us() & 0xFFFF
    return n or 1


def exists(path):
    try:
        stat(path)
        return True
    except OSError:
        return False

"""Run C kernels compiled for the Cortex-M0+ (ARMv6-M) on the unicorn emulator.

Used by the tier-3 tests (bit-exact against the numpy reference) and by `make bench`
(instruction counts and estimated cycles).  The cycle model is the Cortex-M0+ with the
single-cycle multiplier and zero-wait-state memory (the RP2040 running from SRAM):
loads/stores 2, taken branches 2 (not taken 1), BL 3, BX/BLX 2, PUSH/POP/LDM/STM 1+N
(POP with PC 3+N), writes to PC 2 (+1 for ALU ops), everything else 1.

    sim = M0Sim.build(["a.c", "b.S"], cflags=["-DX"])
    p = sim.alloc(b"...")             # bytes into emulated SRAM
    sim.call("fn", p, 3, ...)        # AAPCS: r0-r3, then the stack
    sim.read(p, n)
"""

import os
import subprocess
import tempfile

import numpy as np
from unicorn import Uc, UC_ARCH_ARM, UC_MODE_THUMB, UC_MODE_MCLASS, UC_HOOK_CODE
from unicorn.arm_const import UC_CPU_ARM_CORTEX_M0
from unicorn.arm_const import (UC_ARM_REG_R0, UC_ARM_REG_R1, UC_ARM_REG_R2, UC_ARM_REG_R3,
                               UC_ARM_REG_SP, UC_ARM_REG_LR)

CC = "arm-none-eabi-gcc"
ARCH_FLAGS = ["-mcpu=cortex-m0plus", "-mthumb"]
# the flags the armv6m native module is built with (py/dynruntime.mk + native_modules Makefile)
NATMOD_FLAGS = ["-mcpu=cortex-m0", "-mthumb", "-fpic", "-fno-common", "-std=c99", "-O2",
                "-fno-tree-loop-distribute-patterns", "-ffreestanding"]
FLASH, FLASH_SIZE = 0x10000000, 1 << 20     # the RP2040's XIP flash window
SRAM, SRAM_SIZE = 0x20000000, 16 << 20
STACK_SIZE = 64 << 10
HALT = FLASH + 0x10          # return address of every call: a 'b .' placed by the linker script

LINKER_SCRIPT = """
ENTRY(halt)
SECTIONS {
  . = 0x10000000;
  .text : { KEEP(*(.halt)) . = ALIGN(4); *(.text*) *(.rodata*) *(.data.rel.ro*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
  /DISCARD/ : { *(.ARM.exidx*) *(.comment) }
}
"""

HALT_ASM = """
  .syntax unified
  .thumb
  .section .halt, "ax"
  .global halt
  .thumb_func
halt:
  .rept 8
  nop
  .endr
  b .
"""


class M0Sim:
    def __init__(self, elf):
        self.elf = elf
        self.symbols = _symbols(elf)
        subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", elf, elf + ".bin"], check=True)
        with open(elf + ".bin", "rb") as f:
            image = f.read()
        self.uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB | UC_MODE_MCLASS, cpu=UC_CPU_ARM_CORTEX_M0)
        # address 0 holds the M-profile vector table (initial SP, reset PC): keep it zero and
        # away from the code, or the core picks up code bytes as its stack pointer
        self.uc.mem_map(0, 0x10000)
        self.uc.mem_map(FLASH, FLASH_SIZE)
        self.uc.mem_map(SRAM, SRAM_SIZE)
        self.uc.mem_write(FLASH, image)
        self.heap = SRAM
        self.stack_top = SRAM + SRAM_SIZE
        self._ranges = sorted((a, a + s, n) for n, (a, s) in self.symbols.items() if s)

    @classmethod
    def build(cls, sources, cflags=(), flags=NATMOD_FLAGS, workdir=None):
        workdir = workdir or tempfile.mkdtemp(prefix="m0sim-")
        ld = os.path.join(workdir, "sim.ld")
        halt = os.path.join(workdir, "halt.S")
        with open(ld, "w") as f:
            f.write(LINKER_SCRIPT)
        with open(halt, "w") as f:
            f.write(HALT_ASM)
        elf = os.path.join(workdir, "kernels.elf")
        cmd = [CC, *flags, *cflags, "-nostdlib", "-Wl,--no-warn-rwx-segments", "-T", ld, "-o", elf,
               halt, *sources]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}\n{r.stderr}")
        return cls(elf)

    # ---- memory ----
    def reset_heap(self):
        self.heap = SRAM

    def alloc(self, data, align=8):
        data = bytes(data)
        self.heap = (self.heap + align - 1) & ~(align - 1)
        addr = self.heap
        if addr + len(data) > SRAM + SRAM_SIZE - STACK_SIZE:
            raise MemoryError("emulated SRAM full")
        self.uc.mem_write(addr, data)
        self.heap += max(len(data), 1)
        return addr

    def zeros(self, n, align=8, fill=0):
        return self.alloc(bytes([fill]) * n, align)

    def read(self, addr, n):
        return bytes(self.uc.mem_read(addr, n))

    # ---- calls ----
    def call(self, name, *args, profile=False):
        """Call a function with int/pointer arguments; returns r0 (and a Profile if asked)."""
        entry = self.symbols[name][0]
        sp = self.stack_top - 4 * max(len(args) - 4, 0)
        sp &= ~7
        for i, a in enumerate(args[4:]):
            self.uc.mem_write(sp + 4 * i, (int(a) & 0xFFFFFFFF).to_bytes(4, "little"))
        regs = (UC_ARM_REG_R0, UC_ARM_REG_R1, UC_ARM_REG_R2, UC_ARM_REG_R3)
        for reg, a in zip(regs, args[:4]):
            self.uc.reg_write(reg, int(a) & 0xFFFFFFFF)
        self.uc.reg_write(UC_ARM_REG_SP, sp)
        self.uc.reg_write(UC_ARM_REG_LR, HALT | 1)
        prof = Profile(self) if profile else None
        hook = self.uc.hook_add(UC_HOOK_CODE, prof.on_insn) if prof else None
        try:
            self.uc.emu_start(entry | 1, HALT)
        finally:
            if hook is not None:
                self.uc.hook_del(hook)
        if prof:
            prof.finish()
        r0 = self.uc.reg_read(UC_ARM_REG_R0)
        return (r0, prof) if profile else r0

    def function_at(self, pc):
        for lo, hi, name in self._ranges:
            if lo <= pc < hi:
                return name
        return "?"


def _symbols(elf):
    out = subprocess.run(["arm-none-eabi-nm", "-S", "--defined-only", elf], check=True,
                         capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4 and p[2] in "tT":
            syms[p[3]] = (int(p[0], 16) & ~1, int(p[1], 16))
        elif len(p) == 3 and p[1] in "tT":
            syms.setdefault(p[2], (int(p[0], 16) & ~1, 0))
    return syms


def insn_cycles(op, op2, taken):
    """Cortex-M0+ cycles of one Thumb instruction (op: first halfword; op2: second for BL)."""
    if op >> 11 in (0b11110,):                     # BL (32-bit)
        return 3
    if op >> 12 == 0b1101:                          # B<cond> / SVC / UDF
        if (op >> 8) & 0xF in (0xE, 0xF):
            return 1
        return 2 if taken else 1
    if op >> 11 == 0b11100:                         # B
        return 2
    if op >> 7 in (0b010001110, 0b010001111):       # BX / BLX
        return 2
    if op >> 10 == 0b010001:                        # hi-register ADD/CMP/MOV
        rd = (op & 7) | ((op >> 4) & 8)
        if (op >> 8) & 3 in (0, 2) and rd == 15:    # ADD/MOV to PC
            return 2
        return 1
    if op >> 11 == 0b01001:                         # LDR literal
        return 2
    if op >> 12 == 0b0101 or op >> 13 == 0b011 or op >> 12 in (0b1000, 0b1001):
        return 2                                    # load/store register / immediate / SP
    if op >> 9 == 0b1011010:                        # PUSH
        return 1 + bin(op & 0x1FF).count("1")
    if op >> 9 == 0b1011110:                        # POP
        n = bin(op & 0xFF).count("1")
        return 3 + n if op & 0x100 else 1 + n
    if op >> 12 == 0b1100:                          # LDM / STM
        return 1 + bin(op & 0xFF).count("1")
    return 1


class Profile:
    """Instruction and cycle counts of one call, total and per function."""

    def __init__(self, sim):
        self.sim = sim
        self.instructions = 0
        self.cycles = 0
        self.by_function = {}
        self._prev = None            # (address, size, op, op2)
        self._fn_cache = {}

    def _account(self, addr, size, op, op2, next_pc):
        taken = next_pc != addr + size
        c = insn_cycles(op, op2, taken)
        self.instructions += 1
        self.cycles += c
        fn = self._fn_cache.get(addr)
        if fn is None:
            fn = self._fn_cache[addr] = self.sim.function_at(addr)
        i, cy = self.by_function.get(fn, (0, 0))
        self.by_function[fn] = (i + 1, cy + c)

    def on_insn(self, uc, addr, size, _):
        if self._prev is not None:
            self._account(*self._prev, addr)
        raw = uc.mem_read(addr, size)
        op = raw[0] | raw[1] << 8
        op2 = raw[2] | raw[3] << 8 if size == 4 else 0
        self._prev = (addr, size, op, op2)

    def finish(self):
        if self._prev is not None:
            self._account(*self._prev, HALT)   # the final return is a taken branch
            self._prev = None

    def cycles_in(self, names):
        return sum(self.by_function.get(n, (0, 0))[1] for n in names)

    def instructions_in(self, names):
        return sum(self.by_function.get(n, (0, 0))[0] for n in names)


def pack_struct(fields, ptr_size):
    """Pack (kind, value) fields with natural alignment: kind 'i' int32, 'p' pointer."""
    out = bytearray()
    for kind, value in fields:
        size = 4 if kind == "i" else ptr_size
        while len(out) % size:
            out.append(0)
        out += (int(value) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    while len(out) % ptr_size:
        out.append(0)
    return bytes(out)


def as_bytes(a):
    return np.ascontiguousarray(a).tobytes()

"""Tier 6: the emulated 256 KB Cortex-M0 board, MicroPython 1.23 in qemu-system-arm (firmware/qemuport).

Two firmware variants of `-M microbit -global nrf51-soc.sram-size=262144` (Cortex-M0, 256 KB SRAM):
  - kernels: the C kernels built in (USER_C_MODULES=native_modules, ARMv6-M assembly dot products);
  - natmod:  no kernels built in; dist/armv6m_6.3/mtkernels.mpy is copied to /lib on the board's flash
             file system and imported from there, as on a stock board (building without the user C
             module is what keeps the built-in module from shadowing the .mpy: a built-in module
             always wins over a file of the same name).
Both have the board library frozen in (firmware/manifest.py).  The tests talk to the board over its
UART on a pty with mpremote's transport, exactly as to a USB-serial board.
"""

import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import DIST, ROOT, micropython_unix, require
from tests.kernel_cases import GENERATORS, all_cases, mpy_script, parse_mpy_output

sys.path.insert(0, os.path.join(ROOT, "firmware", "qemuport"))
sys.path.insert(0, os.path.join(ROOT, "host"))

from bench.board import ensure_firmware, imu_data, sram_split, train_on_board  # noqa: E402
from qemu_board import QemuBoard, exec_raw  # noqa: E402

SRAM = 262144
# (qemu machine, firmware variant); the microbit (Cortex-M0) is the main target, the MPS2 AN385
# (Cortex-M3) the second one.  natmod boards get the .mpy of their architecture.
TARGETS = [("microbit", "kernels"), ("microbit", "natmod"), ("mps2-an385", "kernels"), ("mps2-an385", "natmod")]
NATMOD_ARCH = {"microbit": "armv6m", "mps2-an385": "armv7m"}
IDS = [f"{b}-{v}" for b, v in TARGETS]


def _tools():
    for tool in ("qemu-system-arm", "arm-none-eabi-gcc"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: run `make setup`")


@pytest.fixture(scope="module")
def firmware():
    """{(machine, variant): ELF path}, built incrementally (make -C firmware/qemuport)."""
    _tools()
    return {(b, v): ensure_firmware(v, b) for b, v in TARGETS}


def _natmod(arch):
    mpy = require(os.path.join(DIST, f"{arch}_6.3", "mtkernels.mpy"), "run `make natmods`")
    src = os.path.join(ROOT, "native_modules", "mtkernels")
    newest = max(os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs
                 if f.endswith((".c", ".h", ".S")))
    if os.path.getmtime(mpy) < newest:
        pytest.fail(f"{mpy} is older than the kernel sources: run `make natmods`")
    with open(mpy, "rb") as f:
        return f.read()


def _start(firmware, machine, variant):
    """A running board and an mpremote transport in its raw REPL; the .mpy in /lib for natmod."""
    b = QemuBoard(board=machine, variant=variant, elf=firmware[(machine, variant)])
    try:
        t = b.transport()
        if variant == "natmod":
            t.fs_mkdir("lib")
            t.fs_writefile("lib/mtkernels.mpy", _natmod(NATMOD_ARCH[machine]))
    except BaseException:
        b.close()
        raise
    b.machine, b.variant, b.t = machine, variant, t
    return b


@pytest.fixture(scope="module", params=TARGETS, ids=IDS)
def board(request, firmware):
    b = _start(firmware, *request.param)
    yield b
    b.close()


@pytest.fixture(scope="module", params=TARGETS[:2], ids=IDS[:2])
def m0_board(request, firmware):
    """The Cortex-M0 boards only (file system, time and REPL tests: the same C code on both)."""
    b = _start(firmware, *request.param)
    yield b
    b.close()


# ---------------------------------------------------------------------------------------------
# memory


@pytest.mark.parametrize("target", TARGETS, ids=IDS)
def test_firmware_links_into_256k_sram(firmware, target):
    elf = firmware[target]
    split = sram_split(elf)
    assert split["sram"] == SRAM
    assert split["data"] + split["bss"] + split["heap"] + split["stack"] <= SRAM, split
    assert split["linked"] <= SRAM, split
    assert split["heap"] >= 200 * 1024 and split["stack"] >= 8 * 1024, split
    # every section that occupies RAM lies inside the 256 KB at 0x20000000
    out = subprocess.run(["arm-none-eabi-readelf", "-SW", elf], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.replace("[ ", "[").split()
        if len(parts) > 6 and parts[0].startswith("[") and parts[0] != "[Nr]":
            addr, size = int(parts[3], 16), int(parts[5], 16)
            if 0x20000000 <= addr < 0x40000000:
                assert addr + size <= 0x20000000 + SRAM, line


def test_board_reports_its_memory(board):
    out = exec_raw(board.t, "import qemu, gc, sys\nm = qemu.memory()\n"
                   "print(m['sram'], m['data'] + m['bss'] + m['heap'] + m['stack'], gc.mem_alloc() + gc.mem_free(),"
                   " sys.implementation._mpy >> 10, sys.platform)")
    sram, linked, heap, arch, platform = out.split()
    assert int(sram) == SRAM and int(linked) <= SRAM
    assert 200 * 1024 < int(heap) < SRAM
    # armv6m on the Cortex-M0; MicroPython 1.23 reports any Thumb-2 core without FPU as armv7em
    assert int(arch) == (4 if board.machine == "microbit" else 6) and platform == "qemu"


# ---------------------------------------------------------------------------------------------
# kernels on the Cortex-M0, built in and as the armv6m .mpy


def test_the_right_kernels_are_imported(board):
    out = exec_raw(board.t, "import mtkernels, microtrain\n"
                   "print(getattr(mtkernels, '__file__', 'built-in'), microtrain.backend.NAME)")
    where, backend = out.split()
    assert backend == "native"
    assert where == ("built-in" if board.variant == "kernels" else "/lib/mtkernels.mpy")
    if board.variant == "natmod":
        out = exec_raw(board.t, "import sys\nprint(open('/lib/mtkernels.mpy', 'rb').read(4)[2] >> 2, "
                       "sys.implementation._mpy >> 10)")
        mpy_arch, firmware_arch = map(int, out.split())
        assert mpy_arch == {"microbit": 4, "mps2-an385": 5}[board.machine] <= firmware_arch


INT32_MIN = -(1 << 31)


def _int_min_arg(case):
    return any(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and int(a) == INT32_MIN for a in case.args)


def run_cases(t, cases, typed=True):
    checked = 0
    for i in range(0, len(cases), 6):          # small scripts: the board compiles them in a 230 KB heap
        batch = cases[i:i + 6]
        checked += parse_mpy_output(exec_raw(t, mpy_script(batch, typed=typed)), batch)
    return checked


@pytest.mark.parametrize("typed", [True, False], ids=["typed-arrays", "raw-bytearrays"])
def test_kernels_match_reference(board, typed):
    # (the MPS2 UART takes one byte per qemu main-loop turn: fewer cases there keep the test short)
    per_kernel = 12 if board.machine == "microbit" else 4
    cases = all_cases(seed=4 if typed else 5, per_kernel=per_kernel)
    assert len(cases) == per_kernel * len(GENERATORS)
    # A scalar int argument of -2**31 is a long int on a 32-bit MicroPython (small ints have 31
    # bits) and MicroPython 1.23's mp_obj_get_int() refuses to convert it (mpz_as_int_checked
    # overflows on the most negative value): see test_int32_min_scalar_argument.
    cases = [c for c in cases if not _int_min_arg(c)]
    assert run_cases(board.t, cases, typed) == len(cases) >= (per_kernel - 1) * len(GENERATORS)


def test_int32_min_scalar_argument(board):
    """-2**31 is a long int on a 32-bit port: the binding compares long ints as Python ints."""
    cases = [c for seed in (4, 5) for c in all_cases(seed=seed, per_kernel=12) if _int_min_arg(c)]
    assert cases, "the generators no longer produce INT32_MIN scalars"
    run_cases(board.t, cases)


def test_out_of_range_int_arguments_raise(board):
    """A long int beyond the range raises, rather than being truncated into it."""
    out = exec_raw(board.t, "import mtkernels\ntry:\n    mtkernels.requantize(1, 2**32 + 5, 0, 0)\n"
                   "    print('accepted')\nexcept ValueError as e:\n    print('raised', e)")
    assert out.strip() == "raised mult: must be in [0, 2147483647], got an int beyond that"


# ---------------------------------------------------------------------------------------------
# training inside 256 KB, bit-identical with the simulator


TRAINING = {("microbit", "kernels"): [("sparse", 40), ("full", 20), ("bias-only", 20)],
            ("microbit", "natmod"): [("sparse", 20)],
            ("mps2-an385", "kernels"): [("sparse", 20)],
            ("mps2-an385", "natmod"): [("sparse", 10)]}


def test_imu_model_trains_bit_identical_with_the_simulator(board):
    from microtrain.plan import planner
    from microtrain.sim import simulator
    for policy, steps in TRAINING[(board.machine, board.variant)]:
        model, xq, labels = imu_data(steps)
        p = planner.plan(model, policy, word_bytes=4)
        sim = simulator.Simulator(model, p)
        for x, y in zip(xq, labels):
            sim.step(x, int(y))
        state, rng, n = sim.trainable_state()
        got, info = train_on_board(board.t, model, p, xq, labels, folder=f"/train_{policy}")
        assert info["backend"] == "native"
        assert got[-8:] == struct.pack("<II", rng, n), f"{policy}: PRNG state or step counter differ"
        assert got[:-8] == state, f"{policy}: trainable weights differ after {steps} steps"
        assert state != simulator.Simulator(model, p).trainable_state()[0], "training changed nothing"
        # it fits: the whole heap in use while training (interpreter, library, model, trainer,
        # the step's garbage) stays well inside the board's heap, and the trainer is about the plan
        assert info["peak"] < info["heap"] // 2, info
        assert info["loaded"] - info["base"] < 2 * p.peak_bytes, (info, p.peak_bytes)


# ---------------------------------------------------------------------------------------------
# file system, time, REPL: like the unix port


FS_SCRIPT = r"""
import os
def err(f, *a):
    try:
        f(*a)
        return 'ok'
    except OSError as e:
        return 'OSError %d' % e.args[0]
os.mkdir('fst')
os.chdir('fst')
with open('a.txt', 'w') as f:
    print(f.write('hello\nworld\n'), f.write('x' * 3000))
with open('a.txt') as f:
    print(repr(f.readline()), repr(f.read(5)), len(f.read()), repr(f.read()))
with open('a.txt', 'a') as f:
    f.write('END')
print(os.stat('a.txt')[6], os.stat('a.txt')[0] & 0xF000, os.stat('.')[0] & 0xF000)
print([l for l in open('a.txt')][:2])
with open('b.bin', 'wb') as f:
    f.write(bytes(range(256)) * 9)
    f.seek(100)
    f.write(b'\xff\xfe')
    print(f.tell())
    f.seek(3000)
    f.write(b'Z')
with open('b.bin', 'rb') as f:
    print(len(f.read()), f.seek(0), f.read(3), f.seek(-2, 2), f.read())
    f.seek(99)
    buf = bytearray(4)
    print(f.readinto(buf), bytes(buf), f.tell())
    f.seek(2300)
    print(f.read(4), f.readinto(bytearray(2000)))
with open('b.bin', 'r+b') as f:
    f.seek(1024)
    f.write(b'PAGE')
    f.seek(0, 2)
    f.write(b'!')
print(open('b.bin', 'rb').read()[1020:1030], os.stat('b.bin')[6])
print(err(open, 'missing'), err(os.remove, 'missing'), err(os.mkdir, '.'))
os.mkdir('d')
os.mkdir('d/e')
open('d/e/f', 'w').write('f')
print(err(os.rmdir, 'a.txt'), err(os.remove, 'd'), err(os.mkdir, 'd'), err(os.stat, 'd/x'))
os.rename('a.txt', 'c.txt')
open('x', 'w').write('old')
os.rename('c.txt', 'x')
print(sorted(os.listdir()), sorted(os.listdir('d')), open('x').read()[:5])
os.rename('d', 'g')
print(sorted(os.listdir('g/e')), open('g/e/f').read())
print(sorted((n, t) for n, t, *_ in os.ilistdir()))
os.remove('g/e/f')
os.rmdir('g/e')
os.rmdir('g')
os.chdir('..')
print(sorted(os.listdir('fst')), err(os.chdir, 'fst/x'))
"""


def test_file_system_behaves_like_the_unix_port(m0_board, tmp_path):
    board = m0_board
    board_out = exec_raw(board.t, FS_SCRIPT)
    script = tmp_path / "fs.py"
    script.write_text(FS_SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    ref = subprocess.run([micropython_unix(), str(script)], capture_output=True, text=True, cwd=work, timeout=60)
    assert ref.returncode == 0, ref.stderr
    assert board_out.replace("\r\n", "\n") == ref.stdout


def test_checkpoint_and_rollback_on_flash(m0_board):
    board = m0_board
    from microtrain.model import modelfile
    from microtrain.plan import planner
    model, xq, labels = imu_data(6)
    p = planner.plan(model, "sparse", word_bytes=4)
    board.t.fs_writefile("ck.mtm", modelfile.to_bytes(model, p))
    out = exec_raw(board.t, f"""
import microtrain, os
m = microtrain.load('ck.mtm')
t = microtrain.Trainer(m, checkpoint_path='ck.ckpt')
xs = {[bytes(x) for x in xq]!r}
ys = {list(map(int, labels))!r}
for x, y in zip(xs[:3], ys[:3]):
    t.step(x, y)
t.checkpoint()
saved = [bytes(b) for _, b in t._state_blobs()]
for x, y in zip(xs[3:], ys[3:]):
    t.step(x, y)
changed = [bytes(b) for _, b in t._state_blobs()] != saved
t.checkpoint()
newest = open('ck.ckpt.1', 'rb').read()
open('ck.ckpt.1', 'wb').write(newest[:-1] + b'x')      # the newest slot corrupted: the older one holds
t.rollback()
print(changed, t.steps, sorted(n for n in os.listdir() if n.startswith('ck.')))
""")
    assert out.split() == ["True", "3", "['ck.ckpt.0',", "'ck.ckpt.1',", "'ck.mtm']"]


def test_time_and_keyboard_interrupt(m0_board):
    board = m0_board
    out = exec_raw(board.t, "import time\nt0 = time.ticks_ms(); u0 = time.ticks_us()\ntime.sleep_ms(20)\n"
                   "print(time.ticks_diff(time.ticks_ms(), t0), time.ticks_diff(time.ticks_us(), u0),"
                   " time.ticks_add(time.ticks_ms(), -5) != time.ticks_ms())")
    ms, us, ok = out.split()
    assert 20 <= int(ms) < 1000 and 20000 <= int(us) < 1000000 and ok == "True"
    t = board.t
    t.exec_raw_no_follow("n = 0\nwhile True:\n    n += 1\n")
    import time
    time.sleep(0.3)
    t.serial.write(b"\x03")
    _, err = t.follow(10)
    assert b"KeyboardInterrupt" in err
    assert exec_raw(t, "print(n > 0)").strip() == "True"


def test_mpremote_cli(firmware, tmp_path):
    """mpremote's command line against the board's pty, as against a USB-serial board."""
    mpremote = [sys.executable, "-m", "mpremote"]
    with QemuBoard(variant="kernels", elf=firmware[("microbit", "kernels")]) as b:
        def run(*args):
            r = subprocess.run(mpremote + ["connect", b.port, "resume", *args], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            return r.stdout
        assert run("exec", "print(1+1)").strip() == "2"
        src = tmp_path / "hello.py"
        src.write_text("print('hello from flash')\n")
        run("fs", "mkdir", ":lib")
        run("fs", "cp", str(src), ":lib/hello.py")
        assert "hello.py" in run("fs", "ls", ":lib")
        assert run("exec", "import hello").strip() == "hello from flash"
        back = tmp_path / "back.py"
        run("fs", "cp", ":lib/hello.py", str(back))
        assert back.read_text() == src.read_text()
        assert "flashfs" in run("df")
        # a soft reset keeps the files (they live in flash) and the frozen library
        out = run("soft-reset", "exec", "import os, microtrain; print(os.listdir('lib'), microtrain.backend.NAME)")
        assert out.strip() == "['hello.py'] native"


def test_microtrain_cli_push_and_train(firmware, tmp_path):
    """`microtrain push` (board library, armv6m .mpy, model) and `microtrain train` (the framed
    protocol) against the board's pty."""
    from click.testing import CliRunner
    from microtrain import cli
    from microtrain.model import modelfile
    from microtrain.plan import planner
    _natmod("armv6m")                                   # fails early if the .mpy is stale
    model, xq, labels = imu_data(30)
    modelfile.save(str(tmp_path / "m.mtm"), model, planner.plan(model, "sparse", word_bytes=4))
    np.savez(tmp_path / "s.npz", x=xq, y=labels)
    with QemuBoard(variant="natmod", elf=firmware[("microbit", "natmod")]) as b:
        r = CliRunner().invoke(cli.main, ["push", str(tmp_path / "m.mtm"), "--port", b.port])
        assert r.exit_code == 0, r.output
        assert "arch armv6m, backend native" in r.output and "lib/mtkernels.mpy" in r.output
        r = CliRunner().invoke(cli.main, ["train", str(tmp_path / "s.npz"), "--port", b.port])
        assert r.exit_code == 0, r.output
        assert "30 samples" in r.output, r.output
        # the board is back at its REPL, its files intact
        t = b.transport()
        assert exec_raw(t, "import os\nprint(sorted(os.listdir('lib')), os.stat('model.mtm')[6])").split()[-1] \
            == str(os.path.getsize(tmp_path / "m.mtm"))


def test_instruction_trace_is_complete_and_priced(firmware, tmp_path):
    """The CPI measurement of `make bench` (bench/board.py): with qemu switched to one instruction
    per block and the exec log on, the trace between the markers holds every instruction the
    board's -icount clock counted, and the kernel's instructions are attributed to the kernels."""
    from bench.board import trace_cycles
    elf = firmware[("microbit", "kernels")]
    log = str(tmp_path / "trace.log")
    with QemuBoard(variant="kernels", elf=elf, monitor=str(tmp_path / "monitor.sock"), logfile=log) as b:
        t = b.transport()
        exec_raw(t, "import qemu, mtkernels\nbuf = bytearray(4096)\nfor i in range(4096):\n    buf[i] = i & 255\n")
        b.monitor("singlestep on")
        b.monitor("log exec,nochain")
        out = exec_raw(t, "qemu.nop()\nc0 = qemu.clock_ns()\nc = mtkernels.crc32(buf)\nc1 = qemu.clock_ns()\n"
                          "qemu.nop()\nprint(c1 - c0, c)")
        b.monitor("log none")
        b.monitor("singlestep off")
    ns, crc = (int(v) for v in out.split())
    import zlib
    assert crc == zlib.crc32(bytes(range(256)) * 16)
    acc = trace_cycles(log, elf)
    traced = acc["kernels"][0] + acc["other"][0]
    # the clock counts instructions between its two reads (62.5 ns resolution); the trace also
    # holds the two nop calls and the clock calls around them
    assert ns - 63 <= traced <= ns + 3000, (ns, traced)
    assert acc["kernels"][0] >= 4096 * 5            # the byte loop of mt_crc32 is in the kernels
    assert 1.0 < acc["kernels"][1] / acc["kernels"][0] < 2.0
    assert 1.0 < acc["other"][1] / acc["other"][0] < 3.0

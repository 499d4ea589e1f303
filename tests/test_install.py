"""The tool as users get it: `pip install` of this checkout into a fresh venv outside it, then the
installed `microtrain` from another folder: boards, convert (the pretrained ONNX model it
carries), push to a virtual board it starts itself, and the whole demo.  The board library,
the .mpy native modules, the board definitions and the demo's model and data come from the
package (microtrain.data), not from the checkout: no MICROTRAIN_* variable, no PYTHONPATH."""

import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, require

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the virtual board is the Linux unix port")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    require(os.path.join(ROOT, "host", "microtrain", "data", "dist", "x64_6.3", "mtkernels.mpy"),
            "run `make natmods` (it makes the package data)")
    base = tmp_path_factory.mktemp("install")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTRAIN_") and k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        f"{ROOT}[demo]"], capture_output=True, text=True, timeout=1200, env=env, cwd=base)
    assert r.returncode == 0, r.stdout + r.stderr
    work = base / "elsewhere"
    work.mkdir()
    return venv, work, env


def run(installed, *args, timeout=600):
    venv, work, env = installed
    r = subprocess.run([str(venv / "bin" / "microtrain"), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=work)
    assert r.returncode == 0, f"microtrain {' '.join(map(str, args))}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_installed_package_is_not_the_checkout(installed):
    venv, work, env = installed
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import microtrain, microtrain.data as d; print(microtrain.__file__); "
                          "print(d.find('dist')); print(d.find('boards'))"],
                         capture_output=True, text=True, env=env, cwd=work, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in out), out


def test_boards_convert_push_from_another_folder(installed):
    venv, work, env = installed
    assert "rpi_pico" in run(installed, "boards")
    # the pretrained model and calibration samples the package carries
    code = ("import numpy as np\nfrom microtrain.cli.demo import PRETRAINED, demo_data\n"
            "(Xp, yp), _, _, names = demo_data()\nnp.savez('calib.npz', x=Xp)\nprint(PRETRAINED)")
    onnx = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env,
                          cwd=work, check=True).stdout.strip()
    assert onnx.startswith(str(venv)) and os.path.exists(onnx)
    out = run(installed, "convert", onnx, "--board", "virtual", "--calibration", "calib.npz", "-o", "imu.mtm")
    assert "fits virtual" in out and (work / "imu.mtm").exists()
    board = subprocess.Popen([str(venv / "bin" / "microtrain"), "virtual-board"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
    try:
        port = None
        end = time.monotonic() + 60
        while port is None and time.monotonic() < end:
            line = board.stdout.readline()
            m = re.search(r"(/dev/pts/\d+)", line)
            port = m and m.group(1)
        assert port, "the installed virtual-board printed no port"
        out = run(installed, "push", "imu.mtm", "--port", port)
        assert "arch x64, backend native" in out and "lib/microtrain" in out, out
    finally:
        board.terminate()
        board.wait(10)


def test_demo_runs_from_the_installed_package(installed):
    out = run(installed, "demo")
    assert "identical to the host simulation: yes" in out, out

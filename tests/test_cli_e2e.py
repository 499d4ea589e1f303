"""End to end through the CLI against the virtual board over a real pty (issue 4): convert ->
push -> train (stream) -> telemetry -> pull -> evaluate.  Accuracy improves on held-out data of the
device and the pulled weights are byte-identical to the host simulation of the same samples."""

import json
import re
import os

import numpy as np
import pytest
from click.testing import CliRunner

from microtrain.device import board_io
from microtrain import cli
from microtrain.model import modelfile
from microtrain.sim import simulator
from microtrain.cli.demo import PRETRAINED, demo_data
from microtrain.device.virtualboard import VirtualBoard
from microtrain.board.telemetry import RING_RECORDS


@pytest.fixture(scope="module")
def board():
    with VirtualBoard(heap="192K") as vb:
        yield vb


def invoke(*args):
    r = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_convert_push_train_telemetry_pull_evaluate(board, tmp_path):
    (Xp, yp), (Xf, yf), (Xt, yt), names = demo_data()
    np.savez(tmp_path / "calib.npz", x=Xp)
    out = invoke("convert", PRETRAINED, "--board", "virtual", "--calibration", tmp_path / "calib.npz",
                 "--labels", ",".join(names), "-o", tmp_path / "imu.mtm")
    assert "fits virtual" in out and "wrote" in out
    model, plan = modelfile.load(tmp_path / "imu.mtm")
    xf = model.quantize_input(Xf.reshape(len(Xf), -1))
    xt = model.quantize_input(Xt.reshape(len(Xt), -1))
    np.savez(tmp_path / "device_train.npz", x=xf, y=yf)
    np.savez(tmp_path / "device_test.npz", x=xt, y=yt)

    out = invoke("push", tmp_path / "imu.mtm", "--port", board.port)
    assert "backend native" in out and "arch x64" in out
    out = invoke("push", tmp_path / "imu.mtm", "--port", board.port)
    assert "all up to date" in out                        # verified by hash, nothing rewritten

    before = invoke("evaluate", tmp_path / "device_test.npz", "--model", tmp_path / "imu.mtm", "--port", board.port)
    out = invoke("train", tmp_path / "device_train.npz", "--port", board.port, "--epochs", 3)
    assert "samples/s" in out and "bytes/sample" in out
    # on a clean line every telemetry record of the run arrives while it trains
    m = re.search(r"telemetry: (\d+) of (\d+) records received\n", out)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 3 * len(xf), out
    after = invoke("evaluate", tmp_path / "device_test.npz", "--model", tmp_path / "imu.mtm", "--port", board.port)
    acc = lambda s: float(s.split("=")[1].split()[0])     # noqa: E731
    print("board accuracy", acc(before), "->", acc(after))
    assert acc(after) >= acc(before) + 0.2

    out = invoke("telemetry", "--port", board.port, "--jsonl", tmp_path / "t.jsonl", "--csv", tmp_path / "t.csv",
                 "--png", tmp_path / "t.png")
    records = [json.loads(l) for l in open(tmp_path / "t.jsonl")]
    assert sum(r["kind"] == "step" for r in records) > 0 and os.path.getsize(tmp_path / "t.png") > 1000
    # a new host process gets what the ring still holds and says how many records it never saw
    t = re.search(r"telemetry: (\d+) of (\d+) records received; (\d+) missed \(.*the board keeps the last (\d+)\)", out)
    assert t, out
    received, written, missed, ring = map(int, t.groups())
    assert received == len(records) == ring == RING_RECORDS and missed == written - received
    assert written >= int(m.group(2)) + 2             # this training's records and both evaluations

    invoke("pull", "--port", board.port, "--model", tmp_path / "imu.mtm", "-o", tmp_path / "trained.mtm")
    invoke("pull", "--port", board.port, "--model", tmp_path / "imu.mtm", "-o", tmp_path / "delta.npz", "--delta")
    trained, _ = modelfile.load(tmp_path / "trained.mtm")

    # the host simulation of the same samples, same order, same plan
    sim = simulator.Simulator(model, plan)        # the file's own plan, as it was written
    for _ in range(3):
        for x, y in zip(xf, yf):
            sim.step(x, int(y))
    for a, b in zip(sim.model.layers, trained.layers):
        if a.w is not None:
            assert np.array_equal(np.asarray(a.w, np.int8), b.w) and np.array_equal(np.asarray(a.b, np.int32), b.b)
    sim_out = invoke("evaluate", tmp_path / "device_test.npz", "--model", tmp_path / "trained.mtm", "--simulate")
    assert acc(sim_out) == acc(after)                     # the pulled model scores what the board scored
    d = np.load(tmp_path / "delta.npz")
    assert any(np.any(d[k]) for k in d.files)


def test_mpremote_works_against_the_virtual_board(board):
    import subprocess
    import sys
    exe = os.path.join(os.path.dirname(sys.executable), "mpremote")
    r = subprocess.run([exe, "connect", board.port, "resume", "exec", "import sys; print(sys.platform, 6 * 7)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "linux 42" in r.stdout, r.stderr
    with board_io.Session(board.port) as s:
        assert s.info()["arch"] == "x64"


def test_recording_from_the_board_sensor_says_when_the_board_has_none(board):
    r = CliRunner().invoke(cli.main, ["train", "--sensor", "mpu6050", "--label", "1", "--port", board.port])
    assert r.exit_code != 0 and "no machine.I2C: it cannot read the sensor" in r.output
    r = CliRunner().invoke(cli.main, ["train", "--sensor", "adc", "--port", board.port])
    assert r.exit_code != 0 and "--label" in r.output


def _hashes(folder):
    import hashlib
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest() for f in os.listdir(folder)
            if f.endswith(".mpy")}


def test_a_push_that_breaks_off_keeps_the_old_library_and_resumes(board, tmp_path):
    """A push cut off while the next library is being written (the host process killed, then the
    board's power cut): the old library stays complete and importable; the next push sends only
    what the board does not hold verified yet, and survives the board resetting under it."""
    import shutil
    import signal
    import subprocess
    import sys
    import time
    invoke("push", "--port", board.port)
    lib, staged = board.path("lib/microtrain"), board.path("lib/microtrain.new")
    before = _hashes(lib)
    dist = tmp_path / "dist"
    shutil.copytree(os.environ.get("MICROTRAIN_DIST", "dist"), dist)
    shutil.copy(dist / "lib" / "microtrain" / "telemetry.mpy", dist / "lib" / "microtrain" / "extra.mpy")
    after = _hashes(dist / "lib" / "microtrain")
    exe = os.path.join(os.path.dirname(sys.executable), "microtrain")

    def push_until(n_staged):
        p = subprocess.Popen([exe, "push", "--port", board.port], env=dict(os.environ, MICROTRAIN_DIST=str(dist)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + 60
        while not (os.path.isdir(staged) and len(os.listdir(staged)) >= n_staged) and time.monotonic() < end:
            time.sleep(0.005)
        return p

    p = push_until(4)
    p.send_signal(signal.SIGKILL)                          # the host gives up mid-push
    p.wait()
    assert _hashes(lib) == before                          # the old library, untouched
    n_staged = len(os.listdir(staged))
    with board_io.Session(board.port) as s:                # and it still imports
        assert s.exec("import microtrain; print(microtrain.__version__)").strip()

    p = push_until(n_staged + 2)
    board.kill()                                           # power cut during the resumed push
    assert _hashes(lib) == before
    time.sleep(0.3)
    board.start()
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 0, out
    wrote = int(out.split("wrote ")[1].split()[0])
    assert wrote <= len(after) - n_staged + 2, out        # files verified before were not sent again
    assert _hashes(lib) == after and not os.path.exists(staged) and not os.path.exists(board.path("lib/microtrain.old"))
    with board_io.Session(board.port) as s:
        assert s.exec("import microtrain.extra, microtrain; print(microtrain.__version__)").strip()
    invoke("push", "--port", board.port)                   # back to the real library for what follows

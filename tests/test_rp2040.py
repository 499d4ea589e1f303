"""Tier 7: official MicroPython v1.27.0 (the unmodified RPI_PICO UF2) on an emulated RP2040
(rp2040js, firmware/rp2040/pico_board.py): USB CDC on a pty, the 2 MB flash in a file.

Nothing of this project is in the firmware: `microtrain push` installs the board library and the
armv6m .mpy it picks from the arch the board reports, as on a Pico a student just flashed.  The
reference IMU model trains over the link to the same bytes as the simulator, through a faulty
line and across a power cut, and the CLI's pull brings those bytes back.
"""

import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.conftest import DIST, ROOT, require
from tests.faultproxy import FaultProxy
from tests.test_link import STATE_CODE

sys.path.insert(0, os.path.join(ROOT, "firmware", "rp2040"))

from bench.board import imu_data  # noqa: E402
from microtrain.device.link import Link  # noqa: E402
from microtrain.model import modelfile  # noqa: E402
from microtrain.plan import planner  # noqa: E402
from microtrain.sim import simulator  # noqa: E402
from pico_board import PicoBoard, rp2040js_dir  # noqa: E402

BIN = os.path.dirname(sys.executable)
STEPS = 40


def run(*args, timeout=300):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r.stdout


def board_state(port):
    out = run(os.path.join(BIN, "mpremote"), "connect", port, "resume", "exec", STATE_CODE)
    line = [ln for ln in out.splitlines() if ln.startswith("STATE ")][0].split()
    return bytes.fromhex(line[1]), int(line[2])


@pytest.fixture(scope="module")
def imu(tmp_path_factory):
    d = tmp_path_factory.mktemp("imu")
    model, xq, labels = imu_data(STEPS)
    plan = planner.plan(model, "sparse", word_bytes=4)
    modelfile.save(str(d / "imu.mtm"), model, plan)
    np.savez(d / "samples.npz", x=xq, y=labels)
    sim = simulator.Simulator(model, plan)
    for x, y in zip(xq, labels):
        sim.step(x, int(y))
    state, rng, steps = sim.trainable_state()
    import struct
    return {"dir": d, "model": model, "plan": plan, "xq": xq, "y": labels, "sim": sim,
            "state": state + struct.pack("<II", rng, steps),
            "initial": simulator.Simulator(model, plan).trainable_state()[0]}


@pytest.fixture(scope="module")
def pico(tmp_path_factory):
    rp2040js_dir()                                   # fails with `make setup` when missing
    require(os.path.join(DIST, "armv6m_6.3", "mtkernels.mpy"), "run `make natmods`")
    d = tmp_path_factory.mktemp("pico")
    with PicoBoard(flash=str(d / "flash.bin"), link=str(d / "ttyACM0")) as b:
        yield b


def test_official_firmware_is_what_the_board_reports(pico):
    """mpremote sees stock MicroPython 1.27 for the Pico, .mpy arch 4 (armv6m), a LittleFS of 1.4 MB."""
    out = run(os.path.join(BIN, "mpremote"), "connect", pico.link, "resume", "exec",
              "import sys, os, gc\nprint(sys.implementation.version[:2], sys.implementation._mpy >> 10, "
              "sys.implementation._build, sys.platform, os.statvfs('/')[0] * os.statvfs('/')[2], gc.mem_free() > 200000)")
    assert out.split() == ["(1,", "27)", "4", "RPI_PICO", "rp2", str(352 * 4096), "True"]


def test_push_train_pull_match_the_simulator(pico, imu):
    """The whole CLI on a fresh Pico: push picks the armv6m .mpy, train streams, pull brings back
    the checkpoint; the board's state and the pulled tensors are the simulator's bytes."""
    mt, d = os.path.join(BIN, "microtrain"), imu["dir"]
    out = run(mt, "push", d / "imu.mtm", "--port", pico.link)
    assert "arch armv6m, backend native" in out and "lib/mtkernels.mpy" in out, out
    assert "trying again" not in out, out               # a first push on an empty board needs no retry
    assert "all up to date" in run(mt, "push", d / "imu.mtm", "--port", pico.link)
    out = run(mt, "train", d / "samples.npz", "--port", pico.link)
    assert f"{STEPS} samples" in out and " 0 retransmissions" in out, out
    m = re.search(r"telemetry: (\d+) of (\d+) records received", out)
    assert m and m.group(1) == m.group(2), out
    state, last = board_state(pico.link)
    assert last == STEPS - 1
    assert state == imu["state"], "the board learned other bytes than the simulator"
    assert state[:-8] != imu["initial"]
    out = run(mt, "pull", "--model", d / "imu.mtm", "--port", pico.link, "-o", d / "trained.npz")
    assert f"checkpoint: {STEPS} steps" in out, out
    got = np.load(d / "trained.npz")
    for i, layer in enumerate(imu["sim"].model.layers):
        if layer.w is not None:
            assert np.array_equal(got[f"w{i}"], layer.w) and np.array_equal(got[f"b{i}"], layer.b), f"layer {i}"


def _fresh_session(pico, imu):
    """A new trainer over the model pushed by the previous test (its checkpoint removed)."""
    run(os.path.join(BIN, "mpremote"), "connect", pico.link, "resume", "exec",
        "import os\nfor f in os.listdir():\n    if f.startswith('imu.ckpt') or f.startswith('model.ckpt'):\n"
        "        os.remove(f)")
    pico.restart()


def test_faulty_line_loses_and_repeats_nothing(pico, imu, tmp_path):
    """Drops, flips, duplicates, garbage, delays and a pulled cable between host and Pico."""
    _fresh_session(pico, imu)
    proxy = FaultProxy(pico.port, str(tmp_path / "ttyFAULT"), seed=11)
    try:
        cut = []

        def progress(done, total):
            if done >= STEPS // 2 and not cut:
                cut.append(threading.Thread(target=proxy.disconnect, args=(0.6,)))
                cut[0].start()

        with Link(proxy.link, checkpoint_every=10, window=4, timeout=0.5, retries=3, reconnect_timeout=30) as link:
            st = link.stream(imu["xq"], imu["y"], progress=progress)
            cut[0].join()
            stats = link.command("stats")
    finally:
        proxy.close()
    print(f"\nfaults: {proxy.counts}\nlink: retransmissions {st['retransmissions']}, reconnects {st['reconnects']}, "
          f"bad frames {st['bad_frames']}, {st['samples_per_s']:.1f} samples/s")
    assert proxy.counts["disconnects"] == 1 and st["reconnects"] >= 1
    assert sum(proxy.counts[k] for k in ("dropped", "flipped", "duplicated", "garbage")) > 5
    assert stats["applied"] == STEPS and stats["steps"] == STEPS
    state, last = board_state(pico.link)
    assert (last, state) == (STEPS - 1, imu["state"]), "the faulty line changed what the Pico learned"


def test_power_cut_mid_stream_resumes_from_the_checkpoint_in_flash(pico, imu):
    """The emulator is killed mid-stream (the flash file keeps what was written, as the chip
    would) and powered on again: the link resumes from the last checkpoint, nothing is lost or
    applied twice."""
    _fresh_session(pico, imu)
    cut = {}

    def progress(done, total):
        if done >= 25 and not cut:
            pico.kill()
            cut["done"] = done
            cut["timer"] = threading.Timer(1.0, pico.start)
            cut["timer"].start()

    with Link(pico.link, checkpoint_every=10, window=8, timeout=0.5, retries=2, reconnect_timeout=60) as link:
        st = link.stream(imu["xq"], imu["y"], progress=progress)
        cut["timer"].join()
        assert st["reconnects"] >= 1 and st["resumed_from"][-1] in (10, 20), st["resumed_from"]
        assert link.last_seq == STEPS - 1 and link.steps == STEPS
    state, last = board_state(pico.link)
    assert (last, state) == (STEPS - 1, imu["state"]), "a sample was lost or applied twice across the power cut"
    assert pico.starts >= 4


def test_frozen_weights_beyond_the_free_heap_train_in_place(pico, tmp_path):
    """A model whose frozen weights (268,800 B) outgrow the Pico's free heap: the planner counts
    them only where the board reads them in place; push writes the UF2 that puts them in the
    flash region; until it is flashed, load() says why it cannot; after it, the model trains in
    place and learns the simulator's bytes."""
    from microtrain.device import boards
    from research import zoo
    model, (X, y) = zoo.imu_wide()
    policy = {"1": {"bias": True, "weights": 1.0}, "0": {"bias": True}}
    pico_def = boards.get("rpi_pico")
    with pytest.raises(planner.PlanError, match="weights read into the heap"):
        planner.plan(model, policy, budget=pico_def.heap_bytes)             # a board that reads them into RAM
    plan = planner.plan(model, policy, budget=pico_def.heap_bytes, weights_flash_bytes=pico_def.weights_flash_bytes)
    assert plan.weights_in_flash and plan.frozen_bytes == 600 * 448 + 0 and "read in place" in plan.summary(model)
    modelfile.save(str(tmp_path / "wide.mtm"), model, plan)
    xq = np.asarray(model.quantize_input(X.reshape(len(X), -1))[:16], np.int8)
    labels = np.asarray(y[:16], np.uint8)
    np.savez(tmp_path / "wide.npz", x=xq, y=labels)
    sim = simulator.Simulator(model, plan)
    for x, label in zip(xq, labels):
        sim.step(x, int(label))
    import struct
    state, rng, steps = sim.trainable_state()

    mt, mp = os.path.join(BIN, "microtrain"), os.path.join(BIN, "mpremote")
    out = run(mt, "push", tmp_path / "wide.mtm", "--port", pico.link, timeout=600)
    uf2 = tmp_path / "wide.weights.uf2"
    assert f"wrote {uf2}" in out and uf2.exists(), out
    probe = ("import gc, uctypes, microtrain\ngc.collect()\nfree = gc.mem_free()\ntry:\n    m = microtrain.load('model.mtm')\n"
             "    print('LOADED', m.weights_in_flash, free, [uctypes.addressof(v) >= 0x10000000 for v in "
             "(m.layers[0].w, m.layers[0].mult, m.layers[0].shift)])\nexcept MemoryError as e:\n    print('NOFIT', free, e)")
    before = run(mp, "connect", pico.link, "resume", "exec", probe).strip()
    assert before.startswith("NOFIT") and "do not fit the free heap" in before and ".weights.uf2" in before, before
    assert int(before.split()[1]) < plan.frozen_bytes, "the heap would have held the weights: no proof"
    pico.flash_uf2(str(uf2))                       # BOOTSEL + copy onto RPI-RP2, as the boot ROM does
    out = run(mt, "push", tmp_path / "wide.mtm", "--port", pico.link)
    assert "all up to date" in out and "read in place" in out, out     # the file system kept every file
    after = run(mp, "connect", pico.link, "resume", "exec", probe).split()
    assert after[:2] == ["LOADED", "True"], after
    assert after[3:] == ["[True,", "True,", "True]"], f"frozen weights and factors not all in flash: {after}"
    print(f"\nfrozen weights {plan.frozen_bytes} B; free heap {before.split()[1]} B before the UF2 "
          f"(load: {before.split(' ', 2)[2]}), {after[2]} B after, then loaded in place")
    out = run(mt, "train", tmp_path / "wide.npz", "--port", pico.link, "--fresh")
    assert "16 samples" in out, out
    got, last = board_state(pico.link)
    assert (last, got) == (15, state + struct.pack("<II", rng, steps)), "in-place training differs from the simulator"

"""The serial link against a virtual board (the real MicroPython unix port on a pty, used like a
USB-serial board): bit-exact training over the wire, a faulty line (drops, bit flips,
duplicates, garbage, delays, reordering, a disconnect), a board killed mid-stream with a torn
checkpoint, and mpremote against the virtual board."""

import binascii
import os
import random
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from microtrain.model import modelfile
from microtrain.plan import planner
from microtrain.sim import simulator
from research import zoo
from microtrain.board import link as proto
from microtrain.board import modelfile as fmt
from microtrain.device.link import ERROR, HELLO, SAMPLE, FrameParser, Link, frame
from microtrain.device.virtualboard import VirtualBoard

from .conftest import DIST, require
from .faultproxy import FaultProxy

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
LIB = os.path.join(DIST, "lib", "microtrain")
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "firmware", "microtrain")

STATE_CODE = ("import microtrain.link as L, struct, binascii\n"
              "t = L.trainer()\n"
              "b = b''.join(bytes(v) for _, v in t._state_blobs()) + struct.pack('<II', t.rng[0], t.steps)\n"
              "print('STATE', binascii.hexlify(b).decode(), t.last_seq)\n")


@pytest.fixture(scope="module")
def imu():
    _, model, (Xtr, ytr), (Xte, yte) = zoo.imu_reference(seed=0)
    plan = planner.plan(model, "sparse")
    xq = model.quantize_input(Xtr)[:60]
    y = np.asarray(ytr[:60], int)
    sim = simulator.Simulator(model, plan)
    for x, label in zip(xq, y):
        sim.step(x, int(label))
    state, rng, steps = sim.trainable_state()
    xv = model.quantize_input(Xte)[:8]
    yv = np.asarray(yte[:8], int)
    right = sum(sim.predict(x)[0] == t for x, t in zip(xv, yv))
    return {"model": model, "plan": plan, "xq": xq, "y": y, "state": state + struct.pack("<II", rng, steps),
            "initial": simulator.Simulator(model, plan).trainable_state()[0], "xv": xv, "yv": yv, "right": right}


@pytest.fixture
def board(imu):
    require(os.path.join(LIB, "link.mpy"), "run `make board-lib`")
    for name in os.listdir(SRC):
        if name.endswith(".py") and os.path.getmtime(os.path.join(SRC, name)) > os.path.getmtime(
                os.path.join(LIB, name[:-3] + ".mpy")):
            pytest.fail(f"{LIB}/{name[:-3]}.mpy is older than its source: run `make board-lib`")
    vb = VirtualBoard(heap="192K")
    try:
        vb.install(LIB)
        modelfile.save(vb.path("model.mtm"), imu["model"], imu["plan"])
        vb.start()
        yield vb
    finally:
        vb.stop()
    assert not vb.alive


def mpremote(port, code, timeout=30):
    r = subprocess.run([MPREMOTE, "connect", port, "resume", "exec", code], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"mpremote failed: {r.stdout}\n{r.stderr}"
    return r.stdout


def board_state(port):
    out = mpremote(port, STATE_CODE)
    line = [ln for ln in out.splitlines() if ln.startswith("STATE ")][0].split()
    return binascii.unhexlify(line[1]), int(line[2])


def _newest(path):
    """(slot file, state) of the newest complete checkpoint in the store `path` (its two slots,
    read with the board's own reader), else None."""
    from microtrain.board import checkpoint as ck
    best = None
    for slot in (path + ".0", path + ".1"):
        try:
            st, _ = ck.parse(open(slot, "rb").read())
        except (OSError, ck.CheckpointError):
            continue
        if best is None or ck._newer(st.generation, best[1].generation):
            best = (slot, st)
    return best


def newest_slot(path):
    return _newest(path)[0]


def checkpoint_info(path):
    """(steps, last_seq) of the newest complete checkpoint in the store `path`, else None."""
    found = _newest(path)
    return None if found is None else (found[1].steps, found[1].last_seq)


# ---------------------------------------------------------------------------------------------
# frames (no board)


def test_frame_parser_resynchronises_after_garbage_and_corruption():
    rng = random.Random(1)
    frames = [frame(SAMPLE, i, bytes(rng.randrange(256) for _ in range(40)) + b"\x01") for i in range(50)]
    wire = bytearray()
    for i, f in enumerate(frames):
        f = bytearray(f)
        if i % 7 == 3:
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)        # corrupted: dropped by the CRC
        if i % 5 == 0:
            wire += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30))) + proto.SYNC[:1]
        wire += f
    p = FrameParser()
    got = []
    for o in range(0, len(wire), 13):                                  # arbitrary chunking
        got += p.feed(wire[o:o + 13])
    seqs = [f.seq for f in got]
    assert seqs == [i for i in range(50) if i % 7 != 3]
    assert all(f.payload == frames[f.seq][12:-4] for f in got)
    assert p.bad >= 7 - 1
    assert len(frame(HELLO, 5)) == proto.OVERHEAD


# ---------------------------------------------------------------------------------------------
# (a) bit-exact over the wire


def test_command_ids_are_new_and_harmless_at_a_repl_from_any_last_id(monkeypatch):
    """Whatever the last id (here the start of 2^24 ids whose top byte is Ctrl-B), the next command
    frame is found in a few draws, holds no Ctrl-B/C/D and differs from the last id (the board
    answers a repeated id from its cache).  Counting up from the last id used to spin here."""
    import microtrain.device.link as L
    calls = []
    real = L.frame
    monkeypatch.setattr(L, "frame", lambda *a, **k: calls.append(1) or real(*a, **k))
    link = Link("/dev/null-not-opened")
    for last in (0x02000000, 0x03FFFFFF, 0x00020000, 7):
        link._cmd_id = last
        calls.clear()
        cid, data = link._next_command("checkpoint")
        assert cid != last and len(calls) < 50
        assert not any(b in L.UNSAFE_AT_REPL for b in data)
        assert FrameParser().feed(data)[0].seq == cid


def test_stream_trains_bit_identically_to_the_simulator(board, imu):
    with Link(board.port, checkpoint_every=16, timeout=0.5) as link:
        assert link.hello["version"] == proto.VERSION and link.hello["in_size"] == 600
        assert link.hello["last_seq"] == -1 and link.hello["steps"] == 0 and link.hello["native"]
        assert link.hello["labels"] == list(imu["model"].labels)
        seen = []
        st = link.stream(imu["xq"], imu["y"], progress=lambda done, total: seen.append(done))
        assert st["samples"] == 60 and st["retransmissions"] == 0 and st["reconnects"] == 0
        assert seen[-1] == 60 and seen == sorted(seen)
        assert st["steps"] == 60 and link.last_seq == 59 and link.ckpt_seq == 59
        assert 0.9 < st["uplink_efficiency"] < 1 and 0.8 < st["payload_efficiency"] < 1
        print(f"\nthroughput: {st['samples_per_s']:.0f} samples/s, {st['bytes_per_sample']:.0f} wire bytes/sample, "
              f"payload efficiency {st['payload_efficiency']:.3f} (uplink {st['uplink_efficiency']:.3f})")
        # validation samples are stored, not trained on; evaluate() on the board == the simulator
        sv = link.stream(imu["xv"], imu["yv"], validation=True)
        assert sv["steps"] == 60 and link.last_seq == 67
        r = link.command("evaluate")
        assert (r["right"], r["total"]) == (imu["right"], 8)
        tel = link.telemetry()
        steps = [t for t in tel if t["kind"] == "step"]
        assert [t["step"] for t in steps] == list(range(1, 61))
        assert any(t["kind"] == "checkpoint" for t in tel) and tel[-1]["kind"] == "evaluate"
    state, last = board_state(board.port)
    assert last == 67
    assert state[-8:] == imu["state"][-8:], "PRNG state or step counter differ"
    assert state == imu["state"], "trainable weights differ from the simulator"
    assert state[:-8] != imu["initial"]
    assert checkpoint_info(board.path("model.ckpt")) == (60, 67)
    # after a reset the session starts from the checkpoint, validation samples included
    board.restart()
    with Link(board.port, timeout=0.5) as link:
        h = link.hello
        assert (h["last_seq"], h["ckpt_seq"], h["steps"], h["val_n"]) == (67, 67, 60, 8)
        assert link.command("evaluate")["right"] == imu["right"]


# ---------------------------------------------------------------------------------------------
# (b) a faulty line


def test_faulty_line_loses_and_repeats_nothing(board, imu, tmp_path):
    seed = int(os.environ.get("MICROTRAIN_FAULT_SEED", "7"))
    proxy = FaultProxy(board.port, str(tmp_path / "ttyFAULT"), seed=seed)
    try:
        cut = []

        def progress(done, total):
            if done >= 30 and not cut:                # pull the cable mid-stream
                cut.append(threading.Thread(target=proxy.disconnect, args=(0.6,)))
                cut[0].start()

        with Link(proxy.link, checkpoint_every=10, window=4, timeout=0.3, retries=3, reconnect_timeout=30) as link:
            st = link.stream(imu["xq"], imu["y"], progress=progress)
            cut[0].join()
            assert st["samples"] == 60 and link.last_seq == 59
            stats = link.command("stats")
            tel = link.telemetry()
            counts = link.telemetry_counts()
        print(f"\nfaults: {proxy.counts}\nlink: retransmissions {st['retransmissions']}, timeouts {st['timeouts']}, "
              f"nacks {st['nacks']}, reconnects {st['reconnects']}, bad frames {st['bad_frames']}, "
              f"{st['samples_per_s']:.0f} samples/s, payload efficiency {st['payload_efficiency']:.3f}")
        assert proxy.counts["disconnects"] == 1 and st["reconnects"] >= 1
        assert sum(proxy.counts[k] for k in ("dropped", "flipped", "duplicated", "garbage")) > 10
        assert st["retransmissions"] > 0
        assert stats["applied"] == 60 and stats["steps"] == 60 and stats["last_seq"] == 59
    finally:
        proxy.close()
    # the board never crashed or reset, applied every sample exactly once, and sits at its REPL
    assert board.alive and board.exits == [] and board.starts == 1
    state, last = board_state(board.port)
    assert last == 59
    assert state == imu["state"], "the faulty line changed what the board learned"
    assert mpremote(board.port, "print(1+1)").strip() == "2"
    assert mpremote(board.port, "import microtrain.link as L; print(L.stats()['ended'])").strip() == "bye"
    # telemetry: what the board wrote is counted; what the host has is what it says it has
    head = int(mpremote(board.port, "import microtrain.link as L; print(L.trainer().telemetry.head)"))
    print(f"telemetry: {counts}")
    assert counts["written"] == head and counts["received"] == len(tel) and counts["missed"] == head - len(tel)
    steps = [r["step"] for r in tel if r["kind"] == "step"]
    assert len(tel) >= 32 and len(set(steps)) == len(steps) and set(steps) <= set(range(1, 61))


# ---------------------------------------------------------------------------------------------
# (c) the board dies mid-stream


def test_board_killed_mid_stream_resumes_from_its_checkpoint(board, imu):
    xq, y = imu["xq"], imu["y"]
    done_at_kill = {}
    restarter = []

    def kill_at(n):
        def progress(done, total):
            if done >= n and not done_at_kill:
                board.kill()                                   # power cut during streaming
                done_at_kill["done"] = done
                ck = checkpoint_info(board.path("model.ckpt"))
                done_at_kill["ckpt"] = ck
                # a torn write of the next checkpoint, as a reset during checkpoint() leaves it:
                # the older slot half written with newer bytes
                slots = [board.path("model.ckpt" + s) for s in (".0", ".1")]
                newest = newest_slot(board.path("model.ckpt"))
                whole = open(newest, "rb").read()
                # the other slot (by generation: two writes within one clock tick share an mtime)
                older = next(p for p in slots if p != newest)
                open(older, "wb").write(whole[:len(whole) // 2])
                restarter.append(threading.Timer(1.5, board.start))   # after the host gave up resending
                restarter[-1].start()
        return progress

    with Link(board.port, checkpoint_every=10, window=8, timeout=0.3, retries=2, reconnect_timeout=30) as link:
        st1 = link.stream(xq[:40], y[:40], progress=kill_at(25))
        restarter[0].join()
        steps, seq = done_at_kill["ckpt"]
        assert seq in (19, 29) and steps == seq + 1, "the last good checkpoint is not intact"
        assert st1["reconnects"] >= 1 and st1["resumed_from"][-1] == seq + 1
        assert any(h["last_seq"] == seq and h["steps"] == seq + 1 for h in link.hellos[1:])
        assert link.last_seq == 39 and link.ckpt_seq == 39                  # checkpointed at the end
        board.kill()                                                           # right after a checkpoint
        board.start()
        reconnects = link.reconnects
        st2 = link.stream(xq[40:], y[40:])
        assert link.reconnects == reconnects + 1 and link.hellos[-1]["last_seq"] == 39
        assert st2["first_seq"] == 40 and st2["retransmissions"] == 0                # nothing sent twice
        assert link.last_seq == 59 and link.steps == 60
    assert (board.starts, board.exits) == (3, [])
    state, last = board_state(board.port)
    assert last == 59
    assert state == imu["state"], "a sample was lost or applied twice across the resets"


# ---------------------------------------------------------------------------------------------
# (d) mpremote against the virtual board


def test_mpremote_works_against_the_virtual_board(board):
    assert mpremote(board.port, "import microtrain; print(microtrain.__version__, microtrain.backend.NAME)").split() \
        == ["0.1.0", "native"]
    out = subprocess.run([MPREMOTE, "connect", board.port, "resume", "fs", "ls", ":"], capture_output=True,
                         text=True, timeout=30).stdout
    assert "model.mtm" in out
    # Ctrl-D / sys.exit() ends the unix port where a board resets: detected, restarted, same port
    port = board.port
    subprocess.run([MPREMOTE, "connect", port, "resume", "exec", "import sys; sys.exit(3)"], capture_output=True,
                   timeout=30)
    assert board.wait_alive() and board.exits == [3] and board.port == port
    assert mpremote(port, "print(6*7)").strip() == "42"
    board.restart()
    assert mpremote(port, "import gc; print(gc.mem_free() > 100000)").strip() == "True"


def test_link_interrupted_by_mpremote_and_host_errors_leave_a_usable_repl(board, imu):
    link = Link(board.port, timeout=0.5)
    link.open()
    link.stream(imu["xq"][:5], imu["y"][:5], checkpoint=False)
    # the host goes away without BYE; mpremote's Ctrl-C + Ctrl-A ends the session at once
    link._close_port()
    assert mpremote(board.port, "import microtrain.link as L; print(L.stats()['ended'], L.stats()['steps'])").split() \
        == ["interrupted", "5"]
    # bad samples raise on the host (checked there, and by the board: ERROR, not applied);
    # the session stays, close() leaves the REPL usable
    with Link(board.port, timeout=0.5) as link:
        assert link.hello["last_seq"] == 4                       # same process: the trainer stayed
        with pytest.raises(ValueError):
            link.stream([b"\x00" * 10], [0])
        link._send(SAMPLE, 5, bytes(600) + bytes((9,)))         # label 9 of a 4-class model
        got = []
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            got = [f for f in link._receive(0.05) if f.type == ERROR]
        assert got and got[0].seq == 5 and b"label 9" in got[0].payload
        assert link.command("stats")["steps"] == 5
    with pytest.raises(ZeroDivisionError):
        with Link(board.port, timeout=0.5):                      # a host error inside `with`
            1 / 0
    assert mpremote(board.port, "print('ok')").strip() == "ok"

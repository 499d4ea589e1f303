"""Adaptation without backprop (microtrain.adapt, docs/adapt.md): the board picks anchors by
integer farthest-point sampling and sends only their embeddings and layer statistics; the host's
adaptors (head, correct, generator) and the board's own (imprint, restats) set parameters with
forward passes only; a delta lands atomically with a checkpoint and is undone when the board's
validation drops.  Board and host agree bit for bit (virtual board and emulated Cortex-M0), and
every method beats no adaptation on held-out device data."""

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import DIST, ROOT

from microtrain import cli
from microtrain.adapt import adaptors, core, scenario
from microtrain.adapt.session import exchange
from microtrain.device import board_io
from microtrain.device.virtualboard import VirtualBoard
from microtrain.model import modelfile
from microtrain.plan import planner

sys.path.insert(0, os.path.join(ROOT, "firmware", "qemuport"))
sys.path.insert(0, os.path.join(ROOT, "tests"))


@pytest.fixture(scope="module")
def digits():
    return scenario.digits(0)


def _board(tmp_path, model, policy="sparse"):
    path = tmp_path / "model.mtm"
    plan = planner.plan(model, policy, lr=0.05, word_bytes=8)
    modelfile.save(path, model, plan)
    vb = VirtualBoard(heap="192K")
    vb.install(os.path.join(DIST, "lib", "microtrain"))
    data = path.read_bytes()
    open(vb.path("model.mtm"), "wb").write(data)
    return vb.start(), path, board_io.model_id(data), plan


def _tensors(ck, tags):
    return {t: bytes(ck["blobs"][t]) for t in tags}


def _blob(tag, v):
    return np.ascontiguousarray(v, np.int8 if tag[0] == "W" else "<i4").tobytes()


def test_the_board_exchange_is_the_host_reference_for_every_method(digits, tmp_path):
    s = digits
    m = s["model"]
    x, y = s["x"][:120], s["y"][:120]
    vb, path, mid, plan = _board(tmp_path, m)
    gen = adaptors.Generator(m, s["source"]).fit(s["X_src"], s["y_src"], s["distort"], 4, 12)
    try:
        picked, E, ya, st = core.anchors(m, x, y, 4)
        expect = {"imprint": core.imprint(m, E, ya), "head": adaptors.head(m, E, ya),
                  "correct": adaptors.correct(m, s["source"], st), "generator": gen.delta(st),
                  "restats": core.restats(m, x, picked, s["source"])}
        for method in ("imprint", "head", "correct", "generator", "restats"):
            r = exchange(vb.port, "model.mtm", m, mid, x, y, 4, method, source=s["source"], generator=gen,
                         fresh=True)
            # the anchors the board picked, their embeddings and statistics: the host's reference
            assert r["picked"] == picked and np.array_equal(r["anchor_embeddings"], E)
            assert r["anchor_stats"] == st
            assert r["kept"] and r["before"] is None, r
            with board_io.Session(vb.port) as b:
                ck = board_io.read_checkpoint(b, "model.ckpt")
            want = expect[method]
            assert _tensors(ck, want) == {t: _blob(t, v) for t, v in want.items()}, method
            assert r["bytes_up"] == len(vb_file(vb, "anchors.bin"))
            print(method, "up", r["bytes_up"], "down", r["bytes_down"], "board us", r["us"], r.get("compute_us"))
    finally:
        vb.stop()


def vb_file(vb, name):
    return open(vb.path(name), "rb").read()


def _board_eval(port, xt, yt, cap):
    from microtrain.device.link import Link
    with Link(port, "model.mtm") as link:
        return link.evaluate(xt, yt, cap)


def test_a_delta_that_hurts_validation_is_undone_and_a_torn_checkpoint_loses_nothing(digits, tmp_path):
    """With validation samples on the board: a head from mislabelled anchors drops accuracy and
    is undone (nothing written, the tensors as they were); the true head is kept.  A kept
    correction comes back after a restart; a reset that tears its checkpoint (before the best
    state's save) leaves the parameters from before it, never half of the delta."""
    s = digits
    m = s["model"]
    x, y = s["x"][:120], s["y"][:120]
    xv, yv = s["xt"][:40], s["yt"][:40]
    xt, yt = s["xt"][40:140], s["yt"][40:140]
    vb, path, mid, plan = _board(tmp_path, m)
    cap = plan.buffers["val_y"].size
    try:
        picked, E, ya, st = core.anchors(m, x, y, 4)
        before = _board_eval(vb.port, xt, yt, cap)
        good = adaptors.head(m, E, ya)
        bad = adaptors.head(m, E, (np.asarray(ya) + 3) % 10)
        # the host's delta, sent as the exchange does it, the bad one first
        for delta, keep in ((bad, False), (good, True)):
            with board_io.Session(vb.port) as b:
                b.put(core.to_bytes(mid, delta), "delta.bin", force=True)
            from microtrain.device.link import Link
            with Link(vb.port, "model.mtm") as link:
                link.command("clear_validation")
                link.stream(xv[:cap], yv[:cap], validation=True, checkpoint=False)
                r = link.command("apply delta.bin")
            assert r["kept"] is keep and r["before"] is not None, r
            assert (r["after"] < r["before"]) is not keep, r
        assert r["after"] > r["before"]
        with board_io.Session(vb.port) as b:
            ck = board_io.read_checkpoint(b, "model.ckpt")
        assert _tensors(ck, good) == {t: _blob(t, v) for t, v in good.items()}
        host_after = scenario.accuracy(core.apply(m, good), xt, yt)
        assert _board_eval(vb.port, xt, yt, cap) == round(host_after * len(yt)) > before
        # a kept correction (first layer: its multipliers, shifts and biases), then a torn write
        corr = adaptors.correct(m, s["source"], st)
        with board_io.Session(vb.port) as b:
            b.put(core.to_bytes(mid, corr), "delta.bin", force=True)
        best = [vb.path(f"model.ckpt.best.{i}") for i in (0, 1)]
        best_before = [open(p, "rb").read() if os.path.exists(p) else None for p in best]
        from microtrain.device.link import Link
        with Link(vb.port, "model.mtm") as link:
            link.command("clear_validation")
            link.stream(xv[:cap], yv[:cap], validation=True, checkpoint=False)
            r = link.command("apply delta.bin")
        assert r["kept"] and r["before"] is not None, r        # validated: the best state from now on
        slots = [vb.path(f"model.ckpt.{i}") for i in (0, 1)]
        saved = [open(p, "rb").read() for p in slots]
        both = core.apply(m, good)
        vb.restart()                                                # the correction survives a reset
        assert _board_eval(vb.port, xt, yt, cap) == round(scenario.accuracy(core.apply(both, corr), xt, yt) * len(yt))
        vb.kill()
        for p, data in zip(slots, saved):
            open(p, "wb").write(data)
        for p, data in zip(best, best_before):                    # the reset came before the best state's save
            if data is None:
                os.remove(p)
            else:
                open(p, "wb").write(data)
        newest = max((0, 1), key=lambda i: board_io.parse_checkpoint(saved[i])["generation"])
        open(slots[newest], "wb").write(saved[newest][:len(saved[newest]) // 2])     # a reset mid-write
        vb.start()
        assert _board_eval(vb.port, xt, yt, cap) == round(scenario.accuracy(both, xt, yt) * len(yt))
    finally:
        vb.stop()


def test_the_exchange_on_the_emulated_cortex_m0(digits, tmp_path):
    """The M0 (qemu micro:bit, native .mpy kernels): anchors, restats and a host head, each the
    host's reference bit for bit."""
    from bench.board import ensure_firmware
    from qemu_board import QemuBoard
    s = digits
    m = s["model"]
    x, y = s["x"][:40], s["y"][:40]
    path = tmp_path / "m0.mtm"
    modelfile.save(path, m, planner.plan(m, "sparse", lr=0.05))
    mid = board_io.model_id(path.read_bytes())
    qb = QemuBoard(variant="natmod", elf=ensure_firmware("natmod", "microbit"))
    try:
        r = CliRunner().invoke(cli.main, ["push", str(path), "--port", qb.port])
        assert r.exit_code == 0, r.output
        picked, E, ya, st = core.anchors(m, x, y, 2)
        for method, want in (("restats", core.restats(m, x, picked, s["source"])), ("head", adaptors.head(m, E, ya))):
            r = exchange(qb.port, "model.mtm", m, mid, x, y, 2, method, source=s["source"], fresh=True)
            assert r["picked"] == picked and r["anchor_stats"] == st and r["kept"]
            with board_io.Session(qb.port) as b:
                ck = board_io.read_checkpoint(b, "model.ckpt")
            assert _tensors(ck, want) == {t: _blob(t, v) for t, v in want.items()}, method
            print("M0", method, f"anchors {r['anchors']['us'] / 1000:.0f} ms, apply {r['total_us'] / 1000:.0f} ms, "
                  f"up {r['bytes_up']} B, down {r['bytes_down']} B")
    finally:
        qb.close()


def test_cli_adapt_with_validation(digits, tmp_path):
    s = digits
    m = s["model"]
    vb, path, mid, plan = _board(tmp_path, m)
    try:
        np.savez(tmp_path / "dev.npz", x=s["x"][:80], y=s["y"][:80])
        np.savez(tmp_path / "val.npz", x=s["xt"][:16], y=s["yt"][:16])
        np.savez(tmp_path / "src.npz", x=s["x_src"], y=s["y_src"])
        base = ["adapt", str(tmp_path / "dev.npz"), "--port", vb.port, "--model", str(path), "--anchors", "2"]
        r = CliRunner().invoke(cli.main, base + ["--method", "restats"])
        assert r.exit_code != 0 and "--source" in r.output
        r = CliRunner().invoke(cli.main, base + ["--method", "generator", "--source", str(tmp_path / "src.npz"),
                                                 "--distortion", "camera", "--domains", "6",
                                                 "--validation", str(tmp_path / "val.npz"), "--fresh"])
        assert r.exit_code == 0, r.output
        assert "anchors: 20 (2 per class) of 80 samples" in r.output and "validation" in r.output, r.output
        r = CliRunner().invoke(cli.main, base + ["--method", "imprint", "--validation", str(tmp_path / "val.npz")])
        assert r.exit_code == 0 and ("kept" in r.output or "undone" in r.output), r.output
        print(r.output)
    finally:
        vb.stop()


@pytest.mark.parametrize("which", ["digits", "imu"])
def test_every_method_beats_no_adaptation_on_held_out_device_data(digits, which):
    s = digits if which == "digits" else scenario.imu(0)
    m = s["model"]
    none = scenario.accuracy(m, s["xt"], s["yt"])
    picked, E, ya, st = core.anchors(m, s["x"], s["y"], 4)
    gen = adaptors.Generator(m, s["source"]).fit(s["X_src"], s["y_src"], s["distort"], 4, 30)
    acc = {name: scenario.accuracy(core.apply(m, d), s["xt"], s["yt"]) for name, d in (
        ("imprint", core.imprint(m, E, ya)), ("head", adaptors.head(m, E, ya)),
        ("correct", adaptors.correct(m, s["source"], st)), ("generator", gen.delta(st)),
        ("restats", core.restats(m, s["x"], picked, s["source"])))}
    print(which, "none", none, acc)
    assert all(a > none for a in acc.values()), (none, acc)
    assert acc["head"] >= none + 0.3


ROLLBACK_SCRIPT = """
import microtrain, struct
from microtrain import adapt
D = '{dir}'
t = microtrain.Trainer(microtrain.load(D + '/m.mtm'), checkpoint_path=D + '/ck')
rec = open(D + '/val.bin', 'rb').read()
n = t.model.in_size + 1
for i in range(len(rec) // n):
    t.add_validation(rec[i * n + 1:(i + 1) * n], rec[i * n])
t.validate()                                   # the best validated state: the model file's
ad = adapt.Adaptor(t)
r = ad.apply(adapt.delta_blobs(D + '/delta.bin', t.model.id))
print('KEPT', r['kept'], r['before'], r['after'])
t.rollback(reason='test', best=True)           # the best state is the adapted one now
print('M', bytes(t.model.layers[0].mult).hex())
t2 = microtrain.Trainer(microtrain.load(D + '/m.mtm'), checkpoint_path=D + '/ck')
print('RESUMED', t2.resume(), bytes(t2.model.layers[0].mult).hex())
"""


def test_adapted_tensors_survive_a_best_state_rollback_and_a_resume(digits, tmp_path):
    """In the unix port: after a kept correction, rolling back to the best validated state and
    resuming in a new trainer both give the corrected multipliers (a best-state checkpoint also
    holds BVAL, which is not a tensor)."""
    from microtrain.device import unixport
    from microtrain.split.session import sample_file
    s = digits
    m = s["model"]
    modelfile.save(tmp_path / "m.mtm", m, planner.plan(m, "sparse", lr=0.05))
    mid = board_io.model_id((tmp_path / "m.mtm").read_bytes())
    _, _, _, st = core.anchors(m, s["x"][:60], s["y"][:60], 2)
    corr = adaptors.correct(m, s["source"], st)
    (tmp_path / "delta.bin").write_bytes(core.to_bytes(mid, corr))
    (tmp_path / "val.bin").write_bytes(sample_file(s["xt"][:8], s["yt"][:8]))
    out = unixport.run(ROLLBACK_SCRIPT.format(dir=tmp_path))
    want = np.asarray(corr["M000"], "<i4").tobytes().hex()
    assert "KEPT True" in out, out
    assert f"M {want}" in out and f"RESUMED True {want}" in out, out

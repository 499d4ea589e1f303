"""Split training (microtrain.split, docs/split.md): the board runs the layers below the cut and
their backward, the host those above, over the framed serial link; board + host together are
bit-identical with the simulator of the combined plan - on the virtual board (also through a
faulty line and a power cut mid-stream) and on the emulated Cortex-M0; the CLI from convert to a
pushed model that classifies alone; two boards with different cuts at once, one of them slow."""

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import DIST, ROOT

from microtrain import cli
from microtrain.device import board_io
from microtrain.device.virtualboard import VirtualBoard
from microtrain.model import modelfile
from microtrain.plan import split
from microtrain.plan.planner import PlanError
from microtrain.sim.simulator import Simulator
from microtrain.split import fed, scenario
from microtrain.split.host import FloatHost, IntegerHost
from microtrain.split.session import SplitLink, merged_model, sample_file

sys.path.insert(0, os.path.join(ROOT, "firmware", "qemuport"))
sys.path.insert(0, os.path.join(ROOT, "tests"))


@pytest.fixture(scope="module")
def world():
    net, model, X, y = scenario.pretrained(seed=0)
    dev = scenario.device(model, X, y, 0)
    return net, model, dev


def _same(a, b):
    return all(np.array_equal(p.w, q.w) and np.array_equal(p.b, q.b) for p, q in zip(a.layers, b.layers)
               if p.w is not None)


def _board(tmp_path, model, sp, x, y, **kw):
    path = tmp_path / f"split{sp.cut}.mtm"
    modelfile.save(path, model, sp.board)
    vb = VirtualBoard(heap="192K", **kw)
    vb.install(os.path.join(DIST, "lib", "microtrain"))
    with open(path, "rb") as f:
        open(vb.path("model.mtm"), "wb").write(f.read())
    open(vb.path("samples.bin"), "wb").write(sample_file(x, y))
    return vb.start(), path


def _host(path, float_host=False):
    m, p = modelfile.load(path)
    return (FloatHost if float_host else IntegerHost)(m, split.from_file(m, p), p.cut, bool(p.train)), m, p


def test_the_cut_is_the_deepest_that_fits_and_the_file_keeps_it(world, tmp_path):
    _, model, _ = world
    free = split.choose(model, "sparse", "full")
    assert free.cut == len(model.layers) - 2                     # no budget: the host runs the classifier only
    need = {c.cut: c.board_bytes for c in free.candidates}
    assert need[1] < need[2] < need[4] and free.alone_bytes > need[4]
    budget = (need[2] + min(need[3], need[4])) // 2              # cut 2 fits, the deeper ones do not
    sp = split.choose(model, "sparse", "full", budget=budget)
    assert sp.cut == 2 and "deepest that fits" in sp.reason and f"needs {need[3]}" in sp.reason
    assert sp.board.budget_bytes <= budget < sp.alone_bytes
    text = sp.summary(model, budget)
    assert "cut at layer 2" in text and "host trains" in text
    with pytest.raises(PlanError, match="cut 4 does not fit"):
        split.choose(model, "sparse", "full", budget=budget, cut=4)
    with pytest.raises(PlanError, match="no cut fits"):
        split.choose(model, "sparse", "full", budget=1000)
    slow = {c.cut: c.link_ms for c in free.candidates}          # the link: cut 2's frames take longer than 4's
    with pytest.raises(PlanError, match=r"cut 2: \d+ ms on the link"):
        split.choose(model, "sparse", "full", budget=budget, max_link_ms=(slow[4] + slow[2]) / 2)
    with pytest.raises(PlanError, match="the cut is 1 to 4"):
        split.choose(model, cut=5)
    with pytest.raises(PlanError, match="valid policies"):
        split.choose(model, "last-layer")
    # the board's part: only layers below the cut train, and its buffers end there
    assert all(t.layer < 2 for t in sp.board.train) and sp.board.first_backward == 0
    assert sp.board.buffers["grad0"].size == 2 * max(model.layers[i].out_size for i in (0, 1))
    assert {t.layer for t in sp.combined.train} == {0, 2, 4}
    modelfile.save(tmp_path / "m.mtm", model, sp.board)
    m, p = modelfile.load(tmp_path / "m.mtm")
    assert p.cut == 2
    comb = split.from_file(m, p)
    assert [(t.layer, t.cin_hi, t.bias) for t in comb.train] == [(t.layer, t.cin_hi, t.bias) for t in sp.combined.train]


def test_board_and_host_are_the_simulator_through_a_faulty_line_and_a_power_cut(world, tmp_path):
    """Cut 2 (the host runs conv, pool, dense): 48 samples through a line that drops, flips,
    duplicates and garbles bytes; the board loses power at sample 20 and resumes from its
    checkpoint (seq 15), the host's layers go back to their snapshot there.  The result is the
    simulator's, bit for bit."""
    from faultproxy import FaultProxy
    _, model, (x, y, _, _, _) = world
    x, y = x[:48], y[:48]
    sp = split.choose(model, "sparse", "full", cut=2)
    vb, path = _board(tmp_path, model, sp, x, y)
    proxy = FaultProxy(vb.port, str(tmp_path / "line"), seed=3, drop=2e-4, flip=2e-4, dup=2e-4, garbage=0.02,
                       delay=0.02, reorder=0.0)
    try:
        host, m, p = _host(path)
        cut_done = []

        def progress(done, total):
            if done >= 20 and not cut_done:
                cut_done.append(done)
                vb.restart()                                 # power cut mid-stream

        with SplitLink(str(tmp_path / "line"), "model.mtm", fresh=True) as link:
            st = link.split("samples.bin", len(y), host, progress=progress)
        proxy.close()
        with board_io.Session(vb.port) as s:
            ck = board_io.read_checkpoint(s, "model.ckpt")
    finally:
        vb.stop()
    assert cut_done and st["reconnects"] >= 1 and st["host_rollbacks"] >= 1, st
    assert st["resumed_from"][0] == 16, st                       # the checkpoint after sample 15
    sim = Simulator(m, split.from_file(m, p))
    for a, b in zip(x, y):
        sim.step(a, int(b))
    assert ck["steps"] == len(y) and ck["last_seq"] == len(y) - 1
    assert ck["rng"] == sim.rng and _same(merged_model(host, ck), sim.model)


def test_split_on_the_emulated_cortex_m0_is_the_simulator(world, tmp_path):
    from bench.board import ensure_firmware
    from qemu_board import QemuBoard
    _, model, (x, y, _, _, _) = world
    x, y = x[:24], y[:24]
    sp = split.choose(model, "sparse", "full", cut=4)
    path = tmp_path / "m0.mtm"
    modelfile.save(path, model, sp.board)
    qb = QemuBoard(variant="natmod", elf=ensure_firmware("natmod", "microbit"))
    try:
        r = CliRunner().invoke(cli.main, ["push", str(path), "--port", qb.port])
        assert r.exit_code == 0, r.output
        with board_io.Session(qb.port) as s:
            s.put(sample_file(x, y), "samples.bin")
        host, m, p = _host(path)
        with SplitLink(qb.port, "model.mtm", fresh=True) as link:
            st = link.split("samples.bin", len(y), host)
        with board_io.Session(qb.port) as s:
            ck = board_io.read_checkpoint(s, "model.ckpt")
    finally:
        qb.close()
    sim = Simulator(m, split.from_file(m, p))
    for a, b in zip(x, y):
        sim.step(a, int(b))
    assert ck["rng"] == sim.rng and _same(merged_model(host, ck), sim.model)
    print("M0 split:", f"{st['samples_per_s']:.1f} samples/s, {st['bytes_per_sample']:.0f} B/sample")


def test_cli_convert_split_train_push_and_the_board_classifies_alone(world, tmp_path):
    from microtrain.device import boards
    _, model, (x, y, xt, yt, _) = world
    modelfile.save(tmp_path / "digits.mtm", model)
    need = {c.cut: c.board_bytes for c in split.choose(model, word_bytes=boards.get("virtual").object_word_bytes).candidates}
    budget = (need[2] + min(need[3], need[4])) // 2
    run = lambda *a: CliRunner().invoke(cli.main, [str(v) for v in a], catch_exceptions=False)   # noqa: E731
    r = run("convert", tmp_path / "digits.mtm", "--board", "virtual", "--split", "--budget", budget,
            "-o", tmp_path / "split.mtm")
    assert r.exit_code == 0, r.output
    assert "cut at layer 2" in r.output and "the deepest that fits" in r.output
    r = run("convert", tmp_path / "digits.mtm", "--split", "--cut", 4, "--budget", budget, "--board", "virtual")
    assert r.exit_code != 0 and "cut 4 does not fit" in r.output and "Traceback" not in r.output
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    with VirtualBoard(heap="192K") as vb:
        assert run("push", tmp_path / "split.mtm", "--port", vb.port).exit_code == 0
        # the board alone refuses to train a split plan from streamed samples: one clear line
        r = run("train", tmp_path / "train.npz", "--port", vb.port)
        assert r.exit_code != 0 and "split at layer 2" in r.output, r.output
        acc = lambda s: float(s.split("=")[1].split()[0])     # noqa: E731
        before = run("evaluate", tmp_path / "test.npz", "--model", tmp_path / "split.mtm", "--port", vb.port)
        r = run("train", tmp_path / "train.npz", "--split", "--model", tmp_path / "split.mtm", "--port", vb.port,
                "--epochs", 2, "--fresh")
        assert r.exit_code == 0, r.output
        assert "activations and gradients only" in r.output and "classifies alone" in r.output
        trained = tmp_path / "split.trained.mtm"
        after = run("evaluate", tmp_path / "test.npz", "--model", trained, "--port", vb.port)
        assert after.exit_code == 0, after.output
    print("split CLI: board accuracy", acc(before.output), "->", acc(after.output))
    assert acc(after.output) >= acc(before.output) + 0.1
    # the pushed model is what the simulator of the same two epochs holds, with the board
    # trainer's divergence guard (1080 steps at lr 0.05 roll back once here, on both sides)
    from microtrain.federated.boards import SimulatedBoard
    m, p = modelfile.load(tmp_path / "split.mtm")
    sim = SimulatedBoard(m, split.from_file(m, p))
    sim.train(x, y, epochs=2)
    assert _same(modelfile.load(trained)[0], sim.model())


def test_float_host_side_learns_and_is_requantized(world, tmp_path):
    _, model, (x, y, xt, yt, _) = world
    sp = split.choose(model, "sparse", "full", cut=4)
    vb, path = _board(tmp_path, model, sp, x, y)
    try:
        host, m, p = _host(path, float_host=True)
        with SplitLink(vb.port, "model.mtm", fresh=True) as link:
            for _ in range(2):
                link.split("samples.bin", len(y), host)
        with board_io.Session(vb.port) as s:
            ck = board_io.read_checkpoint(s, "model.ckpt")
    finally:
        vb.stop()
    trained = merged_model(host, ck)
    before = Simulator(m, p).evaluate(xt, yt)
    after = Simulator(trained, p).evaluate(xt, yt)
    print("float host side: held-out accuracy", before, "->", after)
    assert after >= before + 0.1


def test_two_boards_different_cuts_one_slow_the_other_keeps_its_rate(world, tmp_path):
    """SplitFed: board A (cut 2) and board B (cut 4, behind a line delaying every chunk: a
    straggler) train at once and share the host's layers (the classifier both train on the
    host).  A's rate with B running holds (within 30 % of its rate alone, measured before and
    after, the slower of the two: two virtual boards share this machine's cores), and A
    finishes all its rounds before B finishes its first."""
    _, model, (x, y, _, _, _) = world
    x, y = x[:32], y[:32]

    proxies = []

    def member(name, cut, slow=False, **kw):
        sp = split.choose(model, "sparse", "full", cut=cut)
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        vb, path = _board(d, model, sp, x, y, **kw)
        host, _, _ = _host(path)
        port = vb.port
        if slow:                            # and a slow line: every chunk up to 50 ms late
            from faultproxy import FaultProxy
            port = str(d / "slow-line")
            proxies.append(FaultProxy(vb.port, port, drop=0, flip=0, dup=0, garbage=0, delay=1.0, reorder=0))
        return vb, fed.Member(name, SplitLink(port, "model.mtm", fresh=True), host, "samples.bin", len(y))

    def a_alone(name):
        vb, m = member(name, 2)
        try:
            run = fed.run([m], 2)
        finally:
            vb.stop()
        return run, np.mean([r["samples_per_s"] for r in m.rounds])

    alone, rate_before = a_alone("a-before")
    a_vb, a = member("a", 2)
    b_vb, b = member("b", 4, slow=True)
    try:
        shared = fed.run([a, b], 2)
    finally:
        for p in proxies:
            p.close()
        a_vb.stop()
        b_vb.stop()
    assert a.error is None and b.error is None, (a.error, b.error)
    _, rate_after = a_alone("a-after")
    rate_alone = min(rate_before, rate_after)
    rate_a = np.mean([r["samples_per_s"] for r in a.rounds])
    rate_b = np.mean([r["samples_per_s"] for r in b.rounds])
    print(f"SplitFed: A alone {rate_before:.1f} / {rate_after:.1f}, A with slow B {rate_a:.1f}, B {rate_b:.1f} samples/s")
    assert rate_b < rate_a / 3                                  # B really is the straggler
    assert rate_a > 0.7 * rate_alone
    assert a.rounds[-1]["t_end"] < b.rounds[0]["t_end"]          # A never waited for B
    # the classifier (layer 4) is shared: after B's last merge both hold the mean of their copies
    assert shared.merges == 4 and alone.merges == 2
    w_a, w_b = a.host.model.layers[4].w, b.host.model.layers[4].w
    assert np.array_equal(w_b, shared._mean(4)[0])
    assert not np.array_equal(w_a, model.layers[4].w)


def test_split_boards_in_a_flower_federation_match_its_simulation(world, tmp_path):
    """Across machines: each split board is a SuperNode whose ClientApp exchanges only the host's
    layers (the board's stay personal).  A real SuperLink with two SuperNodes, virtual boards cut
    at 2 and 4, 2 rounds; Flower's simulation engine with the same nodes simulated: the same
    global after every round, bit for bit."""
    pytest.importorskip("flwr")
    import json
    from microtrain.federated import deploy
    net, model, dev0 = world
    _, _, X, y = scenario.pretrained(seed=0)
    sc = tmp_path / "sc"
    sc.mkdir()
    boards = []
    for k, cut in enumerate((2, 4)):
        sp = split.choose(model, "sparse", "full", cut=cut)
        modelfile.save(sc / f"split{cut}.mtm", model, sp.board)
        x, yy, xt, yt, _ = scenario.device(model, X, y, k)
        np.savez(sc / f"board-{k}.npz", x=x[:40], y=yy[:40], xv=xt[:24], yv=yt[:24], xt=xt[24:], yt=yt[24:])
        boards.append({"data": f"board-{k}.npz", "model": f"split{cut}.mtm"})
    (sc / "scenario.json").write_text(json.dumps({"boards": boards, "model": "split2.mtm"}))

    def rc(name):
        return {"model": str(sc / "split2.mtm"), "scenario": str(sc), "num-rounds": 2, "min-nodes": 2, "epochs": 1,
                "report": str(tmp_path / f"{name}.jsonl"), "rollout-fraction": 0.0, "round-timeout": 300.0}

    code, out = deploy.run_local(str(tmp_path / "sim"), rc("sim"), simulate=2, log=lambda *a: None)
    assert code == 0, out[-3000:]
    vbs, nodes = [], []
    try:
        for k, b in enumerate(boards):
            vb = VirtualBoard(heap="192K")
            vb.install(os.path.join(DIST, "lib", "microtrain"))
            open(vb.path("model.mtm"), "wb").write((sc / b["model"]).read_bytes())
            vbs.append(vb.start())
            nodes.append({"port": vb.port, "model": str(sc / b["model"]), "data": str(sc / b["data"]),
                          "partition-id": k})
        code, out = deploy.run_local(str(tmp_path / "real"), rc("real"), nodes=nodes, log=lambda *a: None)
        assert code == 0, out[-3000:]
    finally:
        for vb in vbs:
            vb.stop()
    recs = {n: [json.loads(line) for line in open(tmp_path / f"{n}.jsonl")] for n in ("sim", "real")}
    digests = {n: [r["digest"] for r in v if "digest" in r] for n, v in recs.items()}
    rounds = [r for r in recs["real"] if r["event"] == "round"]
    assert len(rounds) == 2 and all(r["failed"] == 0 for r in rounds), rounds
    assert digests["real"] == digests["sim"] and len(set(digests["real"])) > 1, digests

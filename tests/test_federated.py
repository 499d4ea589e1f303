"""Federated learning on Flower (microtrain.federated): a real SuperLink and SuperNodes driving four
virtual boards (MicroPython's unix port over a pty) and the emulated Cortex-M0 (qemu) over the
framed link, against the same ClientApp with simulated boards in Flower's simulation engine: the
same global, bit for bit.  Digits, non-IID:
each board its own camera distortion and class mix; two plans (sparse / full) train different
subsets of one model."""

import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import DIST, ROOT

pytest.importorskip("flwr")
sys.path.insert(0, os.path.join(ROOT, "firmware", "qemuport"))

from microtrain.federated import deploy, exchange, scenario, strategy   # noqa: E402
from microtrain.model import modelfile                                     # noqa: E402
from microtrain.sim.simulator import Simulator                             # noqa: E402

ROUNDS = 5


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("federation")
    info = scenario.build(str(folder / "scenario"), n_boards=5, seed=0)
    return folder, info


def _run_config(folder, sc, name, **kw):
    rc = {"model": str(sc / "model-sparse.mtm"), "scenario": str(sc), "num-rounds": ROUNDS, "min-nodes": 5,
          "epochs": 1, "report": str(folder / f"{name}.jsonl"), "rollout-fraction": 0.25,
          "rollout-tolerance": 0.05, "round-timeout": 300.0}
    rc.update(kw)
    return rc


def test_integer_mean_weights_each_element_over_the_boards_that_trained_it(world):
    folder, info = world
    model, plan = modelfile.load(str(folder / "scenario" / "model-sparse.mtm"))
    _, full = modelfile.load(str(folder / "scenario" / "model-full.mtm"))
    a, b = exchange.layout(model, plan), exchange.layout(model, full)
    u = exchange.union(model, [a, b])
    wa, ba = exchange.take(model, a)
    wb, bb = exchange.take(model, b)
    rng = np.random.default_rng(1)
    wa2 = np.clip(wa + rng.integers(-3, 4, wa.size), -128, 127)
    wb2 = np.clip(wb + rng.integers(-3, 4, wb.size), -128, 127)
    m = strategy.integer_mean(model, [(a, wa2, ba + 10, 30), (b, wb2, bb - 20, 10)])
    # elements both trained: (30 * va + 10 * vb) / 40 rounded half away; elements only the full plan trains: its value
    ia = exchange.weight_index(model, a[0])
    ib = exchange.weight_index(model, b[0])
    got = np.asarray(m.layers[a[0][0]].w).ravel()
    va = dict(zip(ia, wa2[:len(ia)]))
    vb = dict(zip(ib, wb2[:len(ib)]))
    for i in ib:
        want = vb[i] if i not in va else strategy.div_round(30 * int(va[i]) + 10 * int(vb[i]), 40)
        assert got[i] == want
    # order of replies does not matter; taking and putting back is the identity
    m2 = strategy.integer_mean(model, [(b, wb2, bb - 20, 10), (a, wa2, ba + 10, 30)])
    assert exchange.take(m, u)[0].tobytes() == exchange.take(m2, u)[0].tobytes()
    assert exchange.take(exchange.put(model, u, *exchange.take(model, u)), u)[0].tobytes() == exchange.take(model, u)[0].tobytes()
    assert list(strategy.div_round(np.array([5, -5, 4, -4, 6]), 4)) == [1, -1, 1, -1, 2]   # 1.25, 1.5 -> 2? no: 6/4


def test_simulation_and_deployment_on_virtual_boards_end_bit_identical(world, tmp_path):
    folder, info = world
    sc = folder / "scenario"
    # Flower's simulation engine: the ClientApp with simulated boards
    code, out = deploy.run_local(str(tmp_path / "sim"), _run_config(tmp_path, sc, "sim"), simulate=5, log=lambda *a: None)
    assert code == 0, out[-3000:]
    sim = _records(tmp_path / "sim.jsonl")
    # a real SuperLink and one SuperNode per virtual board, each board behind its own pty
    # and board 4 is the emulated Cortex-M0 (our MicroPython port on qemu's micro:bit, 256 KB SRAM)
    from click.testing import CliRunner
    from microtrain import cli
    from microtrain.device.virtualboard import VirtualBoard
    from bench.board import ensure_firmware
    from qemu_board import QemuBoard
    boards = []
    try:
        nodes = []
        for k, b in enumerate(info["boards"]):
            if k < 4:
                vb = VirtualBoard(heap="192K")
                vb.install(os.path.join(DIST, "lib", "microtrain"))
                with open(sc / b["model"], "rb") as f:
                    open(vb.path("model.mtm"), "wb").write(f.read())
                boards.append(vb.start())
            else:
                boards.append(QemuBoard(variant="natmod", elf=ensure_firmware("natmod", "microbit")))
                r = CliRunner().invoke(cli.main, ["push", str(sc / b["model"]), "--port", boards[-1].port])
                assert r.exit_code == 0, r.output
            nodes.append({"port": boards[-1].port, "model": str(sc / b["model"]), "data": str(sc / b["data"]),
                          "partition-id": k})
        code, out = deploy.run_local(str(tmp_path / "real"), _run_config(tmp_path, sc, "real"), nodes=nodes,
                                     log=lambda *a: None)
        assert code == 0, out[-3000:]
    finally:
        for vb in boards:
            vb.stop() if hasattr(vb, "stop") else vb.close()
    real = _records(tmp_path / "real.jsonl")
    rounds = [r for r in real if r["event"] == "round"]
    assert len(rounds) == ROUNDS and all(r["failed"] == 0 for r in rounds), rounds
    # bit-identical: the global after every round, and the final one
    assert [r["digest"] for r in real if "digest" in r] == [r["digest"] for r in sim if "digest" in r]
    # parameter-efficient: bytes each way per round per board within 1.2x its trainable tensors
    for r in rounds:
        for b in r["boards"].values():
            assert b["bytes_down"] <= 1.2 * b["trainable_bytes"] and b["bytes_up"] <= 1.2 * b["trainable_bytes"], b
    # it learned: the final global on every board's held-out data beats the pretrained model
    final = [r for r in real if r["event"] == "final"][0]["test"]
    model, _ = modelfile.load(str(sc / "model-sparse.mtm"))
    before, after, n = 0.0, 0.0, 0
    for k, b in enumerate(info["boards"]):
        d = np.load(sc / b["data"])
        before += Simulator(model, modelfile.load(str(sc / b["model"]))[1]).evaluate(d["xt"], d["yt"]) * len(d["yt"])
        n += len(d["yt"])
    after = sum(v["acc"] * v["num-examples"] for v in final.values())
    assert after / n > before / n + 0.1, (before / n, after / n)


def test_cli_simulated_federation_with_personal_classifier(tmp_path):
    """`microtrain federate scenario` + `federate run --simulate` with the classifier kept on each
    board (FedPer): it is never sent, and the run completes with a global and a report."""
    import subprocess
    import sys
    exe = os.path.join(os.path.dirname(sys.executable), "microtrain")
    sc = tmp_path / "sc"
    r = subprocess.run([exe, "federate", "scenario", str(sc), "--boards", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "federate", "run", "--model", str(sc / "model-sparse.mtm"), "--simulate", "3",
                        "--scenario", str(sc), "--rounds", "2", "--personal", "classifier", "--report",
                        str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "global.mtm"), "--work", str(tmp_path / "w")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "round 2: 3/3 boards" in r.stdout
    recs = _records(tmp_path / "r.jsonl")
    model, plan = modelfile.load(str(sc / "model-sparse.mtm"))
    classifier = max(t.layer for t in plan.train)
    for b in recs[0]["boards"].values():
        assert all(p[0] != classifier for p in exchange.decode(b["layout"])), b   # never exchanged
    g, _ = modelfile.load(str(tmp_path / "global.mtm"))
    assert np.array_equal(np.asarray(g.layers[classifier].w), np.asarray(model.layers[classifier].w))
    assert not np.array_equal(np.asarray(g.layers[0].b), np.asarray(model.layers[0].b))


def test_a_board_reset_mid_federation_drops_out_of_that_round_and_rejoins(world, tmp_path):
    """Board 1 is cut off (its MicroPython killed) when round 2 starts and comes back after it:
    round 2 aggregates the other boards, the board's checkpoint is intact, it trains in round 3."""
    import threading
    import time
    from microtrain.device import board_io
    from microtrain.device.virtualboard import VirtualBoard
    folder, info = world
    sc = folder / "scenario"
    report = tmp_path / "drop.jsonl"
    boards, nodes = [], []
    for k, b in enumerate(info["boards"][:4]):
        vb = VirtualBoard(heap="192K")
        vb.install(os.path.join(DIST, "lib", "microtrain"))
        with open(sc / b["model"], "rb") as f:
            open(vb.path("model.mtm"), "wb").write(f.read())
        boards.append(vb.start())
        nodes.append({"port": vb.port, "model": str(sc / b["model"]), "data": str(sc / b["data"]), "partition-id": k})
    events = []

    def cut_and_restore():
        def rounds():
            return [r for r in _records(report) if r["event"] == "round"] if report.exists() else []
        end = time.monotonic() + 600
        while len(rounds()) < 1 and time.monotonic() < end:
            time.sleep(0.2)
        boards[1].kill()
        events.append("killed")
        while len(rounds()) < 2 and time.monotonic() < end:
            time.sleep(0.2)
        boards[1].start()
        events.append("restarted")

    th = threading.Thread(target=cut_and_restore)
    th.start()
    try:
        rc = _run_config(tmp_path, sc, "drop", **{"num-rounds": 3, "min-nodes": 4, "round-deadline": 15.0,
                                                  "rollout-fraction": 0.0})
        code, out = deploy.run_local(str(tmp_path / "run"), rc, nodes=nodes, log=lambda *a: None)
        th.join()
        assert code == 0, out[-3000:]
        assert events == ["killed", "restarted"]
        rounds = [r for r in _records(report) if r["event"] == "round"]
        assert len(rounds) == 3
        assert [r["failed"] for r in rounds] == [0, 1, 0], [r["boards"] for r in rounds]
        assert rounds[1]["global"] == "accepted"                 # the round went on without it
        with board_io.Session(boards[1].port) as s:              # its state: a complete checkpoint of its model
            ck = board_io.read_checkpoint(s, "model.ckpt")
        with open(sc / info["boards"][1]["model"], "rb") as f:
            assert ck["model_id"] == board_io.model_id(f.read())
    finally:
        th.join()
        for vb in boards:
            vb.stop()


@pytest.mark.parametrize("strategy_name,extra", [("fedadam", {}), ("fedavg", {"dp-clip": 4.0, "dp-noise": 0.5})],
                         ids=["fedadam", "fedavg-dp"])
def test_flowers_own_strategies_and_central_dp_run_unchanged(world, tmp_path, strategy_name, extra):
    """Flower's FedAdam, and FedAvg inside Flower's DifferentialPrivacyClientSideFixedClipping with its
    fixedclipping_mod on the boards' side, over the union of the boards' subsets as floats; with DP
    the server sees every board's update clipped to the norm (and the global carries noise)."""
    folder, info = world
    sc = folder / "scenario"
    rc = _run_config(tmp_path, sc, "s", **{"num-rounds": 2, "strategy": strategy_name, "rollout-fraction": 0.0}, **extra)
    code, out = deploy.run_local(str(tmp_path / "w"), rc, simulate=5, log=lambda *a: None)
    assert code == 0, out[-3000:]
    rounds = [r for r in _records(tmp_path / "s.jsonl") if r["event"] == "round"]
    assert len(rounds) == 2 and all(r["failed"] == 0 and r["global"] == "accepted" for r in rounds)
    norms = [b["update_norm"] for r in rounds for b in r["boards"].values()]
    if "dp-clip" in extra:
        assert max(norms) <= extra["dp-clip"] * (1 + 1e-6), norms
    else:
        assert max(norms) > 4.0                              # unclipped updates are larger
    assert len({r["digest"] for r in rounds}) == 2           # the global moved each round


def test_secure_aggregation_shows_the_server_only_masked_vectors_and_their_sum(world, tmp_path):
    """Flower's SecAgg+ (its workflow and secaggplus_mod): what the server receives of each board is
    uniform noise modulo 2^32 (a plain quantized update would sit in its lowest sixteenth, the
    quantization range for 5 boards),
    yet the global it unmasks is FedAvg's: within one integer step of the same round of Flower's
    FedAvg without masking (SecAgg+ rounds stochastically)."""
    folder, info = world
    sc = folder / "scenario"
    outs = {}
    for name, extra in (("secagg", {"secagg": True}), ("plain", {"strategy": "fedavg"})):
        rc = _run_config(tmp_path, sc, name, **{"num-rounds": 1, "rollout-fraction": 0.0,
                                                "out": str(tmp_path / f"{name}.mtm")}, **extra)
        code, out = deploy.run_local(str(tmp_path / name), rc, simulate=5, log=lambda *a: None)
        assert code == 0, out[-3000:]
        outs[name] = modelfile.load(str(tmp_path / f"{name}.mtm"))[0]
    seen = [r for r in _records(tmp_path / "secagg.jsonl") if r["event"] == "round"][0]["secagg"]
    assert len(seen) == 5
    for v in seen.values():
        assert 0.45 < v["mean"] < 0.55 and 0.27 < v["std"] < 0.31 and v["below_quantization_range"] < 0.2, v
    model, plan = modelfile.load(str(sc / "model-full.mtm"))
    u = exchange.layout(model, plan)
    ws, bs = exchange.take(outs["secagg"], u)
    wp, bp = exchange.take(outs["plain"], u)
    w0, _ = exchange.take(model, u)
    assert np.abs(ws.astype(int) - wp).max() <= 1 and np.abs(bs.astype(int) - bp).max() <= 1
    assert np.mean(ws == wp) > 0.99 and np.mean(bs == bp) > 0.9 and not np.array_equal(ws, w0)


def test_staged_rollout_rolls_back_a_global_the_canaries_reject(world, tmp_path):
    """With a bar no candidate can meet (validation accuracy 1.0 above the current global's), every
    round's candidate is evaluated on the canaries and rolled back: the global never changes and the
    boards start each round from it; with the bar at -1.0 every candidate is accepted.  The fleet
    view renders the report, and plots it."""
    import subprocess
    folder, info = world
    sc = folder / "scenario"
    digests = {}
    for name, tol in (("strict", -1.0), ("open", 1.0)):
        rc = _run_config(tmp_path, sc, name, **{"num-rounds": 2, "rollout-fraction": 0.4, "rollout-tolerance": tol})
        code, out = deploy.run_local(str(tmp_path / name), rc, simulate=5, log=lambda *a: None)
        assert code == 0, out[-3000:]
        rounds = [r for r in _records(tmp_path / f"{name}.jsonl") if r["event"] == "round"]
        assert [r["global"] for r in rounds] == (["rolled back"] * 2 if tol < 0 else ["accepted"] * 2)
        assert all(len(r["rollout"]["canaries"]) == 2 for r in rounds)          # 40 % of 5 boards
        digests[name] = [r["digest"] for r in rounds]
    model, _ = modelfile.load(str(sc / "model-sparse.mtm"))
    _, full = modelfile.load(str(sc / "model-full.mtm"))
    from microtrain.federated import server_app
    u = exchange.union(model, [exchange.layout(model, full)])
    initial = server_app.digest(model, u)
    assert digests["strict"] == [initial, initial] and initial not in digests["open"]
    exe = os.path.join(os.path.dirname(sys.executable), "microtrain")
    r = subprocess.run([exe, "federate", "watch", str(tmp_path / "open.jsonl"), "--png", str(tmp_path / "f.png")],
                       capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    assert "round 2: global accepted" in r.stdout and "finished" in r.stdout
    assert (tmp_path / "f.png").stat().st_size > 10000


def test_deployment_over_tls(world, tmp_path):
    """The documented multi-machine commands with TLS: a SuperLink with a certificate signed by a
    CA, SuperNodes and `flwr run` trusting that CA (simulated boards here: the transport is the
    point); nothing runs insecure."""
    folder, info = world
    sc = folder / "scenario"
    certs = deploy.self_signed(str(tmp_path / "certs"))
    nodes = [{"partition-id": k} for k in range(2)]
    rc = _run_config(tmp_path, sc, "tls", **{"num-rounds": 1, "min-nodes": 2, "rollout-fraction": 0.0})
    code, out = deploy.run_local(str(tmp_path / "run"), rc, nodes=nodes, certificates=certs, log=lambda *a: None)
    assert code == 0, out[-3000:]
    rounds = [r for r in _records(tmp_path / "tls.jsonl") if r["event"] == "round"]
    assert len(rounds) == 1 and rounds[0]["failed"] == 0 and len(rounds[0]["boards"]) == 2
    logs = open(tmp_path / "run" / "superlink.log").read() + open(tmp_path / "run" / "supernode-0.log").read()
    assert "--insecure" not in logs and "insecure" not in logs.lower()

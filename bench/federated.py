"""`make bench` (federated): Flower's simulation engine with N simulated boards (the same ClientApp
as on real boards, the numpy simulator in place of each board) on the non-IID digits federation
(microtrain.federated.scenario); time per round, bytes per round per board against its trainable
tensors, global accuracy on every board's held-out samples.  Writes bench/federated.json.

--compare: on a 5-board federation, held-out accuracy per board of the pretrained model, local-only
training (each board alone, the same samples and epochs), the federated global, the federated
global with a personal classifier (FedPer), and centralised fp32 fine-tuning on the union of the
boards' training samples.  Writes bench/federated_accuracy.json.

    python -m bench.federated [--boards 100] [--rounds 3]
    python -m bench.federated --compare [--rounds 5]
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import write_records  # noqa: E402
from microtrain.federated import deploy, scenario  # noqa: E402


def federated(sc, info, rounds, folder, **extra):
    rc = {"model": os.path.join(sc, info["model"]), "scenario": sc, "num-rounds": rounds,
          "min-nodes": len(info["boards"]), "report": os.path.join(folder, "r.jsonl"), "rollout-fraction": 0.25,
          "rollout-tolerance": 0.02}
    rc.update(extra)
    code, out = deploy.run_local(os.path.join(folder, "w"), rc, simulate=len(info["boards"]), log=lambda *x: None)
    if code:
        print(out[-3000:])
        sys.exit(1)
    with open(rc["report"]) as f:
        recs = [json.loads(line) for line in f]
    keys = {n: b["key"] for n, b in recs[0]["boards"].items()}
    final = [r for r in recs if r["event"] == "final"][0]["test"]
    return {int(keys[n]): v["acc"] for n, v in final.items()}


def compare(rounds, seed=0):
    import numpy as np
    from microtrain.federated.boards import SimulatedBoard
    from microtrain.model import modelfile
    with tempfile.TemporaryDirectory() as folder:
        sc = os.path.join(folder, "sc")
        info = scenario.build(sc, n_boards=5, seed=seed)
        data = [np.load(os.path.join(sc, b["data"])) for b in info["boards"]]
        rows = {"pretrained": {}, "local_only": {}}
        for k, (b, d) in enumerate(zip(info["boards"], data)):
            model, plan = modelfile.load(os.path.join(sc, b["model"]))
            board = SimulatedBoard(model, plan)
            rows["pretrained"][k] = board.evaluate(d["xt"], d["yt"])
            for _ in range(rounds):
                board.train(d["x"], d["y"], 1)
            rows["local_only"][k] = board.evaluate(d["xt"], d["yt"])
        rows["federated_global"] = federated(sc, info, rounds, os.path.join(folder, "g"))
        rows["federated_personal"] = federated(sc, info, rounds, os.path.join(folder, "p"), personal="classifier")
        net, _, _, _ = scenario.pretrained(seed)
        X = np.concatenate([d["fx"] for d in data])
        y = np.concatenate([d["y"] for d in data])
        net.fit(X, y, epochs=rounds * 4, lr=1e-3, seed=seed)
        rows["centralised_fp32"] = {k: float(net.accuracy(d["fxt"], d["yt"]))
                                    for k, d in enumerate(data)}
        n = {k: len(d["yt"]) for k, d in enumerate(data)}
    out = []
    for name, accs in rows.items():
        mean = sum(accs[k] * n[k] for k in n) / sum(n.values())
        out.append({"method": name, "per_board": [round(accs[k], 4) for k in sorted(accs)], "mean": round(mean, 4),
                    "rounds": rounds, "seed": seed})
        print(f"{name:20} mean {mean:.3f}  per board {[round(accs[k], 3) for k in sorted(accs)]}")
    write_records(os.path.join(ROOT, "bench", "federated_accuracy.json"), out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", action="store_true")
    a = ap.parse_args()
    if a.compare:
        return compare(a.rounds)
    with tempfile.TemporaryDirectory() as folder:
        sc = os.path.join(folder, "sc")
        info = scenario.build(sc, n_boards=a.boards, seed=0, alpha=0.5)
        rc = {"model": os.path.join(sc, info["model"]), "scenario": sc, "num-rounds": a.rounds,
              "min-nodes": a.boards, "report": os.path.join(folder, "r.jsonl"), "rollout-fraction": 0.1,
              "rollout-tolerance": 0.02}
        t0 = time.monotonic()
        code, out = deploy.run_local(os.path.join(folder, "w"), rc, simulate=a.boards, log=lambda *x: None)
        total = time.monotonic() - t0
        if code:
            print(out[-3000:])
            sys.exit(1)
        with open(rc["report"]) as f:
            recs = [json.loads(line) for line in f]
    rounds = [r for r in recs if r["event"] == "round"]
    final = [r for r in recs if r["event"] == "final"][0]["test"]
    ratio = max(max(b["bytes_down"], b["bytes_up"]) / b["trainable_bytes"] for r in rounds for b in r["boards"].values()
                if "error" not in b)
    n = sum(v["num-examples"] for v in final.values())
    out = {"boards": a.boards, "rounds": a.rounds, "seconds_per_round": [r["seconds"] for r in rounds],
           "total_seconds": round(total, 1), "max_bytes_over_trainable": round(ratio, 3),
           "failed": sum(r["failed"] for r in rounds), "rollout": [r["global"] for r in rounds],
           "test_accuracy": round(sum(v["acc"] * v["num-examples"] for v in final.values()) / n, 4)}
    print(json.dumps(out))
    write_records(os.path.join(ROOT, "bench", "federated.json"), [out])


if __name__ == "__main__":
    main()

"""microtrain's Flower ServerApp: rounds of the chosen Flower strategy over the boards' trainable
subsets, a staged rollout of every new global, a fleet report.

Run config ([tool.flwr.app.config] of microtrain's Flower App, `flwr run --run-config`, or
`microtrain federate run` options):
    model              the model file every board runs (the global starts from it)
    num-rounds         rounds of local training + aggregation
    strategy           subset-fedavg (integer, per-board subsets: the default), fedavg, fedadam
                       (Flower's own, unchanged, over the union of the subsets as floats)
    min-nodes          boards to wait for before round 1
    round-timeout      seconds a round waits for its boards (a board that does not answer drops out
                       of the round; it rejoins the next one)
    rollout-fraction   share of the round's boards that validate a new global first (0: off)
    rollout-tolerance  how far (accuracy) the candidate may fall below the current global on them
    secagg             Flower's SecAgg+ (SecAggPlusWorkflow with its FedAvg): the server sees masked
                       vectors and their sum only (the report records what it saw of each board)
    dp-clip, dp-noise  Flower's DifferentialPrivacyClientSideFixedClipping around fedavg / fedadam:
                       every update clipped to L2 norm dp-clip (in the model's integer units) on its
                       board's host, Gaussian noise of dp-noise x dp-clip on the aggregate
    report             JSONL file of per-round, per-board metrics (aggregates only)
    out                where to write the final global model file (optional)
"""

import json
import math
import os
import time

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam, FedAvg

from microtrain.federated import exchange
from microtrain.federated.strategy import SubsetFedAvg, array_record, values
from microtrain.model import modelfile

app = ServerApp()


def content_bytes(content):
    """Bytes of a message's content as Flower serializes it (the payload on the wire)."""
    return recorddict_to_proto(content).ByteSize()


class Report:
    """Per-round records to a JSONL file (and the log)."""

    def __init__(self, path, log=print):
        self.path, self.log, self.records = path, log, []
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            open(path, "w").close()

    def add(self, rec):
        self.records.append(rec)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


class Federation:
    def __init__(self, rc, log=print):
        self.rc, self.log = rc, log
        self.model, self.plan = modelfile.load(str(rc["model"]))
        self.rounds = int(rc.get("num-rounds", 5))
        self.kind = str(rc.get("strategy", "subset-fedavg"))
        self.timeout = float(rc.get("round-timeout", 600))
        self.fraction = float(rc.get("rollout-fraction", 0.0))
        self.tolerance = float(rc.get("rollout-tolerance", 0.0))
        self.report = Report(str(rc.get("report", "")) or None, log)

    # ---- the fleet ----
    def wait_for(self, grid, n, timeout=120):
        end = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < n:
            if time.monotonic() > end:
                raise RuntimeError(f"only {len(list(grid.get_node_ids()))} of {n} boards connected in {timeout} s")
            time.sleep(0.2)

    def describe(self, grid):
        ids = sorted(grid.get_node_ids())
        msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                for n in ids]
        fleet = {}
        for r in grid.send_and_receive(msgs, timeout=self.timeout):
            n = r.metadata.src_node_id
            if r.has_error():
                self.log(f"board {n}: no answer to the query ({r.error.reason}); left out")
                continue
            c = r.content
            parts = exchange.decode(c["config"]["layout"], self.model)
            fleet[n] = {"layout": parts, "board": c["config"]["board"], "key": c["config"]["key"], "policy": c["config"]["policy"],
                        "personal": c["config"]["personal"], "samples": int(c["metrics"]["num-examples"]),
                        "trainable_bytes": int(c["metrics"]["trainable-bytes"])}
        return fleet

    def strategy(self, fleet):
        layouts = {n: f["layout"] for n, f in fleet.items()}
        clip, noise = float(self.rc.get("dp-clip", 0.0)), float(self.rc.get("dp-noise", 0.0))
        if self.kind == "subset-fedavg":
            if clip > 0:
                raise ValueError("differential privacy (dp-clip) works on Flower's float strategies: "
                                 "use strategy fedavg or fedadam")
            return SubsetFedAvg(self.model, layouts, fraction_evaluate=0.0)
        common = dict(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1, fraction_evaluate=0.0)
        if self.kind == "fedavg":
            s = FedAvg(**common)
        elif self.kind == "fedadam":
            s = FedAdam(**common, eta=float(self.rc.get("server-lr", 1.0)), eta_l=1.0, tau=1.0)
        else:
            raise ValueError(f"strategy {self.kind!r}: subset-fedavg, fedavg or fedadam")
        union = exchange.union(self.model, list(layouts.values()))
        if clip > 0:        # Flower's central DP: clipped on each board's host, Gaussian noise here
            s = DifferentialPrivacyClientSideFixedClipping(s, noise, clip, len(layouts))
        s.union = union
        return s

    def arrays(self, s, model):
        w, b = exchange.take(model, s.union)
        if not hasattr(s, "configure_train"):           # SecAgg+ (Flower's legacy FedAvg): floats
            return array_record(w=w.astype(np.float64), b=b.astype(np.float64))
        if isinstance(s, SubsetFedAvg):
            return array_record(w=w, b=b)
        return array_record(w=w.astype(np.float64), b=b.astype(np.float64))

    def model_of(self, s, arrays):
        return exchange.put(self.model, s.union, values(arrays["w"]), values(arrays["b"]))

    # ---- rounds ----
    def run(self, grid, context=None):
        self.wait_for(grid, int(self.rc.get("min-nodes", 2)), float(self.rc.get("connect-timeout", 120)))
        fleet = self.describe(grid)
        if not fleet:
            raise RuntimeError("no board answered")
        if self.rc.get("secagg", False):
            return self.run_secagg(grid, context, fleet)
        s = self.strategy(fleet)
        self.keys = {n: f["key"] for n, f in fleet.items()}
        self.log(f"federation: {len(fleet)} boards, strategy {self.kind}, {self.rounds} rounds, "
                 f"global subset {sum(exchange.sizes(self.model, s.union))} elements")
        for n, f in sorted(fleet.items()):
            self.log(f"  board {n}: {f['board']}, policy {f['policy']}, {f['samples']} samples, "
                     f"{f['trainable_bytes']} B trainable" + (f", personal layers {f['personal']}" if f['personal'] else ""))
        self.report.add({"event": "fleet", "boards": {str(n): dict(f, layout=exchange.encode(f["layout"]))
                                                        for n, f in fleet.items()}, "strategy": self.kind})
        arrays = self.arrays(s, self.model)
        current = self.model
        for rnd in range(1, self.rounds + 1):
            t0 = time.monotonic()
            cfg = ConfigRecord({"layout": exchange.encode(s.union)})
            msgs = list(s.configure_train(rnd, arrays, cfg, grid))
            sent = {m.metadata.dst_node_id: content_bytes(m.content) for m in msgs}
            given = {m.metadata.dst_node_id: _flat(m.content["arrays"]) for m in msgs}
            replies = list(grid.send_and_receive(msgs, timeout=self.timeout))
            boards = {}
            for r in replies:
                n = r.metadata.src_node_id
                if r.has_error():
                    boards[str(n)] = {"error": r.error.reason[-200:], "bytes_down": sent.get(n, 0)}
                    continue
                m = r.content["metrics"]
                boards[str(n)] = {"samples": int(m["num-examples"]), "loss": float(m["loss"]),
                                  "val_acc_global": float(m["val-acc-global"]), "val_acc": float(m["val-acc"]),
                                  "step_ms": float(m["step-ms"]), "bytes_down": sent.get(n, 0),
                                  "bytes_up": content_bytes(r.content),
                                  "update": _sha(values(r.content["arrays"]["w"]), values(r.content["arrays"]["b"])),
                                  # what the server sees of the board's training: the L2 norm of its update
                                  "update_norm": float(np.linalg.norm(_flat(r.content["arrays"]) - given[n]))
                                  if n in given else None,
                                  "trainable_bytes": fleet.get(n, {}).get("trainable_bytes", 0)}
            for n in sent:
                boards.setdefault(str(n), {"error": "no reply within the round", "bytes_down": sent[n]})
            new, _ = s.aggregate_train(rnd, replies)
            rec = {"event": "round", "round": rnd, "boards": boards, "failed": sum("error" in b for b in boards.values())}
            if new is None:
                rec["global"] = "kept (no update)"
            else:
                candidate = self.model_of(s, new)
                ok, canary = self.rollout(grid, s, rnd, current, candidate,
                                          [int(n) for n, b in boards.items() if "error" not in b])
                rec["rollout"] = canary
                if ok:
                    arrays, current = new, candidate
                    rec["global"] = "accepted"
                else:
                    rec["global"] = "rolled back"
                    if isinstance(s, SubsetFedAvg):
                        s.model = current
            rec["seconds"] = round(time.monotonic() - t0, 3)
            rec["digest"] = digest(current, s.union)
            self.report.add(rec)
            ok_b = [b for b in boards.values() if "error" not in b]
            self.log(f"round {rnd}: {len(ok_b)}/{len(boards)} boards, global {rec['global']}, "
                     f"val acc (global in) {np.mean([b['val_acc_global'] for b in ok_b]) if ok_b else float('nan'):.3f}, "
                     f"{rec['seconds']:.1f} s")
        self.final = current
        test = self.evaluate(grid, s, current, "test")
        self.report.add({"event": "final", "test": test, "digest": digest(current, s.union)})
        out = str(self.rc.get("out", ""))
        if out:
            modelfile.save(out, current, self.plan)
        return current

    def run_secagg(self, grid, context, fleet):
        """Flower's SecAgg+ (SecAggPlusWorkflow inside its DefaultWorkflow, with its FedAvg): every
        board's update is quantized and masked on its host, the server unmasks only the sum.
        Over the union of the subsets as floats; SecAgg+ quantizes stochastically, so a run is
        not bit-reproducible.  The report records what the server received of each board."""
        from flwr.common import ndarrays_to_parameters
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.strategy import FedAvg as LegacyFedAvg
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
        from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
        union = exchange.union(self.model, [f["layout"] for f in fleet.values()])
        holder = type("Union", (), {"union": union})()
        w, b = exchange.take(self.model, union)
        n = len(fleet)
        clip = float(2 ** math.ceil(math.log2(4 * max(256, int(np.abs(w).max()), int(np.abs(b).max())))))
        strategy = LegacyFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                                initial_parameters=ndarrays_to_parameters([w.astype(np.float64), b.astype(np.float64)]),
                                on_fit_config_fn=lambda rnd: {"layout": exchange.encode(union)})
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=self.rounds), strategy=strategy)
        # the finest quantization whose sum over all boards cannot wrap the 2^32 modulus; updates are
        # weighted by samples / max_weight <= 1 before they are quantized
        qrange = 1 << min(30, 31 - math.ceil(math.log2(n + 1)))
        seen = SeenByServer(grid, qrange)
        workflow = SecAggPlusWorkflow(num_shares=n, reconstruction_threshold=max(2, (2 * n + 2) // 3),
                                      clipping_range=clip, quantization_range=qrange,
                                      max_weight=float(max(f["samples"] for f in fleet.values())))
        self.log(f"federation: {n} boards, SecAgg+ (Flower FedAvg), {self.rounds} rounds, clipping range {clip:g}, "
                 f"quantization range 2^{qrange.bit_length() - 1}")
        self.report.add({"event": "fleet", "boards": {str(k): dict(f, layout=exchange.encode(f["layout"]))
                                                        for k, f in fleet.items()}, "strategy": "secagg+fedavg"})
        DefaultWorkflow(fit_workflow=workflow)(seen, legacy)
        final = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        current = exchange.put(self.model, union, final[0], final[1])
        for rnd, rec in enumerate(seen.rounds, 1):
            self.report.add({"event": "round", "round": rnd, "secagg": rec, "failed": 0, "global": "accepted"})
        self.final = current
        test = self.evaluate(grid, holder, current, "test")
        self.report.add({"event": "final", "test": test, "digest": digest(current, union)})
        out = str(self.rc.get("out", ""))
        if out:
            modelfile.save(out, current, self.plan)
        return current

    def rollout(self, grid, s, rnd, current, candidate, nodes):
        """A new global goes to a share of the round's boards first: accepted if their validation
        accuracy with it is not below the current global's by more than the tolerance."""
        if self.fraction <= 0 or not nodes:
            return True, None
        k = max(1, math.ceil(self.fraction * len(nodes)))
        nodes = sorted(nodes, key=lambda n: self.keys.get(n, str(n)))     # by board, not by Flower's ids
        canaries = [nodes[(rnd * k + i) % len(nodes)] for i in range(k)]
        res = self.evaluate(grid, s, candidate, "val", canaries, baseline=current)
        got = [r for r in res.values() if "acc" in r and r["num-examples"]]
        if not got:
            return False, {"canaries": canaries, "result": res, "decision": "no canary answered: kept"}
        n = sum(r["num-examples"] for r in got)
        acc = sum(r["acc"] * r["num-examples"] for r in got) / n
        base = sum(r["baseline-acc"] * r["num-examples"] for r in got) / n
        ok = acc >= base - self.tolerance
        return ok, {"canaries": canaries, "acc": acc, "baseline_acc": base, "accepted": ok}

    def evaluate(self, grid, s, model, split, nodes=None, baseline=None):
        nodes = sorted(nodes if nodes is not None else grid.get_node_ids())
        msgs = []
        for n in nodes:
            a = self.arrays(s, model)
            rec = {"w": values(a["w"]), "b": values(a["b"])}
            if baseline is not None:
                bl = self.arrays(s, baseline)
                rec.update({"baseline-w": values(bl["w"]), "baseline-b": values(bl["b"])})
            msgs.append(Message(RecordDict({"arrays": array_record(**rec),
                                            "config": ConfigRecord({"layout": exchange.encode(s.union), "split": split})}),
                                dst_node_id=n, message_type=MessageType.EVALUATE))
        out = {}
        for r in grid.send_and_receive(msgs, timeout=self.timeout):
            n = r.metadata.src_node_id
            out[str(n)] = ({"error": r.error.reason[-200:]} if r.has_error()
                           else {k: float(v) if k != "num-examples" else int(v) for k, v in r.content["metrics"].items()})
        return out


class SeenByServer:
    """The Grid as the SecAgg+ workflow uses it, recording what each board's reply shows the server:
    its masked vector, as the fraction of the modulus each value sits at (uniform over [0, 1) when
    masked; an unmasked quantized update would sit below quantization_range / modulus: 1/16 for
    five boards)."""

    def __init__(self, grid, qrange):
        self._grid, self.qrange = grid, qrange
        self.rounds = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *a, **kw):
        from flwr.common import bytes_to_ndarray
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
        replies = list(self._grid.send_and_receive(messages, *a, **kw))
        seen = {}
        for r in replies:
            if r.has_error() or RECORD_KEY_CONFIGS not in r.content.config_records:
                continue
            cfg = r.content.config_records[RECORD_KEY_CONFIGS]
            if Key.MASKED_PARAMETERS in cfg:
                v = np.concatenate([bytes_to_ndarray(x).ravel() for x in cfg[Key.MASKED_PARAMETERS]]).astype(np.float64)
                u = v / float(1 << 32)
                seen[str(r.metadata.src_node_id)] = {"values": int(v.size), "mean": float(u.mean()),
                                                     "std": float(u.std()), "max": float(u.max()),
                                                     "below_quantization_range": float(np.mean(v < self.qrange))}
        if seen:
            self.rounds.append(seen)
        return replies


def digest(model, parts):
    """SHA-256 of the global's exchanged elements: equal digests, bit-identical globals."""
    return _sha(*exchange.take(model, parts))


def _flat(arrays):
    return np.concatenate([values(arrays["w"]).astype(np.float64).ravel(), values(arrays["b"]).astype(np.float64).ravel()])


def _sha(w, b):
    import hashlib
    return hashlib.sha256(np.asarray(w).astype(np.int8).tobytes() + np.asarray(b).astype("<i4").tobytes()).hexdigest()


@app.main()
def main(grid: Grid, context: Context) -> None:
    Federation(context.run_config).run(grid, context)

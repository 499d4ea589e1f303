"""microtrain's Flower ClientApp: one SuperNode per board, driving it over its serial link (or the
simulator in place of a board).

Node config (`flower-supernode --node-config "..."`, or `microtrain federate client`):
    port        the board's serial port; absent: a simulated board (microtrain.sim)
    model       the host's copy of the model file on the board (its plan says what trains)
    data        .npz with this board's samples: x, y (training), xv, yv (validation), xt, yt
                (held-out test; optional); int8 (quantized with the model's input scale) or float
    name        the model file's name on the board (default model.mtm)
In Flower's simulation engine the node config holds only partition-id: model and data then come
from the run config's `scenario` folder (microtrain.federated.scenario).

Run config (shared with the ServerApp): epochs (local epochs per round), personal (layers kept on
the board, e.g. "classifier"), round-deadline (seconds a board may take).  With the server's
differential-privacy wrapper (dp-clip > 0) Flower's fixedclipping_mod clips each update on the
host of its board before it leaves.

Messages (all content is tensors of the trainable subset and aggregate metrics, never samples):
    query     -> config "layout" (what this board exchanges), "board", "policy", metrics
                 "num-examples", "trainable-bytes"
    train     arrays "w", "b" over config "layout" -> the board's values after local training over
              the same layout, metrics num-examples, loss, val-acc-global (the incoming model on
              the board's validation samples), val-acc (after training), step-ms
    evaluate  arrays "w", "b" over "layout" (and optionally "baseline-w"/"baseline-b") -> val-acc
              (and baseline-val-acc), test-acc with split "test"; the board keeps what it had
"""

import io
import json
import os
import sys
import time

import numpy as np

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from microtrain.board import checkpoint as ckpt_format
from microtrain.federated import exchange
from microtrain.federated.boards import SerialBoard, SimulatedBoard, SimulatedSplitBoard, SplitBoard, checkpoint_blobs
from microtrain.federated.strategy import array_record, values
from microtrain.model import modelfile

app = ClientApp()


def personal_layers(model, spec):
    """Layer indices of a personal-layers spec: "" (none), "classifier" (the last parametric
    layer), or comma-separated layer numbers."""
    from microtrain.model.qmodel import PARAMETRIC
    out = set()
    for item in filter(None, (s.strip() for s in str(spec or "").split(","))):
        if item == "classifier":
            out.add(max(i for i, l in enumerate(model.layers) if l.op in PARAMETRIC))
        elif item.lstrip("-").isdigit():
            out.add(int(item) % len(model.layers))
        else:
            raise ValueError(f"personal layers: {item!r} is neither 'classifier' nor a layer number")
    return tuple(sorted(out))


def check_data(data, model, path):
    """Every split's samples fit the model and its labels name its classes (else one clear line)."""
    if "x" not in data or "y" not in data:
        raise ValueError(f"{path}: needs arrays x and y (training samples and labels)")
    size = int(np.prod(model.input_shape))
    for s in ("", "v", "t"):
        if ("x" + s in data) != ("y" + s in data):
            raise ValueError(f"{path}: x{s} and y{s} come together")
        if "x" + s not in data:
            continue
        x, y = data["x" + s], data["y" + s]
        if len(x) != len(y) or (len(x) and x[0].size != size):
            raise ValueError(f"{path}: x{s} holds {len(x)} samples of {x[0].size if len(x) else 0} values and "
                             f"y{s} {len(y)} labels; the model takes {size} values per sample")
        if len(y) and not (0 <= y.min() and y.max() < model.n_classes):
            raise ValueError(f"{path}: y{s} has labels outside 0..{model.n_classes - 1}")
        data["x" + s] = x.reshape((len(x),) + tuple(model.input_shape))


class Node:
    """One SuperNode's board, its data and its layout, from the node and run config."""

    def __init__(self, context):
        nc, rc = context.node_config, context.run_config
        if "model" in nc:
            model_path, data_path = str(nc["model"]), str(nc["data"])
        else:                                              # simulation engine: the scenario folder
            folder = str(rc["scenario"])
            with open(os.path.join(folder, "scenario.json")) as f:
                sc = json.load(f)
            pid = int(nc["partition-id"])
            model_path = os.path.join(folder, sc["boards"][pid]["model"])
            data_path = os.path.join(folder, sc["boards"][pid]["data"])
        self.model0, self.plan = modelfile.load(model_path)
        board_layers = ()
        self.cut = self.plan.cut if self.plan is not None else 0
        if self.cut:      # split training: the node exchanges the host's
            from microtrain.plan import split as S       # layers; the board's stay personal
            board_layers = tuple(t.layer for t in self.plan.train)
            self.plan = S.from_file(self.model0, self.plan)
        d = np.load(data_path)
        q = self.model0.quantize_input
        self.data = {k: (np.asarray(d[k], np.int8) if d[k].dtype == np.int8 else q(d[k])) if k.startswith("x")
                     else np.asarray(d[k], np.int64) for k in d.files if k[:1] in "xy" and k[1:] in ("", "v", "t")}
        check_data(self.data, self.model0, data_path)
        self.epochs = int(rc.get("epochs", 1))
        self.personal = tuple(sorted(set(personal_layers(self.model0, rc.get("personal", ""))) | set(board_layers)))
        self.layout = exchange.layout(self.model0, self.plan, self.personal)
        deadline = float(rc.get("round-deadline", 300))
        if "port" in nc:
            port = str(nc["port"])
            kind = SplitBoard if self.cut else SerialBoard
            self.board = kind(port, model_path, str(nc.get("name", "model.mtm")), deadline,
                              log=lambda m: print(f"{time.strftime('%H:%M:%S')} {port}: {m}", file=sys.stderr, flush=True))
            self.kind = "serial " + str(nc["port"])
        else:
            self.board = (SimulatedSplitBoard if self.cut else SimulatedBoard)(self.model0, self.plan)
            if "board" in context.state:                    # the simulated board's flash and trainer
                restore(self.board, context.state["board"])
            self.kind = "simulated"
        self.context = context
        self.key = str(nc.get("partition-id", nc.get("port", "")))     # a stable name of the board

    def save(self):
        if isinstance(self.board, SimulatedBoard):
            g = self.board
            self.context.state["board"] = ConfigRecord({
                "ckpt": dump(g), "since-ckpt": g.since_ckpt,
                "loss-avg": -1 if g.loss_avg is None else g.loss_avg, "best-avg": -1 if g.best_avg is None else g.best_avg})

    def split(self, name):
        return self.data.get("x" + name, np.zeros((0,) + tuple(self.model0.input_shape), np.int8)), \
            self.data.get("y" + name, np.zeros(0, np.int64))


def dump(board):
    """A simulated board's state as checkpoint bytes (the board's own format)."""
    sim = board.sim
    st = ckpt_format.State(1, 0, sim.steps, sim.steps, sim.steps - 1, sim.lr_shift, sim.rng, sim.model.n_classes)
    buf = io.BytesIO()
    ckpt_format.write(buf, st, list(checkpoint_blobs(sim.model, board.plan)))
    return buf.getvalue()


def restore(board, rec):
    """The simulated board of `dump` and its trainer's guard (a message ends with a checkpoint)."""
    from microtrain.device.board_io import apply_checkpoint, parse_checkpoint
    ck = parse_checkpoint(rec["ckpt"])
    sim = board.sim
    sim.model, sim.steps, sim.lr_shift, sim.rng = apply_checkpoint(board.base, ck), ck["steps"], ck["lr_shift"], ck["rng"]
    board.since_ckpt = int(rec["since-ckpt"])
    board.loss_avg = None if rec["loss-avg"] < 0 else int(rec["loss-avg"])
    board.best_avg = None if rec["best-avg"] < 0 else int(rec["best-avg"])
    board._checkpoint()


def incoming(node, content, prefix=""):
    """The model the message carries: the board's current model with the layout's elements set."""
    parts = exchange.decode(content["config"]["layout"], node.model0)
    arrays = content["arrays"]
    w, b = values(arrays[prefix + "w"]), values(arrays[prefix + "b"])
    return exchange.put(node.board.model(), parts, w, b), parts


def _arrays(w, b, like):
    """Reply arrays in the dtype the server sent (ints for the integer strategy, floats else)."""
    return array_record(w=np.asarray(w, values(like["w"]).dtype), b=np.asarray(b, values(like["b"]).dtype))


@app.query()
def query(msg: Message, context: Context) -> Message:
    node = Node(context)
    nw, nb = exchange.sizes(node.model0, node.layout)
    return Message(RecordDict({
        "config": ConfigRecord({"layout": exchange.encode(node.layout), "board": node.kind, "key": node.key,
                                "policy": node.plan.policy, "personal": ",".join(map(str, node.personal))}),
        "metrics": MetricRecord({"num-examples": int(len(node.split("")[1])), "trainable-bytes": nw + 4 * nb})}),
        reply_to=msg)


def secure_aggregation(msg, ctxt, call_next):
    """Flower's secaggplus_mod, unchanged, when the server runs SecAgg+ (its stage config in the
    message): this board's update leaves its host masked; the server learns only the sum."""
    if SECAGG_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def central_dp(msg, ctxt, call_next):
    """Flower's fixedclipping_mod, unchanged, when the server's DP wrapper asks for it (its
    clipping norm in the round's config): the update leaves the board clipped to that L2 norm."""
    cfg = msg.content.config_records.get("config")
    if cfg is not None and KEY_CLIPPING_NORM in cfg:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


@app.train(mods=[secure_aggregation, central_dp])
def train(msg: Message, context: Context) -> Message:
    node = Node(context)
    legacy = "fitins.parameters" in msg.content.array_records     # SecAgg+ runs Flower's legacy FitIns
    if legacy:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        parts = exchange.decode(fitins.config["layout"], node.model0)
        w, b = parameters_to_ndarrays(fitins.parameters)
        model = exchange.put(node.board.model(), parts, w, b)
    t = [time.monotonic()]
    if not legacy:
        model, parts = incoming(node, msg.content)
    node.board.load(model, parts)
    t.append(time.monotonic())
    xv, yv = node.split("v")
    acc_global = node.board.evaluate(xv, yv)
    t.append(time.monotonic())
    x, y = node.split("")
    r = node.board.train(x, y, node.epochs)
    t.append(time.monotonic())
    after = node.board.model()
    acc = node.board.evaluate(xv, yv)
    node.save()
    t.append(time.monotonic())
    if hasattr(node.board, "log"):
        node.board.log("round: load %.1f s, validate %.1f s, train %.1f s, read back + validate %.1f s"
                       % tuple(b - a for a, b in zip(t, t[1:])))
    w, b = exchange.take(after, parts)
    metrics = {"num-examples": int(r["samples"]), "loss": float(r["loss"]), "val-acc-global": float(acc_global),
               "val-acc": float(acc), "step-ms": float(r["step_ms"])}
    if legacy:
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([w.astype(np.float64), b.astype(np.float64)]),
                     int(r["samples"]), metrics)
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)
    return Message(RecordDict({
        "arrays": _arrays(w, b, msg.content["arrays"]),
        "metrics": MetricRecord(metrics),
        "config": ConfigRecord({"layout": exchange.encode(parts)})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the model the message carries on this board's own samples, the board left as
    it was (a staged rollout's canary keeps running the accepted model)."""
    node = Node(context)
    split = "t" if msg.content["config"].get("split", "val") == "test" else "v"
    x, y = node.split(split)
    keep = node.board.model()
    metrics = {"num-examples": int(len(y))}
    names = [("", "acc")]
    if "baseline-w" in msg.content["arrays"]:
        names.append(("baseline-", "baseline-acc"))
    for prefix, key in names:
        model, parts = incoming(node, msg.content, prefix)
        node.board.load(model, parts)
        metrics[key] = float(node.board.evaluate(x, y))
    node.board.load(keep, exchange.union(node.model0, [node.layout, parts]))
    node.save()
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

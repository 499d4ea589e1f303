"""SubsetFedAvg: Flower's FedAvg for boards that train different subsets of one int8 model, in
integer arithmetic.

Every board gets, and returns, only the elements its own plan trains (its layout, see
exchange.py).  The global is the union of the layouts (one ArrayRecord "w" int8 / "b" int32, as
any Flower strategy holds it).  Each element of the new global is the sample-weighted mean over
the boards that trained it this round,

    g = round_half_away( sum_i n_i * v_i / sum_i n_i )       (int64 sums, one integer division)

and an element no board returned keeps its value.  Integer sums do not depend on the order the
replies arrive in, so a federated run is reproducible bit for bit (a real deployment and its
simulation end with the same global).
"""

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from microtrain.federated import exchange
from microtrain.sim.reference import div_round_away as div_round   # half away from zero, as TFLite's pools


def array_record(**arrays):
    """An ArrayRecord of named numpy arrays.  Integer arrays travel as their raw little-endian
    bytes (stype "raw": no .npy header, so a board's message is its trainable bytes plus a few
    dozen); float arrays (the dense strategies) as Flower's numpy arrays."""
    out = {}
    for k, v in arrays.items():
        v = np.ascontiguousarray(v)
        if np.issubdtype(v.dtype, np.integer):
            v = v.astype(v.dtype.newbyteorder("<"))
            out[k] = Array(dtype=v.dtype.str, shape=tuple(int(s) for s in v.shape), stype="raw", data=v.tobytes())
        else:
            out[k] = Array(v)
    return ArrayRecord(out)


def values(array):
    """The numpy array of an Array of either kind."""
    if array.stype == "raw":
        return np.frombuffer(array.data, np.dtype(array.dtype)).reshape(array.shape)
    return array.numpy()


def integer_mean(model, replies):
    """The model with each element of the replies' layouts set to its sample-weighted mean:
    replies are (parts, w, b, n) with n > 0."""
    acc, cnt = {}, {}
    for parts, w, b, n in replies:
        w, b = np.asarray(w, np.int64), np.asarray(b, np.int64)
        iw = ib = 0
        for p in parts:
            wi, bi = exchange.weight_index(model, p), exchange.bias_index(p)
            for key, idx, vals in (((p[0], "w"), wi, w[iw:iw + len(wi)]), ((p[0], "b"), bi, b[ib:ib + len(bi)])):
                if not len(idx):
                    continue
                size = np.size(model.layers[p[0]].w if key[1] == "w" else model.layers[p[0]].b)
                a = acc.setdefault(key, np.zeros(size, np.int64))
                c = cnt.setdefault(key, np.zeros(size, np.int64))
                a[idx] += n * vals
                c[idx] += n
            iw += len(wi)
            ib += len(bi)
    m = model.copy()
    for (layer, kind), a in acc.items():
        c = cnt[(layer, kind)]
        l = m.layers[layer]
        cur = np.array(l.w if kind == "w" else l.b).ravel().astype(np.int64)
        hit = c > 0
        cur[hit] = div_round(a[hit], c[hit]) if hit.any() else cur[hit]
        if kind == "w":
            l.w = cur.astype(np.int8).reshape(np.shape(l.w))
        else:
            l.b = cur.astype(np.int32).reshape(np.shape(l.b))
    return m


class SubsetFedAvg(FedAvg):
    """FedAvg over per-board subsets, integer and deterministic.

    model     the global QModel (frozen tensors included: what every board starts from)
    layouts   {node_id: parts} what each board trains (its query reply), union = the global
    """

    def __init__(self, model, layouts, **kw):
        kw.setdefault("min_train_nodes", 1)
        kw.setdefault("min_evaluate_nodes", 1)
        kw.setdefault("min_available_nodes", 1)
        super().__init__(**kw)
        self.model = model
        self.layouts = dict(layouts)
        self.union = exchange.union(model, list(self.layouts.values()))

    def global_arrays(self, model=None):
        w, b = exchange.take(model or self.model, self.union)
        return array_record(w=w, b=b)

    def model_of(self, arrays):
        return exchange.put(self.model, self.union, values(arrays["w"]), values(arrays["b"]))

    def configure_train(self, server_round, arrays, config, grid):
        if self.fraction_train == 0.0:
            return []
        self.model = self.model_of(arrays)
        nodes = [n for n in grid.get_node_ids() if n in self.layouts]
        k = max(int(len(nodes) * self.fraction_train), self.min_train_nodes)
        ids, _ = sample_nodes(grid, self.min_available_nodes, k)
        config["server-round"] = server_round
        out = []
        for n in ids:
            if n not in self.layouts:
                continue
            parts = self.layouts[n]
            w, b = exchange.take(self.model, parts)
            cfg = ConfigRecord(dict(config, layout=exchange.encode(parts)))
            out.append(Message(RecordDict({"arrays": array_record(w=w, b=b), "config": cfg}),
                               message_type=MessageType.TRAIN, dst_node_id=n))
        return out

    def aggregate_train(self, server_round, replies):
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        got = []
        for msg in valid:
            c = msg.content
            n = int(c["metrics"]["num-examples"])
            if n <= 0:
                continue
            parts = exchange.decode(c["config"]["layout"], self.model)
            got.append((parts, values(c["arrays"]["w"]), values(c["arrays"]["b"]), n))
        if not got:
            return None, None
        self.model = integer_mean(self.model, got)
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return self.global_arrays(), metrics

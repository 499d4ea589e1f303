"""Accuracy experiments: int8 fine-tuning with and without QAS against fp32 fine-tuning of the same
trainable subset, in a personalization scenario (used by the tests' accuracy bars and by
`make bench`, which writes bench/training.json).

Scenario ("a new device"): a model is pretrained on the original data; the device sees the data
through its own fixed distortion (datasets.shift_digits / shift_imu).  Fine-tuning, validation
and test samples all come from the device; pretraining samples never do.  Each seed re-splits
the data, re-pretrains, and tunes every method's learning rate on the validation split only.
"""

from dataclasses import dataclass, field

import numpy as np

from microtrain import datasets
from microtrain.convert import floatnet
from microtrain.model import qmodel
from microtrain.plan import planner
from microtrain.convert import quantize
from microtrain.sim import simulator


@dataclass
class Scenario:
    name: str
    load: callable
    shift: callable
    make_net: callable
    fractions: tuple            # pretrain, finetune, validation, test
    pretrain_epochs: int
    pretrain_lr: float
    epochs: int                 # fine-tuning epochs (batch 1)
    lrs_qas: tuple
    lrs_noqas: tuple
    lrs_fp32: tuple
    labels: tuple = ()


def digits_scenario():
    def load():
        X, y = datasets.load_digits()
        return X, y
    return Scenario("digits", load, lambda X, seed: datasets.shift_digits(X, seed)[0], floatnet.digits_mlp,
                    (0.5, 0.15, 0.1, 0.25), 30, 3e-3, 3,
                    lrs_qas=(0.01, 0.03, 0.1), lrs_noqas=(100.0, 1000.0, 10000.0), lrs_fp32=(0.01, 0.03, 0.1))


def imu_scenario():
    def load():
        X, y, _ = datasets.load_basic_motions()
        return X, y
    return Scenario("basic_motions", load, lambda X, seed: datasets.shift_imu(X, seed, max_deg=90, gain_sd=0.3)[0],
                    lambda seed: floatnet.imu_reference_model(4, seed=seed),
                    (0.4, 0.3, 0.1, 0.2), 100, 3e-3, 4,
                    lrs_qas=(0.01, 0.03, 0.1), lrs_noqas=(100.0, 1000.0, 10000.0), lrs_fp32=(0.01, 0.03, 0.1),
                    labels=("Standing", "Running", "Walking", "Badminton"))


def int8_accuracy(model, X, y):
    xq = model.quantize_input(X)
    return float(np.mean([int(np.argmax(qmodel.forward(model, x))) == t for x, t in zip(xq, y)]))


def finetune_int8(model, policy, lr, qas, Xf, yf, epochs, seed):
    p = planner.plan(model, policy, lr=lr, qas=qas)
    sim = simulator.Simulator(model, p)
    xq = model.quantize_input(Xf)
    order = np.random.default_rng(seed).permutation
    for e in range(epochs):
        for i in order(len(yf)):
            sim.step(xq[i], int(yf[i]))
    return sim


def dequantized_net(net, model):
    """A copy of the float net holding the int8 model's weights, dequantized."""
    f = net.copy()
    for l, q in zip(f.layers, model.layers):
        if q.op not in qmodel.PARAMETRIC:
            continue
        s_w = np.asarray(q.s_w, np.float64)
        wq = np.asarray(q.w, np.float64)
        if q.op == "conv":
            W = wq.reshape(q.geom.out_c, -1) * s_w[:, None]
        else:
            W = wq.reshape(-1, q.geom.out_c) * s_w[None, :]
        l.W = W.reshape(l.W.shape).astype(l.W.dtype)
        l.b = (np.asarray(q.b, np.float64) * s_w * q.s_x).astype(l.b.dtype)
    return f


def trainable_masks(model, plan):
    """floatnet `trainable` spec of exactly the parameters the int8 plan updates."""
    spec = {}
    for t in plan.train:
        q = model.layers[t.layer]
        g = q.geom
        if q.op == "conv":
            m = np.zeros((g.out_c, g.taps, g.in_c), bool)
            m[np.asarray(t.rows, int), :, t.cin_lo:t.cin_hi] = True
            m = m.reshape(-1)
        else:
            m = np.zeros((g.taps, g.out_c), bool)
            if t.weights:
                m[:, np.asarray(t.rows, int)] = True
            m = m.reshape(-1)
        spec[t.layer] = {"weights": m, "bias": bool(t.bias)}
    return spec


def finetune_fp32(net, model, policy, lr, Xf, yf, epochs, seed):
    p = planner.plan(model, policy, lr=lr)
    f = dequantized_net(net, model)
    spec = {}
    for i, s in trainable_masks(model, p).items():
        spec[i] = {"weights": s["weights"].reshape(f.layers[i].W.shape), "bias": s["bias"]}
    f.fit(Xf, yf, epochs=epochs, lr=lr, batch_size=1, seed=seed, optimizer="sgd", trainable=spec)
    return f


@dataclass
class Result:
    seed: int
    pretrained: float
    fp32: float
    int8: float
    int8_qas: float
    lrs: dict = field(default_factory=dict)


def run_seed(sc, policy, seed):
    X, y = sc.load()
    (Xp, yp), (Xf, yf), (Xv, yv), (Xt, yt) = datasets.split(X, y, sc.fractions, seed=seed)
    Xf, Xv, Xt = (sc.shift(A, seed) for A in (Xf, Xv, Xt))
    net = sc.make_net(seed)
    net.fit(Xp, yp, epochs=sc.pretrain_epochs, lr=sc.pretrain_lr, seed=seed)
    model = quantize.quantize(net, np.concatenate([Xp, Xf]), sc.labels)
    pre = int8_accuracy(model, Xt, yt)

    def best(method, lrs):
        scores = []
        for lr in lrs:
            if method == "fp32":
                f = finetune_fp32(net, model, policy, lr, Xf, yf, sc.epochs, seed)
                scores.append((f.accuracy(Xv, yv), lr, f))
            else:
                s = finetune_int8(model, policy, lr, method == "qas", Xf, yf, sc.epochs, seed)
                scores.append((s.evaluate(model.quantize_input(Xv), yv), lr, s))
        return max(scores, key=lambda r: (r[0], -r[1]))

    _, lr_f, f = best("fp32", sc.lrs_fp32)
    _, lr_n, s_n = best("noqas", sc.lrs_noqas)
    _, lr_q, s_q = best("qas", sc.lrs_qas)
    xt = model.quantize_input(Xt)
    return Result(seed, pre, f.accuracy(Xt, yt), s_n.evaluate(xt, yt), s_q.evaluate(xt, yt),
                  {"fp32": lr_f, "int8": lr_n, "int8_qas": lr_q}), len(yt)


SCENARIOS = {"digits": digits_scenario, "basic_motions": imu_scenario}


def _run_named(name, policy, seed):
    return run_seed(SCENARIOS[name](), policy, seed)


def run(sc, policy, seeds=range(5), workers=2):
    """Results per seed (in parallel processes) and their means."""
    seeds = list(seeds)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as ex:
            out = list(ex.map(_run_named, [sc.name] * len(seeds), [policy] * len(seeds), seeds))
    else:
        out = [run_seed(sc, policy, s) for s in seeds]
    results = [r for r, _ in out]
    mean = {k: float(np.mean([getattr(r, k) for r in results])) for k in ("pretrained", "fp32", "int8", "int8_qas")}
    return results, mean, out[0][1]

"""A federation of devices on a real dataset (scikit-learn's digits), non-IID: a model pretrained
on half the data as the factory ships it, then each board sees its own share of the rest through
its own camera (datasets.shift_digits: a shift, contrast and black level of its own) with its own
class mix (Dirichlet(alpha) over the 10 classes).  Every board splits its share into training,
validation and held-out test samples.  Deterministic in (n_boards, seed).

`build(folder, ...)` writes model files (one per plan: boards with different budgets, a Pico's
and an ESP32-S3's, train different subsets of the same model), one .npz per board (x, y, xv, yv, xt, yt: int8 samples) and
scenario.json (which board runs which plan, the float parameters of the fp32 baseline).
"""

import json
import os

import numpy as np

from microtrain import datasets
from microtrain.convert import floatnet, quantize
from microtrain.model import modelfile
from microtrain.plan import planner

LABELS = tuple(str(d) for d in range(10))


def partitions(y, n_boards, alpha, rng, minimum=12):
    """Indices of each board's share: per class, Dirichlet(alpha) proportions over the boards,
    redrawn until every board has `minimum` samples (lowered for fleets the data cannot cover)."""
    minimum = max(4, min(minimum, len(y) // (2 * n_boards)))
    if minimum * n_boards > len(y):
        raise ValueError(f"{len(y)} samples cannot give {n_boards} boards {minimum} each")
    while True:
        parts = [[] for _ in range(n_boards)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_boards)) * len(idx)).astype(int)[:-1]
            for k, p in enumerate(np.split(idx, cuts)):
                parts[k] += list(p)
        if min(len(p) for p in parts) >= minimum:
            return [np.array(sorted(p)) for p in parts]


def pretrained(seed=0):
    """(float net, QModel, X_rest, y_rest): the digits MLP pretrained on half the data."""
    X, y = datasets.load_digits()
    (Xp, yp), (Xr, yr) = datasets.split(X, y, [0.5, 0.5], seed=seed)
    net = floatnet.digits_mlp(seed=seed)
    net.fit(Xp, yp, epochs=30, lr=3e-3, seed=seed)
    return net, quantize.quantize(net, Xp, LABELS, name="digits"), Xr, yr


# boards alternate between a Pico's budget (sparse channels) and an ESP32-S3's (every weight)
FLEET = (("rpi_pico", "sparse"), ("esp32_s3", "full"))


def build(folder, n_boards=5, seed=0, alpha=0.5, fleet=FLEET, lr=0.03):
    from microtrain.device import boards as B
    os.makedirs(folder, exist_ok=True)
    net, model, X, y = pretrained(seed)
    rng = np.random.default_rng([0xFED, seed])
    models = {}
    for board, pol in fleet:
        b = B.get(board)
        plan = planner.plan(model, pol, lr=lr, budget=b.heap_bytes, word_bytes=b.object_word_bytes,
                            weights_flash_bytes=b.weights_flash_bytes)
        models[pol] = f"model-{pol}.mtm"
        modelfile.save(os.path.join(folder, models[pol]), model, plan)
    policies = [pol for _, pol in fleet]
    boards = []
    for k, idx in enumerate(partitions(y, n_boards, alpha, rng)):
        Xk, _ = datasets.shift_digits(X[idx], seed=100 + k)
        (a, ya), (v, yv), (t, yt) = datasets.split(Xk, y[idx], [0.6, 0.15, 0.25], seed=seed + k, stratify=False)
        name = f"board-{k}.npz"
        q = model.quantize_input
        np.savez(os.path.join(folder, name), x=q(a), y=ya, xv=q(v), yv=yv, xt=q(t), yt=yt,
                 fx=a, fxv=v, fxt=t)
        boards.append({"data": name, "model": models[policies[k % len(policies)]], "board": fleet[k % len(fleet)][0],
                       "policy": policies[k % len(policies)], "samples": int(len(ya)),
                       "classes": np.bincount(ya, minlength=10).tolist()})
    info = {"n_boards": n_boards, "seed": seed, "alpha": alpha, "lr": lr, "boards": boards,
            "model": models[policies[0]]}
    with open(os.path.join(folder, "scenario.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info

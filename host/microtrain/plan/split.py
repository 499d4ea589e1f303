"""Split training: where to cut a model between the board and the host.

The board runs layers [0, cut) forward, sends the int8 activation at the cut, and backpropagates
its own layers from the gradient the host returns; the host runs layers [cut, end) forward and
backward.  Three plans describe one split:

  combined   the whole step as one trainer would run it (the simulator's plan: board + host
             together are bit-identical with it)
  board      the combined plan restricted to layers below the cut (planner.plan(cut=...)): what
             the board file holds, what the board's memory must afford
  host       the layers from the cut up, in the combined plan (the host reads them from there)

The board's policy (`policy`) decides what trains below the cut - its personal client layers;
the host's (`host_policy`, default every weight and bias) what trains above it.

Choosing the cut (`choose`): every cut from the deepest (the host runs only the classifier) down
to 1 is planned; a cut fits when the board's part fits the budget and, with `max_link_ms`, its
frames cross the link in time.  The deepest cut that fits is taken - it keeps the most layers,
and the most personal ones, on the board - unless `cut` is given.
"""

from dataclasses import dataclass

from microtrain.board import link as proto
from microtrain.model.qmodel import PARAMETRIC
from microtrain.plan import planner
from microtrain.plan.planner import PlanError, resolve_policy

ACT_TAIL = 12          # an ACT frame's payload after the activation and mask: label, lr shift, rng, ...
GRAD_TAIL = 7          # a GRAD frame's payload after the gradient: exponent, probability, correct, rng


@dataclass
class Candidate:
    cut: int
    board: object          # the board's Plan (None: it could not be planned)
    board_bytes: int       # what the board's heap must hold for training (Plan.budget_bytes)
    up_bytes: int          # wire bytes per sample, board -> host (ACT frame)
    down_bytes: int        # host -> board (GRAD frame)
    link_ms: float         # both frames at the link's rate
    fits: bool
    why: str = ""


@dataclass
class Split:
    cut: int
    board: object          # planner.Plan of the board's part (its file's plan)
    combined: object       # planner.Plan of the whole step (the simulator's)
    candidates: list
    reason: str
    alone_bytes: int       # the combined plan on the board alone (no cut)

    def summary(self, model, budget=None):
        layers = model.layers
        lines = [f"split training: cut at layer {self.cut} ({self.reason})"]
        lines.append("  cut  board RAM   up B/sample  down B/sample  link ms  fits")
        for c in self.candidates:
            lines.append(f"  {c.cut:>3}  {c.board_bytes:>9}  {c.up_bytes:>12}  {c.down_bytes:>13}  {c.link_ms:>7.1f}  "
                         + ("yes" if c.fits else "no" + (f" ({c.why})" if c.why else "")))
        lines.append(f"the whole plan on the board alone would need {self.alone_bytes} B"
                     + (f" (budget {budget} B)" if budget else ""))
        host = [t for t in self.combined.train if t.layer >= self.cut]
        lines.append(f"host trains {len(host)} layer(s) above the cut: "
                     + ", ".join(f"{t.layer} {layers[t.layer].op}" for t in host))
        lines.append(self.board.summary(model))
        return "\n".join(lines)


def spec(model, policy, host_policy, cut):
    """The combined per-layer policy: `policy` below the cut, `host_policy` from it up."""
    lo = resolve_policy(model, policy)
    hi = resolve_policy(model, host_policy)
    out = {i: s for i, s in lo.items() if i < cut}
    out.update({i: s for i, s in hi.items() if i >= cut})
    return {str(i): s for i, s in out.items()}


def wire_bytes(model, board_plan, cut):
    """(up, down) bytes of one sample's ACT and GRAD frames at this cut."""
    l = model.layers[cut - 1]
    n = l.out_size
    mask = (n + 7) // 8 if (cut - 1) in board_plan.masks else 0
    up = proto.OVERHEAD + n + mask + ACT_TAIL
    down = proto.OVERHEAD + (2 * n if board_plan.train else 0) + GRAD_TAIL
    return up, down


def plan_cut(model, cut, policy="sparse", host_policy="full", lr=0.05, qas=True, **kw):
    """(board plan, combined plan) of one cut."""
    s = spec(model, policy, host_policy, cut)
    combined = planner.plan(model, s, lr=lr, qas=qas, **kw)
    board = planner.plan(model, s, lr=lr, qas=qas, cut=cut, **kw)
    board.policy = combined.policy = f"split {policy} | {host_policy} at {cut}"
    board.split_meta = {"spec": s, "lr": lr, "qas": qas, "policy": str(policy), "host_policy": str(host_policy)}
    return board, combined


def choose(model, policy="sparse", host_policy="full", budget=None, cut=None, lr=0.05, qas=True, baudrate=115200,
           max_link_ms=None, **kw):
    """The split (see the module docstring); PlanError when no cut fits, with the table."""
    layers = model.layers
    deepest = len(layers) - 2
    if cut is not None and not 1 <= cut <= deepest:
        raise PlanError(f"--cut {cut}: the board runs layers [0, cut) and the host at least the classifier, "
                        f"so the cut is 1 to {deepest}")
    if not any(l.op in PARAMETRIC for l in layers[:deepest + 1]):
        raise PlanError("the model has no conv or dense layer to train")
    rate = baudrate / 10.0                  # bytes per second on an 8N1 serial line
    cands = []
    plans = {}
    for k in range(deepest, 0, -1):
        try:
            board, combined = plan_cut(model, k, policy, host_policy, lr, qas, **kw)
        except PlanError as e:
            cands.append(Candidate(k, None, 0, 0, 0, 0.0, False, str(e)))
            continue
        up, down = wire_bytes(model, board, k)
        ms = 1000.0 * (up + down) / rate
        fits, why = True, ""
        if budget is not None and board.budget_bytes > budget:
            fits, why = False, f"needs {board.budget_bytes} B"
        elif max_link_ms is not None and ms > max_link_ms:
            fits, why = False, f"{ms:.0f} ms on the link > {max_link_ms:g}"
        cands.append(Candidate(k, board, board.budget_bytes, up, down, ms, fits, why))
        plans[k] = (board, combined)
    try:
        alone = planner.plan(model, spec(model, policy, host_policy, deepest + 1), lr=lr, qas=qas, **kw).budget_bytes
    except PlanError:
        alone = 0
    table = "; ".join(f"cut {c.cut}: {'fits' if c.fits else c.why}" for c in cands)
    if cut is not None:
        c = next(c for c in cands if c.cut == cut)
        if c.board is None:
            raise PlanError(f"cut {cut}: {c.why}")
        if not c.fits:
            raise PlanError(f"cut {cut} does not fit: {c.why} (budget {budget} B); {table}")
        reason = "asked for (--cut)"
    else:
        fitting = [c for c in cands if c.fits]
        if not fitting:
            raise PlanError(f"no cut fits the board: {table}")
        c = fitting[0]
        deeper = [d for d in cands if d.cut > c.cut]
        reason = ("the deepest possible: the host runs only the classifier" if not deeper else
                  f"the deepest that fits: cut {deeper[-1].cut} {deeper[-1].why}")
        if budget is not None:
            reason += f"; the board needs {c.board_bytes} of {budget} B"
    board, combined = plans[c.cut]
    return Split(c.cut, board, combined, cands, reason, alone)


def from_file(model, board_plan):
    """The combined plan of a board file written by `choose` (its HOST section's `split` record)."""
    meta = board_plan.split_meta
    if not board_plan.cut:
        raise PlanError("this model file has no split plan: convert it with --split")
    if not meta:
        raise PlanError("this model file lacks its split record (HOST section): convert it again with --split")
    s = {str(k): v for k, v in meta["spec"].items()}
    combined = planner.plan(model, s, lr=meta["lr"], qas=meta["qas"], max_classes=board_plan.max_classes,
                            seed=board_plan.seed)
    return combined

"""The planner: compile-time backward for one quantized model, one update policy and one board.

It decides which parameters train (the weight split), which layers the backward pass runs through
and which of them need an input gradient, the integer factors of every SGD step (QAS or plain int8
SGD), which activations and clamp masks the forward pass must keep, and one arena layout with
offsets.  It reports the peak training memory before anything is pushed and refuses a plan that
does not fit the board, saying what would.

Policies (DESIGN.md, after Lin et al. 2022):
  bias-only         every bias of every conv / dense layer
  last-k            weights and biases of the last k conv / dense layers   ("last-2")
  sparse            per-layer choices: {layer: {"bias": bool, "weights": fraction of input channels}}
                    layer indices may be negative (from the end); the IMU default is
                    all biases + the dense weights + the last conv's weights on half its input channels
  full              every weight and bias
"""

import struct
from dataclasses import dataclass, field

import numpy as np

from microtrain.board import arena, telemetry
from microtrain.sim import reference
from microtrain.model.qmodel import PARAMETRIC
from microtrain.model.fixedpoint import quantize_multipliers

ALIGN = 4
SPARE_CLASSES = 2            # rows reserved for classes added on the board
SAMPLES_IN_ARENA = 16384     # the most bytes of validation samples / replay memory kept in RAM: larger
#                              validation sets live in a file on the board's flash, larger replay
#                              memories are dropped (class addition then learns from its own samples)


@dataclass
class TrainSpec:
    """What trains in one layer."""
    layer: int
    rows: np.ndarray            # output channels updated (uint16, ascending)
    cin_lo: int                 # input channels [cin_lo, cin_hi) of every tap train; == : weights frozen
    cin_hi: int
    bias: bool
    w_mult: np.ndarray = None   # per output channel SGD factors (int32 mult, shift)
    w_shift: np.ndarray = None
    b_mult: np.ndarray = None
    b_shift: np.ndarray = None

    @property
    def weights(self):
        return self.cin_hi > self.cin_lo

    def n_params(self, layer):
        g = layer.geom
        per_row = g.taps * (self.cin_hi - self.cin_lo) if layer.op == "conv" else (g.taps if self.weights else 0)
        return len(self.rows) * (per_row + (1 if self.bias else 0))


@dataclass
class GradSpec:
    """Input gradient of one conv / dwconv layer: gy is rescaled by s_w[c] * 2^(E - h) first."""
    layer: int
    mult: np.ndarray
    shift: np.ndarray
    exp_adjust: int             # gx exponent = gy exponent - E + h (+ the narrowing shift)


@dataclass
class Buffer:
    name: str
    offset: int
    size: int                   # bytes


@dataclass
class Plan:
    policy: str
    lr: float
    qas: bool
    train: list                 # TrainSpec per trainable layer (ascending layer index)
    grads: dict                 # layer index -> GradSpec (layers that pass a gradient down)
    first_backward: int         # lowest layer the backward pass reaches
    kept: list                  # layer indices whose output activation is kept for backward
    masks: list                 # layer indices whose output clamp mask is kept
    buffers: dict               # name -> Buffer in the training arena
    arena_size: int
    inference_arena: int
    weight_bytes_ram: int       # trainable weights + biases copied to RAM
    frozen_bytes: int           # weights that stay in the model file / flash
    max_classes: int
    seed: int = 0x2545F491
    class_add: tuple = (0, 0)   # (mult, shift): s_x / s_w of the classifier, for class addition
    notes: list = field(default_factory=list)
    cut: int = 0                # split training: the board runs layers [0, cut), the host the rest (0: no cut)
    split_meta: dict = None     # split training: the combined policy the host rebuilds its part from

    @property
    def training_bytes(self):
        return self.arena_size

    def summary(self, model):
        lines = [f"policy {self.policy} ({'QAS' if self.qas else 'int8 SGD'}), lr {self.lr:g}"]
        n_par = sum(t.n_params(model.layers[t.layer]) for t in self.train)
        total = sum((l.w.size if l.w is not None else 0) + (l.b.size if l.b is not None else 0)
                    for l in model.layers)
        lines.append(f"trainable parameters: {n_par} of {total}")
        for t in self.train:
            l = model.layers[t.layer]
            what = []
            if t.weights:
                what.append(f"weights of {len(t.rows)}/{l.geom.out_c} channels"
                            + (f", input channels {t.cin_lo}..{t.cin_hi - 1} of {l.geom.in_c}" if l.op == "conv" else ""))
            if t.bias:
                what.append("bias")
            lines.append(f"  layer {t.layer} {l.op} {l.name}: " + ", ".join(what))
        if self.cut:
            lines.append(f"split at layer {self.cut}: the board runs layers 0..{self.cut - 1} and their backward, "
                         f"the host layers {self.cut}..{len(model.layers) - 1}")
        lines.append(f"backward reaches layer {self.first_backward}; kept activations {self.kept}, masks {self.masks}")
        lines += [f"note: {n}" for n in self.notes]
        where = ("stay in flash (read in place)" if self.weights_in_flash else
                 f"are read into the heap with the model's {self.weights_bytes} B of weights")
        lines.append(f"RAM: training arena {self.arena_size} B (by liveness; {self.sum_of_tensors} B without sharing), "
                     f"inference arena {self.inference_arena} B, "
                     f"trainable weights {self.weight_bytes_ram} B; frozen weights {self.frozen_bytes} B {where}")
        lines.append(f"peak training RAM (arena + trainable weights + ~{self.bookkeeping_bytes} B of objects): "
                     f"{self.peak_bytes} B; the loaded model ~{self.model_bytes} B; "
                     f"the heap after import must hold {self.budget_bytes} B")
        return "\n".join(lines)

    word_bytes: int = 4        # object word of the board's MicroPython (4; 8 on the 64-bit unix port)

    @property
    def bookkeeping_bytes(self):
        """The trainer's Python objects (views into the arena, per-layer lists): a model of
        ~300 + 3 per arena buffer + 37 per backward layer + 20 per layer object words, measured
        on the unix port and the emulated Pico (tests/test_trainer.py checks the whole estimate
        against the heap)."""
        return self.word_bytes * (300 + 3 * len(self.buffers) + 37 * max(self.n_backward, 1) + 20 * self.n_layers)

    n_backward: int = 0
    n_layers: int = 0
    model_heap_bytes: int = 0   # what load() keeps besides the weights: sections, constants, objects

    @property
    def model_bytes(self):
        """The loaded model in the heap: its kept sections (LAYR, PLAN, INDX, ...), the biases
        and requantization factors the flash region does not hold, the per-layer objects, and
        the weights unless the board reads them in place."""
        return self.model_heap_bytes + self.weights_ram_bytes
    sum_of_tensors: int = 0     # the training arena without sharing (every buffer its own bytes)
    step_arena: int = 0         # the arena a training step needs: without the samples and telemetry the board keeps

    @property
    def peak_bytes(self):
        return self.arena_size + self.weight_bytes_ram + self.bookkeeping_bytes

    weights_bytes: int = 0      # the model file's weights (section WGHT), every layer
    weights_in_flash: bool = False   # the board reads them in place (flashmap), not into the heap

    @property
    def weights_ram_bytes(self):
        """The model's weights in the heap: all of them unless the board reads them in place."""
        return 0 if self.weights_in_flash else self.weights_bytes

    @property
    def budget_bytes(self):
        """What the board's heap must hold after `import microtrain`: the model as loaded and the
        training peak."""
        return self.peak_bytes + self.model_bytes


POLICIES = 'sparse, bias-only, last-K (K = 1, 2, ...), full, or a JSON dict {"layer": {"bias": true, "weights": 0.5}}'


class PlanError(ValueError):
    """A plan that cannot run: the message says why and what would fit."""


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def parametric_layers(model):
    return [i for i, l in enumerate(model.layers) if l.op in PARAMETRIC]


def resolve_policy(model, policy):
    """Policy name / dict -> {layer: {"bias": bool, "weights": fraction}}."""
    par = parametric_layers(model)
    if not par:
        raise PlanError("the model has no conv or dense layer to train")
    if isinstance(policy, dict):
        spec = {}
        for k, v in policy.items():
            if not isinstance(v, dict) or not str(k).lstrip("-").isdigit():
                raise PlanError(f"a per-layer policy maps layer numbers to {{\"bias\": true/false, \"weights\": "
                                f"fraction}}, got {k!r}: {v!r}")
            i = int(k)
            i = i if i >= 0 else len(model.layers) + i
            if i not in par:
                raise PlanError(f"policy names layer {k}, which has no parameters (trainable: {par})")
            w = v.get("weights", 0.0)
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0.0 <= w <= 1.0:
                raise PlanError(f"policy layer {k}: weights is the fraction of input channels that train, "
                                f"from 0 to 1, not {w!r}")
            spec[i] = {"bias": bool(v.get("bias", False)), "weights": float(w)}
        return spec
    if policy == "bias-only":
        return {i: {"bias": True, "weights": 0.0} for i in par}
    if policy == "full":
        return {i: {"bias": True, "weights": 1.0} for i in par}
    if not isinstance(policy, str):
        raise PlanError(f"a policy is a name or a per-layer dict, not {type(policy).__name__}: {POLICIES}")
    if policy.startswith("last-"):
        k = policy.split("-", 1)[1]
        if not k.isdigit() or not 1 <= int(k) <= len(par):
            raise PlanError(f"unknown policy {policy!r}: last-K takes K from 1 to {len(par)} (the model's conv / "
                            f"dense layers); valid policies: {POLICIES}")
        return {i: {"bias": True, "weights": 1.0} for i in par[-int(k):]}
    if policy == "sparse":
        # all biases, the classifier's weights, the last conv's weights on half its input channels
        spec = {i: {"bias": True, "weights": 0.0} for i in par}
        spec[par[-1]]["weights"] = 1.0
        if len(par) > 1:
            spec[par[-2]]["weights"] = 0.5
        return spec
    raise PlanError(f"unknown policy {policy!r}; valid policies: {POLICIES}")


def plan(model, policy="sparse", lr=0.05, qas=True, budget=None, max_classes=None, seed=0x2545F491,
         val_capacity=8, replay_per_class=2, word_bytes=4, weights_flash_bytes=0, cut=0):
    """Build the training plan; raises PlanError if it needs more than `budget` bytes of RAM.

    "sparse" fits itself to the model and the board: where the whole sparse set does not fit the
    budget (or its backward pass would cross a branch of the graph), it keeps the sparse choices
    of the top layers only - the deepest start that fits - and says so in the plan's notes."""
    kw = dict(lr=lr, qas=qas, budget=budget, max_classes=max_classes, seed=seed, val_capacity=val_capacity,
              replay_per_class=replay_per_class, word_bytes=word_bytes, weights_flash_bytes=weights_flash_bytes, cut=cut)
    try:
        return _plan(model, policy, **kw)
    except PlanError as e:
        if policy != "sparse" or cut:
            raise
        first_error = e
    spec = resolve_policy(model, "sparse")
    par = parametric_layers(model)
    for k in par[1:]:
        try:
            p = _plan(model, {i: v for i, v in spec.items() if i >= k}, **kw)
        except PlanError:
            continue
        p.policy = "sparse"
        p.notes.insert(0, f"the whole sparse set does not fit ({first_error}); sparse from layer {k} up")
        return p
    raise first_error


def _plan(model, policy, lr, qas, budget, max_classes, seed, val_capacity, replay_per_class, word_bytes,
          weights_flash_bytes, cut):
    """The plan of one policy (see plan).

    cut: split training (microtrain.plan.split): the plan of the board's part, layers [0, cut) -
    their trainable tensors, their backward from the gradient the host returns at the cut, and the
    clamp mask of layer cut - 1 the host needs; layers >= cut belong to the host.
    weights_flash_bytes: how many bytes of weights the board reads in place from flash (the
    RP2040's flash region, board flashmap; 0 where the model's weights are read into the heap,
    and then they count against the budget)."""
    spec = resolve_policy(model, policy)
    layers = model.layers
    max_classes = max_classes or model.n_classes + SPARE_CLASSES
    train = []
    for i in sorted(spec):
        l, s = layers[i], spec[i]
        g = l.geom
        frac = s["weights"]
        if l.op == "conv":
            cin_hi = int(np.ceil(frac * g.in_c)) if frac > 0 else 0
        else:
            cin_hi = 1 if frac > 0 else 0
        if cin_hi == 0 and not s["bias"]:
            continue
        t = TrainSpec(i, np.arange(g.out_c, dtype=np.uint16), 0, cin_hi, s["bias"])
        s_w = np.asarray(l.s_w, dtype=np.float64)
        if qas:          # the paper's QAS: dW_q = -eta * s_x / s_w * (s_g G)
            wf, bf = lr * l.s_x / s_w, lr / (s_w * l.s_x)
        else:            # plain int8 SGD on the integers: dW_q = -eta' * dL/dW_q
            wf, bf = lr * l.s_x * s_w, lr * s_w * l.s_x
        if t.weights:
            t.w_mult, t.w_shift = quantize_multipliers(wf)
        if t.bias:
            t.b_mult, t.b_shift = quantize_multipliers(bf)
        train.append(t)
    if cut:
        branch = next((i for i, l in enumerate(layers) if l.inputs != (i - 1,)), None)
        if branch is not None:
            raise PlanError(f"split training runs chains only: layer {branch} ({layers[branch].op} "
                            f"{layers[branch].name}) reads {list(layers[branch].inputs)}")
        if not 1 <= cut <= len(layers) - 2:
            raise PlanError(f"cut {cut}: the board runs layers [0, cut) and the host at least the classifier and "
                            f"its softmax, so the cut is 1 to {len(layers) - 2}")
        train = [t for t in train if t.layer < cut]
    elif not train:
        raise PlanError(f"policy {policy!r} trains nothing")
    first = min(t.layer for t in train) if train else cut
    last = cut - 1 if cut else len(layers) - 1

    # layers whose input gradient is needed: every layer above the lowest trainable one
    grads = {}
    for i in range(first + 1, last + 1):
        l = layers[i]
        if l.op in PARAMETRIC:
            g = l.geom
            s_w = np.asarray(l.s_w, dtype=np.float64)
            E = int(np.floor(-np.log2(s_w.max())))
            fan = g.out_c * g.taps if l.op == "conv" else g.taps * g.depth_mult
            # keep max|g'| * 128 * fan < 2^31 (the binding's bound) with |gy| < 2^15
            h = max(0, int(np.ceil(np.log2(128 * fan))) - 16)
            mult, shift = quantize_multipliers(s_w * 2.0 ** (E - h))
            grads[i] = GradSpec(i, mult, shift, -E + h)

    # weight-gradient bound of the update kernels: max|gy| * 255 * positions < 2^31, where gy is the
    # softmax gradient (|g| <= 2^15) at the classifier and a narrowed gradient (|g| <= 2^14) below
    notes = []
    classifier = len(layers) - 2 if layers[-1].op == "softmax" else len(layers) - 1
    for t in train:
        g_max = 1 << (15 if t.layer == classifier else 14)
        if t.weights and layers[t.layer].geom.positions * 255 * g_max >= 1 << 31:
            notes.append(f"layer {t.layer}: {layers[t.layer].geom.positions} output positions exceed the weight-gradient "
                         f"bound ({(1 << 31) // (255 * g_max)}): its weights stay frozen, its bias trains")
            t.cin_hi = t.cin_lo
            t.w_mult = t.w_shift = None
            if not t.bias:
                t.bias = True
                t.b_mult, t.b_shift = quantize_multipliers(lr / (np.asarray(layers[t.layer].s_w, np.float64) * layers[t.layer].s_x)
                                                           if qas else lr * np.asarray(layers[t.layer].s_w) * layers[t.layer].s_x)

    # the backward pass runs down a chain: above the lowest trained layer no layer may read two
    # inputs or share its input with another reader (a gradient through a branch is not built)
    readers = model.readers()
    for i in range(last, first, -1):
        if layers[i].inputs != (i - 1,) or readers.get(i - 1) != [i]:
            what = (f"layer {i} ({layers[i].op} {layers[i].name}) reads {len(layers[i].inputs)} inputs"
                    if len(layers[i].inputs) > 1 or layers[i].inputs != (i - 1,) else
                    f"the output of layer {i - 1} ({layers[i - 1].op} {layers[i - 1].name}) is read by layers "
                    f"{readers.get(i - 1)}")
            above = [k for k in parametric_layers(model) if k >= i]
            raise PlanError(f"policy {policy if isinstance(policy, str) else 'custom'!r} trains layer {first}, and its "
                            f"backward pass would cross a branch of the graph: {what}; gradients through "
                            f"branches are not supported yet: train layers above layer {i - 1} "
                            f"(policy 'last-{len(above)}'{' or bias-free variants' if not above else ''})")

    # what the backward pass reads from the forward pass
    kept, masks = set(), set()
    for t in train:
        if t.weights and t.layer > 0:
            kept.add(t.layer - 1)            # the layer's input
    for i in range(first + 1, last + 1):
        l = layers[i]
        if l.op == "maxpool" and i > 0:
            kept.add(i - 1)                  # argmax is recomputed from the input
        prev = layers[i - 1]
        if prev.op in PARAMETRIC and l.op != "softmax":
            masks.add(i - 1)                 # the gradient into layer i's input passes prev's clamp
    if cut and train and layers[cut - 1].op in PARAMETRIC:
        masks.add(cut - 1)                   # the host narrows the gradient at the cut through it
        # (the logits' int8 saturation is a quantization artifact, not part of the function: the
        # softmax gradient passes it, or a saturated logit could never come down again)
    kept, masks = sorted(kept), sorted(masks)

    buffers, arena, naive, step = _layout(model, first, kept, masks, grads, train, max_classes, val_capacity,
                                    replay_per_class, cut or len(layers))
    inference = inference_arena(model, max_classes)
    # RAM: the weights of layers whose weights train and every trained bias; frozen weights (also
    # those of bias-only layers) stay in the model file / flash
    ram_w = 0
    frozen = 0
    by_layer = {t.layer: t for t in train}
    for i, l in enumerate(layers):
        if l.op not in PARAMETRIC:
            continue
        t = by_layer.get(i)
        nb = 4 * (l.b.size if l.b is not None else 0)
        if t is not None and t.weights:
            ram_w += l.w.size
        else:
            frozen += l.w.size
        if t is not None and t.bias:
            ram_w += nb
        else:
            frozen += nb
    trainable_layers = set(by_layer)
    # the classifier grows to max_classes rows: reserve them
    cls = layers[-2] if layers[-1].op == "softmax" else layers[-1]
    extra_rows = max_classes - model.n_classes
    if len(layers) - 2 in trainable_layers and extra_rows > 0:
        ram_w += extra_rows * (cls.geom.taps * cls.geom.in_c + 4)
    p = Plan(str(policy) if not isinstance(policy, dict) else "custom", lr, qas, train, grads, first, kept, masks,
             buffers, arena, inference, ram_w, frozen, max_classes, seed)
    p.word_bytes = word_bytes
    p.sum_of_tensors = naive
    p.step_arena = step
    p.weights_bytes = sum(l.w.size for l in layers if l.op in PARAMETRIC and l.w is not None)
    p.weights_in_flash = 0 < p.weights_bytes <= weights_flash_bytes
    p.n_backward = (cut or len(layers) - 1) - first
    p.n_layers = len(layers)
    p.model_heap_bytes = _model_heap_bytes(model, p, weights_flash_bytes)
    n_in = int(np.prod(model.input_shape))
    if val_capacity and buffers["val_x"].size == 0:
        notes.append(f"validation samples ({val_capacity} x {n_in} B) are kept in a file on the board's flash, "
                     "not in RAM")
    if replay_per_class and buffers["replay"].size == 0:
        notes.append(f"no replay memory: {max_classes} classes x {replay_per_class} x {n_in} B do not belong in RAM; "
                     "class addition learns from the new class's samples alone")
    p.notes = notes
    p.cut = cut
    if cls.op == "conv" and cls.s_w is not None:
        from microtrain.model.fixedpoint import quantize_multiplier
        p.class_add = quantize_multiplier(float(cls.s_x / np.max(cls.s_w)))
    if budget is not None and p.budget_bytes > budget:
        raise PlanError(_suggest(model, p, budget, lr, qas, weights_flash_bytes))
    return p


def _model_heap_bytes(model, p, flash_bytes):
    """load()'s heap besides the weights (see Plan.model_bytes), from the model file's layout
    (docs/model-format.md): the sections the board keeps, BIAS and QPAR unless the flash region
    holds them after WGHT, and ~250 object words, 110 per layer and ~70 per trained layer (measured
    on the unix port and the emulated Pico: tests/test_scale.py checks it against the heap)."""
    from microtrain.board import modelfile as fmt
    size = struct.calcsize
    layers = model.layers
    bias = qpar = 0
    for l in layers:
        if l.op in PARAMETRIC:
            bias += 4 * l.geom.out_c if l.b is not None else 0
            qpar += 8 * np.asarray(l.mult).size
        elif l.op == "add":
            qpar += 4 * fmt.ADD_PARAMS
    for t in p.train:
        out_c = layers[t.layer].geom.out_c
        qpar += 8 * out_c * (bool(t.weights) + bool(t.bias))
    qpar += sum(8 * layers[i].geom.out_c for i in p.grads)
    plan = (size(fmt.PLAN_FMT) + len(p.train) * (size(fmt.TRAIN_FMT) + 4) + len(p.grads) * size(fmt.GRAD_FMT)
            + 2 * (len(p.kept) + len(p.masks)) + 3 + len(p.buffers) * size(fmt.BUFFER_FMT))
    kept = (size(fmt.INFO_FMT) + len(layers) * size(fmt.LAYER_FMT) + plan + 2 * sum(len(t.rows) for t in p.train)
            + len("\n".join(model.labels)))
    if p.weights_in_flash:                   # the region holds a span of the file: WGHT, then BIAS, QPAR
        room = flash_bytes - p.weights_bytes
        bias, qpar = (0, 0 if qpar <= room - bias else qpar) if bias <= room else (bias, qpar)
    return kept + bias + qpar + p.word_bytes * (250 + 110 * len(layers) + 70 * len(p.train))


def _suggest(model, p, budget, lr, qas, weights_flash_bytes):
    msg = f"the plan needs {p.peak_bytes} B of RAM + {p.model_bytes} B for the loaded model"
    if p.weights_ram_bytes:
        msg += f" (with {p.weights_ram_bytes} B of weights read into the heap)"
    msg += f", the board budget is {budget} B"
    for alt in ("sparse", "last-1", "bias-only"):
        if alt == p.policy:
            continue
        try:
            q = plan(model, alt, lr, qas, None, p.max_classes, word_bytes=p.word_bytes,
                     weights_flash_bytes=weights_flash_bytes)
        except PlanError:
            continue
        if q.budget_bytes <= budget:
            return f"{msg}; policy {alt!r} fits ({q.budget_bytes} B)"
    return f"{msg}; no built-in policy fits: use a smaller model or a board with more RAM"


def _layout(model, first, kept, masks, grads, train, max_classes, val_capacity, replay_per_class, top):
    """One arena for training, laid out by liveness (microtrain.board.arena, the board's own
    code): the forward pass runs layer i at step i, the backward pass layer top - 1 down to first
    at the steps after the last layer.  Each layer's output lives until its last reader (the
    backward pass's reads included: a trained layer's input, a max pool's input), each clamp mask
    from its layer to the backward step that reads it, the gradient buffers over the backward
    pass only; the kernels' scratch and what the board keeps between steps (validation samples, a
    small replay memory per class, the telemetry ring) for ever.  Returns (buffers, arena bytes,
    the sum of every buffer's bytes: what the arena would be without sharing, and the arena of the
    step alone: without the validation samples, replay memory and telemetry ring)."""
    layers = model.layers
    n = len(layers)
    end = n + (top - first) + 1                  # the last step: after the backward pass

    def bstep(i):                                # the backward step of layer i
        return n + (top - 1 - i)

    sizes = [l.out_size for l in layers]
    for i in (n - 2, n - 1):                     # logits and probabilities grow to max_classes
        if layers[i].geom.out_c == model.n_classes:
            sizes[i] = max(sizes[i], max_classes)
    until = {n - 1: end}                         # the probabilities: read after the backward pass
    if top < n:
        until[top - 1] = end                     # split training: the activation at the cut
    for i in kept:
        reader = i + 1
        until[i] = max(until.get(i, 0), bstep(reader))
    for t in train:
        if t.weights:
            until[layers[t.layer].inputs[0]] = max(until.get(layers[t.layer].inputs[0], 0), bstep(t.layer))
    items, alias = arena.activations([l.inputs for l in layers], sizes, int(np.prod(model.input_shape)), until,
                                     [i for i, l in enumerate(layers) if l.op == "add" and i not in until])
    for i in masks:
        # mask i is read by the backward step of its reader (the logits' mask by the softmax gradient)
        read = end if i == top - 1 and top < n else n if i + 1 == n - 1 else bstep(i + 1)
        items.append((f"mask{i}", (sizes[i] + 7) // 8, i, read))
    # backward: gradients w.r.t. layer outputs along the path (int16), the rescaled gradient,
    # the int32 input-gradient accumulator; layers [first, top) (top: the cut of a split plan)
    path = range(first, top)
    gmax = max((sizes[i] for i in path), default=0)
    gin = max((layers[i].in_size for i in path if i > first), default=0)
    items.append(("grad0", 2 * max(gmax, gin), n, end))
    items.append(("grad1", 2 * max(gmax, gin), n, end))
    items.append(("gacc", 4 * gin, n, end))
    scratch = 0
    for l in layers:
        if l.op == "conv":
            scratch = max(scratch, reference.conv_forward_scratch(l.geom))
    for t in train:
        l = layers[t.layer]
        if l.op == "conv":
            scratch = max(scratch, reference.conv_update_scratch(l.geom, t.cin_lo, t.cin_hi))
        elif l.op == "dwconv":
            scratch = max(scratch, reference.dwconv_update_scratch(l.geom))
    n_in = int(np.prod(model.input_shape))
    val = val_capacity * n_in if val_capacity * n_in <= SAMPLES_IN_ARENA else 0
    replay = max_classes * replay_per_class * n_in
    replay = replay if replay <= SAMPLES_IN_ARENA else 0
    for name, size in (("scratch", scratch), ("val_x", val), ("val_y", val_capacity),
                       ("replay", replay), ("replay_n", max_classes),
                       ("telem", telemetry.RING_RECORDS * telemetry.RECORD_SIZE)):
        items.append((name, size, 0, end))
    offs, size = arena.place(items)
    stores = ("val_x", "val_y", "replay", "replay_n", "telem")
    step = arena.place([it for it in items if it[0] not in stores])[1]
    bufs = {}
    for name, nbytes, _f, _l in items:
        bufs[name] = Buffer(name, offs[name], nbytes)
    for i in range(n):                           # every layer's output by its own name
        b = bufs[arena.name_of(i, alias)]
        bufs[f"act{i}"] = Buffer(f"act{i}", b.offset, sizes[i])
    naive = sum(arena.a4(nb) for _n, nb, _f, _l in items) + sum(arena.a4(sizes[i]) for i in alias)
    return bufs, size, naive, step


def inference_arena(model, max_classes=None):
    """The board's inference arena (microtrain.board.model, the same computation): the
    activations by liveness, then the convolutions' scratch."""
    layers = model.layers
    sizes = [l.out_size for l in layers]
    for i in (len(layers) - 2, len(layers) - 1):
        if max_classes and layers[i].geom.out_c == model.n_classes:
            sizes[i] = max(sizes[i], max_classes)
    items, _ = arena.activations([l.inputs for l in layers], sizes, int(np.prod(model.input_shape)),
                                 inplace=[i for i, l in enumerate(layers) if l.op == "add"])
    scratch = max([reference.conv_forward_scratch(l.geom) for l in layers if l.op == "conv"] + [0])
    return arena.place(items)[1] + scratch

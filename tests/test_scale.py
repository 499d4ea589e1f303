"""Paper scale (issue 15): the MLPerf Tiny models in ../shared/models/mlperf_tiny convert as graphs
(ResNet-8's residual ADDs included) and run bit-exact with ai-edge-litert's reference kernels layer by
layer; the planner's liveness arena is a valid layout (no two live buffers share a byte) far below
the sum of its tensors, `last-1` within 10 % of the inference arena plus its trainable tensors; the
board (MicroPython unix port) trains the graphs bit-identically with the host simulator, inference
arena and validation samples in a flash file included."""

import os
import struct

import numpy as np
import pytest

from microtrain.board import arena
from microtrain.convert.from_tflite import convert, load_tflite
from microtrain.device import boards, unixport
from microtrain.model import modelfile, qmodel
from microtrain.plan import planner
from microtrain.sim import simulator
from tests.conftest import SHARED_MODELS
from tests.test_convert_tflite import ModelBuilder, add_fc, assert_bit_exact, model_bytes

MLPERF = os.path.join(SHARED_MODELS, "mlperf_tiny")
MODELS = ("vww_96_int8", "pretrainedResnet_quant", "kws_ref_model", "ad01_int8")
PICO = boards.get("rpi_pico").heap_bytes
PICO_FLASH = boards.get("rpi_pico").weights_flash_bytes


def path(name):
    return os.path.join(MLPERF, name + ".tflite")


@pytest.fixture(scope="module")
def models():
    return {m: load_tflite(path(m)) for m in MODELS}


def _inputs(model, n, seed):
    """Random int8 samples and smooth ones (neighbouring pixels alike, as in images and spectra)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(model.input_shape))
    out = [rng.integers(-128, 128, size, dtype=np.int8) for _ in range(n)]
    for _ in range(n):
        v = np.cumsum(rng.normal(0, 6, size)).astype(np.int64)
        out.append(np.clip(v - v.mean(), -128, 127).astype(np.int8))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_mlperf_models_are_bit_exact_with_litert_layer_by_layer(models, name):
    data = model_bytes(path(name))
    conv, compared = assert_bit_exact(data, _inputs(models[name], 2, seed=1))
    layers = conv.model.layers
    assert compared == 4 * sum(t is not None for t in conv.tensors)
    if name == "pretrainedResnet_quant":
        adds = [i for i, l in enumerate(layers) if l.op == "add"]
        assert len(adds) == 3 and all(len(layers[i].inputs) == 2 for i in adds)
        # the graph: the residual branches read a layer that another layer reads too
        readers = conv.model.readers()
        assert sum(len(r) > 1 for r in readers.values()) == 3
    assert conv.model.macs == {"vww_96_int8": 7489664, "pretrainedResnet_quant": 12501632,
                               "kws_ref_model": 2656768, "ad01_int8": 264192}[name]


def test_a_residual_add_reading_the_input_is_bit_exact():
    """x -> FC -> ADD(x, fc) with a fused RELU6 and its own scales, over all 256 input values."""
    rng = np.random.default_rng(3)
    mb = ModelBuilder()
    x = mb.act([1, 8], 0.05, 3)
    mb.vals[x] = rng.integers(-128, 128, (32, 1, 8)).astype(np.float64)
    mb.vals[x][:, 0, 0] = np.arange(-128, 128, 8)
    f = add_fc(mb, rng, x, 8)
    y = mb.act([1, 8], 0.04, -20)
    mb.op("ADD", [x, f], [y], "AddOptions", FusedActivationFunction=3)
    data = mb.build([x], [y])
    xs = [np.full(8, v, np.int8) for v in range(-128, 128)] + list(mb.vals[x].reshape(-1, 8).astype(np.int8))
    conv, compared = assert_bit_exact(data, xs)
    add = conv.model.layers[1]
    assert add.op == "add" and add.inputs == (-1, 0) and compared == 2 * len(xs)
    # broadcasting is refused with the operator named
    mb = ModelBuilder()
    a = mb.act([1, 8], 0.05, 0)
    mb.vals[a] = np.zeros((1, 1, 8))
    b = add_fc(mb, rng, a, 1)
    y = mb.act([1, 8], 0.05, 0)
    mb.op("ADD", [a, b], [y], "AddOptions")
    with pytest.raises(ValueError, match=r"operator 1 \(ADD\).*broadcasting"):
        convert(mb.build([a], [y]))


def _forward_in_arena(model, bufs, size, x):
    """The forward pass executed in one byte arena laid out by `bufs` ({name: (offset, size)}):
    every layer reads its inputs from and writes its output to the arena, so a buffer overwritten
    while still needed corrupts the result."""
    mem = np.zeros(size, np.int8)

    def view(name, n):
        off = bufs[name][0]
        return mem[off:off + n]

    view("input", x.size)[:] = x
    for i, l in enumerate(model.layers):
        ins = [view("input", x.size) if j < 0 else view(f"act{j}", model.layers[j].out_size).copy()
               for j in l.inputs]
        view(f"act{i}", l.out_size)[:] = qmodel.run_layer(l, *ins)[0]
    return view(f"act{len(model.layers) - 1}", model.layers[-1].out_size).copy()


@pytest.mark.parametrize("name", MODELS)
def test_liveness_arena_is_valid_and_earns_its_memory(models, name):
    model = models[name]
    x = _inputs(model, 1, seed=5)[1]
    want = qmodel.forward(model, x)
    for policy in ("sparse", "last-1"):
        p = planner.plan(model, policy)
        bufs = {b.name: (b.offset, b.size) for b in p.buffers.values()}
        assert np.array_equal(_forward_in_arena(model, bufs, p.arena_size, x), want), policy
        # what lives for ever shares no byte with anything
        for keep in ("scratch", "val_x", "val_y", "replay", "replay_n", "telem"):
            o, n = bufs[keep]
            for other, (o2, n2) in bufs.items():
                if other != keep and n and n2:
                    assert o + n <= o2 or o2 + n2 <= o, (policy, keep, other)
        assert p.inference_arena <= p.arena_size < p.sum_of_tensors
    # the board's inference arena (microtrain.board.arena, no plan) is valid too
    items, alias = arena.activations([l.inputs for l in model.layers], [l.out_size for l in model.layers],
                                     x.size, inplace=[i for i, l in enumerate(model.layers) if l.op == "add"])
    offs, size = arena.place(items)
    bufs = {"input": (offs["input"], x.size)}
    bufs.update({f"act{i}": (offs[arena.name_of(i, alias)], 0) for i in range(len(model.layers))})
    assert np.array_equal(_forward_in_arena(model, bufs, size, x), want)
    assert size + max([planner.reference.conv_forward_scratch(l.geom) for l in model.layers if l.op == "conv"]
                      + [0]) == planner.inference_arena(model)
    # last-1: the step's arena and the classifier within 10 % of the inference arena plus the
    # classifier (the samples and telemetry the board keeps besides: docs/scale.md)
    p = planner.plan(model, "last-1")
    assert p.step_arena + p.weight_bytes_ram <= 1.10 * (p.inference_arena + p.weight_bytes_ram), \
        (p.step_arena, p.inference_arena)


def test_every_model_fits_the_pico_with_weights_in_flash(models):
    """convert --board rpi_pico: each model plans within the Pico's heap, frozen weights in flash;
    person detection's sparse plan is fitted to the budget (its whole sparse set is not)."""
    for name, model in models.items():
        p = planner.plan(model, "sparse", budget=PICO, weights_flash_bytes=PICO_FLASH)
        assert p.weights_in_flash and p.budget_bytes <= PICO, (name, p.budget_bytes)
    vww = models["vww_96_int8"]
    assert planner.plan(vww, "sparse").budget_bytes > PICO
    p = planner.plan(vww, "sparse", budget=PICO, weights_flash_bytes=PICO_FLASH)
    assert "sparse from layer" in p.notes[0] and p.first_backward > 0
    assert any("file on the board's flash" in n for n in p.notes)
    with pytest.raises(planner.PlanError, match=r"branch of the graph: layer 11 \(add add11\)"):
        planner.plan(models["pretrainedResnet_quant"], "bias-only")


def _board_matches_simulator(model, p, xq, labels):
    sim = simulator.Simulator(model, p)
    for x, y in zip(xq, labels):
        sim.step(x, int(y))
    state, rng, n = sim.trainable_state()
    board = unixport.trained_state(model, p, xq, labels.astype(np.uint8))
    assert board[-8:] == struct.pack("<II", rng, n), "PRNG state or step counter differ"
    assert board[:-8] == state, "trainable tensors differ"
    assert state != simulator.Simulator(model, p).trainable_state()[0], "training changed nothing"


def test_the_board_trains_resnet_and_person_detection_like_the_simulator(models):
    """Real MicroPython: ResNet-8 (a graph: its forward pass through three residual ADDs in the
    liveness arena) and person detection with its Pico-fitted sparse plan (backward through 21
    layers), step for step the same bytes as the host simulator."""
    rn = models["pretrainedResnet_quant"]
    xs = np.array(_inputs(rn, 4, seed=2))
    _board_matches_simulator(rn, planner.plan(rn, "sparse"), xs, np.arange(8) % 10)
    vww = models["vww_96_int8"]
    p = planner.plan(vww, "sparse", budget=PICO, weights_flash_bytes=PICO_FLASH)
    xs = np.array(_inputs(vww, 2, seed=3))
    _board_matches_simulator(vww, p, xs, np.array([0, 1, 1, 0]))


def test_person_detection_learns_brick_from_grass_on_the_board(models):
    """The paper's use: a pretrained camera model learns a new two-class task from a few dozen
    samples.  Person detection, its sparse plan fitted to the Pico's heap after import (biases
    of the last blocks, half the input channels of the last pointwise conv, the classifier), 40
    crops of scikit-image's brick and grass photographs (top halves), one pass: on 60 held-out
    crops (bottom halves) it goes from chance to >= 0.7, and MicroPython trained the same bytes."""
    from microtrain import datasets
    vww = models["vww_96_int8"]
    p = planner.plan(vww, "sparse", budget=PICO, weights_flash_bytes=PICO_FLASH)
    assert p.peak_bytes <= 160 * 1024 and p.budget_bytes <= PICO
    assert any(t.cin_hi for t in p.train if t.layer < len(vww.layers) - 1)
    (xtr, ytr), (xte, yte) = datasets.load_textures(("brick", "grass"), n_train=20, n_test=30)
    q = lambda X: np.asarray(vww.quantize_input(X.reshape(len(X), -1)), np.int8)   # noqa: E731
    order = np.random.default_rng(0).permutation(len(ytr))
    xtr, ytr, xte = q(xtr)[order], ytr[order], q(xte)
    sim = simulator.Simulator(vww, p)
    before = sim.evaluate(xte, yte)
    for x, y in zip(xtr, ytr):
        sim.step(x, int(y))
    after = sim.evaluate(xte, yte)
    print(f"person detection on brick vs grass: held-out {before:.2f} -> {after:.2f}")
    assert before <= 0.6 and after >= 0.7
    state, rng, n = sim.trainable_state()
    board = unixport.trained_state(vww, p, xtr, ytr.astype(np.uint8))
    assert board == state + struct.pack("<II", rng, n)


def test_inference_and_flash_validation_samples_on_the_board(models, tmp_path):
    """A plan of ResNet-8 keeps its validation samples in a file on flash: ten added (the ring
    holds eight), evaluate() on the board gives the host's accuracy on the last eight, and
    predict() in the inference arena (by liveness, no plan) the host's classes."""
    rn = models["pretrainedResnet_quant"]
    p = planner.plan(rn, "sparse")
    assert p.buffers["val_x"].size == 0
    xs = np.array(_inputs(rn, 5, seed=4))
    probs = [qmodel.forward(rn, x) for x in xs]
    pred = [int(np.argmax(v)) for v in probs]
    labels = [(c + (i % 3 == 0)) % 10 for i, c in enumerate(pred)]       # some right, some wrong
    modelfile.save(str(tmp_path / "m.mtm"), rn, p)
    (tmp_path / "x.bin").write_bytes(xs.astype(np.int8).tobytes())
    out = unixport.run(f"""
import microtrain
D = '{tmp_path}'
m = microtrain.load(D + '/m.mtm')
f = open(D + '/x.bin', 'rb')
xs = [f.read({xs.shape[1]}) for _ in range({len(xs)})]
print('PRED', [m.predict(x) for x in xs])
t = microtrain.Trainer(m, checkpoint_path=D + '/ck')
for x, y in zip(xs, {labels}):
    t.add_validation(x, y)
print('ACC', t.evaluate(), t.last_eval)
""")
    assert f"PRED {pred}" in out, out
    right = sum(p_ == y for p_, y in zip(pred[2:], labels[2:]))
    assert f"({right}, 8)" in out, (out, right)
    assert os.path.getsize(tmp_path / "ck.vals") == 8 * xs.shape[1]

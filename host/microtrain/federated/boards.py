"""The boards a federated client drives, one interface: `model()` (what the board holds now),
`load(model, parts)` (take the global's elements of a layout, keep everything else, personal
layers included), `train(x, y, epochs)`, `evaluate(x, y)`.

SimulatedBoard   the numpy simulator (microtrain.sim): the board step for step, bit for bit; the
                 simulation engine's 100+ boards.
SerialBoard      a board behind a serial port (a Pico, the virtual board, the emulated M0): the
                 global goes in as a checkpoint written beside the board's own, the board's link
                 session takes it (`reload`), samples stream over the framed link (each applied
                 once), and the update comes back in the checkpoint the stream ends with.  A board
                 that fails mid-round keeps its last complete checkpoint (two slots).  Only its
                 training sessions checkpoint (every CHECKPOINT_EVERY samples and at the end), so
                 its divergence guard acts at the same steps as the simulated board's.
"""

import io
import os
import time

import numpy as np

from microtrain.board import checkpoint as ckpt_format
from microtrain.federated import exchange
from microtrain.model import modelfile
from microtrain.sim.simulator import Simulator


def checkpoint_blobs(model, plan):
    """(tag, bytes) of what a board's checkpoint holds of `model`, in the trainer's order
    (firmware/microtrain/trainer.py `_state_blobs`): the whole weights of layers whose weights
    train, the biases that train."""
    for t in sorted(plan.train, key=lambda t: t.layer):
        l = model.layers[t.layer]
        if t.weights:
            yield b"W%03d" % t.layer, np.asarray(l.w, np.int8).tobytes()
        if t.bias:
            yield b"B%03d" % t.layer, np.asarray(l.b, "<i4").tobytes()


def as_board_holds(base, plan, model):
    """`base` (the model file) with what a checkpoint of `model` carries: a board keeps nothing
    else, so a simulated board must not either."""
    from microtrain.device.board_io import apply_checkpoint
    blobs = {tag.decode(): data for tag, data in checkpoint_blobs(model, plan)}
    return apply_checkpoint(base, {"blobs": blobs, "n_classes": base.n_classes})


CHECKPOINT_EVERY = 16      # a round's training stream checkpoints every 16 samples and at its end


class SimulatedBoard:
    """The simulator with the board trainer's own guard around it, step for step: the loaded
    global is a checkpoint, the training stream checkpoints every CHECKPOINT_EVERY samples and
    at its end, and the running error climbing past half-way from its best since the last
    checkpoint to the worst rolls back to that checkpoint and halves the learning rate
    (firmware/microtrain/trainer.py `_watch`)."""

    MIN_LR_SHIFT = -12

    def __init__(self, model, plan):
        self.plan = plan
        self.base = model.copy()
        self.sim = Simulator(model, plan)
        self.port = "simulated"
        self.loss_avg = self.best_avg = None
        self.since_ckpt = 0
        self.ckpt = None              # (model, rng, steps, lr_shift) of the newest checkpoint

    def model(self):
        return self.sim.model

    def _checkpoint(self):
        s = self.sim
        self.ckpt = (s.model.copy(), s.rng, s.steps, s.lr_shift)

    def load(self, model, parts):
        """As the board: the global's elements written into a checkpoint, which the trainer takes."""
        w, b = exchange.take(model, parts)
        self.sim.model = as_board_holds(self.base, self.plan, exchange.put(self.sim.model, parts, w, b))
        self._checkpoint()

    def _watch(self, err):
        a = (err << 3) if self.loss_avg is None else self.loss_avg - (self.loss_avg >> 3) + err
        self.loss_avg = a
        self.since_ckpt += 1
        if self.best_avg is None or a < self.best_avg:
            self.best_avg = a
        elif self.since_ckpt > 8 and a > self.best_avg + ((2048 - self.best_avg) >> 1) and self.ckpt is not None:
            s = self.sim
            lr = s.lr_shift
            m, s.rng, s.steps, ck_lr = self.ckpt
            s.model = m.copy()
            s.lr_shift = max(min(lr, ck_lr) - 1, self.MIN_LR_SHIFT)
            self.loss_avg = self.best_avg = None

    def _link_checkpoint(self):               # the trainer's checkpoint(), as the link calls it
        self._checkpoint()
        self.best_avg = self.loss_avg
        self.since_ckpt = 0

    def train(self, x, y, epochs=1):
        t0 = time.perf_counter()
        losses = []
        for _ in range(epochs):               # one stream per epoch, in one link session
            since = 0
            for xi, yi in zip(x, y):
                losses.append(self.sim.step(xi, int(yi)))
                self._watch(256 - self.sim.last_p)
                since += 1
                if since >= CHECKPOINT_EVERY:
                    self._link_checkpoint()
                    since = 0
            self._link_checkpoint()           # the stream's closing checkpoint
        n = len(losses)
        return {"samples": n, "loss": float(np.mean(losses)) if n else 0.0,
                "step_ms": 1000 * (time.perf_counter() - t0) / max(n, 1)}

    def evaluate(self, x, y):
        return self.sim.evaluate(x, y) if len(y) else 0.0

    def close(self):
        pass


class SimulatedSplitBoard(SimulatedBoard):
    """A split board (SplitBoard) in simulation: taking the global is the host setting its
    layers and the board checkpointing, as the link's checkpoint command does."""

    def load(self, model, parts):
        w, b = exchange.take(model, parts)
        self.sim.model = exchange.put(self.sim.model, parts, w, b)
        self._link_checkpoint()


class SerialBoard:
    """`model_path`: the host's copy of the model file pushed to the board as `name`."""

    def __init__(self, port, model_path, name="model.mtm", deadline=None, log=lambda *a: None):
        with open(model_path, "rb") as f:
            self.model_bytes = f.read()
        self.base, self.plan = modelfile.from_bytes(self.model_bytes)
        self.port, self.name, self.deadline, self.log = port, name, deadline, log
        self.ckpt_path = name.rsplit(".", 1)[0] + ".ckpt"

    # ---- the board's state, through its checkpoint ----
    def _newest(self, session):
        """The board's newest complete checkpoint, None on a board that never wrote one (slots that
        exist but are all unusable are an error: nothing is overwritten then)."""
        from microtrain.device.board_io import BoardError, model_id, read_checkpoint
        if not any(session.exists(self.ckpt_path + slot) for slot in ckpt_format.SLOTS):
            return None
        ck = read_checkpoint(session, self.ckpt_path)
        if ck["model_id"] != model_id(self.model_bytes):
            raise BoardError(f"the board's checkpoint {ck['slot']} belongs to another model file than "
                             f"{self.name} here: push this model (`microtrain push`) or train with --fresh")
        return ck

    def model(self):
        from microtrain.device.board_io import Session, apply_checkpoint
        with Session(self.port) as s:
            ck = self._newest(s)
        return self.base.copy() if ck is None else apply_checkpoint(self.base, ck)

    def load(self, model, parts):
        """Write the board's newest state with the layout's elements taken from `model` into the
        checkpoint slot that does not hold it (one generation on), then let the board take it."""
        from microtrain.device.board_io import Session, apply_checkpoint, model_id
        from microtrain.device.link import Link
        with Session(self.port) as s:
            ck = self._newest(s)
            have = self.base.copy() if ck is None else apply_checkpoint(self.base, ck)
            w, b = exchange.take(model, parts)
            new = exchange.put(have, parts, w, b)
            if ck is None:
                st = ckpt_format.State(0, model_id(self.model_bytes), 0, 0, -1, 0,
                                       self.plan.seed & 0xFFFFFFFF or 1, self.base.n_classes)
                slot, gen = 0, 1
            else:
                st = ckpt_format.State(0, ck["model_id"], ck["steps"], ck["samples"], ck["last_seq"],
                                       ck["lr_shift"], ck["rng"], ck["n_classes"])
                slot, gen = 1 - ckpt_format.SLOTS.index(ck["slot"][len(self.ckpt_path):]), ck["generation"] + 1
            st.generation = gen & 0xFFFFFFFF
            blobs = list(checkpoint_blobs(new, self.plan))
            if ck is not None:                           # class addition and the like: kept as they are
                blobs += [(t.encode(), v) for t, v in ck["blobs"].items() if t[0] not in "WB" or not t[1:].isdigit()]
            buf = io.BytesIO()
            ckpt_format.write(buf, st, blobs)
            s.put(buf.getvalue(), self.ckpt_path + ckpt_format.SLOTS[slot], force=True)
        with Link(self.port, self.name, checkpoint_every=0, log=self.log) as link, link.deadline(self.deadline):
            link.command("reload")

    def train(self, x, y, epochs=1):
        from microtrain.device.link import Link
        xq = np.asarray(x, np.int8)
        with Link(self.port, self.name, checkpoint_every=CHECKPOINT_EVERY, log=self.log) as link, \
                link.deadline(self.deadline):
            steps0 = link.steps
            t0 = time.perf_counter()
            for e in range(epochs):
                st = link.stream(xq, y)
            seconds = time.perf_counter() - t0
            n = len(y) * epochs
            tel = [r for r in link.telemetry(fetch=False) if r.get("kind") == "step"][-n:]
            loss = float(np.mean([r["loss"] for r in tel])) if tel else float("nan")
            step_ms = float(np.mean([r["us"] for r in tel])) / 1000 if tel else 1000 * seconds / max(n, 1)
        return {"samples": n, "loss": loss, "step_ms": step_ms, "seconds": seconds,
                "retransmissions": st["retransmissions"], "steps": link.steps - steps0}

    def evaluate(self, x, y):
        from microtrain.device.link import Link
        if not len(y):
            return 0.0
        cap = int(self.plan.buffers["val_y"].size) if "val_y" in self.plan.buffers else 8
        with Link(self.port, self.name, checkpoint_every=0, log=self.log) as link, link.deadline(self.deadline):
            right = link.evaluate(np.asarray(x, np.int8), y, capacity=cap)
            # no validation samples left on the board: its checkpoints would validate against them
            # and roll back on their own; in a federation the staged rollout is that guard
            link.command("clear_validation")
        return right / len(y)

    def close(self):
        pass



class SplitBoard:
    """A board in split training (a model file with a cut, docs/split.md) as a federation node:
    the board trains its layers below the cut on its own samples - they are its personal layers,
    never sent - and this host runs the layers above it, which are what the node exchanges.
    Between rounds (each Flower message may be a new process) the host side lives in a file
    next to the model (`<model>.<port>.host.npz`), with the sample its layers hold."""

    def __init__(self, port, model_path, name="model.mtm", deadline=None, log=lambda *a: None):
        from microtrain.cli.split import load_host, make_host
        with open(model_path, "rb") as f:
            self.base, self.board_plan = modelfile.from_bytes(f.read())
        self.host = make_host(self.base, self.board_plan)
        self.plan = self.host.sim.plan                     # the combined plan
        self.port, self.name, self.deadline, self.log = port, name, deadline, log
        self.ckpt_path = name.rsplit(".", 1)[0] + ".ckpt"
        self.state_path = "%s.%s.host.npz" % (os.path.splitext(model_path)[0],
                                              "".join(c if c.isalnum() else "_" for c in str(port)))
        load_host(self.host, self.state_path)

    def model(self):
        return self.host.model

    def load(self, model, parts):
        """The global's values of the host's layers (the board keeps its own)."""
        from microtrain.split.session import SplitLink
        for i in self.host.layers_trained:
            self.host.model.layers[i].w = np.asarray(model.layers[i].w, np.int8).copy()
            self.host.model.layers[i].b = np.asarray(model.layers[i].b, np.int32).copy()
        # the board checkpoints now: a rollback in this round comes back to its layers with these
        with SplitLink(self.port, self.name, log=self.log) as link, link.deadline(self.deadline):
            link.command("checkpoint")
            self.host.at = link.last_seq         # the host's layers (the global's) pair with this state
            self.host.snapshots = {}
        self._save()

    def _save(self):
        from microtrain.cli.split import save_host
        save_host(self.host, self.state_path)

    def train(self, x, y, epochs=1):
        from microtrain.device.board_io import Session
        from microtrain.split.session import SplitLink, sample_file
        records = sample_file(x, y)                  # the board's own samples (its recorder's file)
        with Session(self.port) as s:
            if not s.same(records, "samples.bin"):
                s.replace(records, "samples.bin")
        t0 = time.perf_counter()
        losses = []
        with SplitLink(self.port, self.name, log=self.log) as link, link.deadline(self.deadline):
            for _ in range(epochs):
                st = link.split("samples.bin", len(y), self.host, losses=losses)
        self._save()
        n = len(y) * epochs
        return {"samples": n, "loss": float(np.mean(losses)) if losses else 0.0,
                "step_ms": 1000 * (time.perf_counter() - t0) / max(n, 1), "stats": st}

    def evaluate(self, x, y):
        """Accuracy of the whole model - the board's layers from its newest checkpoint, the
        host's as they are - on the node's validation samples."""
        from microtrain.device.board_io import BoardError, Session, apply_checkpoint, read_checkpoint
        if not len(y):
            return 0.0
        try:
            with Session(self.port) as s:
                ck = read_checkpoint(s, self.ckpt_path)
            model = apply_checkpoint(self.host.model, ck)
        except BoardError:                           # nothing trained yet: the file's lower layers
            model = self.host.model
        return Simulator(model, self.plan).evaluate(x, y)

    def close(self):
        pass

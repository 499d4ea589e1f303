"""`microtrain train --split`: the board trains its layers below the cut on its own samples, the
host the layers above; only activations and gradients cross the link (microtrain.split)."""

import os

import click
import numpy as np

SAMPLES_ON_BOARD = "samples.bin"


def host_state_path(model_path):
    return os.path.splitext(model_path)[0] + ".host.npz"


def make_host(model, board_plan, float_host=False):
    from microtrain.plan import split as S
    from microtrain.split.host import FloatHost, IntegerHost
    combined = S.from_file(model, board_plan)
    cls = FloatHost if float_host else IntegerHost
    return cls(model, combined, board_plan.cut, bool(board_plan.train))


def save_host(host, path):
    if host.at is None:                  # it never met the board: nothing to keep
        return
    st = host.state()
    arrays = {"at": np.array(host.at), "kind": np.array(host.kind)}
    for i, (w, b) in st.items():
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    np.savez(path, **arrays)


def load_host(host, path):
    """The host's layers as a previous run left them (and the sample they hold), if saved."""
    if not os.path.exists(path):
        return False
    d = np.load(path)
    if str(d["kind"]) != host.kind:
        raise click.ClickException(f"{path} holds a {d['kind']} host side, this run uses a {host.kind} one")
    host.set_state({i: (d[f"w{i}"], d[f"b{i}"]) for i in host.state()})
    host.at = int(d["at"])
    return True


def run(data, model_path, port, name, label, kind, epochs, float_host, push, fresh, deadline, echo=click.echo):
    from microtrain.board import checkpoint as ckpt_format
    from microtrain.cli.report import progress_view
    from microtrain.cli.samples import load_samples
    from microtrain.device import board_io
    from microtrain.device.board_io import BoardError, Session
    from microtrain.device.link import LinkError
    from microtrain.model import modelfile
    from microtrain.split.session import SplitLink, merged_model, sample_file
    if not model_path:
        raise click.ClickException("--split needs --model: the split model file that was pushed")
    with open(model_path, "rb") as f:
        original = f.read()
    model, plan = modelfile.load(model_path)
    if plan is None or not plan.cut:
        raise click.ClickException(f"{model_path} has no split plan: convert it with `microtrain convert --split`")
    host = make_host(model, plan, float_host)
    state = host_state_path(model_path)
    if fresh and os.path.exists(state):
        os.remove(state)
    elif load_host(host, state):
        echo(f"host side: resumed from {state} (sample {host.at})")
    x, y, how = load_samples(data, model, label, kind)
    echo(f"{data}: {len(x)} samples of {x.shape[1]} values ({how})")
    # the board's own samples: written once to its flash as its recorder would (the stand-in for
    # the sensor); from here on only activations at the cut and gradients cross the link
    records = sample_file(x, y)
    try:
        with Session(port) as s:
            if not s.same(records, SAMPLES_ON_BOARD):
                s.replace(records, SAMPLES_ON_BOARD)
    except BoardError as e:
        raise click.ClickException(f"writing the samples to the board: {e}")
    echo(f"the board holds {len(x)} samples in {SAMPLES_ON_BOARD}; cut at layer {plan.cut}: the board runs layers "
         f"0..{plan.cut - 1}, the host ({host.kind}) layers {plan.cut}..{len(model.layers) - 1}")
    deadline = deadline or 120.0 + 2.0 * len(x) * epochs
    link = SplitLink(port, name, fresh=fresh)
    try:
        with link.deadline(deadline), link, progress_view("split training", len(x) * epochs) as show:
            for e in range(epochs):
                st = link.split(SAMPLES_ON_BOARD, len(x), host,
                                progress=lambda done, total, e=e: show(e * len(x) + done))
                save_host(host, state)
    except LinkError as err:
        save_host(host, state)
        raise click.ClickException(f"split training: {err}")
    echo(f"{st['samples']} samples, {st['samples_per_s']:.1f} samples/s, {st['bytes_per_sample']:.0f} bytes/sample "
         f"on the wire (activations and gradients only), host {1000 * st['host_s'] / max(st['samples'], 1):.1f} ms/sample, "
         f"{st['retransmissions']} retransmissions, {st['host_rollbacks']} host rollbacks")
    if not push:
        echo(f"host side kept in {state}; run again to go on, or without --no-push to push the whole model")
        return
    ckpt = name.rsplit(".", 1)[0] + ".ckpt"
    try:
        with Session(port) as s:
            ck = board_io.read_checkpoint(s, ckpt)
            trained = merged_model(host, ck)
            data_out = (modelfile.replace_tensors(original, trained) if host.kind == "integer"
                        else modelfile.to_bytes(trained, plan))
            out = os.path.splitext(model_path)[0] + ".trained.mtm"
            with open(out, "wb") as f:
                f.write(data_out)
            s.replace(data_out, name)
            # the checkpoints belonged to the old file; what they held is in the new one
            stale = [ckpt + store + slot for store in ("", ".best") for slot in ckpt_format.SLOTS] + [ckpt + ".val"]
            s.exec("import os\nfor p in %r:\n try:\n  os.remove(p)\n except OSError:\n  pass" % (stale,))
    except BoardError as e:
        raise click.ClickException(f"pushing the trained model: {e}")
    os.remove(state)
    echo(f"wrote {out} and pushed it as {name}: the board classifies alone now (its layers {'requantized' if host.kind == 'float' else 'as trained'}); "
         f"to split-train it further: --model {out} --fresh")

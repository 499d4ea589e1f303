"""`microtrain adapt`: the board adapts with forward passes only, from K anchors per class of
its own samples; only their embeddings and statistics go up, only a small delta comes down
(microtrain.adapt, docs/adapt.md)."""

import click

METHODS = ("imprint", "restats", "head", "correct", "generator")
FAMILIES = ("camera", "imu")


def _distortion(family):
    from microtrain import datasets
    if family == "camera":
        return lambda X, s: datasets.shift_digits(X, seed=s)[0]
    return lambda X, s: datasets.shift_imu(X, s, max_deg=180, gain_sd=0.5)[0]


@click.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--port", "-p", envvar="MICROTRAIN_PORT", help="Serial port of the board (or env MICROTRAIN_PORT).")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The model file that was pushed.")
@click.option("--anchors", "k", default=4, show_default=True, type=click.IntRange(1, 255),
              help="Anchors per class the board picks and sends.")
@click.option("--method", type=click.Choice(METHODS), default="head", show_default=True,
              help="imprint / restats: computed on the board; head / correct / generator: on the host.")
@click.option("--source", type=click.Path(exists=True, dir_okay=False),
              help="Samples the model was trained on (restats, correct, generator): their statistics.")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False),
              help="Labelled samples the board keeps to check the delta (dropped accuracy: undone).")
@click.option("--domains", default=60, show_default=True, type=click.IntRange(4),
              help="generator: simulated domains it is fitted on.")
@click.option("--distortion", type=click.Choice(FAMILIES), default="imu", show_default=True,
              help="generator: the family of sensor distortions of the simulated domains.")
@click.option("--limit", default=0, type=click.IntRange(0), help="Only the last LIMIT samples of DATA (0: all).")
@click.option("--name", default="model.mtm", show_default=True, help="The model file on the board.")
@click.option("--fresh", is_flag=True, help="Start from the model file (forget the board's checkpoints).")
def adapt(data, port, model_path, k, method, source, validation, domains, distortion, limit, name, fresh):
    """Adapt the board's model to its own samples DATA without backprop.

    DATA (CSV, NPZ) are the board's labelled samples: written to its flash as its recorder
    would, they never come back.  The board picks --anchors per class by integer farthest-point
    sampling in its embedding space; the delta is applied atomically with a checkpoint."""
    from microtrain.adapt import adaptors, core
    from microtrain.adapt.session import exchange
    from microtrain.cli.samples import load_samples
    from microtrain.device import board_io
    from microtrain.model import modelfile
    if not port:
        raise click.ClickException("no board: give --port (or set MICROTRAIN_PORT)")
    with open(model_path, "rb") as f:
        mid = board_io.model_id(f.read())
    model = modelfile.load(model_path)[0]
    x, y, how = load_samples(data, model)
    click.echo(f"{data}: {len(x)} samples ({how})")
    src = gen = None
    if method in ("restats", "correct", "generator"):
        if not source:
            raise click.ClickException(f"--method {method} needs --source: the samples the model was trained on")
        xs, ys, _ = load_samples(source, model)
        src = core.stats(model, xs)
        if method == "generator":
            import numpy as np
            X = ((xs.astype(np.float64) - model.input_zero_point) * model.input_scale).reshape((len(xs),) + tuple(
                model.input_shape))
            click.echo(f"fitting the generator on {domains} simulated {distortion} domains ...")
            gen = adaptors.Generator(model, src).fit(X, ys, _distortion(distortion), k, domains)
    xv = yv = None
    if validation:
        xv, yv, _ = load_samples(validation, model)
    try:
        r = exchange(port, name, model, mid, x, y, k, method, source=src, generator=gen, xv=xv, yv=yv, limit=limit,
                     fresh=fresh, log=click.echo)
    except ValueError as e:
        raise click.ClickException(str(e))
    a = r["anchors"]
    click.echo(f"anchors: {a['anchors']} ({k} per class) of {a['records']} samples; up {r['bytes_up']} B "
               f"(embeddings of {a['embedding']} B + layer statistics), down {r['bytes_down']} B of delta")
    where = "board" if method in adaptors.BOARD_METHODS else "host"
    click.echo(f"{method} ({where}): {r['tensors']} tensors; board time {r['total_us'] / 1000:.0f} ms")
    if r["before"] is None:
        click.echo("applied and checkpointed (no validation samples on the board to check it)")
    elif r["kept"]:
        click.echo(f"validation {r['before'] / 10:.1f}% -> {r['after'] / 10:.1f}%: kept and checkpointed")
    else:
        click.echo(f"validation {r['before'] / 10:.1f}% -> {r['after'] / 10:.1f}%: dropped, undone (nothing written)")

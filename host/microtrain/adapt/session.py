"""The adaptation exchange with a board (board side: firmware/microtrain/adapt.py):

    r = exchange(port, "model.mtm", model, x, y, k=4, method="head", source=stats)

1. the board's own labelled samples are in its flash (`samples.bin`, written here as its
   recorder would); validation samples, if given, go to it over the link;
2. the board picks k anchors per class and writes their embeddings and layer statistics
   (`anchors.bin`), which the host reads: the only data that goes up;
3. the host computes the delta (head, correct, generator) and writes `delta.bin`: the only data
   that comes down; or the board computes it itself (imprint, restats: the source statistics
   `model.src`, written once, are all it needs);
4. the board applies it atomically with a checkpoint and keeps it only if its validation
   accuracy did not drop.

Files go through mpremote (board_io), commands through the framed link.
"""

from microtrain.adapt import adaptors, core
from microtrain.device import board_io
from microtrain.device.link import Link
from microtrain.split.session import sample_file

SAMPLES, ANCHORS, DELTA = "samples.bin", "anchors.bin", "delta.bin"


def source_path(model_on_board):
    return model_on_board.rsplit(".", 1)[0] + ".src"


def exchange(port, model_on_board, model, model_id, x, y, k, method, source=None, generator=None, xv=None, yv=None,
             limit=0, fresh=False, link_kw=None, timeout=600, log=lambda m: None):
    """Run one adaptation; returns the board's result with the bytes each way and the delta."""
    if method not in adaptors.METHODS + adaptors.BOARD_METHODS:
        raise ValueError(f"method must be one of {', '.join(adaptors.METHODS + adaptors.BOARD_METHODS)}")
    if method in ("correct", "restats", "generator") and source is None:
        raise ValueError(f"{method} needs the source statistics (--source: the data the model was trained on)")
    if method == "generator" and generator is None:
        raise ValueError("generator needs a fitted adaptors.Generator")
    src_bytes = core.stats_bytes(model_id, source) if source is not None else None
    src = source_path(model_on_board)
    with board_io.Session(port) as s:
        records = sample_file(x, y)
        if not s.same(records, SAMPLES):
            s.replace(records, SAMPLES)
        if method == "restats" and not s.same(src_bytes, src):
            s.replace(src_bytes, src)
    kw = dict(link_kw or {})
    with Link(port, model_on_board, fresh=fresh, **kw) as link:
        if xv is not None and len(xv):
            link.command("clear_validation")
            link.stream(xv, yv, validation=True, checkpoint=False)
        a = link.command(f"anchors {SAMPLES} {int(k)} {ANCHORS}" + (f" {int(limit)}" if limit else ""), timeout=timeout)
        log(f"board: {a['anchors']} anchors of {a['records']} samples in {a['us'] / 1000:.0f} ms")
    with board_io.Session(port) as s:
        data = s.get(ANCHORS)
    picked, E, ya, st = core.parse_anchors(data, model, model_id)
    delta = None
    if method == "head":
        delta = adaptors.head(model, E, ya)
    elif method == "correct":
        delta = adaptors.correct(model, source, st)
    elif method == "generator":
        delta = generator.delta(st)
    if delta is not None:
        blob = core.to_bytes(model_id, delta)
        with board_io.Session(port) as s:
            s.put(blob, DELTA, force=True)
        cmd = f"apply {DELTA}"
    elif method == "imprint":
        cmd = f"imprint {ANCHORS}"
    else:
        cmd = f"restats {SAMPLES} {ANCHORS} {src}"
    with Link(port, model_on_board, **kw) as link:
        r = link.command(cmd, timeout=timeout)
    r.update({"method": method, "k": int(k), "anchors": a, "picked": picked, "anchor_stats": st,
              "anchor_embeddings": E, "anchor_labels": ya,
              "bytes_up": len(data), "bytes_down": len(blob) if delta is not None else 0,
              "source_bytes": len(src_bytes) if method == "restats" else 0, "delta": delta})
    return r

"""`microtrain`: convert a model for a board, push it, stream labelled samples, watch training,
pull the result.  Every command's --help is its first documentation.

Heavy modules (numpy, onnx, the TFLite parser) are imported inside the commands that need them,
so `microtrain --help` starts fast.
"""

import json
import os
import re
import sys
import time

import click

from microtrain.cli.errors import Boundary

PUSH_ATTEMPTS = 3       # a push that breaks off resumes where it stopped


def _dist():
    from microtrain.device.unixport import dist_dir
    return dist_dir()


def _fail(msg):
    raise click.ClickException(msg)


@click.group(cls=Boundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="microtrain")
@click.option("--debug", is_flag=True, help="Show the Python traceback of a failure instead of one line.")
def main(debug):
    """On-device int8 training for MicroPython boards (RP2040, ESP32-S3) and a virtual board.

    \b
    Typical session:
      microtrain convert model.tflite --board rpi_pico -o model.mtm
      microtrain push model.mtm --port /dev/ttyACM0
      microtrain train samples.csv --port /dev/ttyACM0
      microtrain telemetry --port /dev/ttyACM0 --png training.png
      microtrain pull --port /dev/ttyACM0 -o trained.mtm
    Without a board: `microtrain demo` (or `microtrain virtual-board` for a port to use).
    """


# ---------------------------------------------------------------------------------------------
@main.command()
@click.option("--probe", is_flag=True, help="Also ask each plugged-in board for its MicroPython version and arch.")
def boards(probe):
    """Known boards and their budgets, and the boards plugged in now."""
    from microtrain.device import boards as B
    click.echo(f"{'board':10} {'arch':10} {'SRAM':>8} {'heap':>8} {'flash':>9} {'clock':>8}  description")
    for b in B.load_all().values():
        clock = f"{b.clock_hz // 1000000} MHz" if b.clock_hz else "-"
        click.echo(f"{b.name:10} {b.arch:10} {b.sram_bytes // 1024:>6} K {b.heap_bytes // 1024:>6} K "
                   f"{b.flash_bytes // 1024:>7} K {clock:>8}  {b.description}")
    found = B.plugged()
    click.echo("")
    if not found:
        click.echo("plugged in: no USB serial device found (plug a board in, or run `microtrain virtual-board`)")
        return
    click.echo("plugged in:")
    for dev, vp, name, desc in found:
        line = f"  {dev:16} {vp}  {name or 'unknown board':10} {desc}"
        if probe:
            from microtrain.device.board_io import BoardError, Session
            try:
                with Session(dev) as s:
                    i = s.info()
                line += f"  {i['version'].split(';')[-1].strip()}, arch {i['arch']}"
            except BoardError as e:
                line += f"  ({e})"
        click.echo(line)


# ---------------------------------------------------------------------------------------------
@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--board", "board_name", default="rpi_pico", show_default=True, help="Board whose memory budget the plan must fit.")
@click.option("--policy", default="sparse", show_default=True,
              help="What trains: sparse, bias-only, last-K, full, or a JSON dict {layer: {bias, weights}}.")
@click.option("--lr", default=0.05, show_default=True, help="Learning rate of the QAS-scaled SGD step.")
@click.option("--no-qas", is_flag=True, help="Plain int8 SGD on the integer weights (for comparison).")
@click.option("--calibration", type=click.Path(exists=True), help="ONNX: .npz with calibration samples `x` (NCHW or NHWC floats).")
@click.option("--labels", help="Comma-separated class names.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Model file to write (default: MODEL with .mtm).")
@click.option("--split", is_flag=True, help="Split training: the board trains the layers below a cut, the host "
              "those above (`microtrain train --split`); the deepest cut that fits the board.")
@click.option("--cut", type=int, help="With --split: cut at this layer (the board runs layers 0..CUT-1).")
@click.option("--host-policy", default="full", show_default=True, help="With --split: what trains above the cut.")
@click.option("--budget", type=click.IntRange(1), help="Heap bytes the plan must fit [default: the board's].")
@click.option("--max-link-ms", type=click.FloatRange(min=0), help="With --split: a cut's frames must cross the "
              "serial link (115200 baud) within this many ms per sample.")
def convert(model, board_name, policy, lr, no_qas, calibration, labels, output, split, cut, host_policy, budget,
            max_link_ms):
    """Convert an int8 TFLite or a float ONNX model (or plan a .mtm again) to a microtrain model
    file for a board.

    Prints the training plan and its memory, and refuses (with a suggestion) a plan that does not
    fit the board's heap.  With --split, prints every cut, what the board needs and what crosses
    the link, and why the cut was chosen.
    """
    from microtrain.device import boards as B
    from microtrain.model import modelfile
    from microtrain.plan import planner
    board = B.get(board_name)
    labels = [s.strip() for s in labels.split(",")] if labels else []
    ext = os.path.splitext(model)[1].lower()
    try:
        if ext == ".tflite":
            from microtrain.convert.from_tflite import load_tflite
            q = load_tflite(model, labels)
        elif ext == ".onnx":
            if not calibration:
                _fail("an ONNX float model needs --calibration samples.npz (array `x`) to choose activation scales")
            import numpy as np
            from microtrain.convert.from_onnx import onnx_to_qmodel
            x = np.load(calibration)["x"]
            q = onnx_to_qmodel(model, x, labels)
        elif ext == ".mtm":
            q = modelfile.load(model)[0]
            if labels:
                q.labels = labels
        else:
            _fail(f"{model}: expected a .tflite (int8), .onnx (float) or .mtm model")
    except (ValueError, OSError) as e:
        _fail(f"{model}: {e}")
    pol = json.loads(policy) if policy.strip().startswith("{") else policy
    budget = budget or board.heap_bytes
    if split or cut is not None:
        from microtrain.plan import split as S
        try:
            sp = S.choose(q, pol, host_policy, budget=budget, cut=cut, lr=lr, qas=not no_qas, max_link_ms=max_link_ms,
                          word_bytes=board.object_word_bytes, weights_flash_bytes=board.weights_flash_bytes)
        except planner.PlanError as e:
            _fail(f"split training on {board.name}: {e}")
        output = output or os.path.splitext(model)[0] + ".split.mtm"
        n = modelfile.save(output, q, sp.board)
        click.echo(f"{q.name}: {len(q.layers)} layers, {q.macs} MACs per inference, input {q.input_shape}")
        click.echo(sp.summary(q, budget))
        click.echo(f"fits {board.name}: the board's part needs {sp.board.budget_bytes} of {budget} B heap")
        click.echo(f"wrote {output} ({n} bytes)")
        return
    try:
        p = planner.plan(q, pol, lr=lr, qas=not no_qas, budget=budget, word_bytes=board.object_word_bytes,
                         weights_flash_bytes=board.weights_flash_bytes)
    except planner.PlanError as e:
        _fail(str(e) if str(e).startswith("unknown policy") else f"the plan does not fit {board.name}: {e}")
    output = output or os.path.splitext(model)[0] + ".mtm"
    n = modelfile.save(output, q, p)
    click.echo(f"{q.name}: {len(q.layers)} layers, {q.macs} MACs per inference, input {q.input_shape}")
    click.echo(p.summary(q))
    click.echo(f"fits {board.name}: {p.budget_bytes} of {budget} B heap")
    click.echo(f"wrote {output} ({n} bytes)")


# ---------------------------------------------------------------------------------------------
def _port_option(f):
    return click.option("--port", "-p", envvar="MICROTRAIN_PORT", help="Serial port of the board (or env MICROTRAIN_PORT).")(f)


def _board_file(suffix):
    """A click callback: a file name in the board's top folder ending in `suffix` - letters,
    digits, '_', '-', '.'; nothing that climbs out of it or hides (no '/', no '..', no leading '.')."""
    def check(ctx, param, value):
        if value is None:
            return value
        if not (re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,39}", value) and ".." not in value
                and value.endswith(suffix)):
            raise click.BadParameter(f"{value!r}: a plain file name ending in {suffix} (letters, digits, "
                                     "_ - .; no folders)", ctx, param)
        return value
    return check


def _name_option(f):
    return click.option("--name", default="model.mtm", show_default=True, callback=_board_file(".mtm"),
                        help="The model file on the board (a plain name in its top folder).")(f)


def _need_port(port):
    if port:
        return port
    from microtrain.device import boards as B
    found = [d for d, _, name, _ in B.plugged() if name]
    if len(found) == 1:
        return found[0]
    if not found:
        _fail("no board found: plug one in and pass --port, or start `microtrain virtual-board`")
    _fail(f"several boards plugged in ({', '.join(found)}): pass --port")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False), required=False)
@_port_option
@_name_option
@click.option("--force", is_flag=True, help="Rewrite files even if the board has identical copies.")
def push(model, port, name, force):
    """Install the board library and the native module for the board's arch, and copy MODEL.

    Uses mpremote's Python transport over the raw REPL; verifies every file by SHA-256 and skips
    files the board already has.
    """
    from microtrain.device.board_io import BoardError, BoardUnreachable, Session, install
    port = _need_port(port)
    data = open(model, "rb").read() if model else None
    t0 = time.time()
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        try:
            with Session(port) as s:
                written, backend, info = install(s, _dist(), data, name, log=click.echo)
            break
        except BoardUnreachable as e:             # resumable: the next attempt sends only what is missing
            if attempt == PUSH_ATTEMPTS:
                _fail(f"{e} (tried {attempt} times; the board keeps its previous library: push again)")
            click.echo(f"push: {e}; trying again ({attempt + 1}/{PUSH_ATTEMPTS})")
            time.sleep(1.0)
        except BoardError as e:
            _fail(str(e))
    click.echo(f"{port}: {info['version'].split(';')[-1].strip()}, arch {info['arch']}, backend {backend}")
    click.echo(f"wrote {len(written)} files ({', '.join(written) or 'all up to date'}) in {time.time() - t0:.1f} s")
    if data is not None and info.get("flash_region"):
        _weights_in_flash(model, data, info["flash_region"])


def _weights_in_flash(model, data, region):
    """The board reads frozen weights in place from a flash region (RP2040): say whether it holds
    this model's, and write the UF2 that puts them there when it does not."""
    from microtrain.device import flashing
    offset, size, held_id, _ = region
    model_id = int.from_bytes(data[8:12], "little")
    if held_id == model_id:
        click.echo(f"frozen weights: in the board's flash at 0x{offset:x}, read in place")
        return
    try:
        uf2 = flashing.weights_uf2(data, offset, size)
    except flashing.FlashError as e:
        click.echo(f"frozen weights: {e}; the board reads them into its heap")
        return
    out = os.path.splitext(model)[0] + ".weights.uf2"
    with open(out, "wb") as f:
        f.write(uf2)
    click.echo(f"frozen weights: not in the board's flash yet; wrote {out} (flash offset 0x{offset:x}). "
               f"Until it is flashed they are read into the heap. To flash: hold BOOTSEL, plug the Pico in, "
               f"`microtrain flash --board rpi_pico {out}` (the firmware and the files stay)")


# ---------------------------------------------------------------------------------------------
@main.command(name="train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--sensor", type=click.Choice(["mpu6050", "adc"]), help="Instead of DATA: the board records from its own sensor.")
@click.option("--count", default=10, show_default=True, help="With --sensor: samples to record.")
@click.option("--board", "board_name", default="rpi_pico", show_default=True, help="With --sensor: the board (sensor pins).")
@click.option("--raw-per-unit", default=16384.0, show_default=True, help="With --sensor: raw counts per unit of the model's input.")
@click.option("--rate", default=50, show_default=True, help="With --sensor: frames per second.")
@_port_option
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
              help="The model file pushed to the board (to quantize float samples).")
@click.option("--label", type=int, help="Label of every sample (WAV, or a file of one class).")
@click.option("--validation", is_flag=True, help="Keep the samples on the board for evaluation instead of training.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1))
@click.option("--samples-as", "kind", type=click.Choice(["auto", "int8", "float"]), default="auto", show_default=True,
              help="How to read the values: auto takes whole numbers in [-128, 127] as int8 samples, else floats "
                   "(quantized with --model's input scale).")
@click.option("--fresh", is_flag=True, help="Start over from the model file: forget the board's checkpoints "
              "of it (needed after pushing a different model under the same name).")
@click.option("--deadline", type=click.FloatRange(min=1), help="Give up after this many seconds "
              "[default: 120 s + 2 s per sample]; the board keeps what it applied, run again to resume.")
@click.option("--split", is_flag=True, help="Split training (a model converted with --split): DATA is kept on the "
              "board; the board trains the layers below the cut, the host those above, and only activations and "
              "gradients cross the link. At the end the whole model is pushed.")
@click.option("--float-host", is_flag=True, help="With --split: the host's layers in float32 (requantized when pushed).")
@click.option("--no-push", is_flag=True, help="With --split: keep the host's layers on the host (run again to go on).")
@_name_option
def train_cmd(data, sensor, count, board_name, raw_per_unit, rate, port, model_path, label, validation, epochs, kind,
              fresh, deadline, split, float_host, no_push, name):
    """Stream labelled samples (CSV, NPZ, WAV) to the board, which trains on each as it arrives;
    or, with --sensor, let the board record and train on its own sensor's samples.

    Framed protocol with CRC, acknowledgements, retransmission and resume; reports samples/s and
    bytes per sample on the wire.  Raw samples go to the board; only telemetry comes back.
    """
    port = _need_port(port)
    if sensor:
        from microtrain.device import boards as B
        from microtrain.device.board_io import BoardError
        if label is None:
            _fail("--sensor needs --label (the class being recorded)")
        try:
            from microtrain.device.recording import record_on_board
            out = record_on_board(port, B.get(board_name), sensor, label, count, name, raw_per_unit, rate)
        except BoardError as e:
            _fail(f"recording on the board: {e}")
        click.echo(out.strip())
        return
    if not data:
        _fail("give a DATA file (CSV, NPZ, WAV) or --sensor")
    if split:
        from microtrain.cli import split as split_cli
        from microtrain.cli.samples import SampleFileError
        try:
            split_cli.run(data, model_path, port, name, label, kind, epochs, float_host, not no_push, fresh, deadline)
        except SampleFileError as e:
            _fail(str(e))
        return
    from microtrain.cli import report
    from microtrain.cli.report import progress_view
    from microtrain.cli.samples import load_samples
    from microtrain.device.link import Link
    model = None
    if model_path:
        from microtrain.model.modelfile import load
        model = load(model_path)[0]
    x, y, how = load_samples(data, model, label, kind)
    click.echo(f"{data}: {len(x)} samples of {x.shape[1]} values ({how})")
    deadline = deadline or 120.0 + 2.0 * len(x) * epochs
    link = Link(port, name, fresh=fresh)
    with link.deadline(deadline), link, progress_view("validation" if validation else "training",
                                                      len(x) * epochs) as show:
        for e in range(epochs):             # the deadline covers connecting and every epoch
            stats = link.stream(x, y, validation=validation,
                                progress=lambda done, total, e=e: show(e * len(x) + done))
        counts = link.telemetry_counts()
    click.echo(f"{stats['samples']} samples, {stats['samples_per_s']:.1f} samples/s, "
               f"{stats['bytes_per_sample']:.0f} bytes/sample on the wire "
               f"({100 * stats['payload_efficiency']:.0f}% payload), {stats['retransmissions']} retransmissions")
    click.echo(report.counts_line(counts))


@main.command()
@_port_option
@click.option("--follow", is_flag=True, help="Live view while the board trains (Ctrl-C to stop).")
@click.option("--jsonl", type=click.Path(dir_okay=False), help="Append records as JSON lines.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write records as CSV.")
@click.option("--png", type=click.Path(dir_okay=False), help="Plot loss and accuracy (needs matplotlib: pip install microtrain[plot]).")
@_name_option
def telemetry(port, follow, jsonl, csv_path, png, name):
    """Training telemetry from the board: loss, accuracy, step time, heap, events."""
    from microtrain.cli import report
    from microtrain.device.link import Link
    port = _need_port(port)
    with Link(port, name) as link:
        records = link.telemetry()
        if follow:
            records = report.live(link, records)
        counts = link.telemetry_counts(whole=True)
    report.write_records(records, jsonl, csv_path, png)
    click.echo(report.counts_line(counts))


# ---------------------------------------------------------------------------------------------
@main.command()
@_port_option
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The model file that was pushed (the trained tensors are written into a copy).")
@click.option("--checkpoint", callback=_board_file(".ckpt"),
              help="Checkpoint file on the board (default: the model's name with .ckpt).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Where to write: .mtm (model file), .npz (trained tensors), .onnx (not supported: see docs).")
@click.option("--delta", is_flag=True, help="With .npz: only the change of each trained tensor.")
@_name_option
def pull(port, model_path, checkpoint, output, delta, name):
    """Bring back the trained weights from the board's last checkpoint."""
    import numpy as np
    from microtrain.model import modelfile
    from microtrain.device.board_io import BoardError, Session, apply_checkpoint, model_id, read_checkpoint
    port = _need_port(port)
    checkpoint = checkpoint or name.rsplit(".", 1)[0] + ".ckpt"
    model, plan = modelfile.load(model_path)
    with open(model_path, "rb") as f:
        original = f.read()
    try:
        with Session(port) as s:
            ck = read_checkpoint(s, checkpoint)
    except BoardError as e:
        _fail(str(e))
    if ck["model_id"] != model_id(original):
        _fail(f"the board's checkpoint {ck['slot']} belongs to another model file than {model_path} "
              f"(model {ck['model_id']:08x}, this file {model_id(original):08x}): pass the file that was pushed")
    for why in ck["skipped"]:
        click.echo(f"note: passed over {why}")
    trained = apply_checkpoint(model, ck)
    ext = os.path.splitext(output)[1].lower()
    if ext == ".mtm":
        data = modelfile.replace_tensors(original, trained)
        with open(output, "wb") as f:
            f.write(data)
    elif ext == ".npz":
        arrays = {}
        for i, (a, b) in enumerate(zip(model.layers, trained.layers)):
            if b.w is None:
                continue
            if delta:
                if a.w.size == b.w.size:
                    arrays[f"w{i}"] = b.w.astype(np.int16) - a.w
                    arrays[f"b{i}"] = b.b.astype(np.int64) - a.b
            else:
                arrays[f"w{i}"], arrays[f"b{i}"] = b.w, b.b
        np.savez(output, **arrays)
    else:
        _fail(f"{output}: write .mtm or .npz (an updated ONNX needs the float graph: use the .npz tensors)")
    click.echo(f"checkpoint: {ck['steps']} steps, {ck['samples']} samples, last sample {ck['last_seq']}, "
               f"{ck['n_classes']} classes -> wrote {output}")


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True)
@_port_option
@click.option("--simulate", is_flag=True, help="Evaluate in the host simulator instead of on the board.")
@_name_option
def evaluate(data, model_path, port, simulate, name):
    """Accuracy of the model on labelled samples, on the board or in the host simulator."""
    from microtrain.model.modelfile import load
    model, plan = load(model_path)
    from microtrain.cli.samples import load_samples
    x, y, _ = load_samples(data, model)
    if simulate:
        import numpy as np
        from microtrain.model.qmodel import forward
        right = sum(int(np.argmax(forward(model, xi))) == int(yi) for xi, yi in zip(x, y))
    else:
        from microtrain.device.link import Link
        cap = plan.buffers["val_y"].size if plan else 8
        with Link(_need_port(port), name) as link:
            right = link.evaluate(x, y, cap)
    click.echo(f"accuracy {right}/{len(y)} = {right / len(y):.3f} ({'simulator' if simulate else 'board'})")


# ---------------------------------------------------------------------------------------------
@main.command()
@click.option("--board", "board_name", required=True, help="esp32_s3 or rpi_pico.")
@click.argument("firmware", type=click.Path(exists=True, dir_okay=False))
@_port_option
@click.option("--drive", type=click.Path(), help="rpi_pico: the RPI-RP2 drive (found automatically when mounted).")
def flash(board_name, firmware, port, drive):
    """Write a MicroPython firmware: ESP32-S3 with esptool, RP2040 by UF2 copy to the RPI-RP2 drive."""
    from microtrain.device import boards as B
    from microtrain.device import flashing
    board = B.get(board_name)
    try:
        if board.flash_method == "uf2":
            dest = flashing.flash_uf2(firmware, drive, board.extra.get("uf2_drive_label", "RPI-RP2"))
            click.echo(f"copied {firmware} to {dest}; the board reboots into the new firmware")
        elif board.flash_method == "esptool":
            flashing.flash_esptool(firmware, port or _need_port(port), board.extra.get("esptool_chip", "esp32s3"),
                                   board.extra.get("esptool_offset", 0))
            click.echo(f"flashed {firmware} to {board.name}")
        else:
            _fail(f"{board.name} cannot be flashed")
    except flashing.FlashError as e:
        _fail(str(e))


# ---------------------------------------------------------------------------------------------
@main.command(name="virtual-board")
@click.option("--board", "board_name", default="virtual", show_default=True, help="Board whose heap size to use.")
@click.option("--flash-dir", type=click.Path(file_okay=False), help="Folder that acts as the board's flash (default: a temporary one).")
def virtual_board(board_name, flash_dir):
    """Start a board on a pty: the real MicroPython unix port with the x64 native module, a heap
    the size of the chosen board and a folder as its flash.  Prints the port; Ctrl-C stops it."""
    from microtrain.device import boards as B
    from microtrain.device.virtualboard import VirtualBoard
    board = B.get(board_name)
    with VirtualBoard(heap=f"{board.heap_bytes // 1024}K", flash_dir=flash_dir) as vb:
        click.echo(f"virtual board ({board.name} heap {board.heap_bytes // 1024} K) on {vb.port}")
        click.echo(f"  flash: {vb.flash}")
        click.echo(f"  try:   mpremote connect {vb.port} resume exec \"import sys; print(sys.implementation)\"")
        click.echo(f"         microtrain push model.mtm --port {vb.port}")
        try:
            while vb.alive:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@main.command()
@_port_option
@click.option("--epochs", default=3, show_default=True, help="Epochs over the device's training samples.")
@click.option("--png", type=click.Path(dir_okay=False), help="Also plot the training telemetry.")
def demo(port, epochs, png):
    """The whole loop: (virtual) board, pretrained model, convert, push, stream, train, telemetry,
    accuracy before/after, pull — on BasicMotions IMU data seen through a new "device"."""
    from microtrain.cli.demo import run_demo
    result = run_demo(port, epochs=epochs, png=png, echo=click.echo)
    if not result["bit_identical"]:
        _fail("the board's weights differ from the host simulation")


from microtrain.cli.federate import federate  # noqa: E402  (imports neither numpy nor Flower)
main.add_command(federate)
from microtrain.cli.adapt import adapt  # noqa: E402
main.add_command(adapt)

if __name__ == "__main__":
    sys.exit(main())

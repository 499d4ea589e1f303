"""`microtrain federate`: boards learning one model together on Flower.

    federate scenario DIR            a non-IID digits federation to try it on (model files + data)
    federate run --model M ...       SuperLink + one SuperNode per --board (PORT=DATA.npz) on this
                                     machine, or --simulate N in Flower's simulation engine, then
                                     `flwr run`; --superlink HOST:PORT submits to a running one
    federate server                  `flower-superlink` for boards on other machines (TLS with
                                     --certificates CA CERT KEY)
    federate client --port P ...     `flower-supernode` driving the board on P
    federate watch REPORT            the fleet view (rich): every board's last round; --png

Each prints the Flower command it runs, so the same federation can be started by hand.
"""

import os
import sys

import click



def _deploy():
    try:
        from microtrain.federated import deploy
    except ImportError as e:
        raise click.ClickException(f"federated learning needs Flower: pip install 'microtrain[federated]' ({e})")
    return deploy


@click.group()
def federate():
    """Federated learning across boards (Flower): only trainable tensors and metrics leave a board."""


@federate.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--boards", default=4, show_default=True, help="Number of boards.")
@click.option("--seed", default=0, show_default=True)
@click.option("--alpha", default=0.5, show_default=True, help="Dirichlet class skew (smaller: more skewed).")
def scenario(folder, boards, seed, alpha):
    """Write a digits federation: model files (sparse / full plans), one .npz per board."""
    try:
        import sklearn  # noqa: F401  (the digits dataset ships in scikit-learn's wheel)
    except ImportError:
        raise click.ClickException("the digits federation needs scikit-learn: pip install scikit-learn") from None
    from microtrain.federated import scenario as sc
    info = sc.build(folder, n_boards=boards, seed=seed, alpha=alpha)
    for k, b in enumerate(info["boards"]):
        click.echo(f"board {k}: {b['samples']} training samples, plan {b['policy']} ({b['model']}), "
                   f"data {os.path.join(folder, b['data'])}")


def _run_options(f):
    for opt in reversed([
        click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True,
                     help="The model file every board runs (the global starts from it)."),
        click.option("--board", "boards", multiple=True, metavar="PORT=DATA.npz[:MODEL.mtm]",
                     help="A board on this machine and its samples (repeat per board)."),
        click.option("--simulate", type=int, default=0, help="N simulated boards in Flower's simulation engine "
                     "(their data from --scenario)."),
        click.option("--scenario", "scenario_dir", type=click.Path(exists=True, file_okay=False),
                     help="A folder of `federate scenario` (simulated boards' data and plans)."),
        click.option("--rounds", default=5, show_default=True),
        click.option("--epochs", default=1, show_default=True, help="Local epochs per round."),
        click.option("--strategy", type=click.Choice(["subset-fedavg", "fedavg", "fedadam"]), default="subset-fedavg",
                     show_default=True, help="subset-fedavg: integer, per-board subsets; fedavg / fedadam: Flower's own."),
        click.option("--personal", default="", help="Layers kept on each board, never sent: 'classifier' or layer numbers."),
        click.option("--rollout-fraction", default=0.25, show_default=True,
                     help="Share of boards that validate a new global before the rest get it (0: off)."),
        click.option("--rollout-tolerance", default=0.02, show_default=True),
        click.option("--secagg", is_flag=True, help="Flower's SecAgg+: the server sees only masked updates and their sum."),
        click.option("--dp-clip", type=float, default=0.0, help="Flower's client-side DP clipping: L2 norm of each "
                     "update (model integer units; with --strategy fedavg/fedadam)."),
        click.option("--dp-noise", type=float, default=0.0, help="Noise multiplier of the DP clipping."),
        click.option("--report", type=click.Path(dir_okay=False), default="federation.jsonl", show_default=True),
        click.option("--out", type=click.Path(dir_okay=False), help="Write the final global model file."),
        click.option("--work", type=click.Path(file_okay=False), default=".microtrain-federation", show_default=True,
                     help="Folder for Flower's state and the processes' logs."),
    ]):
        f = opt(f)
    return f


@federate.command()
@_run_options
def run(model_path, boards, simulate, scenario_dir, rounds, epochs, strategy, personal, rollout_fraction,
        rollout_tolerance, secagg, dp_clip, dp_noise, report, out, work):
    """A federation on this machine: Flower SuperLink, SuperNodes, `flwr run`."""
    deploy = _deploy()
    if bool(boards) == bool(simulate):
        raise click.ClickException("give --board PORT=DATA.npz (one per board) or --simulate N")
    if simulate and not scenario_dir:
        raise click.ClickException("--simulate needs --scenario (a folder of `microtrain federate scenario`)")
    from microtrain.model import modelfile
    for p in {model_path, *(spec.partition("=")[2].partition(":")[2] for spec in boards)} - {""}:
        if os.path.exists(p):
            modelfile.load(p)          # a bad model file: one clear line here, not a failed ServerApp
    nodes = []
    for k, spec in enumerate(boards):
        port, sep, rest = spec.partition("=")
        data, _, model = rest.partition(":")
        if not sep or not data:
            raise click.ClickException(f"--board {spec!r}: expected PORT=DATA.npz[:MODEL.mtm]")
        for p in (data, model or model_path):
            if not os.path.exists(p):
                raise click.ClickException(f"--board {spec!r}: {p} does not exist")
        nodes.append({"port": port, "model": os.path.abspath(model or model_path), "data": os.path.abspath(data),
                      "partition-id": k})
    rc = {"model": os.path.abspath(model_path), "num-rounds": rounds, "epochs": epochs, "strategy": strategy,
          "personal": personal, "rollout-fraction": rollout_fraction, "rollout-tolerance": rollout_tolerance,
          "report": os.path.abspath(report), "min-nodes": simulate or len(nodes), "secagg": secagg,
          "dp-clip": dp_clip, "dp-noise": dp_noise}
    if dp_clip and strategy == "subset-fedavg":
        raise click.ClickException("--dp-clip works on Flower's float strategies: add --strategy fedavg (or fedadam)")
    if scenario_dir:
        rc["scenario"] = os.path.abspath(scenario_dir)
    if out:
        rc["out"] = os.path.abspath(out)
    if os.path.exists(report):
        os.remove(report)                        # the live view follows this run's report only
    live = sys.stdout.isatty()
    if live:                                     # the fleet view, live, while Flower runs the rounds
        import threading
        from microtrain.federated import fleet
        got = {}
        th = threading.Thread(target=lambda: got.update(r=deploy.run_local(work, rc, nodes=nodes, simulate=simulate,
                                                                             log=lambda *a: None)), daemon=True)
        th.start()
        fleet.watch(report, follow=True, stop=lambda: not th.is_alive())
        th.join()
        code, text = got.get("r", (1, "the federation did not start"))
    else:
        code, text = deploy.run_local(work, rc, nodes=nodes, simulate=simulate, log=click.echo)
        for line in text.splitlines():
            if line.startswith(("federation:", "  board", "round ")):
                click.echo(line)
    if code:
        tail = [ln for ln in text.splitlines() if ln.strip()][-5:]
        raise click.ClickException("the federation failed (logs in %s): %s" % (work, " | ".join(tail)))
    click.echo(f"report: {report}" + (f"; global model: {out}" if out else ""))


@federate.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--certificates", nargs=3, type=click.Path(exists=True, dir_okay=False), metavar="CA CERT KEY",
              help="TLS: the CA certificate, the server's certificate and key (else --insecure).")
def server(host, port, certificates):
    """Run Flower's SuperLink for boards on other machines (then `flwr run` submits the app)."""
    deploy = _deploy()
    cmd = deploy.superlink_cmd(host, port, certificates=certificates)
    click.echo("$ " + deploy.shown(cmd))
    os.execve(cmd[0], cmd, deploy.env(os.environ.get("FLWR_HOME", os.path.expanduser("~/.flwr"))))


@federate.command()
@click.option("--superlink", required=True, metavar="HOST:PORT", help="The SuperLink's address.")
@click.option("--port", "serial_port", required=True, help="The board's serial port.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The model file pushed to the board.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), required=True,
              help=".npz of the board's samples (x, y, xv, yv[, xt, yt]).")
@click.option("--root-certificates", type=click.Path(exists=True, dir_okay=False), help="TLS: the CA certificate.")
@click.option("--api-port", default=9094, show_default=True, help="Local port of the SuperNode's ClientApp API.")
def client(superlink, serial_port, model_path, data, root_certificates, api_port):
    """Run Flower's SuperNode for the board on --port."""
    deploy = _deploy()
    cfg = {"port": serial_port, "model": os.path.abspath(model_path), "data": os.path.abspath(data)}
    cmd = deploy.supernode_cmd(superlink, cfg, api_port, root_certificates)
    click.echo("$ " + deploy.shown(cmd))
    os.execve(cmd[0], cmd, deploy.env(os.environ.get("FLWR_HOME", os.path.expanduser("~/.flwr"))))


@federate.command()
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("--follow", is_flag=True, help="Redraw as the federation runs, until it finishes.")
@click.option("--png", type=click.Path(dir_okay=False), help="Plot validation accuracy per round (needs matplotlib).")
def watch(report, follow, png):
    """The fleet view of a federation's report: every board's last round (aggregates only)."""
    from microtrain.federated import fleet
    if not follow and not os.path.exists(report):
        raise click.ClickException(f"{report}: no such report (the ServerApp's `report` file)")
    records = fleet.watch(report, follow=follow)
    if png:
        try:
            fleet.plot(records, png)
        except ImportError:
            raise click.ClickException("--png needs matplotlib: pip install 'microtrain[plot]'") from None
        click.echo(f"wrote {png}")

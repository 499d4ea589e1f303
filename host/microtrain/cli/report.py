"""Telemetry records for people: a live table, JSONL / CSV files, a PNG plot, a one-line summary."""

import json
import time

import click


def _fail(msg):
    raise click.ClickException(msg)


def live(link, records):
    from rich.live import Live
    try:
        with Live(refresh_per_second=4) as live:
            while True:
                records = link.telemetry()
                live.update(table(records[-15:]))
                time.sleep(0.25)
    except KeyboardInterrupt:
        return records


def counts_line(c):
    """One line on what the telemetry covers (Link.telemetry_counts)."""
    from microtrain.board.telemetry import RING_RECORDS
    line = f"telemetry: {c['received']} of {c['written']} records received"
    if c["missed"]:
        line += (f"; {c['missed']} missed (lost on the line, or overwritten before they were asked for: "
                 f"the board keeps the last {RING_RECORDS})")
    return line


def table(records):
    from rich.table import Table
    t = Table("step", "kind", "loss", "ok", "us", "heap free", "value")
    for r in records:
        t.add_row(str(r["step"]), r["kind"], f"{r['loss']:.3f}", "✓" if r["correct"] else "", str(r["us"]),
                  str(r["heap_free"]), f"{r['value']:.3f}" if r["value"] else "")
    return t


def write_records(records, jsonl=None, csv_path=None, png=None):
    if jsonl:
        with open(jsonl, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    if csv_path:
        import csv
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["step"])
            w.writeheader()
            w.writerows(records)
    if png:
        plot_records(records, png)
    steps = [r for r in records if r["kind"] == "step"]
    if steps:
        n = len(steps)
        acc = sum(r["correct"] for r in steps) / n
        click.echo(f"{n} steps, mean loss {sum(r['loss'] for r in steps) / n:.3f}, train accuracy {acc:.3f}, "
                   f"step time {sorted(r['us'] for r in steps)[n // 2]} us (median)")


def plot_records(records, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _fail("--png needs matplotlib: pip install 'microtrain[plot]'")
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if r["kind"] == "evaluate"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if steps:
        k = max(1, len(steps) // 20)
        xs = [r["step"] for r in steps]
        loss = [sum(s["loss"] for s in steps[max(0, i - k):i + 1]) / len(steps[max(0, i - k):i + 1]) for i in range(len(steps))]
        ax.plot(xs, loss, label="loss (running mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals:
        by_step = {}
        for r in evals:                  # an evaluation in several chunks: their mean
            by_step.setdefault(r["step"], []).append(r["value"])
        ax2 = ax.twinx()
        ax2.plot(list(by_step), [sum(v) / len(v) for v in by_step.values()], "o-", color="tab:green",
                 label="validation accuracy")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("accuracy")
    for r in records:
        if r["kind"] in ("rollback", "checkpoint", "class"):
            ax.axvline(r["step"], color="tab:red" if r["kind"] == "rollback" else "tab:gray", lw=0.8, ls=":")
    ax.set_title("microtrain")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    click.echo(f"wrote {path}")


class progress_view:
    """Progress of a stream: rich's bar on a terminal; elsewhere (a pipe, a log, CI) a plain line
    at least every 10 % or 5 s, so a long or struggling run is never silent.  `show(done)`."""

    def __init__(self, what, total, echo=click.echo, tty=None):
        import sys
        self.what, self.total, self.echo = what, total, echo
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.bar = None

    def __enter__(self):
        self.t0 = self.t_last = time.monotonic()
        self.last = 0
        if self.tty:
            from rich.progress import Progress
            self.bar = Progress()
            self.bar.__enter__()
            self.task = self.bar.add_task(self.what, total=self.total)
        return self.show

    def show(self, done):
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        now = time.monotonic()
        if done >= self.total or done - self.last >= max(1, self.total // 10) or now - self.t_last >= 5:
            rate = done / (now - self.t0) if now > self.t0 else 0.0
            self.echo(f"{self.what}: {done}/{self.total} samples ({rate:.1f} samples/s)")
            self.last, self.t_last = done, now

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

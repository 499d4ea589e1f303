"""The fleet view of a federation's report (the ServerApp's JSONL: aggregates only): a rich table
of every board's last round, live while the run goes on, and a PNG of accuracy per round."""

import json
import os
import time


def read(path):
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:          # a line being written
                    break
    return out


def table(records):
    from rich.table import Table
    fleet = next((r["boards"] for r in records if r["event"] == "fleet"), {})
    rounds = [r for r in records if r["event"] == "round"]
    last = rounds[-1] if rounds else None
    final = next((r["test"] for r in records if r["event"] == "final"), None)
    title = f"round {last['round']}: global {last['global']}, {last['seconds']:.1f} s" if last else "waiting for round 1"
    t = Table(title=title + (" - finished" if final else ""))
    for c in ("board", "port / kind", "plan", "samples", "loss", "val acc in", "val acc out", "step ms",
              "bytes down/up", "trainable B") + (("test acc",) if final else ()):
        t.add_column(c, justify="right" if c not in ("board", "port / kind", "plan") else "left")
    for n, f in sorted(fleet.items(), key=lambda kv: kv[1].get("key", kv[0])):
        b = (last or {}).get("boards", {}).get(n, {})
        if "error" in b:
            row = [f["key"], f["board"], f["policy"], "-", "[red]" + b["error"][:40], "", "", "", "", ""]
        elif b:
            row = [f["key"], f["board"], f["policy"], str(b["samples"]), f"{b['loss']:.3f}", f"{b['val_acc_global']:.3f}",
                   f"{b['val_acc']:.3f}", f"{b['step_ms']:.1f}", f"{b['bytes_down']}/{b['bytes_up']}",
                   str(b["trainable_bytes"])]
        else:
            row = [f["key"], f["board"], f["policy"], str(f["samples"]), "", "", "", "", "", str(f["trainable_bytes"])]
        if final:
            row.append(f"{final[n]['acc']:.3f}" if n in final and "acc" in final[n] else "-")
        t.add_row(*row)
    return t


def watch(path, follow=False, console=None, poll=1.0, stop=lambda: False):
    """Print the table (follow: redraw as the report grows, until its final record or stop())."""
    from rich.console import Console
    from rich.live import Live
    console = console or Console()
    records = read(path)
    if not follow:
        console.print(table(records))
        return records
    with Live(table(records), console=console, refresh_per_second=2) as live:
        while not any(r["event"] == "final" for r in records) and not stop():
            time.sleep(poll)
            records = read(path)
            live.update(table(records))
    return records


def plot(records, png):
    """Mean validation accuracy of the incoming global per round, and every board's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rounds = [r for r in records if r["event"] == "round"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    boards = sorted({n for r in rounds for n in r["boards"]})
    for n in boards:
        pts = [(r["round"], r["boards"][n]["val_acc_global"]) for r in rounds if "val_acc_global" in r["boards"].get(n, {})]
        if pts:
            ax.plot(*zip(*pts), color="0.75", lw=1)
    mean = []
    for r in rounds:
        ok = [b for b in r["boards"].values() if "error" not in b]
        if ok:
            n = sum(b["samples"] for b in ok)
            mean.append((r["round"], sum(b["val_acc_global"] * b["samples"] for b in ok) / n))
    if mean:
        ax.plot(*zip(*mean), color="C0", lw=2, label="mean (weighted by samples)")
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy of the global")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)

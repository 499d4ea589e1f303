"""SplitFed: several boards split-train at once, each with its own cut, and share the host's
layers; the layers on the boards stay personal.

Every board has its own session (a thread, its own serial link and its own host copy of the
upper layers, so a reset or rollback on one board touches no other's).  After each of its
rounds (its samples once) a board's host copy joins the shared host-side model: every layer is
the sample-weighted integer mean (rounded half away from zero, as the federated strategy's) of the latest copies of the
boards whose host side trains it, and the board goes on from it at once.  Nobody waits for
anybody: a slow board contributes less often and never holds the others back (asynchronous
aggregation, after FedAsync and SplitFed-V1).  With one machine per group of boards, the same
shared layers are what a Flower deployment (microtrain.federated) would aggregate.
"""

import threading
import time

import numpy as np

from microtrain.sim.reference import div_round_away as div_round


class SharedLayers:
    """The host-side layers shared by the boards' sessions (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latest = {}          # board name -> (state {layer: (w, b)}, samples)
        self.merges = 0

    def merge(self, name, state, samples):
        """Take one board's copy in; returns the shared value of the layers that copy holds."""
        with self.lock:
            prev = self.latest.get(name, (None, 0))[1]
            self.latest[name] = ({i: (w.copy(), b.copy()) for i, (w, b) in state.items()}, prev + samples)
            self.merges += 1
            return {i: self._mean(i) for i in state}

    def _mean(self, i):
        members = [(st[i], n) for st, n in self.latest.values() if i in st]
        total = sum(n for _, n in members)
        w = sum(np.asarray(s[0], np.int64) * n for s, n in members)
        b = sum(np.asarray(s[1], np.int64) * n for s, n in members)
        return (np.clip(div_round(w, total), -127, 127).astype(np.int8),
                np.clip(div_round(b, total), -(1 << 31), (1 << 31) - 1).astype(np.int32))


class Member:
    """One board of the federation: its link, its samples on the board, its host copy."""

    def __init__(self, name, link, host, samples_path, count):
        self.name, self.link, self.host = name, link, host
        self.samples_path, self.count = samples_path, count
        self.rounds = []          # per round: its stats
        self.error = None


def run(members, rounds, shared=None, log=lambda m: None):
    """Each member trains `rounds` rounds concurrently; returns the shared layers."""
    shared = shared or SharedLayers()

    def work(m):
        try:
            with m.link:
                for r in range(rounds):
                    st = m.link.split(m.samples_path, m.count, m.host)
                    st["round"], st["t_end"] = r, time.monotonic()
                    m.host.set_state(shared.merge(m.name, m.host.state(), m.count))
                    m.host.snapshots = {}
                    m.host.snapshot(m.host.at)      # the board's checkpoint pairs with the merged layers
                    m.rounds.append(st)
                    log(f"{m.name}: round {r + 1}, {st['samples_per_s']:.1f} samples/s")
        except Exception as e:  # noqa: BLE001 - one board failing leaves the others running
            m.error = e
            log(f"{m.name}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(m,), name=m.name) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return shared

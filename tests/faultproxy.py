"""A faulty serial line for tests and benchmarks: a pty pair between the host and a board's port
that forwards bytes with random drops, bit flips, duplicates, garbage bursts, delays and swapped
chunks, and can pull the cable (disconnect)."""

import os
import random
import select
import threading
import time
import tty


class FaultProxy:
    """A pty pair between the host and a port, forwarding bytes with random drops, bit flips,
    duplicates, garbage bursts, delays and swapped chunks; disconnect() closes the host's pty
    (like pulling the cable) and opens a new one behind the same symlink."""

    def __init__(self, target, link, seed=0, drop=2e-4, flip=2e-4, dup=2e-4, garbage=0.03, delay=0.05,
                 reorder=0.05):
        self.rng = random.Random(seed)
        self.p = (drop, flip, dup)
        self.garbage, self.delay, self.reorder = garbage, delay, reorder
        self.counts = dict(dropped=0, flipped=0, duplicated=0, garbage=0, delayed=0, reordered=0, disconnects=0)
        self.link = link
        self.tfd = os.open(target, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.tfd)
        self.lock = threading.Lock()
        self.queues = {"up": [], "down": []}     # [release time, bytes]
        self._new_pty()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _new_pty(self):
        m, s = os.openpty()
        tty.setraw(s)
        os.set_blocking(m, False)
        self.m, self.s = m, s
        tmp = self.link + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.ttyname(s), tmp)
        os.replace(tmp, self.link)

    def disconnect(self, seconds):
        with self.lock:
            os.close(self.m)
            os.close(self.s)
            self.m = None
            self.queues["down"].clear()
            self.counts["disconnects"] += 1
        time.sleep(seconds)
        with self.lock:
            self._new_pty()

    def _mangle(self, data):
        rng, (drop, flip, dup) = self.rng, self.p
        out = bytearray()
        for b in data:
            r = rng.random()
            if r < drop:
                self.counts["dropped"] += 1
                continue
            if r < drop + flip:
                b ^= 1 << rng.randrange(8)
                self.counts["flipped"] += 1
            elif r < drop + flip + dup:
                out.append(b)
                self.counts["duplicated"] += 1
            out.append(b)
        if rng.random() < self.garbage:
            at = rng.randrange(len(out) + 1)
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24)))
            self.counts["garbage"] += 1
        return bytes(out)

    def _queue(self, direction, data):
        q = self.queues[direction]
        now = time.monotonic()
        t = now
        if self.rng.random() < self.delay:
            t += self.rng.uniform(0, 0.05)
            self.counts["delayed"] += 1
        if q:
            t = max(t, q[-1][0])
        if q and self.rng.random() < self.reorder:
            q.insert(len(q) - 1, [t, data])                     # overtakes the previous chunk
            self.counts["reordered"] += 1
        else:
            q.append([t, data])

    def _run(self):
        while not self.stopping:
            with self.lock:
                m = self.m
            fds = [self.tfd] + ([m] if m is not None else [])
            try:
                r, _, _ = select.select(fds, [], [], 0.005)
            except (OSError, ValueError):
                continue
            with self.lock:
                if m is not None and m != self.m:
                    continue
                for fd, direction in ((m, "up"), (self.tfd, "down")):
                    if fd is not None and fd in r:
                        try:
                            data = os.read(fd, 4096)
                        except OSError:
                            data = b""
                        if data and (direction == "up" or self.m is not None):
                            self._queue(direction, self._mangle(data))
                now = time.monotonic()
                for direction, fd in (("up", self.tfd), ("down", self.m)):
                    q = self.queues[direction]
                    while q and q[0][0] <= now and fd is not None:
                        try:
                            n = os.write(fd, q[0][1])
                        except (BlockingIOError, OSError):
                            break
                        if n < len(q[0][1]):
                            q[0][1] = q[0][1][n:]
                            break
                        q.pop(0)

    def close(self):
        self.stopping = True
        self.thread.join(timeout=5)
        with self.lock:
            for fd in (self.tfd, self.m, self.s):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        if os.path.lexists(self.link):
            os.unlink(self.link)

"""The emulated Raspberry Pi Pico: official MicroPython (an unmodified UF2) on rp2040js, its USB
CDC serial on a pty, its 2 MB flash in a file.

    python firmware/rp2040/pico_board.py [--flash flash.bin] [--image firmware.uf2] [--link ./ttyPICO]

prints the pty and runs until Ctrl-C; `mpremote connect <pty>` and the `microtrain` CLI talk to it
as to a Pico on /dev/ttyACM0.  From Python:

    with PicoBoard(flash="pico.bin") as b:     # flashes the official UF2 into a new flash file
        b.port                                 # '/dev/pts/N' (and `link`, a stable symlink)
        b.kill(); b.start()                    # a power cut; the flash file keeps what was written
        b.cycles()                             # the core's cycle counter and the emulated clock

The host side of the pty stays open across kill()/start() (as a udev symlink would reappear), so
a reset looks to the host like a board that stops answering and then prints its banner again.
Needs node and rp2040js (`make setup` installs it into build/rp2040js); the firmware and the boot
ROM come from the project's shared folder (../shared/firmware/rp2040, see its README).
"""

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FLASH_BYTES = 2 * 1024 * 1024
CLOCK_HZ = 125_000_000


def shared_firmware():
    """../shared/firmware/rp2040 (tools/shared.py finds the shared folder)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from tools.shared import shared_dir
    return shared_dir(os.path.join("firmware", "rp2040"))


def official_uf2():
    return os.path.join(shared_firmware(), "micropython-v1.27.0-RPI_PICO.uf2")


def rp2040js_dir():
    base = os.environ.get("MICROTRAIN_BUILD", os.path.join(REPO, "build"))
    d = os.path.join(base, "rp2040js")
    if not os.path.isdir(os.path.join(d, "node_modules", "rp2040js")):
        raise FileNotFoundError(f"rp2040js is not installed in {d}: run `make setup`")
    return d


class PicoBoard:
    """rp2040js running the firmware in `flash` (a 2 MB file), USB CDC on `self.port`."""

    def __init__(self, flash=None, image="official", link=None, boot_timeout=60):
        self._tmp = None
        if flash is None:
            self._tmp = tempfile.mkdtemp(prefix="microtrain-pico-")
            flash = os.path.join(self._tmp, "flash.bin")
        self.flash = os.path.abspath(flash)
        # a new flash file gets the official firmware; an existing one boots what it holds
        if image == "official":
            image = None if os.path.exists(self.flash) else official_uf2()
        self.image = image
        if self.image is None and not os.path.exists(self.flash):
            raise FileNotFoundError(f"{self.flash}: no flash file and no image to flash")
        self.link = link
        self.boot_timeout = boot_timeout
        self.proc = None
        self.sock = None
        self.starts = 0
        self.log = b""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._hm, self._hs = os.openpty()          # the host's side; we hold the slave open too
        tty.setraw(self._hs)
        os.set_blocking(self._hm, False)
        self.port = os.ttyname(self._hs)
        if link:
            tmp = link + ".tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(self.port, tmp)
            os.replace(tmp, link)
        self._thread = threading.Thread(target=self._forward, name="pico-cdc", daemon=True)
        self._thread.start()

    # ---- life cycle ----
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Power on and wait for USB CDC (no-op when running)."""
        with self._lock:
            if self.alive:
                return self
            sockpath = os.path.join(tempfile.gettempdir(), f"microtrain-pico-{os.getpid()}-{id(self)}.sock")
            cmd = ["node", os.path.join(HERE, "pico.mjs"),
                   "--bootrom", os.path.join(shared_firmware(), "rp2040-bootrom-b1.bin"),
                   "--flash", self.flash, "--socket", sockpath]
            if self.image:
                cmd += ["--image", self.image]
            env = dict(os.environ, RP2040JS_DIR=rp2040js_dir())
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=rp2040js_dir())
            self.image = None                      # flashed once; later starts boot the flash
            self.starts += 1
            self._wait_for(b"USB CDC connected", sockpath)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(sockpath)
            self._until_prompt(sock)
            sock.setblocking(False)
            self.sock = sock
        return self

    def _until_prompt(self, sock, timeout=20):
        """USB is up before the REPL is, and bytes sent meanwhile are lost.  Wait until the raw
        REPL can be entered once (then leave it, Ctrl-B), as a user opening the port of a Pico
        booted a moment ago finds it.  A board whose main.py keeps the console is left alone
        after `timeout`."""
        sock.settimeout(0.2)
        seen = b""
        end = time.monotonic() + timeout

        def read_for(seconds, until):
            nonlocal seen
            stop = time.monotonic() + seconds
            mark = len(seen)
            while until not in seen[mark:] and time.monotonic() < stop:
                try:
                    seen += sock.recv(4096)
                except socket.timeout:
                    pass
            return until in seen[mark:]

        while time.monotonic() < end:
            sock.sendall(b"\r\x03\r\x01")
            if read_for(1.0, b"raw REPL; CTRL-B to exit\r\n>"):
                sock.sendall(b"\x02")
                read_for(2.0, b">>> ")
                break
        self.boot_output = seen

    def _wait_for(self, marker, sockpath):
        end = time.monotonic() + self.boot_timeout
        fd = self.proc.stderr.fileno()
        start = len(self.log)
        while marker not in self.log[start:]:
            left = end - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                err = self.log.decode(errors="replace")
                self.kill()
                raise RuntimeError(f"the emulated Pico did not come up: {err}")
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                self.log += os.read(fd, 4096)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc):
        try:
            while True:
                chunk = os.read(proc.stderr.fileno(), 4096)
                if not chunk:
                    return
                self.log += chunk
        except (OSError, ValueError):
            return

    def kill(self):
        """A power cut: SIGKILL the emulator.  Flash writes go to the file as they happen, so it
        holds exactly what the chip would."""
        with self._lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            if self.proc is not None:
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait(10)
                for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                    try:
                        f.close()
                    except OSError:
                        pass
                self.proc = None

    def flash_uf2(self, path):
        """What holding BOOTSEL, plugging in and copying a UF2 onto the RPI-RP2 drive does: the boot
        ROM writes the UF2's blocks (erasing each sector they touch), the rest of the flash stays,
        the board boots again."""
        self.kill()
        self.image = path
        return self.start()

    def wait_alive(self, timeout=10.0):
        end = time.monotonic() + timeout
        while not self.alive and time.monotonic() < end:
            time.sleep(0.05)
        return self.alive

    def restart(self):
        self.kill()
        return self.start()

    def close(self):
        """Power off for good: the emulator, the pty, a temporary flash file."""
        self._stop.set()
        self.kill()
        self._thread.join(5)
        for fd in (self._hm, self._hs):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)
        if self._tmp:
            import shutil
            shutil.rmtree(self._tmp, ignore_errors=True)

    stop = close                                    # as VirtualBoard

    # ---- the emulator's counters ----
    def command(self, cmd):
        with self._lock:
            if not self.alive:
                raise RuntimeError("the emulated Pico is off")
            self.proc.stdin.write(cmd.encode() + b"\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def cycles(self):
        """(core cycle counter, emulated clock in ns) now."""
        r = self.command("cycles")
        return r["cycles"], r["nanos"]

    # ---- pty <-> the emulator's CDC socket ----
    def _forward(self):
        to_board, to_host = bytearray(), bytearray()
        while not self._stop.is_set():
            sock = self.sock
            rl, wl = [self._hm], ([self._hm] if to_host else [])
            if sock is not None:
                rl.append(sock)
                if to_board:
                    wl.append(sock)
            try:
                r, w, _ = select.select(rl, wl, [], 0.05)
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            if self.sock is not sock:
                continue                            # powered on or off meanwhile: look again
            if self._hm in r:
                try:
                    data = os.read(self._hm, 65536)
                except (BlockingIOError, OSError):
                    data = b""
                if sock is not None:
                    to_board += data                # else the board is off: bytes fall on the floor
            if sock is not None and sock in r:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, OSError):
                    data = None
                if data:
                    to_host += data
                    del to_host[:max(0, len(to_host) - (1 << 20))]   # nobody reads: keep the newest 1 MB
                elif data == b"":
                    to_board.clear()                # the emulator died: a reset
                    with self._lock:
                        if self.sock is sock:
                            sock.close()
                            self.sock = None
            if sock is not None and sock in w and to_board and self.sock is sock:
                try:
                    del to_board[:sock.send(to_board)]
                except (BlockingIOError, OSError):
                    pass
            if self._hm in w and to_host:
                try:
                    del to_host[:os.write(self._hm, to_host)]
                except (BlockingIOError, OSError):
                    pass
            if sock is None:
                to_board.clear()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flash", default="pico-flash.bin", help="the 2 MB flash file (made on first use)")
    ap.add_argument("--image", default="official", help="a UF2 to flash first (default: the official "
                    "MicroPython v1.27.0 when the flash file is new)")
    ap.add_argument("--link", help="a symlink to the pty, e.g. ./ttyPICO")
    args = ap.parse_args(argv)
    image = None if args.image == "none" else args.image
    with PicoBoard(args.flash, image=image, link=args.link) as b:
        print(b.port, flush=True)
        try:
            while b.alive:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

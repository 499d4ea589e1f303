"""Start the microtrain emulated board (MicroPython in qemu-system-arm) with its UART on a pty.

    python firmware/qemuport/qemu_board.py [--board microbit|mps2-an385] [--variant kernels|natmod]
                                           [--no-icount] [--elf PATH]

prints the pty (e.g. /dev/pts/7) and keeps the board running until Ctrl-C; then
`mpremote connect /dev/pts/7 resume exec "print(1+1)"` or the `microtrain` CLI talk to it
as to a USB-serial board.  From Python:

    with QemuBoard() as b:            # builds nothing: run `make -C firmware/qemuport` first
        b.port                        # '/dev/pts/N'
        t = b.transport()             # mpremote SerialTransport, raw REPL entered
        t.exec("print(1)")

Under `-icount shift=0` (the default) every instruction takes one virtual nanosecond: the
board's clocks (time.ticks_us, qemu.clock_ns) count instructions and runs are deterministic.
"""

import argparse
import os
import re
import select
import subprocess
import sys
import threading
import time

PORT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(PORT_DIR))

MACHINES = {
    "microbit": ["-M", "microbit", "-global", "nrf51-soc.sram-size=262144",
                 "-global", "nrf51-soc.flash-size=2097152"],
    "mps2-an385": ["-M", "mps2-an385"],
}


def build_dir(board="microbit", variant="kernels"):
    base = os.environ.get("MICROTRAIN_BUILD", os.path.join(REPO, "build"))
    return os.path.join(base, "qemuport", f"{board}-{variant}")


def firmware_path(board="microbit", variant="kernels"):
    return os.path.join(build_dir(board, variant), "firmware.elf")


def qemu_command(elf, board="microbit", icount=True, serial="pty", monitor=None, logfile=None):
    """monitor: a unix socket path for qemu's human monitor (see QemuBoard.monitor), or None."""
    cmd = ["qemu-system-arm", *MACHINES[board]]
    if icount:
        cmd += ["-icount", "shift=0"]
    cmd += ["-display", "none", "-monitor", f"unix:{monitor},server=on,wait=off" if monitor else "none",
            "-serial", serial, "-kernel", elf]
    if logfile:
        cmd += ["-D", logfile]
    return cmd


def _die_with_parent():
    # qemu gets SIGTERM when the Python process that started it dies (Linux)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)    # PR_SET_PDEATHSIG, SIGTERM
    except Exception:       # noqa: BLE001 - best effort
        pass


class QemuBoard:
    """qemu running the firmware, UART on a fresh pty (`self.port`)."""

    def __init__(self, board="microbit", variant="kernels", elf=None, icount=True, timeout=20,
                 monitor=None, logfile=None):
        self.board = board
        self.monitor_path = monitor
        self.logfile = logfile
        self.elf = elf or firmware_path(board, variant)
        if not os.path.exists(self.elf):
            raise FileNotFoundError(f"{self.elf} missing: run `make -C firmware/qemuport BOARD={board} "
                                    f"VARIANT={variant}`")
        self.cmd = qemu_command(self.elf, board, icount, monitor=monitor, logfile=logfile)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.port = None
        out = b""
        deadline = time.monotonic() + timeout
        while self.port is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"qemu did not open a pty: {' '.join(self.cmd)}\n{out.decode(errors='replace')}")
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                out += chunk
                m = re.search(rb"char device redirected to (/dev/pts/\d+)", out)
                if m:
                    self.port = m.group(1).decode()
        self._transports = []
        self.output = out
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        # keep qemu's stdout/stderr from filling its pipe
        try:
            while True:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    return
                self.output += chunk
        except (OSError, ValueError):
            return

    def transport(self, raw_repl=True, timeout=30):
        """An mpremote SerialTransport on the board, in the raw REPL (no soft reset)."""
        from mpremote.transport_serial import SerialTransport
        t = SerialTransport(self.port, baudrate=115200)
        self._transports.append(t)
        if raw_repl:
            t.enter_raw_repl(soft_reset=False, timeout_overall=timeout)
        return t

    def monitor(self, command, timeout=10):
        """One command of qemu's human monitor (the board must be started with monitor=path);
        returns its output.  E.g. "singlestep on", "log exec,nochain" (with logfile=...)."""
        import socket

        def prompt(s):
            out = b""
            while not out.endswith(b"(qemu) "):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError(f"qemu's monitor closed the connection: {out[-200:]!r}")
                out += chunk
            return out

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.monitor_path)
            prompt(s)
            s.sendall(command.encode() + b"\n")
            return prompt(s).decode(errors="replace")

    def close(self):
        for t in getattr(self, "_transports", []):
            try:
                t.close()
            except Exception:       # noqa: BLE001 - closing anyway
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def exec_raw(t, code, timeout=120):
    """Run code in the raw REPL (raw-paste when the board offers it); returns stdout as str,
    raises RuntimeError with the board's traceback."""
    out, err = t.exec_raw(code, timeout=timeout)
    if err:
        raise RuntimeError(f"board raised:\n{err.decode(errors='replace')}")
    return out.decode(errors="replace")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", default="microbit", choices=sorted(MACHINES))
    ap.add_argument("--variant", default="kernels", choices=["kernels", "natmod"])
    ap.add_argument("--elf", help="firmware ELF (default: build/qemuport/<board>-<variant>/firmware.elf)")
    ap.add_argument("--no-icount", action="store_true", help="run without -icount (faster, not deterministic)")
    args = ap.parse_args(argv)
    with QemuBoard(args.board, args.variant, args.elf, icount=not args.no_icount) as b:
        print(b.port, flush=True)
        print(f"qemu: {' '.join(b.cmd)}", file=sys.stderr, flush=True)
        try:
            b.proc.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

"""A virtual board: the real MicroPython unix port on a pseudo-terminal, used like a USB-serial
board (tests, demos, trying the CLI without hardware).

    with VirtualBoard(heap="192K") as vb:
        vb.install()                       # the board library (.mpy) into <flash>/lib/microtrain
        vb.put("model.mtm", "path/to/model.mtm")
        # vb.port is a tty path: mpremote connect <vb.port> resume exec "print(1)"

Layout: the host opens `port`, a pty that lives as long as the VirtualBoard (like the USB-UART
bridge of a board: resets do not make it disappear); a forwarding thread connects it to a second
pty on which the `micropython` process runs, in a temporary "flash" directory as its cwd, with
`<flash>/lib` and the x64 native module directory on MICROPYPATH, under `-X heapsize=`.
The unix port exits where a board soft-resets (Ctrl-D at the REPL, sys.exit): such an exit is
detected, counted in `exits` and, with auto_restart, the process starts again on the same flash
(a reset).  `kill()` is a power cut (the board stays off until `start()`/`restart()`).
Ctrl-D exits the unix port instead of soft-resetting, so use `mpremote ... resume ...`.
"""

import errno
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tty

from microtrain.device import unixport

MAX_BUFFERED = 1 << 20


def _nonblocking(fd):
    os.set_blocking(fd, False)


class VirtualBoard:
    def __init__(self, heap="192K", flash_dir=None, native_dir=None, auto_restart=True, link=None,
                 executable=None, keep_flash=False):
        self.heap = heap
        self._own_flash = flash_dir is None and not keep_flash
        self.flash = os.path.abspath(flash_dir) if flash_dir else tempfile.mkdtemp(prefix="microtrain-flash-")
        os.makedirs(os.path.join(self.flash, "lib"), exist_ok=True)
        self.native_dir = native_dir or os.path.join(unixport.dist_dir(), "x64_6.3")
        self.exe = executable or unixport.executable()
        self.auto_restart = auto_restart
        self.link = link
        self.proc = None
        self.starts = 0
        self.exits = []                 # return codes of exits the board did by itself
        self.bytes_to_board = 0
        self.bytes_from_board = 0
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread = None
        self._bm = None                 # master side of the MicroPython process's pty
        self._gen = 0
        self._to_board = bytearray()
        self._to_host = bytearray()
        # the host side: stays open (we hold the slave too, so the master never sees a hangup)
        self._hm, self._hs = os.openpty()
        tty.setraw(self._hs)
        _nonblocking(self._hm)
        self.port = os.ttyname(self._hs)
        if link:
            _symlink(self.port, link)

    # ---- life cycle ----
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return "<VirtualBoard %s flash=%s %s>" % (self.port, self.flash, "running" if self.alive else "off")

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.alive else None

    def start(self):
        """Power on (no-op when running)."""
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("this VirtualBoard was stopped")
            if not self.alive:
                self._spawn()
            if self._thread is None:
                self._thread = threading.Thread(target=self._forward, name="virtualboard", daemon=True)
                self._thread.start()
        return self

    def kill(self):
        """Power cut: SIGKILL the MicroPython process; it stays off until start()/restart()."""
        with self._lock:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc is not None:
                proc.wait(timeout=10)
            self.proc = None
            self._close_board_pty()

    def restart(self):
        """Reset: kill and start again on the same flash directory (same `port`)."""
        with self._lock:
            self.kill()
            self.start()
        return self

    def stop(self):
        """Kill the process, end the forwarding thread, close the ptys, remove a temporary flash."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._hm, self._hs):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)
        if self._own_flash:
            shutil.rmtree(self.flash, ignore_errors=True)

    def wait_alive(self, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.alive:
                return True
            time.sleep(0.02)
        return False

    # ---- flash ----
    def install(self, lib_dir=None, name="microtrain"):
        """Copy a board package (default: dist/lib/microtrain, the .mpy library) into <flash>/lib."""
        src = lib_dir or os.path.join(unixport.dist_dir(), "lib", name)
        if not os.path.isdir(src):
            raise FileNotFoundError(f"{src} missing: run `make board-lib`")
        dst = os.path.join(self.flash, "lib", os.path.basename(src.rstrip("/")))
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        return dst

    def put(self, name, data):
        """Write a file into the flash: `data` is bytes or the path of a host file."""
        dst = os.path.join(self.flash, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if isinstance(data, (bytes, bytearray, memoryview)):
            with open(dst, "wb") as f:
                f.write(data)
        else:
            shutil.copyfile(data, dst)
        return dst

    def path(self, name):
        return os.path.join(self.flash, name)

    # ---- internals ----
    def _spawn(self):
        m, s = os.openpty()
        tty.setraw(s)
        env = dict(os.environ, MICROPYPATH=os.pathsep.join(["", os.path.join(self.flash, "lib"), self.native_dir]))
        try:
            self.proc = subprocess.Popen([self.exe, "-X", f"heapsize={self.heap}"], stdin=s, stdout=s, stderr=s,
                                         cwd=self.flash, env=env, start_new_session=True, close_fds=True)
        except BaseException:
            os.close(m)
            raise
        finally:
            os.close(s)
        _nonblocking(m)
        self._bm = m
        self._gen += 1
        self._to_board.clear()
        self.starts += 1

    def _close_board_pty(self):
        if self._bm is not None:
            try:
                os.close(self._bm)
            except OSError:
                pass
            self._bm = None
            self._gen += 1
            self._to_board.clear()

    def _board_gone(self):
        """The process closed its pty (exited or crashed) without kill(): a reset."""
        proc = self.proc
        rc = None
        if proc is not None:
            try:
                rc = proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        self.exits.append(rc)
        self.proc = None
        self._close_board_pty()
        if self.auto_restart and not self._stopping.is_set():
            self._spawn()

    def _forward(self):
        hm = self._hm
        while not self._stopping.is_set():
            with self._lock:
                bm, gen = self._bm, self._gen
                rl = [hm] if len(self._to_board) < MAX_BUFFERED else []
                wl = []
                if bm is not None:
                    rl.append(bm)
                    if self._to_board:
                        wl.append(bm)
                if self._to_host:
                    wl.append(hm)
            try:
                r, w, _ = select.select(rl, wl, [], 0.05)
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            with self._lock:
                if gen != self._gen:
                    continue                  # the board was reset meanwhile
                if hm in r:
                    data = _read(hm)
                    if data and bm is not None:
                        self._to_board += data   # else: the board is off, bytes fall on the floor
                if bm is not None and bm in r:
                    try:
                        data = os.read(bm, 65536)
                    except BlockingIOError:
                        data = None
                    except OSError:           # EIO: the process is gone
                        self._board_gone()
                        continue
                    if data:
                        self.bytes_from_board += len(data)
                        self._to_host += data
                        if len(self._to_host) > MAX_BUFFERED:   # nobody reads the port: drop the oldest
                            del self._to_host[:len(self._to_host) - MAX_BUFFERED]
                    elif data == b"":
                        self._board_gone()
                        continue
                if bm is not None and bm in w and self._to_board:
                    n = _write(bm, self._to_board)
                    self.bytes_to_board += n
                    del self._to_board[:n]
                if hm in w and self._to_host:
                    n = _write(hm, self._to_host)
                    del self._to_host[:n]
                if self.proc is not None and self.proc.poll() is not None and bm is not None and bm not in r:
                    self._board_gone()


def _read(fd):
    try:
        return os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError as e:
        if e.errno == errno.EIO:
            return b""
        raise


def _write(fd, buf):
    try:
        return os.write(fd, buf[:65536])
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        return 0


def _symlink(target, link):
    tmp = f"{link}.{os.getpid()}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)

"""One private local server: a state folder, a free 127.0.0.1 port, start/stop/restart.

Each server runs from a state folder of its own (data + ``<name>.log``) on a port chosen
once, so ``restart()`` comes back on the same port with the same data. No server outlives
its Python process: each runs in its own session with PR_SET_PDEATHSIG set (Linux), and an
atexit hook stops whatever is left. The servers themselves are in ``servers.py``.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from queue import SimpleQueue
from typing import Any


LOG_TAIL_LINES = 40


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned), or raise TimeoutError.
    For the tests and benchmarks that drive these servers and conserver from outside."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class ServerError(RuntimeError):
    """A server could not be started; the message ends with the tail of its log."""


# --------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_handed_out: set[int] = set()


def _port_range() -> range:
    """The larger block of ports outside the kernel's ephemeral range.

    The kernel picks source ports of outgoing connections from the ephemeral
    range, so a port from there (what bind(("127.0.0.1", 0)) returns) can be
    taken by some client while its server is stopped for a restart test, or a
    client retrying a stopped local server can connect to itself.
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    below, above = range(10000, low), range(high + 1, 65536)
    return below if len(below) >= len(above) else above


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def reserve_port(*offsets: int) -> int:
    """A free port p (and p+offset free too, for each offset) not yet handed out by this process."""
    ports = _port_range()
    span = max(offsets, default=0)
    with _ports_lock:
        for _ in range(1000):
            port = random.randrange(ports.start, ports.stop - span)
            wanted = [port, *(port + offset for offset in offsets)]
            if _handed_out.isdisjoint(wanted) and all(map(_bindable, wanted)):
                _handed_out.update(wanted)
                return port
    raise ServerError("no free TCP port on 127.0.0.1")


def free_port() -> int:
    """A TCP port free on 127.0.0.1, outside the ephemeral range, never handed out twice."""
    return reserve_port()


# ------------------------------------------------------------------ child processes


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Spawner:
    """Runs every Popen on one daemon thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the
    process: a server started from a short-lived thread (DevStack's parallel
    start, a test restarting a store from a timer thread) would be killed as soon
    as that thread returns.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # also after os.fork()
                self._thread = threading.Thread(target=self._run, name="devstack-spawner", daemon=True)
                self._thread.start()
        done: Future = Future()
        self._jobs.put((done, args, kwargs))
        return done.result()

    def _run(self) -> None:
        while True:
            done, args, kwargs = self._jobs.get()
            try:
                done.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as exc:  # handed to the caller's thread
                done.set_exception(exc)


_spawner = _Spawner()
_open_servers: set[Server] = set()


@atexit.register
def _close_all() -> None:
    for server in list(_open_servers):
        server.close()


# A forked child (a prefork worker under test) must not stop its parent's servers when it exits.
os.register_at_fork(after_in_child=_open_servers.clear)


# ------------------------------------------------------------------------ servers


class Server:
    """One local server process with a fixed port and a state folder.

    Subclasses give the command line and `ping()` (one real request); `prepare()`
    runs before every start (initdb, config files) and `after_ready()` after it.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    env_drop_prefixes: tuple[str, ...] = ()

    def __init__(self, port: int | None = None, dir: str | os.PathLike | None = None) -> None:
        self.port = port or free_port()
        self._owns_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"conserver-{self.name}-") if dir is None else dir).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        _open_servers.add(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} dir={self.dir} running={self.is_running()}>"

    # -- subclass hooks

    def command(self) -> list[str]:
        raise NotImplementedError

    def ping(self) -> bool:
        """One real request; False while the server does not answer yet."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Runs before each start."""

    def after_ready(self) -> None:
        """Runs after each start, once the server answers."""

    def popen_kwargs(self) -> dict:
        return {}

    # -- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> Server:
        """Start (no-op when running) and return once the server answers."""
        with self._lock:
            if self.is_running():
                return self
            _open_servers.add(self)
            self.prepare()
            env = {k: v for k, v in os.environ.items() if not k.startswith(self.env_drop_prefixes)}
            with open(self.log_path, "ab") as log:
                self._proc = _spawner.popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(self.stop_signal),
                    **self.popen_kwargs(),
                )
            try:
                self.wait_ready(timeout)
                self.after_ready()
            except BaseException:
                self.stop()
                raise
            return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll `ping()` until it succeeds; ServerError (with the log tail) if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while not self.ping():
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                raise ServerError(f"{self.name} exited with status {code}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} did not answer on port {self.port} within {timeout} s\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def stop(self, timeout: float = 15) -> None:
        """Send `stop_signal`, wait up to `timeout` s, then SIGKILL the process group. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.poll() is None:
                proc.send_signal(self.stop_signal)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    # The leader is not reaped yet, so its pid still names our group.
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def restart(self, timeout: float = 60) -> Server:
        """Stop and start again: same port, same state folder."""
        with self._lock:
            self.stop()
            return self.start(timeout)

    def close(self) -> None:
        """Stop, and remove the state folder if this object created it."""
        self.stop()
        _open_servers.discard(self)
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- last lines of {self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])



"""The supervisor's one seam to the operating system (Huey's ``Environment`` shape).

Everything the supervisor's decisions depend on and a test wants to control goes through
an :class:`Environment`: the clocks, starting a child process with the chosen start
method, sending it a signal, sleeping until a child dies or a signal arrives, and what
it tells the outside world (systemd notifications, its process title).
:class:`ProcessEnvironment` is the real one; the unit tests drive the supervisor with a
fake one (a fake clock, fake processes), so restarts, backoff, crash loops and drains are
checked in milliseconds without starting a process.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import Any, Callable, Iterable, Protocol

from conserver.observability.systemd import sd_notify
from conserver.observability.titles import set_title
from conserver.process.board import Board


class ChildProcess(Protocol):
    """The part of ``multiprocessing.Process`` the supervisor uses."""

    pid: int | None
    exitcode: int | None
    sentinel: int  # readable once the process ended

    def start(self) -> None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


class Environment(Protocol):
    start_method: str  # "fork", "spawn" or "forkserver"

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: every deadline the supervisor keeps."""

    def wall_time(self) -> float:
        """Seconds since the epoch: what workers write on the board (heartbeats, busy since)."""

    def sleep(self, seconds: float) -> None: ...

    def shared_board(self) -> Board:
        """A zeroed board in memory the children will share (allocated before any start)."""

    def preload(self, modules: list[str]) -> None:
        """Import ``modules`` once for every child (fork: here; forkserver: in the server)."""

    def create_process(self, target: Callable[..., Any], args: tuple, name: str) -> ChildProcess:
        """A child not started yet; its ``start`` raises OSError when the system refuses."""

    def send_signal(self, pid: int, sig: int) -> None:
        """Deliver ``sig``; a process that is already gone is not an error."""

    def install_signal_handlers(self, signals: Iterable[int], handler: Callable[[int, Any], None]) -> None: ...

    def wake(self) -> None:
        """End the current :meth:`wait` early; safe to call from a signal handler."""

    def wait(self, processes: Iterable[ChildProcess], timeout: float) -> None:
        """Return when one of ``processes`` ends, :meth:`wake` is called, or after ``timeout``."""

    def notify(self, *lines: str) -> None:
        """Tell the service manager (systemd's READY=1, STOPPING=1, STATUS=...)."""

    def set_title(self, title: str) -> None:
        """What ``ps`` shows for this process."""


class ProcessEnvironment:
    """Real processes through one multiprocessing context, real clocks and signals."""

    monotonic = staticmethod(time.monotonic)
    wall_time = staticmethod(time.time)
    sleep = staticmethod(time.sleep)
    notify = staticmethod(sd_notify)
    set_title = staticmethod(set_title)

    def __init__(self, start_method: str | None = None):
        self.mp = multiprocessing.get_context(start_method or None)
        self.start_method = self.mp.get_start_method()
        self._wake_r = self._wake_w = -1

    def shared_board(self) -> Board:
        # Raw shared memory: no lock, no manager process, nothing with a thread or socket.
        return self.mp.RawValue(Board)

    def preload(self, modules: list[str]) -> None:
        if self.start_method == "forkserver":
            self.mp.set_forkserver_preload(modules)  # the fork server imports them, we stay lean
        elif self.start_method == "fork":
            for name in modules:
                importlib.import_module(name)
        # spawn: nothing to share, every child is a new interpreter

    def create_process(self, target: Callable[..., Any], args: tuple, name: str) -> ChildProcess:
        return self.mp.Process(target=target, args=args, name=name)

    def send_signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def install_signal_handlers(self, signals: Iterable[int], handler: Callable[[int, Any], None]) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in signals:
            signal.signal(sig, handler)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def wait(self, processes: Iterable[ChildProcess], timeout: float) -> None:
        # A process sentinel becomes readable when it ends: a death wakes us at once,
        # without SIGCHLD (CPython's concurrent.futures does the same).
        fds: list[int] = [p.sentinel for p in processes]
        if self._wake_r >= 0:
            fds.append(self._wake_r)
        multiprocessing.connection.wait(fds, timeout)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass

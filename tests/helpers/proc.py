"""Helpers to run ``conserver`` as a real child process and watch its process tree."""
from __future__ import annotations

import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil

from conserver.dev.devstack import wait_for  # noqa: F401  (re-exported for the tests)
from conserver.observability.titles import process_title as title  # noqa: F401  (likewise)

ROOT = Path(__file__).resolve().parents[2]


class Conserver:
    """``conserver run`` in a child process with its own environment and a log file."""

    def __init__(self, tmp_path: Path, env: dict[str, str], args: tuple[str, ...] = ("run",),
                 terminal: bool = False):
        self.log_path = tmp_path / f"conserver-{time.monotonic_ns()}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSERVER_", "REDIS_", "NOTIFY_SOCKET"))}
        # The shipped defaults, scheduler and monitor included: a test that turns one off
        # (CONSERVER_ENABLE_SCHEDULER=false, CONSERVER_METRICS_LOG_INTERVAL=0) says why.
        full_env.update({"PYTHONPATH": str(ROOT)})
        full_env.update(env)
        self._log = open(self.log_path, "wb")
        self.terminal = -1  # with ``terminal``: the pseudo-terminal's controlling side
        stdin, extra = None, {}
        if terminal:
            # As in an operator's shell: the pty is conserver's controlling terminal and
            # conserver's process group (workers included) its foreground group.
            self.terminal, stdin = pty.openpty()
            extra = {"start_new_session": True, "preexec_fn": _take_controlling_terminal}
        self.proc = subprocess.Popen([sys.executable, "-m", "conserver", *args], env=full_env, cwd=tmp_path,
                                     stdin=stdin, stdout=self._log, stderr=subprocess.STDOUT, **extra)
        if stdin is not None:
            os.close(stdin)
        self.pid = self.proc.pid
        self.seen: set[int] = set()  # every pid of its tree seen by all_pids()

    # --- the process tree ---
    def workers(self) -> list[psutil.Process]:
        """Live worker and scheduler processes (not the forkserver or resource tracker)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update(k.pid for k in kids)
        return [k for k in kids if _is_worker(k)]

    def worker_titles(self) -> dict[int, str]:
        """pid -> title of the queue workers (not the scheduler or monitor)."""
        titles = {p.pid: title(p.pid) for p in self.workers()}
        return {pid: t for pid, t in titles.items() if t.startswith("conserver: worker")}

    def wait_workers(self, n: int, timeout: float = 15.0, state: str = "") -> list[psutil.Process]:
        """Wait until exactly n queue workers (not the scheduler or monitor) show ``state``."""
        def ready():
            ws = [w for w in self.workers() if title(w.pid).startswith("conserver: worker") and state in title(w.pid)]
            return ws if len(ws) == n else None
        return wait_for(ready, timeout, what=f"{n} workers {state}".strip())

    def all_pids(self) -> list[int]:
        try:
            pids = [self.pid] + [k.pid for k in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen.update(pids)
        return pids

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def ctrl_c(self) -> None:
        """Type Ctrl-C on the terminal: its line discipline sends SIGINT to the whole
        foreground process group."""
        assert os.tcgetpgrp(self.terminal) == self.pid, "conserver is not the terminal's foreground group"
        os.write(self.terminal, b"\x03")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_for(lambda: text in self.log() and self.log(), timeout, interval=0.05, what=repr(text))

    def stop(self) -> None:
        """Leave nothing behind, whatever state the test ended in."""
        pids = set(self.all_pids()) | self.seen  # orphans too, once their master is gone
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        for pid in pids - {self.pid}:
            try:
                if title(pid).startswith("conserver: "):  # not a pid reused since
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
        self._log.close()
        if self.terminal >= 0:
            os.close(self.terminal)
            self.terminal = -1


def _take_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # in the child, after setsid(): stdin is the pty


def _is_worker(p: psutil.Process) -> bool:
    t = title(p.pid)
    return t.startswith("conserver: worker") or t.startswith("conserver: scheduler")


def gone(pids: list[int]) -> bool:
    """None of ``pids`` is running (a zombie waiting for its reaper counts as gone)."""
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # also when it ends while we look
            return False
    return not any(running(p) for p in pids)

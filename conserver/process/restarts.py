"""When a dead worker may start again, and when deaths add up to a crash loop.

A crash loop is a boot failure repeated: restarting cannot help, the deploy is bad. So
only three kinds of death count (gunicorn halts only on its boot-error exit codes, the
same idea):

- the worker died before it reported ready (``Death.BOOT``);
- it exited with the boot-error code (``ExitCode.BOOT_ERROR``, also ``Death.BOOT``);
- it ended itself with an error — a non-zero exit code, or a fault signal such as
  SIGSEGV or SIGABRT — within ``CONSERVER_MIN_UPTIME`` of starting (``Death.EARLY_CRASH``).

Such a death waits 0.1 s, then 0.2 s, 0.4 s ... up to 30 s (each with +-20 % jitter, so a
pool that crashed together does not restart together), and is counted: more than
``CONSERVER_CRASH_LIMIT`` of them within ``CONSERVER_CRASH_WINDOW`` is a crash loop, the
supervisor gives up (exit code 4) and the service manager restarts the whole service.

A worker that was ready and was killed from outside (SIGKILL, the OOM killer, a SIGTERM
someone sent) did nothing wrong: it is replaced at once, whatever its age, and never
counted (``Death.KILLED``). So is one that ended on its own without an error, or lived
past ``CONSERVER_MIN_UPTIME`` (``Death.ENDED``); both forget the slot's backoff.

Pure bookkeeping on facts and times the caller passes in: no clock, no process, no log.
"""

from __future__ import annotations

import collections
import enum
import random
import signal
from typing import Callable, Hashable

from conserver.config import Config
from conserver.errors import ExitCode

BACKOFF_START, BACKOFF_MAX = 0.1, 30.0

# Signals a process raises on itself when its own code fails (a C extension's segfault,
# abort() on a corrupted heap...): an error of the worker, not a kill from outside.
FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL,
                           signal.SIGSYS, signal.SIGTRAP})


class Death(enum.Enum):
    """Why a worker ended, as far as restarting it is concerned."""

    BOOT = "boot failure"  # never reported ready, or exited with the boot-error code
    EARLY_CRASH = "early crash"  # ended itself with an error within CONSERVER_MIN_UPTIME
    KILLED = "killed from outside"  # a signal from outside after it was ready
    ENDED = "ended on its own"  # exit 0, or any error after CONSERVER_MIN_UPTIME

    @property
    def counts(self) -> bool:
        """Towards CONSERVER_CRASH_LIMIT, with backoff before the replacement starts."""
        return self in (Death.BOOT, Death.EARLY_CRASH)


def classify_death(exitcode: int | None, was_ready: bool, lived: float, min_uptime: float) -> Death:
    """``exitcode`` as multiprocessing reports it (-N: killed by signal N)."""
    if exitcode == ExitCode.BOOT_ERROR or not was_ready:
        return Death.BOOT
    code = exitcode or 0
    if code < 0 and -code not in FAULT_SIGNALS:
        return Death.KILLED
    if lived < min_uptime and code != 0:
        return Death.EARLY_CRASH
    return Death.ENDED


class RestartPolicy:
    def __init__(self, cfg: Config, jitter: Callable[[float, float], float] = random.uniform):
        self.cfg = cfg  # replaced on SIGHUP: the limits follow the configuration
        self.jitter = jitter
        self.backoff: dict[Hashable, float] = {}  # the last delay of each worker slot
        self.not_before: dict[Hashable, float] = {}
        self.early_deaths: collections.deque[float] = collections.deque()

    def died(self, key: Hashable, death: Death, now: float) -> float:
        """A worker of ``key`` ended as ``death`` says: how long its successor waits."""
        if not death.counts:
            self.backoff.pop(key, None)
            return 0.0
        self.early_deaths.append(now)
        delay = min(BACKOFF_MAX, self.backoff.get(key, BACKOFF_START / 2) * 2)
        self.backoff[key] = delay
        wait = delay * self.jitter(0.8, 1.2)
        self.not_before[key] = now + wait
        return wait

    def hold(self, key: Hashable, until: float) -> None:
        """No start for ``key`` before ``until`` (the system refused the last one)."""
        self.not_before[key] = until

    def may_start(self, key: Hashable, now: float) -> bool:
        if self.not_before.get(key, 0.0) > now:
            return False
        self.not_before.pop(key, None)
        return True

    def next_due(self, now: float, default: float) -> float:
        """Seconds until the first held start is due, at most ``default``."""
        return min([default, *(max(0.0, t - now) for t in self.not_before.values())])

    def crash_loop(self, now: float) -> bool:
        """More counted deaths within the window than the limit allows."""
        while self.early_deaths and now - self.early_deaths[0] > self.cfg.crash_window:
            self.early_deaths.popleft()
        return len(self.early_deaths) > self.cfg.crash_limit

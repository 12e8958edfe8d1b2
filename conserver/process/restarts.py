"""When a dead worker may start again, and when deaths add up to a crash loop.

A worker that lived at least ``CONSERVER_MIN_UPTIME`` is replaced at once and its backoff
is forgotten. One that died sooner waits 0.1 s, then 0.2 s, 0.4 s ... up to 30 s (each
with +-20 % jitter, so a pool that crashed together does not restart together). Every
such early death is counted; more than ``CONSERVER_CRASH_LIMIT`` of them within
``CONSERVER_CRASH_WINDOW`` is a crash loop: the supervisor gives up (exit code 4) so the
service manager restarts the whole service, which a bad deploy needs.

Pure bookkeeping on times the caller passes in: no clock, no process, no log.
"""

from __future__ import annotations

import collections
import random
from typing import Callable, Hashable

from conserver.config import Config

BACKOFF_START, BACKOFF_MAX = 0.1, 30.0


class RestartPolicy:
    def __init__(self, cfg: Config, jitter: Callable[[float, float], float] = random.uniform):
        self.cfg = cfg  # replaced on SIGHUP: the limits follow the configuration
        self.jitter = jitter
        self.backoff: dict[Hashable, float] = {}  # the last delay of each worker slot
        self.not_before: dict[Hashable, float] = {}
        self.early_deaths: collections.deque[float] = collections.deque()

    def died(self, key: Hashable, lived: float, now: float) -> float:
        """A worker of ``key`` ended after ``lived`` seconds: how long its successor waits."""
        if lived >= self.cfg.min_uptime:
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
        """More early deaths within the window than the limit allows."""
        while self.early_deaths and now - self.early_deaths[0] > self.cfg.crash_window:
            self.early_deaths.popleft()
        return len(self.early_deaths) > self.cfg.crash_limit

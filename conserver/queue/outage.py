"""Saying that Redis is away, once per interval, in words an operator can act on.

A worker retries a Redis step until it goes through (``REDIS_DOWN`` in client.py lists what
counts as Redis being away). Logging every retry would bury the log under one line per
pause, so an :class:`OutageLog` writes at most one WARNING per ``every`` seconds (the first
failure at once, later ones with how many failures it saw meanwhile), and one INFO line when
Redis answers again after a WARNING. Under maxmemory some commands still pass (deletes,
PEXPIRE) while others are refused, so steps may alternate between failing and passing: the
limit holds across such restarts. One is shared by the threads of a process (the heartbeat
thread and the loop), so it locks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from conserver.queue.client import RedisBusy, RedisMisconfigured

WARN_EVERY = 30.0  # seconds between two WARNINGs of one outage

# (exception class, what it means) in the order they are tested; subclasses first
_MEANING: tuple[tuple[type[BaseException], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "Redis is out of memory and refuses writes (maxmemory reached with "
                                        "maxmemory-policy noeviction): free memory or raise maxmemory"),
    (redis.exceptions.ReadOnlyError, "Redis is a read-only replica (a failover moved the master?)"),
    (RedisMisconfigured, "Redis refuses writes because its last snapshot failed (MISCONF): check its disk"),
    (redis.exceptions.BusyLoadingError, "Redis is loading its dataset"),
    (RedisBusy, "Redis is busy running a script or a module command"),
    (redis.exceptions.MasterDownError, "Redis has lost its master (MASTERDOWN)"),
    (redis.exceptions.TryAgainError, "Redis asks to try again (TRYAGAIN)"),
    (redis.TimeoutError, "Redis does not answer in time"),
    (redis.ConnectionError, "Redis cannot be reached"),
)


def meaning(exc: BaseException) -> str:
    """What a ``REDIS_DOWN`` error means, in a few words."""
    for cls, text in _MEANING:
        if isinstance(exc, cls):
            return text
    return "Redis is unavailable"


class OutageLog:
    """One WARNING per ``every`` seconds of an outage, one line when it ends."""

    def __init__(self, logger: logging.Logger, every: float = WARN_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.log = logger
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        self.since: float | None = None  # when the outage began (None: Redis answers)
        self._warned: float | None = None  # when the last WARNING was written
        self._reported = False  # a WARNING was written since Redis last answered
        self._failures = 0  # since the last WARNING

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, what: str, exc: BaseException) -> None:
        """A Redis step (``what``: "claiming", "the heartbeat", ...) failed with ``exc``."""
        with self._lock:
            now = self.clock()
            self._failures += 1
            if self.since is None:
                self.since = now
            if self._warned is not None and now - self._warned < self.every:
                return
            self._warned, self._reported = now, True
            failures, self._failures = self._failures, 0
        more = f"; {failures - 1} more failures since the last warning" if failures > 1 else ""
        self.log.warning("%s: %s failed (%s: %s); vCons wait in Redis, retrying with backoff%s",
                         meaning(exc), what, type(exc).__name__, str(exc)[:200], more)

    def ok(self) -> None:
        """A Redis step went through: if an outage was on, it is over. Cheap when none was."""
        if self.since is None:
            return
        with self._lock:
            since, self.since = self.since, None
            reported, self._reported = self._reported, False
        if since is not None and reported:
            self.log.info("Redis answers again after %.1fs", self.clock() - since)

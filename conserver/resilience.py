"""Retries with backoff and circuit breakers: pure logic, no I/O.

Rate limits are shared by every worker, so they live in Redis: ``limits.SharedTokenBucket``.

Clocks, sleeps and randomness are parameters, so tests drive time by hand. Everything
here is thread-safe where it holds state (a breaker is shared by the threads of a store).

This module depends on nothing else in the project.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

__all__ = ["CircuitBreaker", "backoff_delay", "retry_call"]

log = logging.getLogger("conserver.resilience")

T = TypeVar("T")


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)).

    ``attempt`` counts from 0 (the wait after the first failure). Full jitter spreads the
    retries of many workers that failed together instead of sending them back in step.
    """
    return rand() * min(cap, base * (2 ** min(attempt, 62)))


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    base: float,
    cap: float,
    is_transient: Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Call ``fn`` up to ``attempts`` times (1 = no retry), waiting :func:`backoff_delay`
    between tries. A permanent error (``is_transient`` false) is raised at once; the last
    transient error is raised when the attempts are used up."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            attempt += 1
            if attempt >= attempts or not is_transient(exc):
                raise
            sleep(backoff_delay(attempt - 1, base, cap, rand))


class CircuitBreaker:
    """Stops calling a store that keeps failing, and lets one probe through now and then.

    closed --(threshold consecutive failures)--> open --(reset_timeout)--> half-open
    half-open: exactly one caller at a time is allowed (the probe); its success closes the
    breaker, its failure opens it for another reset_timeout. A probe that never reports
    (its caller died) is given up after reset_timeout and another caller may probe.

    Callers ask :meth:`allow` before a call and report with :meth:`record_success` or
    :meth:`record_failure` after it. Results that arrive while open (calls allowed before
    the breaker opened) change nothing.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def __init__(self, name: str, threshold: int, reset_timeout: float, clock: Callable[[], float] = time.monotonic):
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {threshold}")
        self.name = name
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0
        self._probe_since: float | None = None  # when the half-open probe was let through

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self._state}>"

    @property
    def state(self) -> str:
        with self._lock:
            self._maybe_half_open(self._clock())
            return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        with self._lock:
            if self._state == self.CLOSED:
                return True
            now = self._clock()
            self._maybe_half_open(now)
            if self._state == self.OPEN:
                return False
            # half-open: one probe at a time
            if self._probe_since is not None and now - self._probe_since < self.reset_timeout:
                return False
            self._probe_since = now
            return True

    def record_success(self) -> None:
        with self._lock:
            if self._state == self.HALF_OPEN:
                self._to(self.CLOSED, "probe succeeded")
            elif self._state == self.CLOSED:
                self._failures = 0

    def record_failure(self) -> None:
        with self._lock:
            if self._state == self.HALF_OPEN:
                self._open("probe failed")
            elif self._state == self.CLOSED:
                self._failures += 1
                if self._failures >= self.threshold:
                    self._open(f"after {self._failures} failures")

    # -- transitions (lock held)

    def _maybe_half_open(self, now: float) -> None:
        if self._state == self.OPEN and now - self._opened_at >= self.reset_timeout:
            self._to(self.HALF_OPEN, f"after {self.reset_timeout:g}s")

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._to(self.OPEN, why)

    def _to(self, state: str, why: str) -> None:
        level = logging.WARNING if state == self.OPEN else logging.INFO
        log.log(level, "circuit breaker %s: %s -> %s %s", self.name, self._state, state, why)
        self._state = state
        self._failures = 0
        self._probe_since = None

"""Retries with backoff, circuit breakers and rate limits: pure logic, no I/O.

Clocks, sleeps and randomness are parameters, so tests drive time by hand. Everything
here is thread-safe where it holds state (a breaker is shared by the threads of a store).

This module depends on nothing else in the project.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Protocol, TypeVar

__all__ = ["CircuitBreaker", "RateLimiter", "TokenBucket", "backoff_delay", "retry_call"]

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


class RateLimiter(Protocol):
    """What a caller needs from a rate limit. :class:`TokenBucket` is the local one.

    A limit shared by every worker (one bucket per tenant or store in Redis, refilled and
    taken by one Lua script) will implement this same protocol; it lives next to the queue
    protocol and its scripts, not here, since this module does no I/O.
    """

    def try_acquire(self, n: float = 1.0) -> bool: ...

    def wait_time(self, n: float = 1.0) -> float: ...


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full. Thread-safe."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> float:
        now = self._clock()
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)
        return self._tokens

    @property
    def tokens(self) -> float:
        with self._lock:
            return self._refill()

    def try_acquire(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are that many now."""
        with self._lock:
            if self._refill() >= n:
                self._tokens -= n
                return True
            return False

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there (0 if now; infinite if n > burst)."""
        with self._lock:
            missing = n - self._refill()
            if missing <= 0:
                return 0.0
            return float("inf") if n > self.burst else missing / self.rate

    def acquire(self, n: float = 1.0, *, timeout: float | None = None, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Wait for ``n`` tokens and take them; False if that would take longer than ``timeout``."""
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if self.try_acquire(n):
                return True
            wait = self.wait_time(n)
            if wait == float("inf") or (deadline is not None and self._clock() + wait > deadline):
                return False
            sleep(wait)

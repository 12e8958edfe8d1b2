"""Call a configured link under its policy: one :class:`LinkRunner` per link per worker.

One call of :meth:`LinkRunner.run`::

    breaker open? ──yes──▶ LinkFailed(transient)            (no call, no token)
        │no
    rate limit per call: wait for a token (Redis, shared by all workers) ──too long──▶ transient
        │
    breaker.allow() ─▶ link.run(copy of the vCon, ctx, options) in a pool thread, deadline `timeout`
        │                 │ transient failure (timeout, 429/5xx, connection error, TransientError)
        │                 └──▶ breaker.record_failure(); backoff; again, up to `retries` times
        ▼
    the vCon (changed or not), or None (halt)       any failure left: LinkFailed(transient?)

Each attempt runs on its own copy of the vCon, so a failed attempt, or one past its deadline
that goes on in its thread, never leaves half-made changes in the chain's vCon.

The pool, the Redis bucket and the HTTP sessions are made by the runner, which a worker
builds after fork; a :class:`LinkSpec` (loader.py) is what crosses the fork.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import requests

from conserver.limits import SharedTokenBucket
from conserver.links.base import LinkFailed, TransientError
from conserver.links.context import (THROTTLE_STATUSES, Attempt, LinkContext, RateLimitWait, default_body_key,
                                    run_attempt)
from conserver.links.loader import LinkSpec
from conserver.resilience import CircuitBreaker, retry_call

__all__ = ["CircuitOpen", "LinkRunner", "LinkTimeout", "LinksOutcome", "http_status", "is_transient", "run_links"]

_MAX_THREADS = 256  # per link: threads are made only as calls overlap; past this, calls queue
_DETAIL_CHARS = 300


class LinkTimeout(TransientError):
    """The call passed the link's deadline."""


class CircuitOpen(TransientError):
    """The link's breaker is open: the call was not made."""


def http_status(exc: BaseException) -> int | None:
    """The status of a ``requests`` HTTPError (``response.raise_for_status()``), else None."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth trying again later: timeouts, connection errors, HTTP 429 and 5xx, Redis blips,
    :class:`TransientError`; a LinkFailed says itself. Anything else is permanent."""
    if isinstance(exc, LinkFailed):
        return exc.transient
    if isinstance(exc, (TransientError, TimeoutError, ConnectionError, requests.Timeout,
                        requests.ConnectionError, redis.ConnectionError, redis.TimeoutError)):
        return True
    status = http_status(exc)
    return status is not None and (status == 429 or status >= 500)


def _describe(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS - 3] + "..."


def _copy(vcon: dict) -> dict:
    try:
        return orjson.loads(orjson.dumps(vcon))  # a vCon is JSON: this is the fast deep copy
    except TypeError:
        return copy.deepcopy(vcon)


class LinkRunner:
    """Runs one link for every vCon of one worker; thread-safe (the worker's vCons run their
    links concurrently). ``enqueue``, ``set_body_ttl`` and ``body_key`` go to the
    :class:`LinkContext`; ``should_stop`` (the worker is draining) ends rate-limit waits and
    retries."""

    def __init__(self, spec: LinkSpec, redis_client: redis.Redis | None, *, chain: str = "",
                 body_key: Callable[[str], str] = default_body_key,
                 enqueue: Callable[[str, str], Any] | None = None,
                 set_body_ttl: Callable[[str, int], Any] | None = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 sleep: Callable[[float], None] = time.sleep):
        self.spec = spec
        self.name = spec.name
        self.policy = policy = spec.policy
        self._should_stop = should_stop
        self._sleep = sleep
        self._bucket = None
        if policy.rate_limit > 0:
            self._bucket = SharedTokenBucket(redis_client, policy.bucket_name(spec.name), policy.rate_limit,
                                             policy.burst)
        self._call_bucket = self._bucket if policy.rate_limit_per == "call" else None
        self._breaker = None
        if policy.circuit_breaker_failures > 0:
            self._breaker = CircuitBreaker(f"link {spec.name}", policy.circuit_breaker_failures,
                                           policy.circuit_breaker_reset)
        self.ctx = LinkContext(
            spec.name, redis_client, chain=chain, http_timeout=policy.timeout or 30.0,
            request_bucket=self._bucket if policy.rate_limit_per == "request" else None,
            body_key=body_key, enqueue=enqueue, set_body_ttl=set_body_ttl, should_stop=should_stop)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    def run(self, vcon: dict) -> dict | None:
        """The link's result for ``vcon`` (never changed in place): a vCon dict, or None
        (halt). Raises LinkFailed."""
        policy = self.policy
        try:
            return retry_call(lambda: self._attempt(vcon), attempts=policy.retries + 1, base=policy.retry_backoff,
                              cap=policy.retry_backoff_max, is_transient=self._retryable, sleep=self._sleep)
        except LinkFailed:
            raise
        except Exception as exc:
            raise LinkFailed(self.name, is_transient(exc), _describe(exc)) from exc

    def close(self) -> None:
        """Give back the sessions and the pool (threads still in a call finish by themselves)."""
        self.ctx.close()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- one attempt

    def _retryable(self, exc: BaseException) -> bool:
        return is_transient(exc) and not isinstance(exc, CircuitOpen) and not self._should_stop()

    def _attempt(self, vcon: dict) -> dict | None:
        breaker, timeout = self._breaker, self.policy.timeout
        if breaker is not None and breaker.state == CircuitBreaker.OPEN:
            raise CircuitOpen(f"circuit breaker open after repeated failures (reset {breaker.reset_timeout:g}s)")
        if self._call_bucket is not None and not self._call_bucket.acquire(
                timeout=timeout or None, should_stop=self._should_stop):
            raise RateLimitWait(f"no rate-limit token in {timeout:g}s")
        if breaker is not None and not breaker.allow():
            raise CircuitOpen("circuit breaker half-open: another call is probing")
        try:
            result = self._call(_copy(vcon), timeout)
        except Exception as exc:
            self._record(exc)
            raise
        if breaker is not None:
            breaker.record_success()
        return self._checked(result)

    def _call(self, vcon: dict, timeout: float) -> Any:
        attempt = Attempt(time.monotonic() + timeout if timeout > 0 else None)
        options = copy.deepcopy(dict(self.spec.options))  # a link may change its options dict

        def call():
            return run_attempt(attempt, lambda: self.spec.link.run(vcon, self.ctx, options))

        if attempt.deadline is None:
            return call()
        future = self._executor().submit(call)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            attempt.cancelled.set()
            future.cancel()
            raise LinkTimeout(f"no result in {timeout:g}s") from None

    def _record(self, exc: BaseException) -> None:
        if self._breaker is not None and not isinstance(exc, RateLimitWait):  # a wait is not the service's fault
            if is_transient(exc):
                self._breaker.record_failure()
            else:
                self._breaker.record_success()  # the service answered; the request was at fault
        if self._call_bucket is not None and http_status(exc) in THROTTLE_STATUSES:
            self._call_bucket.throttled()

    def _checked(self, result: Any) -> dict | None:
        if result is None or (isinstance(result, dict) and isinstance(result.get("uuid"), str)):
            return result
        raise LinkFailed(self.name, False, (
            f"run() returned {type(result).__name__}; a link returns the vCon (a dict with a uuid) or None"))

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=_MAX_THREADS, thread_name_prefix=f"link-{self.name}")
            return self._pool


@dataclass(frozen=True)
class LinksOutcome:
    """What a chain's links made of a vCon: ``vcon`` None when ``halted_by`` names a link;
    ``changed``: the result differs from the vCon that went in (its body needs rewriting)."""

    vcon: dict | None
    halted_by: str | None
    changed: bool


def run_links(runners: Iterable[LinkRunner], vcon: dict) -> LinksOutcome:
    """Run the links in order on one vCon; the first None halts. Raises LinkFailed."""
    current = vcon
    for runner in runners:
        result = runner.run(current)
        if result is None:
            return LinksOutcome(None, runner.name, False)
        current = result
    return LinksOutcome(current, None, current != vcon)

"""What a link gets besides the vCon: :class:`LinkContext`, one per link in a worker.

The context hides the queue's internals behind a few calls, so a link never spells a Redis
key or a list protocol itself, and the pipeline can change what the calls do (e.g. hold
``enqueue`` pushes back until the vCon is committed, so a crash cannot double them)::

    ctx.link_name, ctx.chain      names, for logs
    ctx.redis                     the worker's Redis client (made after fork)
    ctx.log                       logger "conserver.links.<link name>"
    ctx.body_key(uuid)            "vcon:{uuid}", the key of a vCon's body
    ctx.enqueue(list, uuid)       push a uuid on a list (tag_router); default RPUSH now
    ctx.set_body_ttl(uuid, s)     expire a vCon's body after s seconds (expire_vcon); default EXPIRE now
    ctx.http()                    a requests.Session for this thread, with the link's timeout and,
                                  when the policy says rate_limit_per: request, its rate limit
    ctx.http_timeout              seconds, the default timeout of ctx.http() requests
    ctx.throttle()                wait for a rate-limit token by hand (a link that calls out
                                  through another client); raises TransientError past the deadline
    ctx.check_cancelled()         raises TransientError once the call's deadline has passed

A call past its deadline goes on in its thread (Python cannot stop a thread); the context
sees that the call was abandoned, and ``ctx.http()`` and ``ctx.throttle()`` refuse to go on
for it, so an abandoned call neither takes rate-limit tokens nor sends requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import requests

from conserver.links.base import TransientError

__all__ = ["LinkCancelled", "LinkContext", "LinkSession", "RateLimitWait", "default_body_key"]

THROTTLE_STATUSES = (429, 503)  # answers that mean "slow down": the shared rate halves


class LinkCancelled(TransientError):
    """The call this thread runs for passed its deadline and was given up."""


class RateLimitWait(TransientError):
    """No rate-limit token came before the call's deadline (or the worker is stopping)."""


class Attempt:
    """One call of a link: its deadline (monotonic, or None) and whether it was given up."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.cancelled = threading.Event()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


_current = threading.local()  # .attempt: the Attempt the thread runs now


def run_attempt(attempt: Attempt, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` as ``attempt`` in this thread (the context reads it for its checks)."""
    _current.attempt = attempt
    try:
        return fn()
    finally:
        _current.attempt = None


def default_body_key(uuid: str) -> str:
    return "vcon:" + uuid


class LinkSession(requests.Session):
    """A requests.Session that applies the link's timeout and, per request, its rate limit."""

    def __init__(self, ctx: LinkContext):
        super().__init__()
        self._ctx = ctx

    def request(self, method, url, *args, **kwargs):
        self._ctx.throttle()
        kwargs.setdefault("timeout", self._ctx.http_timeout)
        response = super().request(method, url, *args, **kwargs)
        if response.status_code in THROTTLE_STATUSES:
            self._ctx.pushed_back()
        return response


class LinkContext:
    """The services of one link in one worker process; shared by the worker's threads."""

    def __init__(self, link_name: str, redis_client: redis.Redis | None, *, chain: str = "",
                 http_timeout: float = 30.0, request_bucket: Any = None,
                 body_key: Callable[[str], str] = default_body_key,
                 enqueue: Callable[[str, str], Any] | None = None,
                 set_body_ttl: Callable[[str, int], Any] | None = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 log: logging.Logger | None = None):
        self.link_name = link_name
        self.chain = chain
        self.redis = redis_client
        self.http_timeout = http_timeout
        self.log = log or logging.getLogger(f"conserver.links.{link_name}")
        self.body_key = body_key
        self._enqueue = enqueue
        self._set_body_ttl = set_body_ttl
        self._should_stop = should_stop
        self._bucket = request_bucket  # a SharedTokenBucket when the rate limit counts requests
        self._local = threading.local()
        self._sessions: list[LinkSession] = []
        self._lock = threading.Lock()

    # -- Redis, through hooks the pipeline may replace

    def enqueue(self, list_name: str, uuid: str) -> None:
        if self._enqueue is not None:
            self._enqueue(list_name, uuid)
        else:
            self.redis.rpush(list_name, uuid)

    def set_body_ttl(self, uuid: str, seconds: int) -> None:
        if self._set_body_ttl is not None:
            self._set_body_ttl(uuid, seconds)
        else:
            self.redis.expire(self.body_key(uuid), int(seconds))

    # -- HTTP

    def http(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = LinkSession(self)
            with self._lock:
                self._sessions.append(session)
        return session

    def check_cancelled(self) -> None:
        attempt = getattr(_current, "attempt", None)
        if attempt is not None and attempt.cancelled.is_set():
            raise LinkCancelled(f"link {self.link_name!r}: the call passed its deadline and was given up")

    def throttle(self) -> None:
        self.check_cancelled()
        if self._bucket is None:
            return
        attempt = getattr(_current, "attempt", None)
        timeout = attempt.remaining() if attempt is not None else None
        stopping = (lambda: self._should_stop() or attempt.cancelled.is_set()) if attempt else self._should_stop
        if (timeout is not None and timeout <= 0) or not self._bucket.acquire(timeout=timeout, should_stop=stopping):
            raise RateLimitWait(f"link {self.link_name!r}: no rate-limit token before the deadline")

    def pushed_back(self) -> None:
        """The service answered 429/503: every worker's share of the rate halves."""
        if self._bucket is not None:
            self._bucket.throttled()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

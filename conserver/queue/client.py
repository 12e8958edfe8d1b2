"""Redis clients and the small names every part of the queue shares: worker ids, item ids,
and which exceptions mean "Redis is away" rather than "this went wrong"."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import DefaultParser
from redis.retry import Retry
from redis.sentinel import Sentinel


class RedisMisconfigured(redis.ResponseError):
    """MISCONF: the server could not write its snapshot and refuses writes until it can."""


class RedisBusy(redis.ResponseError):
    """BUSY: a long script or module call holds the server."""


class ReplyParser(DefaultParser):  # type: ignore[misc, valid-type]
    """redis-py's parser (hiredis when installed), knowing two more refusals by their code, so
    that they can be told from errors of a command. A script passes the code of a refused
    call on (``OOM ... script: <sha>``), so they read the same from inside Lua."""

    EXCEPTION_CLASSES = {**DefaultParser.EXCEPTION_CLASSES, "MISCONF": RedisMisconfigured, "BUSY": RedisBusy}


# Redis away or refusing writes for a while: restarting or unreachable (connection errors,
# timeouts), LOADING its dataset, OOM (maxmemory with noeviction), READONLY (a replica, after a
# failover), MISCONF (a failed snapshot), BUSY, MASTERDOWN, TRYAGAIN. All of them are an outage:
# wait and retry, never blame a vCon, never end a worker for it. (Only the clients of make_redis
# know MISCONF and BUSY.)
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError, redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError, RedisMisconfigured, RedisBusy, redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError)

# A list item that can be a key part as it is (every uuid); anything else is hashed.
SAFE_ID = re.compile(rb"[0-9A-Za-z_\-]{1,64}\Z")


def item_id(item: bytes) -> str:
    """The item itself when it is a short safe token (every uuid), else ``sha1:<hex>``."""
    if SAFE_ID.match(item):
        return item.decode()
    return "sha1:" + hashlib.sha1(item).hexdigest()


def make_worker_id(pid: int | None = None, started: float | None = None) -> str:
    """``host:pid:start-ms``: unique across hosts, restarts and pid reuse."""
    host = re.sub(r"[^A-Za-z0-9._\-]", "_", socket.gethostname()) or "host"
    started = time.time() if started is None else started
    return f"{host}:{os.getpid() if pid is None else pid}:{int(started * 1000)}"


def make_redis(config: Any, *, client_name: str | None = None, socket_timeout: float = 10.0,
               retries: int = 6) -> redis.Redis:
    """A client from REDIS_URL, or from Sentinel when ``config.redis_sentinels`` is set (the URL
    then still gives password, username and db). It retries a command up to ``retries`` times
    with exponential backoff and jitter (up to ~2 s apart) on connection errors and timeouts,
    so a Redis restart costs a pause, not an error; after that the caller sees the exception.
    Making one opens no connection (the first command does)."""
    common: dict[str, Any] = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries),
        decode_responses=False,
        client_name=client_name,
        parser_class=ReplyParser,
    )
    if not config.redis_sentinels:
        return redis.Redis.from_url(config.redis_url, **common)
    url = urlsplit(config.redis_url) if config.redis_url else None
    if url is not None and url.scheme in ("redis", "rediss"):
        if url.password:
            common["password"] = unquote(url.password)
        if url.username:
            common["username"] = unquote(url.username)
        db = url.path.strip("/")
        if db.isdigit():
            common["db"] = int(db)
        if url.scheme == "rediss":
            common["ssl"] = True
    sentinel = Sentinel(list(config.redis_sentinels), socket_timeout=socket_timeout,
                        socket_connect_timeout=5.0,
                        sentinel_kwargs={"socket_timeout": 2.0, "socket_connect_timeout": 2.0})
    return sentinel.master_for(config.redis_sentinel_master, **common)


def as_text(value: bytes | str | None) -> str:
    """A Redis reply as text (bytes decoded with replacement, None as '')."""
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)

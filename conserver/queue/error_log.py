"""The status page's recent errors: the last 100 store and validation errors of every
worker, a capped list in Redis (``KeyLayout.errors``). Best effort: only for people."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
import redis

from conserver.queue.keys import DEFAULT_KEYS, KeyLayout
from conserver.queue.protocol import label

KEEP = 100


MAX_ERROR = 500  # characters of an error kept


def entry(uuid: str, error: str) -> dict[str, Any]:
    """One entry, bounded whatever the input: the uuid as a log line shows it (escaped, at most
    100 characters: it may be an untrusted item of megabytes) and the error's first 500
    characters, so the list holds at most KEEP x ~1 KB."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "uuid": label(uuid),
            "error": error[:MAX_ERROR], "pid": os.getpid()}


def record_error(redis_client: redis.Redis, uuid: str, error: str, keys: KeyLayout = DEFAULT_KEYS) -> None:
    doc = orjson.dumps(entry(uuid, error))
    pipe = redis_client.pipeline(transaction=False)
    pipe.lpush(keys.errors, doc)
    pipe.ltrim(keys.errors, 0, KEEP - 1)
    pipe.execute()


def recent_errors(redis_client: redis.Redis, n: int = 20, keys: KeyLayout = DEFAULT_KEYS) -> list[dict[str, Any]]:
    """The newest ``n``, newest first."""
    return [orjson.loads(x) for x in redis_client.lrange(keys.errors, 0, n - 1)]

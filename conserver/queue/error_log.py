"""The status page's recent errors: the last 100 store and validation errors of every
worker, a capped list in Redis (``KeyLayout.errors``). Best effort: only for people."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
import redis

from conserver.queue.keys import DEFAULT_KEYS, KeyLayout

KEEP = 100


def record_error(redis_client: redis.Redis, uuid: str, error: str, keys: KeyLayout = DEFAULT_KEYS) -> None:
    doc = orjson.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "uuid": uuid,
                        "error": error[:500], "pid": os.getpid()})
    pipe = redis_client.pipeline(transaction=False)
    pipe.lpush(keys.errors, doc)
    pipe.ltrim(keys.errors, 0, KEEP - 1)
    pipe.execute()


def recent_errors(redis_client: redis.Redis, n: int = 20, keys: KeyLayout = DEFAULT_KEYS) -> list[dict[str, Any]]:
    """The newest ``n``, newest first."""
    return [orjson.loads(x) for x in redis_client.lrange(keys.errors, 0, n - 1)]

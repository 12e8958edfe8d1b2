"""A store that measures how many vCons of each tenant are being written at the same moment,
across every worker process, in the test's Redis (CONSERVER_STORE_CONCURRENCY_REDIS)."""
from __future__ import annotations

import collections
import time
from typing import Sequence

import redis

from conserver.storage import BatchResult, Sink

# Add n to the tenant's in-flight count and keep the highest count ever seen.
_ENTER = """
local now = redis.call('INCRBY', KEYS[1], ARGV[1])
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
if now > top then redis.call('SET', KEYS[2], now) end
return now
"""


class ConcurrencyStore(Sink):
    name = "concurrency"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.url = config.extra["CONSERVER_STORE_CONCURRENCY_REDIS"]
        self.seconds = float(config.extra.get("CONSERVER_STORE_CONCURRENCY_SECONDS", "0.2"))

    def open(self) -> None:
        self.redis = redis.Redis.from_url(self.url)
        self.enter = self.redis.register_script(_ENTER)

    def close(self) -> None:
        self.redis.close()

    def write_batch(self, vcons: Sequence) -> BatchResult:
        tenants = collections.Counter(v.tenant or "-" for v in vcons)
        for t, n in tenants.items():
            self.enter(keys=[f"test:inflight:{t}", f"test:max:{t}"], args=[n])
        time.sleep(self.seconds)
        for t, n in tenants.items():
            self.redis.decrby(f"test:inflight:{t}", n)
            self.redis.incrby(f"test:done:{t}", n)
        return {v.uuid: None for v in vcons}

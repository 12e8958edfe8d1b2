"""The at-least-once floor: a bare redis-py loop, no framework.

Each process claims up to 50 items at a time into its own processing list with one Lua
script (LRANGE + LTRIM + RPUSH: the items are never in neither list), runs the no-op job
for each, then acknowledges the batch with DEL of the processing list and counts it
(INCRBY) in one pipeline. It exits when the list is empty.

    python -m benchmarks.peers.bare REDIS_URL LIST WORKER_ID
"""

import sys

import redis

from benchmarks.peers import COUNTER

CLAIM = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('RPUSH', KEYS[2], unpack(items))
return items
"""


def noop(item: bytes) -> None:
    pass


def main(url: str, source: str, worker: str, batch: int = 50) -> None:
    r = redis.Redis.from_url(url)
    claim = r.register_script(CLAIM)
    processing = f"bench:processing:{worker}"
    while True:
        items = claim(keys=[source, processing], args=[batch])
        if not items:
            return
        for item in items:
            noop(item)
        pipe = r.pipeline(transaction=True)
        pipe.delete(processing)
        pipe.incrby(COUNTER, len(items))
        pipe.execute()


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""The no-op jobs of the queue benchmark's peers, one module per library.

Every job counts itself in ``bench:done`` on the benchmark's private Redis
(``BENCH_REDIS_URL``), so the harness can prove that every job ran exactly once and time
the run from the first job done to the last.

``BENCH_COUNT=buffered`` (the default): a job adds 1 to a counter in its process and a
daemon thread of that process sends the sum with INCRBY every 10 ms, so counting costs a
job almost nothing (one INCR round trip per job would be a sizeable share of a no-op
job's cost, and a bias in conserver's favour). ``BENCH_COUNT=direct``: one INCR per job.
"""

import os
import threading
import time

COUNTER = "bench:done"
FLUSH_EVERY = 0.01
_client = None
_pid = 0
_lock = threading.Lock()
_pending = 0
_flusher_pid = 0


def counter_client():
    """One Redis connection per process (created after the fork, never inherited)."""
    global _client, _pid
    if _client is None or _pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _pid = os.getpid()
    return _client


def _flush_loop() -> None:
    global _pending
    client = counter_client()
    while True:
        time.sleep(FLUSH_EVERY)
        with _lock:
            n, _pending = _pending, 0
        if n:
            client.incrby(COUNTER, n)


def count_one() -> None:
    global _pending, _flusher_pid
    if os.environ.get("BENCH_COUNT", "buffered") == "direct":
        counter_client().incr(COUNTER)
        return
    if _flusher_pid != os.getpid():  # first job in this process (or a fork of it)
        with _lock:
            if _flusher_pid != os.getpid():
                _pending = 0
                threading.Thread(target=_flush_loop, name="bench-counter", daemon=True).start()
                _flusher_pid = os.getpid()
    with _lock:
        _pending += 1

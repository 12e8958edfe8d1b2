"""Getting work moving again: due retries back to their lists, the claims of dead workers
back to theirs, and the leader lock that lets one scheduler of a deployment do it.

For the scheduler (:class:`Recovery` under a :class:`LeaderLock`) and the supervisor
(:func:`requeue_dead_worker` after it reaped a worker). Neither needs a worker identity of
its own: they act on other workers' claims.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import redis

from conserver.queue.client import as_text, glob_escape, make_redis, make_worker_id
from conserver.queue.keys import DEFAULT_KEYS, KeyLayout
from conserver.queue.scripts import LOCK_ACQUIRE, LOCK_RELEASE, QueueScripts

log = logging.getLogger("conserver.queue.recovery")


class Recovery:
    """Requeue what dead workers held and move due retries. ``ingress_lists`` only help
    to read a processing list's name found by SCAN (both parts may hold ':')."""

    def __init__(self, redis_client: redis.Redis, ingress_lists: Iterable[str] = (),
                 keys: KeyLayout = DEFAULT_KEYS):
        self.redis = redis_client
        self.ingress_lists = tuple(ingress_lists)
        self.keys = keys
        self.scripts = QueueScripts(redis_client, keys)

    def requeue_worker(self, worker_id: str) -> int:
        """Everything ``worker_id`` had claimed goes back to the head of its lists in claim
        order, and the worker is forgotten (heartbeat, registry). Returns how many moved."""
        return self.scripts.run("requeue_worker", [], [worker_id, "0"])

    def sweep_orphans(self, *, scan: bool = False) -> int:
        """Requeue the claims of every worker whose heartbeat expired. With ``scan`` also look
        for processing lists missing from the registry (SCAN: costly on a big keyspace, so
        run it rarely). Safe to run concurrently with itself. Returns how many items moved."""
        inflight = self.redis.hgetall(self.keys.inflight)
        owners = {as_text(v).partition("\n")[0] for v in inflight.values()}
        candidates = sorted(owners | {as_text(w) for w in self.redis.smembers(self.keys.workers)})
        moved = 0
        if candidates:
            pipe = self.redis.pipeline(transaction=False)
            for wid in candidates:
                pipe.exists(self.keys.heartbeat(wid))
            for wid, alive in zip(candidates, pipe.execute()):
                if not alive:
                    n = self.scripts.run("requeue_worker", [], [wid, "1"])
                    if n > 0:
                        log.warning("requeued %d vCons of worker %s (heartbeat expired)", n, wid)
                        moved += n
        if scan:
            known = set(inflight)
            pattern = glob_escape(self.keys.processing_prefix) + "*"
            for key in self.redis.scan_iter(match=pattern, count=1000):
                if key in known:
                    continue
                parsed = self._parse_processing_key(as_text(key))
                if parsed is None:
                    continue
                wid, src = parsed
                n = self.scripts.run("requeue_list", [key, src], [wid])
                if n > 0:
                    log.warning("requeued %d vCons from unregistered %s", n, as_text(key))
                    moved += n
        return moved

    def _parse_processing_key(self, key: str) -> tuple[str, str] | None:
        """(worker id, list) of a processing key. Both may hold ':'; prefer a split whose list
        is one of ours, else the host:pid:ms worker id shape."""
        rest = key[len(self.keys.processing_prefix):]
        parts = rest.split(":")
        splits = [(":".join(parts[:i]), ":".join(parts[i:])) for i in range(1, len(parts))]
        for wid, src in splits:
            if src in self.ingress_lists:
                return wid, src
        if len(parts) > 3:
            return ":".join(parts[:3]), ":".join(parts[3:])
        return splits[-1] if splits else None

    def move_due(self, now: float | None = None, limit: int = 500) -> int:
        """Move delayed items that are due to the head of their lists (leader only)."""
        return self.scripts.run("move_due", [self.keys.delayed, self.keys.delayed_unreadable],
                                ["" if now is None else repr(float(now)), limit])


def requeue_dead_worker(config: Any, worker_id: str) -> int:
    """For the supervisor, after it reaped the worker ``worker_id``: give its claims back at
    once, on a short-lived connection (the supervisor keeps no client across a fork).
    Raises a Redis error when Redis is away; the orphan sweep then does it later."""
    client = make_redis(config, socket_timeout=2.0, retries=1, client_name="conserver-master")
    try:
        return Recovery(client, config.ingress_lists).requeue_worker(worker_id)
    finally:
        client.close()


class LeaderLock:
    """A lease in Redis: ``acquire`` takes it or renews it when already ours (call it at least
    every ttl/2), ``release`` drops it only if it is still ours."""

    def __init__(self, redis_client: redis.Redis, name: str = "scheduler", owner: str | None = None,
                 ttl: float = 10.0, keys: KeyLayout = DEFAULT_KEYS):
        self.redis = redis_client
        self.key = keys.leader(name)
        self.owner = owner or make_worker_id()
        self.ttl_ms = max(1, int(ttl * 1000))
        self.held = False

    def acquire(self) -> bool:
        self.held = False  # stays False if Redis cannot be reached
        self.held = bool(LOCK_ACQUIRE(self.redis, [self.key], [self.owner, self.ttl_ms]))
        return self.held

    def release(self) -> bool:
        self.held = False
        return bool(LOCK_RELEASE(self.redis, [self.key], [self.owner]))

    def holder(self) -> str | None:
        value = self.redis.get(self.key)
        return as_text(value) if value is not None else None

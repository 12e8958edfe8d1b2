"""The queue protocol in memory, for fast unit tests of the pipeline and the scheduler
(as Huey's MemoryStorage or Dramatiq's StubBroker)::

    mq = MemoryQueue()
    mq.enqueue("default", [(uuid, body), ...])
    claims = mq.claims(QueueSettings.from_config(config), "host:1:1")   # a worker's side
    recovery, lock = mq.recovery(), mq.leader_lock("scheduler", "host:2:1", ttl=5.0)

It follows the rules of the Redis scripts: claim order and the batch cut, delivery counting
and poison, copies of one item taken as one delivery, store marks, retry backoff, dead-letter metadata, give-backs to the head of a
list in claim order. It leaves out what only a server has: a claim on empty lists returns at
once instead of blocking, bodies never expire, there are no RedisJSON values, and a SCAN for
unregistered processing lists finds nothing (every list here is registered). Time is
``clock()`` (``time.time`` unless a test passes its own). ``tests/redis/test_contract.py``
runs the same scenarios here and on a real Redis.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from conserver.queue.client import item_id
from conserver.queue import error_log
from conserver.queue.keys import DEFAULT_KEYS
from conserver.queue.protocol import (AckEffect, Claim, QueueSettings, WeightedChoice, dead_letter_uuid, error_text,
                                      escaped_excerpt, inline_uuid, mark_uuid, now_iso, producer_items)

F = TypeVar("F", bound=Callable[..., Any])
_NONE: frozenset[str] = frozenset()


def _locked(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


class MemoryQueue:
    """What Redis would hold. Thread-safe (a worker beats from a thread of its own)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._lock = threading.RLock()
        self.lists: dict[str, list[bytes]] = defaultdict(list)
        self.bodies: dict[str, bytes] = {}  # item text -> body
        self.body_types: dict[str, str] = {}  # item text -> "json" once an ack rewrote it as RedisJSON
        self.ttls: dict[str, int] = {}  # item text -> TTL an ack or a dead letter set (never applied)
        self.processing: dict[tuple[str, str], list[bytes]] = {}  # (worker, list) -> claim order
        self.deliveries: dict[str, int] = {}
        self.attempts: dict[str, int] = {}
        self.delayed: dict[tuple[str, bytes], float] = {}  # (list, item) -> due
        self.dead: dict[str, list[bytes]] = defaultdict(list)
        self.dead_meta: dict[tuple[str, str], dict[str, Any]] = {}
        self.stored: dict[str, dict[str, float]] = {}  # lowercase uuid -> store -> time
        self.heartbeats: dict[str, tuple[float, dict[str, Any]]] = {}  # worker -> (expires, info)
        self.workers: set[str] = set()
        self.leases: dict[str, tuple[str, float]] = {}  # lock name -> (owner, expires)
        self.errors: list[dict[str, Any]] = []  # newest first
        self.fence = 0  # the fencing counter

    # ------------------------------------------------------------------ the parts
    def claims(self, settings: QueueSettings, worker_id: str) -> "MemoryClaims":
        return MemoryClaims(self, settings, worker_id)

    def recovery(self) -> "MemoryRecovery":
        return MemoryRecovery(self)

    def leader_lock(self, name: str = "scheduler", owner: str = "", ttl: float = 10.0) -> "MemoryLeaderLock":
        return MemoryLeaderLock(self, name, owner, ttl)

    # ------------------------------------------------------------------ producing and looking
    @_locked
    def enqueue(self, list_name: str, vcons: Iterable[tuple[str, bytes | str | dict]]) -> int:
        pairs = producer_items(vcons)
        self.bodies.update(pairs)
        self.lists[list_name] += [uuid.encode() for uuid, _ in pairs]
        return len(pairs)

    @_locked
    def push(self, list_name: str, *items: bytes | str) -> None:
        """Raw list items, as RPUSH (an inline vCon, garbage, a uuid without a body)."""
        self.lists[list_name] += [i if isinstance(i, bytes) else i.encode() for i in items]

    @_locked
    def depths(self, ingress_lists: Iterable[str]) -> dict[str, Any]:
        lists = tuple(ingress_lists)
        return {"lists": {n: len(self.lists.get(n, ())) for n in lists},
                "processing": sum(map(len, self.processing.values())), "delayed": len(self.delayed),
                "dlq": {n: len(self.dead.get(n, ())) for n in lists}, "workers": len(self.workers)}

    @_locked
    def dlq_list(self, list_name: str) -> list[dict[str, Any]]:
        """Dead letters of one list, oldest first, as QueueAdmin.dlq_list gives them."""
        return [{**self.dead_meta.get((list_name, item_id(i)), {}), "inline": i.startswith(b"{")}
                for i in self.dead.get(list_name, ())]

    # ------------------------------------------------------------------ shared steps
    def alive(self, worker_id: str) -> bool:
        beat = self.heartbeats.get(worker_id)
        return beat is not None and beat[0] > self.clock()

    def held(self, item: bytes) -> bool:
        """Is ``item`` in some processing list now?"""
        return any(item in held for held in self.processing.values())

    def take(self, worker_id: str, source: str, item: bytes) -> bool:
        """Remove one copy of ``item`` from the worker's processing list: was it still there?"""
        held = self.processing.get((worker_id, source))
        if not held or item not in held:
            return False
        held.remove(item)
        if not held:
            del self.processing[(worker_id, source)]
        return True

    def bury(self, source: str, item: bytes, iid: str, reason: str, error: str, attempts: int,
             worker_id: str, body_expiry: int = 0) -> None:
        self.dead[source].append(item)
        text = item.decode(errors="replace")
        if body_expiry and text in self.bodies:  # as the scripts do: VCON_DLQ_EXPIRY on the body
            self.ttls[text] = int(body_expiry)
        self.dead_meta[(source, iid)] = {
            "reason": reason, "error": error, "attempts": int(attempts), "deliveries": self.deliveries.get(iid, 0),
            "worker": worker_id, "time": now_iso(), "list": source, "uuid": dead_letter_uuid(item), "item_id": iid,
            "excerpt": escaped_excerpt(item)}
        self.deliveries.pop(iid, None)
        self.attempts.pop(iid, None)

    def apply(self, e: AckEffect) -> None:
        """One effect of an ack: a push, a body rewrite (its type kept in ``body_types``), a TTL."""
        if e.op == "push":
            self.lists[e.target].append(e.value if isinstance(e.value, bytes) else str(e.value).encode())
        elif e.op == "body":
            self.bodies[e.target] = e.value if isinstance(e.value, bytes) else str(e.value).encode()
            self.body_types[e.target] = e.body_type
        elif e.op == "ttl":
            self.ttls[e.target] = int(e.value)
        else:
            raise ValueError(f"unknown ack effect {e.op!r}")

    @_locked
    def requeue_worker(self, worker_id: str) -> int:
        moved = 0
        for (owner, source), items in list(self.processing.items()):
            if owner == worker_id:
                self.lists[source][:0] = items
                moved += len(items)
                del self.processing[(owner, source)]
        self.workers.discard(worker_id)
        self.heartbeats.pop(worker_id, None)
        return moved


class MemoryClaims:
    """:class:`conserver.queue.claims.WorkerClaims`, in memory."""

    def __init__(self, queue: MemoryQueue, settings: QueueSettings, worker_id: str):
        self.queue = queue
        self._lock = queue._lock
        self.settings = settings
        self.keys = DEFAULT_KEYS  # the names a Redis queue would use (the pipeline derives body keys)
        self.worker_id = worker_id
        self.ingress_lists = settings.ingress_lists
        self._choice = WeightedChoice(self.ingress_lists, settings.weights) if settings.weights else None
        self._rng = random.Random()
        self._beaten = False

    @_locked
    def claim_batch(self, timeout: float = 0.0, max_items: int | None = None) -> list[Claim]:
        if not self._beaten:
            self.beat()
        limit = self.settings.batch_size if max_items is None else max(0, min(max_items, self.settings.batch_size))
        while limit:
            claims, moved = self._claim_once(limit)
            if claims or not moved:  # all poison: there may be more right behind
                return claims
        return []

    def _claim_once(self, limit: int) -> tuple[list[Claim], int]:
        q, s, lists = self.queue, self.settings, self.ingress_lists
        non_empty = [bool(q.lists.get(name)) for name in lists]
        order = range(len(lists)) if self._choice is None else [int(i) - 1 for i in self._choice.preference().split(",")]
        for idx in order:
            if not non_empty[idx]:
                continue
            source = lists[idx]
            claims: list[Claim] = []
            seen: set[str] = set()
            taken = size = 0
            for item in q.lists[source][:limit]:
                taken += 1
                iid = item_id(item)
                if iid in seen:
                    continue  # another copy in this batch: its first copy's claim stands for it
                if iid in q.deliveries and q.held(item):  # a copy of one in flight waits for it
                    q.delayed.setdefault((source, item), q.clock() + s.copy_delay)
                    continue
                seen.add(iid)
                q.deliveries[iid] = deliveries = q.deliveries.get(iid, 0) + 1
                if deliveries > s.max_deliveries:
                    q.bury(source, item, iid, "poison", f"claimed {deliveries} times and never acked, deferred or "
                           "dead-lettered", q.attempts.get(iid, 0), self.worker_id, s.dlq_expiry_s)
                    continue
                claims.append(self._claim(item, source, iid, deliveries))
                size += claims[-1].size + (0 if claims[-1].inline else len(item))  # as claim.lua counts
                if size >= s.max_batch_bytes:
                    break
            del q.lists[source][:taken]
            for c in claims:
                q.fence += 1
                c.fence = q.fence
            if claims:
                q.processing.setdefault((self.worker_id, source), []).extend(c.item for c in claims)
            if self._choice is not None:
                self._choice.advance(non_empty, idx)
            return claims, taken
        return [], 0

    def _claim(self, item: bytes, source: str, iid: str, deliveries: int) -> Claim:
        q = self.queue
        attempts = q.attempts.get(iid)
        if item.startswith(b"{"):
            uuid = inline_uuid(item)
            done = frozenset(q.stored.get(uuid.lower(), ())) if uuid else _NONE
            return Claim(item, source, uuid, None, deliveries, iid, attempts or 0, done, "inline", len(item), "inline")
        text = item.decode(errors="replace")
        uuid = text if iid[0:5] == "sha1:" else iid
        again = iid == text and (deliveries > 1 or attempts is not None)
        done = frozenset(q.stored.get(text.lower(), ())) if again else _NONE
        body = q.bodies.get(text)
        if body is None:
            return Claim(item, source, uuid, None, deliveries, iid, attempts or 0, done, "missing", 0)
        if 0 < self.settings.max_vcon_bytes < len(body):
            return Claim(item, source, uuid, None, deliveries, iid, attempts or 0, done, "too_large", len(body))
        return Claim(item, source, uuid, body, deliveries, iid, attempts or 0, done, "ok", len(body),
                     self.queue.body_types.get(text, "string"))

    @_locked
    def still_holds(self, claims: Iterable[Claim]) -> list[bool]:
        return [c.item in self.queue.processing.get((self.worker_id, c.source), ()) for c in claims]

    @_locked
    def ack(self, claims: Iterable[Claim], effects: Mapping[str, Iterable[AckEffect]] | None = None) -> int:
        q, acked = self.queue, 0
        for c in claims:
            if q.take(self.worker_id, c.source, c.item):
                acked += 1
                q.deliveries.pop(c.item_id, None)
                q.attempts.pop(c.item_id, None)
                q.stored.pop(mark_uuid(c.uuid), None)
                for e in (effects or {}).get(c.item_id, ()):
                    q.apply(e)
        return acked

    @_locked
    def set_body_ttl(self, uuid: str, seconds: int) -> None:
        self.queue.ttls[uuid] = int(seconds)

    @_locked
    def requeue_unstarted(self, claims: Iterable[Claim]) -> int:
        q, back = self.queue, defaultdict(list)
        for c in claims:
            if q.take(self.worker_id, c.source, c.item):
                back[c.source].append(c.item)
                left = q.deliveries.get(c.item_id, 0) - 1  # never started: not a delivery
                if left > 0:
                    q.deliveries[c.item_id] = left
                else:
                    q.deliveries.pop(c.item_id, None)
        for source, items in back.items():
            q.lists[source][:0] = items
        return sum(map(len, back.values()))

    @_locked
    def dead_letter(self, claim: Claim, reason: str, error: BaseException | str | None = None, *,
                    attempts: int | None = None) -> bool:
        q = self.queue
        if not q.take(self.worker_id, claim.source, claim.item):
            return False
        counted = q.attempts.get(claim.item_id, 0) if attempts is None else attempts
        q.bury(claim.source, claim.item, claim.item_id, reason, error_text(error), counted, self.worker_id,
               self.settings.dlq_expiry_s)
        return True

    @_locked
    def defer(self, claim: Claim, error: BaseException | str | None = None, *, count_attempt: bool = True,
              delay: float | None = None) -> bool:
        q, s, iid = self.queue, self.settings, claim.item_id
        if not q.take(self.worker_id, claim.source, claim.item):
            return True
        if count_attempt:
            q.attempts[iid] = n = q.attempts.get(iid, 0) + 1
            if n > s.max_retries:
                q.bury(claim.source, claim.item, iid, "retries_exhausted", error_text(error), n, self.worker_id,
                       s.dlq_expiry_s)
                return False
        else:
            n = q.attempts.setdefault(iid, 0)
        if delay is None:
            delay = min(s.retry_backoff_max, s.retry_backoff * 2 ** max(n - 1, 0)) * (0.5 + 0.5 * self._rng.random())
        q.delayed[(claim.source, claim.item)] = q.clock() + max(0.0, delay)
        q.deliveries.pop(iid, None)
        return True

    @_locked
    def beat(self, info: Mapping[str, Any] | None = None) -> None:
        self.queue.heartbeats[self.worker_id] = (self.queue.clock() + self.settings.heartbeat_ttl, dict(info or {}))
        self.queue.workers.add(self.worker_id)
        self._beaten = True

    @_locked
    def retire(self) -> int:
        self._beaten = False
        return self.queue.requeue_worker(self.worker_id)

    @_locked
    def stores_done(self, uuids: Iterable[str]) -> dict[str, set[str]]:
        return {u: set(self.queue.stored.get(u.lower(), ())) for u in uuids}

    @_locked
    def mark_stored(self, uuid_to_stores: Mapping[str, Iterable[str]]) -> None:
        now = self.queue.clock()
        for u, stores in uuid_to_stores.items():
            for store in stores:
                self.queue.stored.setdefault(u.lower(), {})[store] = now

    @_locked
    def record_error(self, uuid: str, error: str) -> None:
        self.queue.errors[:0] = [error_log.entry(uuid, error)]
        del self.queue.errors[error_log.KEEP:]


class MemoryRecovery:
    """:class:`conserver.queue.recovery.Recovery`, in memory."""

    def __init__(self, queue: MemoryQueue):
        self.queue = queue
        self._lock = queue._lock

    def requeue_worker(self, worker_id: str) -> int:
        return self.queue.requeue_worker(worker_id)

    @_locked
    def sweep_orphans(self, *, scan: bool = False) -> int:
        q = self.queue
        candidates = sorted({owner for owner, _ in q.processing} | q.workers)
        return sum(q.requeue_worker(w) for w in candidates if not q.alive(w))

    @_locked
    def move_due(self, now: float | None = None, limit: int = 500) -> int:
        q = self.queue
        now = q.clock() if now is None else now
        due = sorted((at, member) for member, at in q.delayed.items() if at <= now)[:limit]
        for _, (source, item) in reversed(due):  # the earliest ends up first
            q.lists[source].insert(0, item)
            del q.delayed[(source, item)]
        return len(due)


class MemoryLeaderLock:
    """:class:`conserver.queue.recovery.LeaderLock`, in memory."""

    def __init__(self, queue: MemoryQueue, name: str, owner: str, ttl: float):
        self.queue = queue
        self._lock = queue._lock
        self.name, self.owner, self.ttl = name, owner, ttl
        self.held = False

    @_locked
    def acquire(self) -> bool:
        holder = self.holder()
        self.held = holder in (None, self.owner)
        if self.held:
            self.queue.leases[self.name] = (self.owner, self.queue.clock() + self.ttl)
        return self.held

    @_locked
    def release(self) -> bool:
        self.held = False
        if self.holder() != self.owner:
            return False
        del self.queue.leases[self.name]
        return True

    @_locked
    def holder(self) -> str | None:
        lease = self.queue.leases.get(self.name)
        return lease[0] if lease is not None and lease[1] > self.queue.clock() else None

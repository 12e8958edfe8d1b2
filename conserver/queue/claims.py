"""The worker's hot path: claim a batch, then ack, defer or dead-letter each claim.

A :class:`WorkerClaims` is bound to one worker identity (``host:pid:start-ms``): it claims
into that worker's processing lists, beats that worker's heartbeat, and gives back only
what that worker holds. One claim is one round trip (EVALSHA of ``scripts/claim.lua``, the
bodies come with it), and so is one ack of a whole batch.

Fencing. Every claim carries a fencing token, ``Claim.fence``, from one counter in Redis
(``KeyLayout.fence``, INCRBY once per batch inside the claim script): a claim made later, of
any item, by any worker, has a larger token than every claim made before it. Because a copy
of an item in flight is not claimed until that claim is resolved (claim.lua), and a claim a
sweep took from a stalled worker is claimed anew, the newest claim of a uuid holds its
largest token. A store that keeps the token beside the vCon and writes only when the new
token is larger (PostgreSQL ``ON CONFLICT ... WHERE stored.fence < excluded.fence``,
Elasticsearch ``version_type=external``, a conditional PUT) never lets a stale writer
overwrite a newer copy, however long the stale one was paused. :meth:`WorkerClaims.still_holds`
is the cheaper lease check right before writing (is the claim still in our processing list?);
alone it narrows the window but cannot close it (a pause between the check and the write),
which is why the guarantee rests on the token. Limits: the counter lives in Redis and must
survive with it (AOF or a replica): a Redis that lost its data starts it again at 0, and new
writes would then carry smaller tokens than stored ones; set ``conserver:fence`` above the
largest stored token before workers start again. A store that does not compare tokens gets
no protection from them.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import redis

from conserver.queue import error_log
from conserver.queue.client import as_text, item_id
from conserver.queue.keys import DEFAULT_KEYS, KeyLayout
from conserver.queue.protocol import (STATUS, AckEffect, Claim, QueueSettings, WeightedChoice, claim_label, error_text,
                                      inline_uuid, label, log_error, mark_uuid, now_iso)
from conserver.queue.scripts import QueueScripts

log = logging.getLogger("conserver.queue.claims")

_NONE: frozenset[str] = frozenset()
_POLL_FIRST = 0.002  # idle polling with several lists: 2 ms, doubling up to poll_max


def _by_source(claims: Iterable[Claim]) -> dict[str, list[Claim]]:
    groups: dict[str, list[Claim]] = {}
    for c in claims:
        groups.setdefault(c.source, []).append(c)
    return groups


def stores_done(redis_client: redis.Redis, uuids: Iterable[str], keys: KeyLayout = DEFAULT_KEYS) -> dict[str, set[str]]:
    """uuid -> the stores that committed it while it was deferred (its store marks)."""
    uuids = list(uuids)
    pipe = redis_client.pipeline(transaction=False)
    for u in uuids:
        pipe.hkeys(keys.stored(u))
    return {u: {as_text(s) for s in stores} for u, stores in zip(uuids, pipe.execute())}


class WorkerClaims:
    """One worker's side of the queue."""

    def __init__(self, redis_client: redis.Redis, settings: QueueSettings, worker_id: str,
                 keys: KeyLayout = DEFAULT_KEYS):
        self.redis = redis_client
        self.settings = settings
        self.worker_id = worker_id
        self.keys = keys
        self.ingress_lists = settings.ingress_lists
        self.scripts = QueueScripts(redis_client, keys)
        self._choice = WeightedChoice(self.ingress_lists, settings.weights) if settings.weights else None
        self._rng = random.Random()
        self._token_base = f"{os.getpid()}.{self._rng.getrandbits(48):x}."
        self._seq = 0
        self._beaten = False
        timeout = redis_client.connection_pool.connection_kwargs.get("socket_timeout")
        self._block_max = min(5.0, timeout / 2) if timeout else 5.0
        n = len(self.ingress_lists)
        self._claim_keys = [keys.claim_token(worker_id), *self.ingress_lists,
                            *(keys.processing(worker_id, s) for s in self.ingress_lists), keys.delayed, keys.fence]
        self._claim_args = [n, settings.batch_size, settings.max_deliveries, settings.max_vcon_bytes, worker_id]
        self._default_order = ",".join(str(i + 1) for i in range(n))

    # ------------------------------------------------------------------ claiming

    def claim_batch(self, timeout: float = 0.0, max_items: int | None = None) -> list[Claim]:
        """Move up to ``batch_size`` (or ``max_items``) items from one ingress list into this
        worker's processing list and return them with their bodies. Blocks at most
        ``timeout`` seconds when every list is empty, then returns []. Items claimed more
        than ``max_deliveries`` times are dead-lettered (reason ``poison``), not returned.
        Beats once first if this worker has never beaten (a claim needs a live heartbeat)."""
        if not self._beaten:
            self.beat()
        batch = self.settings.batch_size
        limit = batch if max_items is None else max(0, min(max_items, batch))
        if limit == 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        pause = _POLL_FIRST
        while True:
            claims, moved = self._claim_once(limit)
            if claims:
                return claims
            if moved:  # all of them were poison: there may be more right behind
                continue
            left = deadline - time.monotonic()
            if left <= 0.001:
                return []
            if len(self.ingress_lists) == 1:
                self._wait(min(left, self._block_max))
            else:
                self._wait(min(left, pause))
                pause = min(pause * 2, self.settings.poll_max)

    def _wait(self, seconds: float) -> None:
        """Block until the first list is non-empty or ``seconds`` passed, without taking
        anything: BLMOVE of a list onto itself, right to right, leaves it as it was."""
        if seconds < 0.002:
            time.sleep(max(seconds, 0.0))
            return
        first = self.ingress_lists[0]
        self.redis.blmove(first, first, round(seconds, 3), "RIGHT", "RIGHT")

    def _run_claim(self, limit: int, token: str) -> list:
        """The claim script's raw reply. A re-run with the same token returns the same batch."""
        choice = self._choice
        args = [*self._claim_args, now_iso(), token, self._default_order if choice is None else choice.preference(),
                "0" if choice is None else "1", self.settings.max_batch_bytes, self.settings.copy_delay,
                self.settings.dlq_expiry_s]
        args[1] = limit
        return self.scripts.run("claim", self._claim_keys, args)

    def _claim_once(self, limit: int) -> tuple[list[Claim], int]:
        self._seq += 1
        moved, idx, flags, rows, poisoned, copies, fence = self._run_claim(limit, f"{self._token_base}{self._seq}")
        if not moved:
            return [], 0
        source = self.ingress_lists[idx - 1]
        if copies:
            log.debug("%d copies of vCons already claimed taken as one delivery (from %s)", copies, source)
        if self._choice is not None and flags:
            self._choice.advance([f == 49 for f in flags], idx - 1)  # b"1"
        for item, deliveries in poisoned:
            log.warning("dead-lettered %s from %s: reason=poison (claimed %d times, never resolved)",
                        item_id(item) if item.startswith(b"{") else label(as_text(item)), source, deliveries)
        make = self._make_claim
        claims = [make(rows, i, source) for i in range(0, len(rows), 8)]
        for n, c in enumerate(claims, 1):
            c.fence = fence + n
        inline = [c for c in claims if c.inline and c.uuid]
        if inline:  # store marks by the uuid inside: one more round trip, for inline vCons only
            done = self.stores_done([c.uuid for c in inline])
            for c in inline:
                c.done = frozenset(done.get(c.uuid, ()))
        return claims, moved

    @staticmethod
    def _make_claim(rows: list, i: int, source: str) -> Claim:
        item, body, deliveries, code, size, attempts, done, body_type = rows[i:i + 8]
        if code == 4:  # inline: the item is the vCon
            return Claim(item, source, inline_uuid(item), None, deliveries, item_id(item), attempts, _NONE,
                         "inline", size, "inline")
        iid = item_id(item)
        uuid = iid if iid[0:5] != "sha1:" else item.decode(errors="replace")
        return Claim(item, source, uuid, body, deliveries, iid, attempts,
                     frozenset(done.decode().split(",")) if done else _NONE, STATUS[code], size,
                     "json" if body_type == b"json" else "string")

    def still_holds(self, claims: Iterable[Claim]) -> list[bool]:
        """For each claim: is it still ours, right now (in this worker's processing list)? The
        lease check a writer makes right before writing; see the fencing note in the module
        docstring for what it does and does not promise. One round trip."""
        claims = list(claims)
        pipe = self.redis.pipeline(transaction=False)
        for c in claims:
            pipe.lpos(self.keys.processing(self.worker_id, c.source), c.item)
        return [pos is not None for pos in pipe.execute()] if claims else []

    # ------------------------------------------------------------------ resolving

    def ack(self, claims: Iterable[Claim], effects: Mapping[str, Iterable[AckEffect]] | None = None) -> int:
        """Done: remove from the processing list(s) and clear the counters and store marks,
        and apply each claim's ``effects`` (by item_id: body rewrite, TTL, egress pushes),
        all in one atomic round trip; a claim that was no longer ours gets no effects, so a
        retried call pushes nothing twice. Returns how many were still ours to ack."""
        groups = _by_source(claims)
        if not groups:
            return 0
        effects = effects or {}
        args: list[Any] = [self.settings.body_expiry_s]
        for group in groups.values():
            args.append(len(group))
            for c in group:
                mine = effects.get(c.item_id, ())
                args += (c.item, c.item_id, mark_uuid(c.uuid), len(mine))
                for e in mine:
                    args += self._effect_args(e)
        keys = [self.keys.processing(self.worker_id, src) for src in groups]
        acked = self.scripts.run("ack", keys, args)
        expected = sum(map(len, groups.values()))
        if acked != expected:
            log.warning("acked %d of %d claims; the rest had left the processing list (requeued by a sweep?)",
                        acked, expected)
        return acked

    def _effect_args(self, e: AckEffect) -> tuple[str, str, Any]:
        if e.op == "push":
            return "P", e.target, e.value
        if e.op == "body":
            return ("J" if e.body_type == "json" else "S"), self.keys.body(e.target), e.value
        if e.op == "ttl":
            return "E", self.keys.body(e.target), int(e.value)
        raise ValueError(f"unknown ack effect {e.op!r}")

    def set_body_ttl(self, uuid: str, seconds: int) -> None:
        """The body of ``uuid`` expires in ``seconds`` (VCON_DLQ_EXPIRY of a link failure)."""
        self.redis.expire(self.keys.body(uuid), int(seconds))

    def requeue_unstarted(self, claims: Iterable[Claim]) -> int:
        """Give back claims that were never started (a draining worker): to the head of their
        lists in claim order, and not counted as deliveries. Returns how many moved."""
        groups = _by_source(claims)
        if not groups:
            return 0
        keys: list[str] = []
        args: list[Any] = []
        for src, group in groups.items():
            keys += (self.keys.processing(self.worker_id, src), src)
            args.append(len(group))
            for c in group:
                args += (c.item, c.item_id)
        return self.scripts.run("requeue_claims", keys, args)

    def dead_letter(self, claim: Claim, reason: str, error: BaseException | str | None = None, *,
                    attempts: int | None = None) -> bool:
        """Move the claim to its list's dead letters with a meta hash. False if it was no longer ours."""
        ok = self.scripts.run(
            "dead_letter", [self.keys.processing(self.worker_id, claim.source)],
            [claim.item, claim.item_id, claim.source, reason, error_text(error),
             "" if attempts is None else attempts, self.worker_id, now_iso(), self.settings.dlq_expiry_s])
        if ok:
            log.warning("dead-lettered %s from %s: reason=%s %s", claim_label(claim), claim.source, reason,
                        log_error(error))
        else:
            log.info("not dead-lettering %s: no longer in this worker's processing list", claim_label(claim))
        return bool(ok)

    def defer(self, claim: Claim, error: BaseException | str | None = None, *, count_attempt: bool = True,
              delay: float | None = None) -> bool:
        """Retry later with exponential backoff and jitter (or after ``delay`` seconds). After
        ``max_retries`` counted attempts the claim is dead-lettered (``retries_exhausted``) and
        False is returned. ``count_attempt=False`` (a store's circuit breaker is open) defers
        without using up a retry."""
        s = self.settings
        res = self.scripts.run(
            "defer", [self.keys.processing(self.worker_id, claim.source), self.keys.delayed],
            [claim.item, claim.item_id, claim.source, "1" if count_attempt else "0", s.max_retries,
             s.retry_backoff, s.retry_backoff_max, self._rng.random(), -1 if delay is None else max(0.0, delay),
             error_text(error), self.worker_id, now_iso(), s.dlq_expiry_s])
        status, attempts = res[0], res[1]
        if status == 0:
            log.warning("dead-lettered %s from %s: reason=retries_exhausted after %d attempts: %s",
                        claim_label(claim), claim.source, attempts, log_error(error))
            return False
        if status < 0:
            log.info("not deferring %s: no longer in this worker's processing list", claim_label(claim))
        return True

    # ------------------------------------------------------------------ liveness

    def beat(self, info: Mapping[str, Any] | None = None) -> None:
        """Refresh this worker's heartbeat (TTL ``heartbeat_ttl``) and registration. Beat at
        least every ttl/3: a worker without a heartbeat has its claims swept back."""
        payload = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), **(info or {})}
        key, ttl_ms = self.keys.heartbeat(self.worker_id), int(self.settings.heartbeat_ttl * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, orjson.dumps(payload, default=str), px=ttl_ms)
        pipe.sadd(self.keys.workers, self.worker_id)
        try:
            pipe.execute()
        except redis.exceptions.OutOfMemoryError:
            # Over maxmemory (noeviction) Redis refuses SET but not PEXPIRE: keep the lease, so
            # the orphan sweep leaves our claims alone, and let the caller report the outage.
            self.redis.pexpire(key, ttl_ms)
            raise
        self._beaten = True

    def retire(self) -> int:
        """Whatever this worker still holds goes back to the head of its lists in claim
        order, and its heartbeat and registration go (a clean exit; after a Redis outage,
        claims whose reply never arrived). Returns how many items moved."""
        self._beaten = False  # the heartbeat is gone too: the next claim beats first
        return self.scripts.run("requeue_worker", [], [self.worker_id, "0"])

    # ------------------------------------------------------------------ per-store completion

    def stores_done(self, uuids: Iterable[str]) -> dict[str, set[str]]:
        return stores_done(self.redis, uuids, self.keys)

    def mark_stored(self, uuid_to_stores: Mapping[str, Iterable[str]]) -> None:
        now = repr(time.time())
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for u, stores in uuid_to_stores.items():
            stores = list(stores)
            if not stores:
                continue
            key = self.keys.stored(u)
            pipe.hset(key, mapping={s: now for s in stores})
            pipe.expire(key, self.settings.stored_ttl)
            n += 1
        if n:
            pipe.execute()

    def record_error(self, uuid: str, error: str) -> None:
        """One line for the status page's recent errors."""
        error_log.record_error(self.redis, uuid, error, self.keys)

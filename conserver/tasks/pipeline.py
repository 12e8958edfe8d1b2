"""The store pipeline: the default worker task, one chain's worker.

Store pipeline, one loop turn::

    claim_batch ──▶ parse + validate each ──bad──▶ dead letter (reason, one WARNING line)
                          │ good
                          ▼
                the chain's links, per vCon (chain.py) ──None──▶ halted: ack, nothing stored
                          │                            └─fails─▶ defer, then DLQ link_failed
                          ▼
                fan-out to every store not yet holding it (thread pool per store)
                          │
         all committed ───┼── some transient / breaker open ──▶ mark what committed, defer
              │           └── permanent store error ─────────▶ dead letter
              ▼
             ack + body rewrite + egress pushes, one atomic step (only now does the vCon
             leave the processing list, and only now does its uuid go on the egress lists)

Redis being away is not an error of a vCon: every Redis call of the resolve step is
retried with backoff until it goes through or the worker is killed, and the claimed
items wait in the processing list meanwhile (the supervisor or the orphan sweep gives
them back if the worker dies).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Any, Callable, TypeVar

import redis

from conserver.conformance import Conformance
from conserver.fanout import Action, Fanout, decide
from conserver.limits import SharedTokenBucket, TenantSlots
from conserver.observability.metrics import chain_metrics, worker_metrics
from conserver.process.worker import WorkerTask
from conserver.queue.claims import WorkerClaims
from conserver.queue.client import REDIS_DOWN, make_redis, make_worker_id
from conserver.queue.keys import DEFAULT_KEYS, KeyLayout
from conserver.queue.outage import OutageLog
from conserver.queue.protocol import AckEffect, Claim, QueueSettings, claim_label
from conserver.storage import load_sinks
from conserver.tasks.chain import ChainLinks, Failed, Halted, Passed, ack_effects
from conserver.vcon import InvalidVcon, Vcon, check_uuid, parse_vcon

log = logging.getLogger("conserver.tasks.pipeline")
T = TypeVar("T")


class _RedisBackoff:
    """Retry a Redis step with growing pauses while the worker is not told to stop; the
    outage is logged once per interval (``outage``, shared with the heartbeat thread)."""

    def __init__(self, ctx: Any, outage: OutageLog):
        self.ctx = ctx
        self.outage = outage
        self.failed = False  # set on any failure: see StorePipeline.give_back_lost_claims

    def call(self, fn: Callable[[], T], what: str, *, give_up_on_stop: bool = False) -> T | None:
        delay = 0.1
        while True:
            try:
                result = fn()
            except REDIS_DOWN as exc:
                self.failed = True
                if give_up_on_stop and self.ctx.stopping:
                    return None
                self.outage.failed(what, exc)
                self.ctx.heartbeat()
                time.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 5.0)
                continue
            self.outage.ok()
            return result


def vcon_of(claim: Claim, max_bytes: int, keys: KeyLayout = DEFAULT_KEYS) -> Vcon:
    """The claim's vCon, validated, or :class:`InvalidVcon` (``missing_body`` when the body
    key is gone or holds something other than JSON)."""
    if claim.inline:
        return parse_vcon(claim.item, None, max_bytes)
    check_uuid(claim.uuid, "list item")  # unsafe or bad before anything is derived from it
    if claim.status == "too_large":
        raise InvalidVcon("too_large", f"{keys.body(claim.uuid)} is {claim.size} bytes, the limit is {max_bytes}")
    if claim.body is None:
        what = "is not a JSON string" if claim.status == "wrongtype" else "is missing or expired"
        raise InvalidVcon("missing_body", f"{keys.body(claim.uuid)} {what}")
    return parse_vcon(claim.body, claim.uuid, max_bytes)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


class StorePipeline(WorkerTask):
    """Claim a batch, validate it, write it to every store, acknowledge it."""

    def open(self) -> None:
        cfg, pool = self.ctx.config, self.ctx.pool
        self.redis = make_redis(cfg, client_name=f"conserver-worker-{self.ctx.number}")
        self.queue = self.open_queue()
        self.ctx.set_ident(self.queue.worker_id)
        self.outage = OutageLog(log)
        self.retry = _RedisBackoff(self.ctx, self.outage)
        self.chain_metrics = chain_metrics()
        self.links = ChainLinks(pool, self.redis, concurrency=cfg.vcon_concurrency, max_bytes=cfg.max_vcon_bytes,
                                body_key=self.queue.keys.body,
                                should_stop=lambda: self.ctx.stopping, metrics=self.chain_metrics)
        self.link_state: dict[str, tuple[bool, list[AckEffect]]] = {}  # item_id -> (changed, held) of a Passed
        self.retry.call(lambda: self.queue.beat(self._beat_info()), "the first heartbeat", give_up_on_stop=True)
        self.sinks = load_sinks(pool.storages, cfg)
        self.metrics = worker_metrics()
        self.conformance = Conformance.from_config(cfg)
        self.tenants = TenantSlots(self.redis, cfg.default_tenant_concurrency, ttl=cfg.tenant_slot_ttl)
        buckets = {store: SharedTokenBucket(self.redis, f"store:{store}", rate, burst)
                   for store, rate, burst in cfg.rate_limits}
        self.vcon_bucket = SharedTokenBucket(self.redis, "vcons", cfg.vcon_rate, cfg.rate_limit_max) \
            if cfg.rate_limit_max else None
        self.fanout = Fanout.from_config(self.sinks, cfg, on_store_result=self.metrics.store_result,
                                         rate_limiters=buckets, should_stop=lambda: self.ctx.stopping)
        self.fanout.start()
        self.fanout.ensure_schemas()  # "at start when missing"; a failure is logged, writes will retry
        self.held_tenants: dict[str, int] = {}
        # At most half a second per blocking wait, so an idle worker sees a drain at once.
        self.tick = min(cfg.tick_interval, 0.5)
        # From which delivery a batch is taken apart: the third (one redelivery after a
        # crash is common and cheap), earlier if the poison limit is lower than that.
        self.isolate_from = min(3, cfg.max_deliveries)
        self.isolating = False
        # The Redis heartbeat says "this process is alive", so it beats from a thread of its
        # own: a batch slowed by a store outage must not look like a dead worker to the
        # orphan sweep. A worker stuck for good is the supervisor's JOB_TIMEOUT business.
        self.beating = threading.Event()
        self.beater = threading.Thread(target=self._beat_loop, args=(cfg.worker_heartbeat_ttl / 3,),
                                       name="heartbeat", daemon=True)
        self.beater.start()

    def open_queue(self) -> WorkerClaims:
        """This worker's side of the queue, in a fresh worker identity. The one seam where a
        unit test puts the in-memory queue (conserver.queue.memory) instead."""
        return WorkerClaims(self.redis, QueueSettings.from_config(self.ctx.config, self.ctx.pool), make_worker_id())

    def _beat_loop(self, every: float) -> None:
        # Whatever Redis answers, this thread goes on: it dies only with the process.
        while not self.beating.wait(every):
            try:
                self.queue.beat(self._beat_info())
            except REDIS_DOWN as exc:
                self.outage.failed("the heartbeat", exc)
            except Exception:  # a bug must not end the heartbeat silently either
                log.exception("heartbeat failed")

    def _beat_info(self) -> dict[str, Any]:
        links = getattr(self, "links", None)
        return {"pool": self.ctx.pool.name, "links": ",".join(links.names) if links else "",
                "number": self.ctx.number, "processed": self.ctx.processed,
                "state": "busy" if self.ctx.slot.busy_since else "idle",
                "current": self.ctx.slot.current.decode(errors="replace")}

    def give_back_lost_claims(self) -> None:
        """After a Redis failure, with nothing in hand: a claim the server ran but whose
        reply never reached us (Redis stopped in between) left vCons in our processing
        list that we do not know about, and our live heartbeat keeps the orphan sweep
        away from them. Hand back whatever is there."""
        self.retry.failed = False
        n = self.queue.retire()
        self.queue.beat(self._beat_info())  # retire() dropped our heartbeat: we are alive
        if n:
            log.warning("gave back %d vCons claimed during a Redis outage whose reply never arrived", n)

    def run_once(self) -> None:
        try:
            if self.retry.failed:
                self.give_back_lost_claims()
            # One at a time while isolating a suspect redelivery (see below), else a batch.
            claims = self.queue.claim_batch(self.tick, max_items=1 if self.isolating else None)
        except REDIS_DOWN as exc:
            self.retry.failed = True
            self.outage.failed("claiming", exc)
            time.sleep(min(1.0, self.tick) * random.uniform(0.5, 1.0))
            return
        self.outage.ok()
        if not claims:
            self.isolating = False
            return
        if self.ctx.stopping:  # the drain began while we were claiming: these never started
            n = self.retry.call(lambda: self.queue.requeue_unstarted(claims), "hand back")
            log.info("draining: handed back %s unstarted vCons", n)
            return
        # A batch delivered again and again: a worker holding it died each time, perhaps
        # because of one of these vCons. Take them one at a time (the rest go back
        # uncounted), so a poison vCon raises only its own delivery count.
        self.isolating = claims[0].deliveries >= self.isolate_from
        if self.isolating and len(claims) > 1:
            rest = claims[1:]
            self.retry.call(lambda: self.queue.requeue_unstarted(rest), "hand back")
            claims = claims[:1]
        self.process(claims)

    def process(self, claims: list[Claim]) -> None:
        ctx = self.ctx
        started = time.monotonic()
        ctx.busy(claim_label(claims[0]))  # escaped and short: the item may be megabytes of garbage
        valid: list[tuple[Claim, Vcon]] = []
        max_bytes = ctx.config.max_vcon_bytes
        for claim in claims:
            try:
                valid.append((claim, self.conformance.admit(vcon_of(claim, max_bytes))))
            except InvalidVcon as bad:
                self.dead_letter(claim, bad.reason, bad.detail)
        valid = self.admit(valid)
        acks: list[Claim] = []
        effects: dict[str, list[AckEffect]] = {}
        admitted = len(valid)
        if valid and self.links:
            valid = self.run_links(valid, acks, effects)
        link_failures = admitted - len(valid) - len(acks)  # acks: the halted ones so far
        ok, failed = self.store(valid, acks, effects) if valid or acks else (0, 0)
        if self.held_tenants:
            self.retry.call(lambda: self.tenants.release_many(self.held_tenants, self.queue.worker_id), "tenant slots")
            self.held_tenants = {}
        failed += len(claims) - admitted + link_failures
        self.metrics.batch(claims[0].source, ok, failed, time.monotonic() - started)
        for name, breaker in self.fanout.breakers.items():
            self.metrics.breaker_state(name, breaker.state)
        ctx.idle(processed=ok, failed=failed)

    def admit(self, valid: list[tuple[Claim, Vcon]]) -> list[tuple[Claim, Vcon]]:
        """Rate limit and per-tenant cap: what may go to the stores now. The rest is deferred
        (never dropped) without using up a retry."""
        if self.vcon_bucket is not None and valid:
            if not self.vcon_bucket.acquire(len(valid), timeout=5.0, should_stop=lambda: self.ctx.stopping):
                for claim, _ in valid:
                    self.retry.call(lambda c=claim: self.queue.defer(c, "rate limit (RATE_LIMIT_MAX)", count_attempt=False,
                                                                     delay=1.0), "defer")
                return []
        if not self.tenants.limit:
            return valid
        wanted = collections.Counter(v.tenant for _, v in valid if v.tenant)
        if not wanted:
            return valid
        granted = self.retry.call(lambda: self.tenants.acquire_many(dict(wanted), self.queue.worker_id), "tenant slots")
        self.held_tenants = {t: n for t, n in granted.items() if n}
        room = dict(granted)
        admitted = []
        for claim, vcon in valid:
            tenant = vcon.tenant
            if tenant and room.get(tenant, 0) <= 0:
                reason = f"tenant {tenant} has {self.tenants.limit} vCons in flight (DEFAULT_TENANT_CONCURRENCY)"
                self.retry.call(lambda c=claim, r=reason: self.queue.defer(c, r, count_attempt=False,
                                                                           delay=random.uniform(0.2, 1.0)), "defer")
                continue
            if tenant:
                room[tenant] -= 1
            admitted.append((claim, vcon))
        return admitted

    def run_links(self, valid: list[tuple[Claim, Vcon]], acks: list[Claim],
                  effects: dict[str, list[AckEffect]]) -> list[tuple[Claim, Vcon]]:
        """The chain's links: what goes on to the stores. A halted vCon joins ``acks`` with
        its effects (no egress); a failed one is deferred or dead-lettered."""
        passed = []
        for (claim, _), result in zip(valid, self.links.run_batch(valid)):
            if isinstance(result, Passed):
                passed.append((claim, result.vcon))
                self.link_state[claim.item_id] = (result.changed, result.held)
            elif isinstance(result, Halted):
                acks.append(claim)
                effects[claim.item_id] = ack_effects(claim, result.vcon, result.changed, result.held, ())
            else:
                self.link_failed(claim, result)
        self.chain_metrics.vcons(self.ctx.pool.name, "halted", len(acks))
        return passed

    def link_failed(self, claim: Claim, failure: Failed) -> None:
        """vcon-server's rule, retried first when the failure may pass: ``DLQ:{list}`` with
        reason link_failed (the link named), the body kept VCON_DLQ_EXPIRY."""
        error = f"link {failure.link}: {failure.detail}"
        self.chain_metrics.vcons(self.ctx.pool.name, "failed")
        if failure.transient and claim.attempts < self.ctx.config.max_retries:
            self.retry.call(lambda: self.queue.defer(claim, error), "defer")
            self._record_error(claim.uuid or claim.item_id, error)
            return
        self.dead_letter(claim, failure.reason, error)  # the dead-letter step sets VCON_DLQ_EXPIRY

    def store(self, valid: list[tuple[Claim, Vcon]], acks: list[Claim],
              effects: dict[str, list[AckEffect]]) -> tuple[int, int]:
        """Fan out, then resolve each vCon: ack (with its chain's effects), defer (retry
        later) or dead-letter. ``acks``/``effects`` may hold halted vCons already."""
        already = {v.uuid: c.done for c, v in valid if c.done}
        outcomes = self.fanout.store_batch([v for _, v in valid], already) if valid else {}
        halted = len(acks)
        egress = self.ctx.pool.egress_lists
        deferred: list[tuple[Claim, Vcon, Any]] = []
        stored_some: dict[str, frozenset[str]] = {}
        for claim, vcon in valid:
            verdict = decide(outcomes[vcon.uuid])
            changed, held = self.link_state.pop(claim.item_id, (False, []))
            if verdict.action is Action.ACK:
                acks.append(claim)
                if changed or held or egress:
                    effects[claim.item_id] = ack_effects(claim, vcon.data, changed, held, egress)
                continue
            if verdict.done - claim.done:
                stored_some[vcon.uuid] = verdict.done
            deferred.append((claim, vcon, verdict))
        if stored_some:  # first, so a retry writes only the stores that failed
            self.retry.call(lambda: self.queue.mark_stored(stored_some), "store marks")
        for claim, vcon, verdict in deferred:
            error = "; ".join(f"{store}: {_describe(exc)}" for store, exc in verdict.errors.items()) or \
                "circuit breaker open for " + ", ".join(s for s in outcomes[vcon.uuid] if s not in verdict.done)
            if verdict.action is Action.DEAD_LETTER:
                self.dead_letter(claim, "store_rejected", error)
            else:
                kept = self.retry.call(lambda c=claim, e=error, v=verdict: self.queue.defer(
                    c, e, count_attempt=v.count_attempt), "defer")
                if kept is False:  # retries exhausted: the queue dead-lettered it
                    self.metrics.dead_lettered(claim.source, "retries_exhausted")
                if verdict.count_attempt:
                    self._record_error(vcon.uuid, error)
        if acks:
            self.ack(acks, effects)
        self.chain_metrics.vcons(self.ctx.pool.name, "processed", len(acks) - halted)
        return len(acks) - halted, len(deferred)

    def ack(self, acks: list[Claim], effects: dict[str, list[AckEffect]]) -> None:
        try:
            self.retry.call(lambda: self.queue.ack(acks, effects), "ack")
        except redis.ResponseError as exc:
            # An egress list whose key holds another type: the script changed nothing. Ack one by
            # one, so only the vCons that write that key wait in the dead letters (stored already).
            log.error("ack with egress pushes refused (%s); acking one at a time", exc)
            for claim in acks:
                try:
                    self.retry.call(lambda c=claim: self.queue.ack([c], effects), "ack")
                except redis.ResponseError as one:
                    self.dead_letter(claim, "egress_failed", str(one))

    def dead_letter(self, claim: Claim, reason: str, detail: str) -> None:
        self.retry.call(lambda: self.queue.dead_letter(claim, reason, detail), "dead letter")
        self.metrics.dead_lettered(claim.source, reason)
        self._record_error(claim.uuid or claim.item_id, f"{reason}: {detail}")

    def _record_error(self, uuid: str, error: str) -> None:
        try:
            self.queue.record_error(uuid, error)
        except REDIS_DOWN:
            pass  # only for the status page

    def close(self) -> None:
        if getattr(self, "beater", None) is not None:
            self.beating.set()
            self.beater.join(5)
        fanout = getattr(self, "fanout", None)
        if fanout is not None:
            fanout.close()
        if getattr(self, "links", None) is not None:
            self.links.close()
        queue = getattr(self, "queue", None)
        if queue is not None:
            # Anything still claimed (nothing, normally) goes back; the heartbeat goes.
            n = self.retry.call(queue.retire, "retire", give_up_on_stop=False)
            if n:
                log.info("handed back %d claimed vCons on exit", n)
            self.redis.close()

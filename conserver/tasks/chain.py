"""A chain's links over one claimed batch, in one worker.

::

    [(claim, vCon)] ──▶ per vCon, CONSERVER_VCON_CONCURRENCY at once (links in order within one):
                          link 1 ─▶ link 2 ─▶ ... ─▶ Passed(vCon, changed)   -> the stores
                             │None                    Halted(link)            -> ack, nothing stored
                             └LinkFailed              Failed(link, transient) -> defer / dead letter

What a link does to Redis besides the vCon (``ctx.enqueue``: tag_router's pushes;
``ctx.set_body_ttl``: expire_vcon) is held here, not done at once: it becomes an
:class:`~conserver.queue.protocol.AckEffect` that the pipeline applies in the same atomic
step as the ack, with the body rewrite and the egress pushes (:func:`ack_effects`). So a
vCon retried after a crash or a failure neither pushes twice nor loses a push, and the
links of a retry run on the body as it came in, not on one a failed try already changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from conserver.config import PoolConfig
from conserver.links import LinkFailed, LinkRunner, configure_link
from conserver.observability.metrics import NullChainMetrics
from conserver.queue.protocol import AckEffect, Claim
from conserver.vcon import InvalidVcon, Vcon, parse_vcon

log = logging.getLogger("conserver.tasks.chain")

__all__ = ["ChainLinks", "Failed", "Halted", "HeldEffects", "Passed", "ack_effects"]


class HeldEffects:
    """What links asked of Redis during one batch, by the uuid they named. Thread-safe: the
    vCons of a batch run their links at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_uuid: dict[str, list[AckEffect]] = {}

    def push(self, list_name: str, uuid: str) -> None:
        self._add(uuid, AckEffect("push", list_name, uuid))

    def ttl(self, uuid: str, seconds: int) -> None:
        self._add(uuid, AckEffect("ttl", uuid, int(seconds)))

    def _add(self, uuid: str, effect: AckEffect) -> None:
        with self._lock:
            self._by_uuid.setdefault(uuid, []).append(effect)

    def take(self, uuids: Sequence[str]) -> list[AckEffect]:
        with self._lock:
            return [e for u in dict.fromkeys(uuids) for e in self._by_uuid.pop(u, ())]

    def clear(self) -> int:
        """Forget what is left (a call given up at its deadline that pushed afterwards)."""
        with self._lock:
            n = sum(map(len, self._by_uuid.values()))
            self._by_uuid.clear()
        return n


@dataclass
class Passed:
    """Every link went on: ``vcon`` goes to the stores (the claim's own when nothing changed)."""

    vcon: Vcon
    changed: bool
    held: list[AckEffect] = field(default_factory=list)


@dataclass
class Halted:
    """``link`` returned None: nothing is stored and nothing goes on egress. ``vcon`` is the
    vCon as the links before it left it (its body is rewritten when they changed it)."""

    link: str
    vcon: dict
    changed: bool
    held: list[AckEffect] = field(default_factory=list)


@dataclass
class Failed:
    """A link failed (LinkFailed), or what the links returned is not a vCon that can be stored."""

    link: str
    transient: bool
    detail: str
    reason: str = "link_failed"


Result = Passed | Halted | Failed


class ChainLinks:
    """The links of one chain in one worker, built after fork (``open``), run per batch."""

    def __init__(self, pool: PoolConfig, redis_client: Any, *, concurrency: int, max_bytes: int,
                 body_key: Callable[[str], str], should_stop: Callable[[], bool],
                 metrics: NullChainMetrics | None = None):
        self.chain = pool.name
        self.max_bytes = max_bytes
        self.metrics = metrics or NullChainMetrics()
        self.held = HeldEffects()
        self.runners = [
            LinkRunner(configure_link(link.name, link.module, link.options, pip_name=link.pip_name or None,
                                      policy_defaults=link.policy_defaults),
                       redis_client, chain=pool.name, body_key=body_key, enqueue=self.held.push,
                       set_body_ttl=self.held.ttl, should_stop=should_stop)
            for link in pool.links]
        self.names = tuple(r.name for r in self.runners)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"chain-{pool.name}") \
            if self.runners and concurrency > 1 else None

    def __bool__(self) -> bool:
        return bool(self.runners)

    def run_batch(self, items: Sequence[tuple[Claim, Vcon]]) -> list[Result]:
        """Each vCon through the links, in the batch's order of results."""
        left = self.held.clear()
        if left:
            log.warning("chain %s: dropped %d pushes or TTLs made by link calls given up at their deadline",
                        self.chain, left)
        vcons = [v for _, v in items]
        if self._pool is None or len(vcons) < 2:
            return [self.run_one(v) for v in vcons]
        return list(self._pool.map(self.run_one, vcons))

    def run_one(self, vcon: Vcon) -> Result:
        if vcon.form != "unsigned":
            return Failed(self.names[0], False, f"a {vcon.form} vCon cannot go through links: they would "
                          "change what its signature or encryption covers")
        original = vcon.data
        current, seen = original, [vcon.uuid]
        for runner in self.runners:
            started = time.monotonic()
            try:
                result = runner.run(current)
            except LinkFailed as exc:
                self.metrics.link(self.chain, runner.name, time.monotonic() - started, "failed")
                self.held.take(seen)  # a failed try's pushes are not made: the retry makes its own
                return Failed(exc.link_name, exc.transient, exc.detail)
            self.metrics.link(self.chain, runner.name, time.monotonic() - started,
                              "halted" if result is None else "ok")
            if result is None:
                return Halted(runner.name, current, current != original, self.held.take(seen))
            current = result
            seen.append(str(current["uuid"]))
        held = self.held.take(seen)
        if current == original:
            return Passed(vcon, False, held)
        try:
            return Passed(parse_vcon(orjson.dumps(current), None, self.max_bytes), True, held)
        except (InvalidVcon, TypeError) as bad:
            reason = bad.reason if isinstance(bad, InvalidVcon) else "not_json"
            return Failed(self.names[-1], False, f"the links' output: {bad}", reason)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for runner in self.runners:
            runner.close()


def ack_effects(claim: Claim, vcon: dict, changed: bool, held: Sequence[AckEffect],
                egress_lists: Sequence[str]) -> list[AckEffect]:
    """What goes with the claim's ack: the body as the links left it (in the type it came in)
    before anything else, then the links' TTLs and pushes, then the egress pushes.

    An inline claim (the list item was the vCon) has no body key: what is pushed is the vCon
    itself, inline, as it came in."""
    uuid = str(vcon["uuid"])
    if claim.body_type == "inline":
        item = orjson.dumps(vcon)
        pushed = [AckEffect("push", e.target, item) for e in held if e.op == "push"]
        return pushed + [AckEffect("push", name, item) for name in egress_lists]
    out = [AckEffect("body", uuid, orjson.dumps(vcon), claim.body_type)] if changed else []
    out += [e for e in held if e.op == "ttl"] + [e for e in held if e.op == "push"]
    return out + [AckEffect("push", name, uuid) for name in egress_lists]

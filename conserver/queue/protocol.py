"""What both implementations of the queue protocol share: the :class:`Claim` they hand out,
the :class:`QueueSettings` of one pool, the weighted choice of a list, and the texts they
write into dead letters and log lines.

The protocol itself, as seen by a worker (``claims.WorkerClaims``, ``memory.MemoryClaims``)::

    claim_batch(timeout, max_items) -> [Claim]     ack(claims, effects) -> int
    defer(claim, error, count_attempt, delay) -> bool (False: retries exhausted, dead-lettered)
    dead_letter(claim, reason, error, attempts) -> bool   requeue_unstarted(claims) -> int
    beat(info)   retire() -> int   mark_stored({uuid: stores})   stores_done(uuids)
    record_error(uuid, error)

and by the scheduler and the supervisor (``recovery.Recovery``, ``memory.MemoryRecovery``)::

    move_due(now, limit) -> int   sweep_orphans(scan) -> int   requeue_worker(worker_id) -> int
    LeaderLock: acquire() -> bool   release() -> bool   holder() -> str | None
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from conserver.observability.logging import untrusted
from conserver.queue.client import SAFE_ID
from conserver.vcon import InvalidVcon, check_uuid

STATUS = ("ok", "missing", "too_large", "wrongtype", "inline")  # by the claim script's status code
_MAX_ERROR = 2000


@dataclass(slots=True)
class Claim:
    """One claimed list item, with its body fetched in the same round trip."""

    item: bytes  # the raw list element
    source: str  # the ingress list it came from
    uuid: str  # the item decoded, the uuid of an inline vCon, or '' when unknowable
    body: bytes | None  # the body key's value; None when missing, too large, or inline (the item is the body)
    deliveries: int  # times claimed without being resolved, this claim included
    item_id: str = ""
    attempts: int = 0  # counted retries so far (defer)
    done: frozenset[str] = field(default_factory=frozenset)  # stores that already hold this vCon
    status: str = "ok"  # ok, missing, too_large, wrongtype (neither a string nor RedisJSON), inline
    size: int = 0  # the body's length in Redis
    body_type: str = "string"  # how the body is stored: "string" (SET), "json" (RedisJSON), "inline"
    fence: int = 0  # fencing token: larger for every later claim (claims.py explains the guarantee)

    @property
    def inline(self) -> bool:
        return self.status == "inline"


# -- what a chain does with a vCon in the same atomic step as its ack (ack(claims, effects))
@dataclass(frozen=True, slots=True)
class AckEffect:
    """One write that goes with an ack, only when the claim was still ours to ack:

    - ``push``: RPUSH ``value`` (a uuid, or an inline vCon) on the list ``target``: egress
      lists, and the lists a link routes to (tag_router);
    - ``body``: the body of uuid ``target`` becomes ``value`` (JSON bytes), as ``body_type``
      says: a string (SET, its TTL kept) or RedisJSON (JSON.SET);
    - ``ttl``: the body of uuid ``target`` expires in ``value`` seconds (expire_vcon).
    """

    op: str
    target: str
    value: bytes | str | int
    body_type: str = "string"


@dataclass(frozen=True)
class QueueSettings:
    """How one pool claims and retries. ``ingress_lists`` are in priority order; with
    ``weights`` (list -> weight) each batch's list is chosen by smooth weighted round robin
    over the non-empty lists instead."""

    ingress_lists: tuple[str, ...]
    batch_size: int
    max_deliveries: int
    max_vcon_bytes: int
    max_retries: int
    retry_backoff: float
    retry_backoff_max: float
    heartbeat_ttl: float
    weights: Mapping[str, int] | None = None
    body_expiry_s: int = 0  # expire a body this long after its ack (0: keep it, as vcon-server)
    stored_ttl: int = 7 * 86400  # how long store marks of a deferred vCon live
    poll_max: float = 0.05  # idle polling of several lists: 2 ms, doubling up to this
    max_batch_bytes: int = 32 * 1024 * 1024  # bodies per claim reply
    dlq_expiry_s: int = 604800  # the TTL a dead-lettered body gets (VCON_DLQ_EXPIRY; 0: keep its own)
    copy_delay: float = 1.0  # a copy of an item in flight waits this long (retried until that claim is resolved)

    def __post_init__(self) -> None:
        if not self.ingress_lists:
            raise ValueError("at least one ingress list is needed")

    @classmethod
    def from_config(cls, config: Any, pool: Any = None, **overrides: Any) -> "QueueSettings":
        """The settings of ``pool`` (a PoolConfig; None: the top-level ingress lists)."""
        settings = cls(
            ingress_lists=tuple(pool.ingress_lists if pool is not None else config.ingress_lists),
            batch_size=config.batch_size, max_deliveries=config.max_deliveries,
            max_vcon_bytes=config.max_vcon_bytes, max_retries=config.max_retries,
            retry_backoff=config.retry_backoff, retry_backoff_max=config.retry_backoff_max,
            heartbeat_ttl=config.worker_heartbeat_ttl, dlq_expiry_s=config.vcon_dlq_expiry,
            weights=dict(pool.weights) if pool is not None and pool.weights else None)
        return dataclasses.replace(settings, **overrides) if overrides else settings


class WeightedChoice:
    """Smooth weighted round robin (nginx) over the non-empty lists: add each weight to its
    counter, take the largest, subtract the total from it. ``preference`` gives the lists in
    order of counter + weight (1-based, "2,1,3"); the first non-empty one is that largest,
    and ``advance`` books the choice."""

    def __init__(self, lists: tuple[str, ...], weights: Mapping[str, int]):
        self.weights = [int(weights.get(name, 1)) for name in lists]
        self.current = [0] * len(lists)

    def preference(self) -> str:
        w, cur = self.weights, self.current
        return ",".join(str(i + 1) for i in sorted(range(len(w)), key=lambda i: (-(cur[i] + w[i]), i)))

    def advance(self, non_empty: list[bool], chosen: int) -> None:
        w, cur = self.weights, self.current
        total = 0
        for i, full in enumerate(non_empty):
            if full or i == chosen:
                cur[i] += w[i]
                total += w[i]
        cur[chosen] -= total


def producer_items(vcons: Iterable[tuple[str, bytes | str | dict]]) -> list[tuple[str, bytes]]:
    """(uuid, body bytes) to enqueue, or :class:`InvalidVcon` for a uuid that cannot be a key."""
    out: list[tuple[str, bytes]] = []
    for uuid, body in vcons:
        if not SAFE_ID.match(uuid.encode(errors="replace")):
            check_uuid(uuid)  # names the problem
            raise InvalidVcon("unsafe_uuid", f"{uuid!r} cannot be a key")
        if isinstance(body, dict):
            body = orjson.dumps(body)
        elif isinstance(body, str):
            body = body.encode()
        out.append((uuid, body))
    return out


def inline_uuid(item: bytes) -> str:
    """The uuid of a list item that is a whole vCon, or '' when it has none."""
    try:
        data = orjson.loads(item)
    except orjson.JSONDecodeError:
        return ""
    return data["uuid"] if type(data) is dict and type(data.get("uuid")) is str else ""


def mark_uuid(uuid: str) -> str:
    """The uuid as used in store marks (lowercase), or '' when it is not a safe token."""
    return uuid.lower() if uuid and SAFE_ID.match(uuid.encode(errors="replace")) else ""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def error_text(error: BaseException | str | None) -> str:
    """An error as a dead letter keeps it: ``Type: message``, at most 2000 characters."""
    if error is None:
        return ""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."


def log_error(error: BaseException | str | None) -> str:
    return untrusted(error_text(error), 300)


EXCERPT = 64  # bytes of an untrusted item that metadata keeps (scripts/common.lua: the same)


def escaped_excerpt(data: bytes, limit: int = EXCERPT) -> str:
    """At most ``limit`` bytes of ``data``, '\\' and every byte that is not printable ASCII
    escaped (``\\xNN``), then how long it was: what a dead letter keeps of an untrusted item."""
    head = "".join("\\\\" if b == 92 else chr(b) if 32 <= b <= 126 else f"\\x{b:02x}" for b in data[:limit])
    return head + (f"... ({len(data)} bytes)" if len(data) > limit else "")


def dead_letter_uuid(item: bytes) -> str:
    """The ``uuid`` a dead letter's metadata keeps: the item's (an inline vCon's field), escaped,
    or '' when it is longer than an excerpt (garbage)."""
    raw = inline_uuid(item).encode(errors="replace") if item.startswith(b"{") else item
    return escaped_excerpt(raw) if len(raw) <= EXCERPT else ""


def label(text: str) -> str:
    """A uuid for a log line: control characters escaped, at most 100 characters."""
    return untrusted(text, 100)


def claim_label(claim: Claim) -> str:
    return label(claim.uuid or claim.item_id)

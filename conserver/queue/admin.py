"""Operator commands on the queue: enqueue, depths, the workers seen, dead letters (list,
show, requeue, purge) and the recent errors. For ``conserver enqueue|queues|dlq|status``,
the monitor's status page and metrics, the demo, tests and benchmarks; none of them claims
anything, so none needs a worker identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis

from conserver.queue import error_log
from conserver.queue.claims import stores_done
from conserver.queue.client import as_text, glob_escape, item_id
from conserver.queue.keys import DEFAULT_KEYS, KeyLayout
from conserver.queue.protocol import dead_letter_uuid, escaped_excerpt, producer_items
from conserver.queue.scripts import QueueScripts

_CHUNK = 1000  # keys per MSET and per RPUSH


class QueueAdmin:
    """The queue of ``ingress_lists`` (what depths and dead-letter commands cover)."""

    def __init__(self, redis_client: redis.Redis, ingress_lists: Iterable[str], keys: KeyLayout = DEFAULT_KEYS):
        self.redis = redis_client
        self.ingress_lists = tuple(ingress_lists)
        self.keys = keys
        self.scripts = QueueScripts(redis_client, keys)

    # ------------------------------------------------------------------ producing

    def enqueue(self, list_name: str, vcons: Iterable[tuple[str, bytes | str | dict]], *,
                redisjson: VconServerBodies | None = None) -> int:
        """Store bodies at the body key of each uuid and RPUSH the uuids, all in one MULTI/EXEC
        (as a vcon-server producer would, but atomically). Plain strings (SET), or with
        ``redisjson`` the way vcon-server's API writes (api/api.py ``post_vcon``): JSON.SET,
        EXPIRE, and ZADD to its sorted set scored by created_at. Returns how many were pushed."""
        pairs = producer_items(vcons)
        if not pairs:
            return 0
        uuids = [uuid for uuid, _ in pairs]
        pipe = self.redis.pipeline(transaction=True)
        if redisjson is None:
            items = [(self.keys.body(uuid), body) for uuid, body in pairs]
            for lo in range(0, len(items), _CHUNK):
                pipe.mset(dict(items[lo:lo + _CHUNK]))
        else:
            redisjson.write(pipe, [(self.keys.body(uuid), body) for uuid, body in pairs])
        for lo in range(0, len(uuids), _CHUNK):
            pipe.rpush(list_name, *uuids[lo:lo + _CHUNK])
        pipe.execute()
        return len(uuids)

    def has_redisjson(self) -> bool:
        """Does the server have the RedisJSON module (JSON.* commands)?"""
        try:
            self.redis.execute_command("JSON.TYPE", self.keys.body("conserver-probe"))
        except redis.ResponseError:  # unknown command
            return False
        return True

    # ------------------------------------------------------------------ looking

    def depths(self) -> dict[str, Any]:
        """Lengths: each ingress list, all processing lists, the delayed set, each DLQ."""
        pipe = self.redis.pipeline(transaction=False)
        for name in self.ingress_lists:
            pipe.llen(name)
        for name in self.ingress_lists:
            pipe.llen(self.keys.dlq(name))
        pipe.zcard(self.keys.delayed)
        pipe.hkeys(self.keys.inflight)
        pipe.scard(self.keys.workers)
        res = pipe.execute()
        n = len(self.ingress_lists)
        proc_keys = res[2 * n + 1]
        processing = 0
        if proc_keys:
            pipe = self.redis.pipeline(transaction=False)
            for key in proc_keys:
                pipe.llen(key)
            processing = sum(pipe.execute())
        return {
            "lists": dict(zip(self.ingress_lists, res[:n])),
            "processing": processing,
            "delayed": res[2 * n],
            "dlq": dict(zip(self.ingress_lists, res[n:2 * n])),
            "workers": res[2 * n + 2],
        }

    def workers(self) -> dict[str, dict | None]:
        """Registered workers of every host and their heartbeat info (None: expired)."""
        ids = sorted(as_text(w) for w in self.redis.smembers(self.keys.workers))
        if not ids:
            return {}
        values = self.redis.mget([self.keys.heartbeat(w) for w in ids])
        return {w: (orjson.loads(v) if v else None) for w, v in zip(ids, values)}

    def stores_done(self, uuids: Iterable[str]) -> dict[str, set[str]]:
        """uuid -> the stores that already committed it, for a vCon waiting for a retry."""
        return stores_done(self.redis, uuids, self.keys)

    def recent_errors(self, n: int = 20) -> list[dict[str, Any]]:
        return error_log.recent_errors(self.redis, n, self.keys)

    # ------------------------------------------------------------------ dead letters

    def dlq_list(self, list_name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters, oldest first, with their metadata."""
        out: list[dict[str, Any]] = []
        for name in self._lists(list_name):
            if len(out) >= limit:
                break
            items = self.redis.lrange(self.keys.dlq(name), 0, limit - len(out) - 1)
            if not items:
                continue
            ids = [item_id(i) for i in items]
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(self.keys.dlq_meta(name, i))
            for item, iid, meta in zip(items, ids, pipe.execute()):
                out.append(_dlq_entry(name, item, iid, meta))
        return out

    def dlq_show(self, uuid: str, list_name: str | None = None) -> dict[str, Any] | None:
        """One dead letter by uuid (or item id), with its metadata and body; None if absent."""
        found = self._dlq_find(uuid, list_name)
        if found is None:
            return None
        name, item = found
        iid = item_id(item)
        entry = _dlq_entry(name, item, iid, self.redis.hgetall(self.keys.dlq_meta(name, iid)))
        if item.startswith(b"{"):
            entry["body"] = as_text(item)
        else:
            key = self.keys.body(as_text(item))
            try:
                body = self.redis.get(key)
            except redis.ResponseError:
                body = self.redis.execute_command("JSON.GET", key)
            entry["body"] = as_text(body) if body is not None else None
        return entry

    def dlq_requeue(self, uuid: str | None = None, *, all: bool = False, list_name: str | None = None) -> int:
        """Put dead letters back at the tail of their lists with fresh counters: one by uuid
        (or item id), or ``all`` of them (of ``list_name``, or of every list)."""
        if all:
            return sum(self._drain(name, name) for name in self._lists(list_name))
        if not uuid:
            raise ValueError("give a uuid or all=True")
        found = self._dlq_find(uuid, list_name)
        if found is None:
            return 0
        name, item = found
        return self.scripts.run("dlq_requeue_one", [self.keys.dlq(name), name], [item])

    def dlq_purge(self, list_name: str | None = None) -> int:
        """Drop dead letters and their metadata (the bodies are kept)."""
        total = 0
        for name in self._lists(list_name):
            total += self._drain(name, "")
            pattern = glob_escape(self.keys.dlq_meta(name, "")) + "*"
            for key in self.redis.scan_iter(match=pattern, count=1000):
                self.redis.delete(key)
        return total

    def dlq_drop(self, uuid: str, list_name: str | None = None) -> int:
        """Drop one dead letter (by uuid or item id, every copy) and its metadata; the body is kept."""
        found = self._dlq_find(uuid, list_name)
        if found is None:
            return 0
        name, item = found
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(self.keys.dlq(name), 0, item)  # every copy, as dlq_requeue_one
        pipe.delete(self.keys.dlq_meta(name, item_id(item)))
        return 1 if pipe.execute()[0] else 0

    def _drain(self, name: str, target: str) -> int:
        total = 0
        while True:
            n = self.scripts.run("dlq_drain", [self.keys.dlq(name), target], [500])
            total += n
            if n == 0:
                return total

    def _lists(self, list_name: str | None) -> tuple[str, ...]:
        return (list_name,) if list_name else self.ingress_lists

    def _dlq_find(self, uuid: str, list_name: str | None) -> tuple[str, bytes] | None:
        wanted = uuid.lower()
        for name in self._lists(list_name):
            key = self.keys.dlq(name)
            if self.redis.lpos(key, uuid) is not None:
                return name, uuid.encode()
            start = 0
            while True:  # inline vCons, other spellings of the uuid
                chunk = self.redis.lrange(key, start, start + 499)
                for item in chunk:
                    if item_id(item) == uuid or as_text(item).lower() == wanted:
                        return name, item
                    if item.startswith(b"{"):
                        try:
                            data = orjson.loads(item)
                        except orjson.JSONDecodeError:
                            continue
                        if type(data) is dict and str(data.get("uuid", "")).lower() == wanted:
                            return name, item
                if len(chunk) < 500:
                    break
                start += 500
        return None


@dataclass(frozen=True)
class VconServerBodies:
    """Bodies as vcon-server's API writes them: ``JSON.SET key $ body``, ``EXPIRE key expiry``
    (VCON_REDIS_EXPIRY; 0: none) and ``ZADD sorted_set {key: created_at}`` (VCON_SORTED_SET_NAME),
    the score as vcon-server computes it: ``int(datetime.fromisoformat(created_at).timestamp())``."""

    expiry: int = 3600
    sorted_set: str = "vcons"

    def write(self, pipe: Any, items: list[tuple[str, bytes]]) -> None:
        scores: dict[str, int] = {}
        for key, body in items:
            pipe.execute_command("JSON.SET", key, "$", body)
            if self.expiry > 0:
                pipe.expire(key, self.expiry)
            score = created_at_score(body)
            if score is not None:
                scores[key] = score
        if scores:
            pipe.zadd(self.sorted_set, scores)


def created_at_score(body: bytes) -> int | None:
    """vcon-server's sorted-set score of a vCon: its created_at as epoch seconds (a time without
    offset read as local time, as Python's fromisoformat does); None when it has none."""
    try:
        created = orjson.loads(body).get("created_at")
        return int(datetime.fromisoformat(str(created)).timestamp()) if created else None
    except (orjson.JSONDecodeError, AttributeError, ValueError, OverflowError, OSError):
        return None


def _dlq_entry(name: str, item: bytes, iid: str, meta: Mapping[bytes, bytes]) -> dict[str, Any]:
    entry: dict[str, Any] = {as_text(k): as_text(v) for k, v in meta.items()}
    entry.setdefault("list", name)
    entry.setdefault("item_id", iid)
    if "uuid" not in entry:  # (metadata lost): bounded as the scripts bound it
        entry["uuid"] = dead_letter_uuid(item)
    entry.setdefault("excerpt", escaped_excerpt(item))
    for k in ("attempts", "deliveries"):
        if entry.get(k, "").isdigit():
            entry[k] = int(entry[k])
    entry["inline"] = item.startswith(b"{")
    return entry

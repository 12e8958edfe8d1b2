"""Operator commands on the queue (conserver/queue/admin.py) against a real private redis-server."""

from __future__ import annotations

import random
import threading

import orjson
import pytest
import redis

from conserver.dev.samples import sample_vcon
from conserver.queue.keys import DEFAULT_KEYS as K
from conserver.vcon import InvalidVcon
from tests.redis.helpers import items, vcons


def test_dlq_requeue_and_purge(r, make_claims, admin):
    q = make_claims(("a", "b"), batch_size=10)
    a = admin(("a", "b"))
    a.enqueue("a", vcons(3, 1))
    a.enqueue("b", vcons(2, 2))
    inline = orjson.dumps(sample_vcon(random.Random(3)))
    r.rpush("b", inline)
    for _ in range(2):
        for c in q.claim_batch(0):
            q.dead_letter(c, "wrong_type", "x")
    assert a.depths()["dlq"] == {"a": 3, "b": 3}
    listed = a.dlq_list(limit=4)
    assert len(listed) == 4 and [e["list"] for e in listed] == ["a", "a", "a", "b"]
    first = listed[0]["uuid"]
    assert a.dlq_requeue(first) == 1 and items(r, "a") == [first]
    assert not r.exists(K.dlq_meta("a", first))
    assert a.dlq_requeue(orjson.loads(inline)["uuid"]) == 1 and r.lrange("b", 0, -1) == [inline]
    assert a.dlq_requeue("nothing-here") == 0
    assert a.dlq_requeue(all=True, list_name="b") == 2 and r.llen("b") == 3
    assert a.dlq_purge() == 2
    assert a.depths()["dlq"] == {"a": 0, "b": 0} and not list(r.scan_iter(match="DLQ:*"))
    (c,) = q.claim_batch(0, max_items=1)
    assert c.deliveries == 1 and c.attempts == 0  # fresh counters after a requeue


def test_enqueue_is_one_transaction(r, admin):
    q = admin()
    data = vcons(2500)
    seen_partial = []
    stop = threading.Event()

    def watch():
        client = redis.Redis(connection_pool=r.connection_pool)
        while not stop.is_set():
            n = client.llen("default")
            if 0 < n < len(data):
                seen_partial.append(n)

    t = threading.Thread(target=watch)
    t.start()
    assert q.enqueue("default", data) == len(data)
    stop.set()
    t.join()
    assert not seen_partial
    assert items(r, "default") == [u for u, _ in data]
    assert r.get(f"vcon:{data[-1][0]}") == data[-1][1]
    with pytest.raises(InvalidVcon):
        q.enqueue("default", [("../x", b"{}")])


def test_depths(r, make_claims, admin):
    q = make_claims(("a", "b"), batch_size=2)
    a = admin(("a", "b"))
    a.enqueue("a", vcons(3))
    q.claim_batch(0)
    d = a.depths()
    assert d == {"lists": {"a": 1, "b": 0}, "processing": 2, "delayed": 0, "dlq": {"a": 0, "b": 0}, "workers": 1}


def test_admin_needs_no_worker_identity(r, admin):
    a = admin()
    a.enqueue("default", vcons(2))
    assert a.depths()["lists"] == {"default": 2} and a.workers() == {} and a.dlq_list() == []
    assert a.recent_errors() == [] and a.dlq_requeue(all=True) == 0
    assert not r.smembers(K.workers) and not r.keys("conserver:worker:*")  # nobody registered

"""Recovery (conserver/queue/recovery.py): dead workers' claims back, orphan sweeps, the
leader lock, against a real private redis-server. Due retries: tests/redis/test_claims.py."""

from __future__ import annotations

import threading
import time

import orjson

from conserver.config import Config
from conserver.queue.keys import DEFAULT_KEYS as K
from conserver.queue.recovery import LeaderLock, requeue_dead_worker
from tests.redis.helpers import items, uuids_of, vcons


def test_dead_worker_requeue_puts_items_back_at_the_head_in_order(r, make_claims, admin, recovery):
    dead = make_claims(("a", "b"), batch_size=4)
    data = vcons(10)
    a = admin(("a", "b"))
    a.enqueue("a", data[:6])
    a.enqueue("b", data[6:])
    first = dead.claim_batch(0)
    second = dead.claim_batch(0)
    a.enqueue("b", vcons(1, 99))
    assert r.sismember(K.workers, dead.worker_id)
    survivor = make_claims(("a", "b"), batch_size=4)
    assert recovery(("a", "b")).requeue_worker(dead.worker_id) == 6  # crash: never acked
    assert items(r, "a") == uuids_of(first) + uuids_of(second)
    assert items(r, "b")[:4] == [u for u, _ in data[6:]]
    assert not r.exists(K.processing(dead.worker_id, "a")) and not r.hlen(K.inflight)
    assert not r.sismember(K.workers, dead.worker_id) and not r.exists(f"conserver:worker:{dead.worker_id}")
    again = survivor.claim_batch(0)
    assert uuids_of(again) == uuids_of(first + second)[:4] and again[0].deliveries == 2


def test_requeue_dead_worker_for_the_supervisor(r, redis_url, make_claims, admin):
    dead = make_claims()
    admin().enqueue("default", vcons(4))
    dead.claim_batch(0)
    assert requeue_dead_worker(Config(redis_url=redis_url), dead.worker_id) == 4
    assert r.llen("default") == 4 and not r.hlen(K.inflight)
    assert requeue_dead_worker(Config(redis_url=redis_url), dead.worker_id) == 0


def test_orphan_sweep_after_heartbeat_expiry(r, make_claims, admin, recovery):
    dead = make_claims(heartbeat_ttl=1)
    alive = make_claims(heartbeat_ttl=30)
    sweep = recovery()
    admin().enqueue("default", vcons(6))
    dead.beat({"state": "busy"})
    mine = dead.claim_batch(0, max_items=3)
    theirs = alive.claim_batch(0, max_items=3)
    assert orjson.loads(r.get(f"conserver:worker:{dead.worker_id}"))["state"] == "busy"
    assert set(admin().workers()) == {dead.worker_id, alive.worker_id}
    assert sweep.sweep_orphans() == 0  # both still beating
    time.sleep(1.15)
    assert sweep.sweep_orphans() == 3
    assert items(r, "default") == uuids_of(mine)
    assert r.llen(K.processing(alive.worker_id, "default")) == len(theirs)
    assert r.smembers(K.workers) == {alive.worker_id.encode()}
    assert sweep.sweep_orphans(scan=True) == 0  # twice is harmless


def test_orphan_sweep_scan_finds_unregistered_processing_lists(r, recovery):
    q = recovery(("in:box",))
    r.rpush(K.processing("gone-host:123:456", "in:box"), "a", "b")
    r.rpush(K.processing("gone-host:124:456", "other:list"), "c")
    assert q.sweep_orphans() == 0
    assert q.sweep_orphans(scan=True) == 3
    assert items(r, "in:box") == ["a", "b"] and items(r, "other:list") == ["c"]


def test_sweep_runs_concurrently_with_itself(r, recovery):
    for n in range(20):
        r.rpush(K.processing(f"dead:{n}:1", "default"), *[f"{n}-{i}" for i in range(10)])
        r.hset(K.inflight, K.processing(f"dead:{n}:1", "default"), f"dead:{n}:1\ndefault")
    counts = []
    threads = [threading.Thread(target=lambda: counts.append(recovery().sweep_orphans())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(counts) == 200 and r.llen("default") == 200 and len(set(items(r, "default"))) == 200


def test_unreadable_delayed_member_is_kept_aside(r, recovery):
    r.zadd(K.delayed, {"no-newline-here": 1.0})
    assert recovery().move_due() == 1
    assert items(r, K.delayed_unreadable) == ["no-newline-here"] and not r.zcard(K.delayed)


def test_leader_lock(r):
    a = LeaderLock(r, "scheduler", "a", ttl=0.3)
    b = LeaderLock(r, "scheduler", "b", ttl=0.3)
    assert a.acquire() and not b.acquire()
    assert a.acquire()  # renew
    assert a.holder() == "a"
    assert not b.release() and a.holder() == "a"
    time.sleep(0.4)
    assert b.acquire() and not a.acquire()
    assert b.release() and a.acquire()

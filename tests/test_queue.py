"""The Redis queue protocol (conserver/queue.py) against a real private redis-server."""

from __future__ import annotations

import random
import threading
import time
import uuid as uuid_mod

import orjson
import pytest
import redis

from conserver import queue as q_mod
from conserver.config import Config
from conserver.queue import (ATTEMPTS, DELAYED, DELIVERIES, INFLIGHT, WORKERS, Claim, LeaderLock, WorkQueue,
                             dlq_key, dlq_meta_key, item_id, make_redis, make_worker_id, processing_key)
from conserver.dev.samples import sample_vcon
from conserver.vcon import InvalidVcon


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_queue(r):
    def make(lists=("default",), worker_id=None, **kw) -> WorkQueue:
        kw.setdefault("batch_size", 10)
        return WorkQueue(r, lists, worker_id or f"test:{uuid_mod.uuid4().hex[:8]}:1", **kw)
    return make


def vcons(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(d["uuid"], orjson.dumps(d)) for d in (sample_vcon(rng) for _ in range(n))]


def uuids_of(claims: list[Claim]) -> list[str]:
    return [c.uuid for c in claims]


def items(r, key) -> list[str]:
    return [i.decode() for i in r.lrange(key, 0, -1)]


# --- claiming -------------------------------------------------------------------------------

def test_strict_priority_and_fifo(r, make_queue):
    q = make_queue(("high", "normal", "low"), batch_size=3)
    low, normal, high = vcons(2, 1), vcons(4, 2), vcons(2, 3)
    q.enqueue("low", low)
    q.enqueue("normal", normal)
    q.enqueue("high", high)
    got = [(c.source, c.uuid) for _ in range(4) for c in q.claim_batch(0)]
    expected = [("high", u) for u, _ in high] + [("normal", u) for u, _ in normal] + [("low", u) for u, _ in low]
    assert got == expected
    assert q.claim_batch(0) == []


def test_batch_size_bodies_and_processing_list(r, make_queue):
    q = make_queue(batch_size=50)
    data = vcons(120)
    q.enqueue("default", data)
    sizes = []
    seen = []
    while batch := q.claim_batch(0):
        sizes.append(len(batch))
        seen += batch
    assert sizes == [50, 50, 20]
    assert uuids_of(seen) == [u for u, _ in data]
    assert all(c.body == body and c.deliveries == 1 and c.status == "ok" for c, (_, body) in zip(seen, data))
    assert items(r, processing_key(q.worker_id, "default")) == [u for u, _ in data]
    assert r.llen("default") == 0
    assert q.parse(seen[0]).uuid == data[0][0]
    assert q.claim_batch(0, max_items=5) == []


def test_max_items_limits_a_claim(r, make_queue):
    q = make_queue(batch_size=50)
    q.enqueue("default", vcons(10))
    assert len(q.claim_batch(0, max_items=3)) == 3
    assert len(q.claim_batch(0, max_items=0)) == 0
    assert r.llen("default") == 7


def test_batch_is_cut_at_max_batch_bytes(r, make_queue):
    q = make_queue(batch_size=50, max_batch_bytes=7000)
    q.enqueue("default", [(str(uuid_mod.uuid4()), b"x" * 3000) for _ in range(5)])
    assert [len(q.claim_batch(0)) for _ in range(3)] == [3, 2, 0]


def test_two_workers_claiming_concurrently_never_share_an_item(r, make_queue):
    total = 3000
    data = [(str(uuid_mod.uuid4()), b"{}") for _ in range(total)]
    make_queue().enqueue("default", data)
    results: dict[str, list[str]] = {}

    def work(name: str) -> None:
        client = redis.Redis(connection_pool=r.connection_pool)
        q = WorkQueue(client, ["default"], f"w:{name}:1", batch_size=7)
        got = []
        while batch := q.claim_batch(0):
            got += uuids_of(batch)
            q.ack(batch[: len(batch) // 2])
        results[name] = got

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [u for got in results.values() for u in got]
    assert len(claimed) == total and set(claimed) == {u for u, _ in data}
    assert all(results.values())  # every worker got some


def test_blocking_claim_wakes_at_once_and_times_out(r, make_queue):
    q = make_queue()
    t0 = time.monotonic()
    assert q.claim_batch(0.3) == []
    assert 0.25 <= time.monotonic() - t0 < 1.5

    def produce():
        time.sleep(0.2)
        make_queue().enqueue("default", vcons(1))

    threading.Thread(target=produce).start()
    t0 = time.monotonic()
    got = q.claim_batch(5.0)
    assert len(got) == 1 and time.monotonic() - t0 < 1.0  # woken by the push, not by the timeout


def test_blocking_claim_with_several_lists_sees_a_low_priority_list_quickly(r, make_queue):
    q = make_queue(("high", "low"), poll_max=0.05)

    def produce():
        time.sleep(0.3)
        make_queue(("high", "low")).enqueue("low", vcons(1))

    threading.Thread(target=produce).start()
    t0 = time.monotonic()
    got = q.claim_batch(5.0)
    assert [c.source for c in got] == ["low"] and time.monotonic() - t0 < 1.0
    assert r.llen("high") == 0  # the wait (BLMOVE of a list onto itself) leaves no trace


def test_weighted_fair_choice(r, make_queue):
    q = make_queue(("a", "b", "c"), batch_size=1, weights={"a": 3, "b": 2, "c": 1})
    for name in ("a", "b", "c"):
        r.rpush(name, *[f"{name}{i}" for i in range(60)])
    sources = [q.claim_batch(0)[0].source for _ in range(60)]
    assert (sources.count("a"), sources.count("b"), sources.count("c")) == (30, 20, 10)
    assert sources[:6].count("a") == 3 and sources[:6].count("c") == 1  # smooth: interleaved
    r.delete("a", "b")  # only c left: it gets everything
    assert {q.claim_batch(0)[0].source for _ in range(5)} == {"c"}


def test_claim_rerun_after_lost_reply_returns_the_same_batch(r, make_queue):
    """redis-py re-sends a command whose reply was lost; the claim token makes that harmless."""
    q = make_queue(batch_size=3)
    q.enqueue("default", vcons(9))
    args = [*q._claim_args, q_mod._now_iso(), "tok-1", "1", "0", q.max_batch_bytes]
    first = q._claim(keys=q._claim_keys, args=args)
    second = q._claim(keys=q._claim_keys, args=args)
    assert first[0] == second[0] == 3
    assert first[3][::7] == second[3][::7] and len(first[3][::7]) == 3  # the same items
    assert r.llen("default") == 6 and r.llen(processing_key(q.worker_id, "default")) == 3
    assert r.hget(DELIVERIES, first[3][0]) == b"1"  # not counted twice


# --- bodies and producers ---------------------------------------------------------------------

def test_vcon_server_style_producer_is_consumed(r, make_queue):
    q = make_queue()
    doc = sample_vcon(random.Random(5))
    r.set(f"vcon:{doc['uuid']}", orjson.dumps(doc).decode())  # SET vcon:{uuid} then RPUSH uuid
    r.rpush("default", doc["uuid"])
    (claim,) = q.claim_batch(0)
    v = q.parse(claim)
    assert v.uuid == doc["uuid"] and v.tenant == doc["attachments"][0]["body"]["id"]
    assert q.ack([claim]) == 1
    assert r.exists(f"vcon:{doc['uuid']}")  # the body is kept, as vcon-server does


def test_inline_item_and_bad_items(r, make_queue):
    q = make_queue(max_vcon_bytes=2048)
    doc = sample_vcon(random.Random(6))
    missing = str(uuid_mod.uuid4())
    big = str(uuid_mod.uuid4())
    r.set(f"vcon:{big}", b"x" * 5000)
    r.hset(f"vcon:{uuid_mod.UUID(int=7)}", "a", "b")
    r.rpush("default", orjson.dumps(doc), missing, big, "../../etc/passwd", str(uuid_mod.UUID(int=7)), "nope")
    claims = q.claim_batch(0)
    inline, c_missing, c_big, c_unsafe, c_hash, c_bad = claims
    assert inline.inline and inline.uuid == doc["uuid"] and q.parse(inline).uuid == doc["uuid"]
    assert inline.item_id.startswith("sha1:")

    def reason(c):
        with pytest.raises(InvalidVcon) as info:
            q.parse(c)
        return info.value.reason

    assert (c_big.status, c_big.size, c_big.body) == ("too_large", 5000, None)
    assert [reason(c) for c in (c_missing, c_big, c_unsafe, c_hash, c_bad)] == [
        "missing_body", "too_large", "unsafe_uuid", "missing_body", "bad_uuid"]
    for c in claims[1:]:
        assert q.dead_letter(c, reason(c), "invalid")
    assert q.ack([inline]) == 1
    assert r.llen(dlq_key("default")) == 5 and r.llen(processing_key(q.worker_id, "default")) == 0
    meta = r.hgetall(dlq_meta_key("default", item_id(b"../../etc/passwd")))
    assert meta[b"reason"] == b"unsafe_uuid"


def _has_redisjson(r) -> bool:
    return any(m.get(b"name", m.get("name")) in (b"ReJSON", "ReJSON") for m in r.module_list())


def test_redisjson_body_slow_path(r, make_queue):
    if not _has_redisjson(r):
        pytest.skip("RedisJSON module not loaded")
    q = make_queue()
    doc = sample_vcon(random.Random(8))
    r.execute_command("JSON.SET", f"vcon:{doc['uuid']}", "$", orjson.dumps(doc))
    r.rpush("default", doc["uuid"])
    (claim,) = q.claim_batch(0)
    assert q.parse(claim).data == doc


# --- ack, requeue, sweep ----------------------------------------------------------------------

def test_ack_removes_and_clears_counters_and_marks(r, make_queue):
    q = make_queue(batch_size=5)
    data = vcons(8)
    q.enqueue("default", data)
    batch = q.claim_batch(0)
    q.mark_stored({batch[0].uuid: {"postgres", "s3"}})
    assert q.stores_done([batch[0].uuid]) == {batch[0].uuid: {"postgres", "s3"}}
    assert r.hlen(DELIVERIES) == 5
    assert q.ack(batch[:2]) == 2
    assert items(r, processing_key(q.worker_id, "default")) == uuids_of(batch[2:])
    assert q.ack(batch[2:]) == 3  # the whole list: deleted in one go
    assert not r.exists(processing_key(q.worker_id, "default"))
    assert r.hlen(DELIVERIES) == 0 and q.stores_done([batch[0].uuid]) == {batch[0].uuid: set()}
    assert q.ack(batch) == 0  # twice is harmless
    assert r.llen("default") == 3


def test_store_marks_come_back_with_the_claim(r, make_queue):
    q = make_queue(batch_size=1)
    q.enqueue("default", vcons(1))
    (c,) = q.claim_batch(0)
    q.mark_stored({c.uuid.upper(): ["postgres"]})
    assert q.defer(c, "s3 down", delay=0)
    q.move_due()
    (again,) = q.claim_batch(0)
    assert again.done == frozenset({"postgres"}) and again.attempts == 1
    assert 0 < r.ttl(f"conserver:stored:{c.uuid}") <= 7 * 86400


def test_body_expiry_on_ack(r, make_queue):
    q = make_queue(body_expiry_s=60)
    q.enqueue("default", vcons(2))
    batch = q.claim_batch(0)
    q.ack(batch)
    assert all(0 < r.ttl(f"vcon:{c.uuid}") <= 60 for c in batch)


def test_dead_worker_requeue_puts_items_back_at_the_head_in_order(r, make_queue):
    dead = make_queue(("a", "b"), batch_size=4)
    data = vcons(10)
    dead.enqueue("a", data[:6])
    dead.enqueue("b", data[6:])
    first = dead.claim_batch(0)
    second = dead.claim_batch(0)
    dead.enqueue("b", vcons(1, 99))
    assert r.sismember(WORKERS, dead.worker_id)
    survivor = make_queue(("a", "b"), batch_size=4)
    assert survivor.requeue_processing(dead.worker_id) == 6  # crash: never acked
    assert items(r, "a") == uuids_of(first) + uuids_of(second)
    assert items(r, "b")[:4] == [u for u, _ in data[6:]]
    assert not r.exists(processing_key(dead.worker_id, "a")) and not r.hlen(INFLIGHT)
    assert not r.sismember(WORKERS, dead.worker_id) and not r.exists(f"conserver:worker:{dead.worker_id}")
    again = survivor.claim_batch(0)
    assert uuids_of(again) == uuids_of(first + second)[:4] and again[0].deliveries == 2


def test_requeue_unstarted_claims(r, make_queue):
    q = make_queue(batch_size=5)
    q.enqueue("default", vcons(7))
    batch = q.claim_batch(0)
    started, unstarted = batch[1], [batch[0], batch[2], batch[3], batch[4]]
    assert q.requeue_unstarted(unstarted) == 4
    assert items(r, "default")[:4] == uuids_of(unstarted)
    assert items(r, processing_key(q.worker_id, "default")) == [started.uuid]
    assert q.requeue_unstarted(unstarted) == 0  # idempotent
    assert q.claim_batch(0)[0].deliveries == 1  # a drain does not count as a delivery
    assert q.ack([started]) == 1


def test_retire_gives_back_and_unregisters(r, make_queue):
    q = make_queue()
    q.enqueue("default", vcons(3))
    q.claim_batch(0)
    assert q.retire() == 3
    assert r.llen("default") == 3 and not r.smembers(WORKERS)


def test_orphan_sweep_after_heartbeat_expiry(r, make_queue):
    dead = make_queue(heartbeat_ttl=1)
    alive = make_queue(heartbeat_ttl=30)
    dead.enqueue("default", vcons(6))
    dead.beat({"state": "busy"})
    mine = dead.claim_batch(0, max_items=3)
    theirs = alive.claim_batch(0, max_items=3)
    assert orjson.loads(r.get(f"conserver:worker:{dead.worker_id}"))["state"] == "busy"
    assert set(q_mod.WorkQueue.workers(alive)) == {dead.worker_id, alive.worker_id}
    assert alive.sweep_orphans() == 0  # both still beating
    time.sleep(1.15)
    assert alive.sweep_orphans() == 3
    assert items(r, "default") == uuids_of(mine)
    assert r.llen(processing_key(alive.worker_id, "default")) == len(theirs)
    assert r.smembers(WORKERS) == {alive.worker_id.encode()}
    assert alive.sweep_orphans(scan=True) == 0  # twice is harmless


def test_orphan_sweep_scan_finds_unregistered_processing_lists(r, make_queue):
    q = make_queue(("in:box",))
    r.rpush(processing_key("gone-host:123:456", "in:box"), "a", "b")
    r.rpush(processing_key("gone-host:124:456", "other:list"), "c")
    assert q.sweep_orphans() == 0
    assert q.sweep_orphans(scan=True) == 3
    assert items(r, "in:box") == ["a", "b"] and items(r, "other:list") == ["c"]


def test_sweep_runs_concurrently_with_itself(r, make_queue):
    for n in range(20):
        r.rpush(processing_key(f"dead:{n}:1", "default"), *[f"{n}-{i}" for i in range(10)])
        r.hset(INFLIGHT, processing_key(f"dead:{n}:1", "default"), f"dead:{n}:1\ndefault")
    counts = []
    threads = [threading.Thread(target=lambda: counts.append(make_queue().sweep_orphans())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(counts) == 200 and r.llen("default") == 200 and len(set(items(r, "default"))) == 200


# --- poison, defer, dead letters ----------------------------------------------------------------

def test_poison_after_max_deliveries(r, make_queue):
    q = make_queue(max_deliveries=3)
    (u, body), = vcons(1)
    q.enqueue("default", [(u, body)])
    for n in range(1, 4):
        (c,) = q.claim_batch(0)
        assert c.deliveries == n
        q.requeue_processing(q.worker_id)  # the worker "crashed" while holding it
        q.beat()
    assert q.claim_batch(0) == []
    assert items(r, dlq_key("default")) == [u]
    meta = {k.decode(): v.decode() for k, v in r.hgetall(dlq_meta_key("default", u)).items()}
    assert meta["reason"] == "poison" and meta["deliveries"] == "4" and meta["list"] == "default"
    assert meta["uuid"] == u and meta["worker"] == q.worker_id and meta["time"].endswith("+00:00")
    assert not r.hexists(DELIVERIES, u)
    assert q.dlq_list()[0]["reason"] == "poison"


def test_poison_in_the_middle_of_a_batch(r, make_queue):
    q = make_queue(max_deliveries=1)
    r.hset(DELIVERIES, "bad", 1)
    r.rpush("default", "ok1", "bad", "ok2")
    assert [c.uuid for c in q.claim_batch(0)] == ["ok1", "ok2"]
    assert items(r, dlq_key("default")) == ["bad"]


def test_defer_move_due_and_retries_exhausted(r, make_queue):
    q = make_queue(max_retries=2, retry_backoff=10.0, retry_backoff_max=15.0)
    (u, _), = vcons(1)
    q.enqueue("default", vcons(1))
    r.rpush("default", "behind")
    due_in = []
    for attempt in (1, 2):
        (c,) = q.claim_batch(0, max_items=1)
        assert c.uuid == u and c.attempts == attempt - 1
        t0 = time.time()
        assert q.defer(c, RuntimeError("postgres down")) is True
        assert r.llen(processing_key(q.worker_id, "default")) == 0
        (member, score), = r.zrange(DELAYED, 0, -1, withscores=True)
        assert member == f"default\n{u}".encode()
        due_in.append(score - t0)
        assert q.move_due() == 0  # not due yet
        assert q.move_due(now=time.time() + 60) == 1
        assert items(r, "default")[0] == u  # back at the head
    assert 5 - 0.5 <= due_in[0] <= 10 + 0.5 and 7.5 - 0.5 <= due_in[1] <= 15 + 0.5  # exp. backoff, jitter, cap
    (c,) = q.claim_batch(0, max_items=1)
    assert q.defer(c, RuntimeError("still down")) is False
    meta = r.hgetall(dlq_meta_key("default", u))
    assert meta[b"reason"] == b"retries_exhausted" and meta[b"attempts"] == b"3"
    assert meta[b"error"] == b"RuntimeError: still down"
    assert not r.hexists(ATTEMPTS, u) and items(r, "default") == ["behind"]


def test_defer_without_counting_does_not_burn_retries(r, make_queue):
    q = make_queue(max_retries=1, max_deliveries=3)
    q.enqueue("default", vcons(1))
    for _ in range(6):  # more than max_retries and max_deliveries
        (c,) = q.claim_batch(0)
        assert q.defer(c, "circuit open", count_attempt=False, delay=0) is True
        assert q.move_due() == 1
    (c,) = q.claim_batch(0)
    assert c.attempts == 0 and c.deliveries == 1
    assert q.defer(c, "real failure") is True
    q.move_due(now=time.time() + 3600)
    (c,) = q.claim_batch(0)
    assert c.attempts == 1 and q.defer(c, "real failure") is False


def test_resolving_what_is_no_longer_ours_is_a_no_op(r, make_queue):
    q = make_queue()
    q.enqueue("default", vcons(2))
    a, b = q.claim_batch(0)
    q.requeue_processing(q.worker_id)  # e.g. swept while we were paused
    assert q.dead_letter(a, "bad_uuid", "x") is False
    assert q.defer(b, "x") is True
    assert r.llen(dlq_key("default")) == 0 and r.zcard(DELAYED) == 0 and r.llen("default") == 2


def test_dead_letter_meta_contents(r, make_queue):
    q = make_queue()
    q.enqueue("default", vcons(1))
    (c,) = q.claim_batch(0)
    assert q.dead_letter(c, "broken_json", ValueError("unexpected character " + "x" * 5000), attempts=2)
    meta = {k.decode(): v.decode() for k, v in r.hgetall(dlq_meta_key("default", c.uuid)).items()}
    assert set(meta) == {"reason", "error", "attempts", "deliveries", "worker", "time", "list", "uuid", "item_id"}
    assert meta["reason"] == "broken_json" and meta["attempts"] == "2" and meta["deliveries"] == "1"
    assert meta["error"].startswith("ValueError: unexpected character") and len(meta["error"]) < 2100
    assert meta["uuid"] == meta["item_id"] == c.uuid and meta["list"] == "default"
    shown = q.dlq_show(c.uuid.upper())
    assert shown["reason"] == "broken_json" and orjson.loads(shown["body"])["uuid"] == c.uuid


def test_dlq_requeue_and_purge(r, make_queue):
    q = make_queue(("a", "b"), batch_size=10)
    q.enqueue("a", vcons(3, 1))
    q.enqueue("b", vcons(2, 2))
    inline = orjson.dumps(sample_vcon(random.Random(3)))
    r.rpush("b", inline)
    for _ in range(2):
        for c in q.claim_batch(0):
            q.dead_letter(c, "wrong_type", "x")
    assert q.depths()["dlq"] == {"a": 3, "b": 3}
    listed = q.dlq_list(limit=4)
    assert len(listed) == 4 and [e["list"] for e in listed] == ["a", "a", "a", "b"]
    first = listed[0]["uuid"]
    assert q.dlq_requeue(first) == 1 and items(r, "a") == [first]
    assert not r.exists(dlq_meta_key("a", first))
    assert q.dlq_requeue(orjson.loads(inline)["uuid"]) == 1 and r.lrange("b", 0, -1) == [inline]
    assert q.dlq_requeue("nothing-here") == 0
    assert q.dlq_requeue(all=True, list_name="b") == 2 and r.llen("b") == 3
    assert q.dlq_purge() == 2
    assert q.depths()["dlq"] == {"a": 0, "b": 0} and not list(r.scan_iter(match="DLQ:*"))
    (c,) = q.claim_batch(0, max_items=1)
    assert c.deliveries == 1 and c.attempts == 0  # fresh counters after a requeue


def test_enqueue_is_one_transaction(r, make_queue):
    q = make_queue()
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


def test_depths(r, make_queue):
    q = make_queue(("a", "b"), batch_size=2)
    q.enqueue("a", vcons(3))
    q.claim_batch(0)
    d = q.depths()
    assert d == {"lists": {"a": 1, "b": 0}, "processing": 2, "delayed": 0, "dlq": {"a": 0, "b": 0}, "workers": 1}


# --- leader lock, worker ids, config --------------------------------------------------------------

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


def test_make_worker_id_and_from_config(r):
    wid = make_worker_id(pid=42, started=1.5)
    assert wid.endswith(":42:1500") and wid.count(":") == 2
    cfg = Config(ingress_lists=("x", "y"), batch_size=7, max_retries=9)
    q = WorkQueue.from_config(r, cfg, worker_id="w")
    assert (q.ingress_lists, q.batch_size, q.max_retries, q.worker_id) == (("x", "y"), 7, 9, "w")


def test_make_redis_from_url(redis_url):
    client = make_redis(Config(redis_url=redis_url))
    assert client.ping() and client.connection_pool.connection_kwargs["decode_responses"] is False
    client.close()


def test_redis_restart_between_claim_and_ack_loses_nothing(make_redis_server):
    server = make_redis_server(appendonly=True)
    client = make_redis(Config(redis_url=server.url), retries=10)
    q = WorkQueue(client, ["default"], "restart:1:1", batch_size=5)
    data = vcons(8)
    q.enqueue("default", data)
    batch = q.claim_batch(0)
    server.stop()
    with pytest.raises(redis.ConnectionError):
        WorkQueue(make_redis(Config(redis_url=server.url), retries=0), ["default"], "x").depths()
    server.start()
    assert q.ack(batch[:3]) == 3  # reconnects
    q.defer(batch[3], "later", delay=0)
    server.restart()
    rest = [batch[4]] + q.claim_batch(0)
    assert q.move_due() == 1
    rest += q.claim_batch(0)
    q.ack(rest)
    assert sorted(uuids_of(batch[:4] + rest)) == sorted([u for u, _ in data] + [batch[3].uuid])
    assert q.depths()["processing"] == 0 and q.depths()["lists"] == {"default": 0}
    client.close()


def test_make_redis_through_sentinel(redis_server, redis_url, tmp_path):
    import subprocess

    from conserver.dev.devstack import free_port

    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    proc = subprocess.Popen([redis_server.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        cfg = Config(redis_url="redis://ignored:1/0", redis_sentinels=(("127.0.0.1", port),),
                     redis_sentinel_master="mymaster")
        client = make_redis(cfg)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.set("via-sentinel", "1")
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert redis.Redis.from_url(redis_url).get("via-sentinel") == b"1"
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)

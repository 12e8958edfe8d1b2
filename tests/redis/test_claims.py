"""The worker's side of the queue (conserver/queue/claims.py) against a real private redis-server."""

from __future__ import annotations

import random
import threading
import time
import uuid as uuid_mod

import orjson
import pytest
import redis

from conserver.dev.samples import sample_vcon
from conserver.queue.claims import WorkerClaims
from conserver.queue.client import item_id
from conserver.queue.keys import DEFAULT_KEYS as K
from conserver.queue.scripts import QUEUE_SCRIPTS
from conserver.tasks.pipeline import vcon_of
from conserver.vcon import InvalidVcon
from tests.redis.helpers import items, settings, uuids_of, vcons


def parse(q: WorkerClaims, claim):
    return vcon_of(claim, q.settings.max_vcon_bytes)


# --- claiming -------------------------------------------------------------------------------

def test_strict_priority_and_fifo(r, make_claims, admin):
    q = make_claims(("high", "normal", "low"), batch_size=3)
    low, normal, high = vcons(2, 1), vcons(4, 2), vcons(2, 3)
    a = admin()
    a.enqueue("low", low)
    a.enqueue("normal", normal)
    a.enqueue("high", high)
    got = [(c.source, c.uuid) for _ in range(4) for c in q.claim_batch(0)]
    expected = [("high", u) for u, _ in high] + [("normal", u) for u, _ in normal] + [("low", u) for u, _ in low]
    assert got == expected
    assert q.claim_batch(0) == []


def test_batch_size_bodies_and_processing_list(r, make_claims, admin):
    q = make_claims(batch_size=50)
    data = vcons(120)
    admin().enqueue("default", data)
    sizes = []
    seen = []
    while batch := q.claim_batch(0):
        sizes.append(len(batch))
        seen += batch
    assert sizes == [50, 50, 20]
    assert uuids_of(seen) == [u for u, _ in data]
    assert all(c.body == body and c.deliveries == 1 and c.status == "ok" for c, (_, body) in zip(seen, data))
    assert items(r, K.processing(q.worker_id, "default")) == [u for u, _ in data]
    assert r.llen("default") == 0
    assert parse(q, seen[0]).uuid == data[0][0]
    assert q.claim_batch(0, max_items=5) == []


def test_max_items_limits_a_claim(r, make_claims, admin):
    q = make_claims(batch_size=50)
    admin().enqueue("default", vcons(10))
    assert len(q.claim_batch(0, max_items=3)) == 3
    assert len(q.claim_batch(0, max_items=0)) == 0
    assert r.llen("default") == 7


def test_batch_is_cut_at_max_batch_bytes(r, make_claims, admin):
    q = make_claims(batch_size=50, max_batch_bytes=7000)
    admin().enqueue("default", [(str(uuid_mod.uuid4()), b"x" * 3000) for _ in range(5)])
    assert [len(q.claim_batch(0)) for _ in range(3)] == [3, 2, 0]


def test_two_workers_claiming_concurrently_never_share_an_item(r, admin):
    total = 3000
    data = [(str(uuid_mod.uuid4()), b"{}") for _ in range(total)]
    admin().enqueue("default", data)
    results: dict[str, list[str]] = {}

    def work(name: str) -> None:
        client = redis.Redis(connection_pool=r.connection_pool)
        q = WorkerClaims(client, settings(batch_size=7), f"w:{name}:1")
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


def test_blocking_claim_wakes_at_once_and_times_out(r, make_claims, admin):
    q = make_claims()
    t0 = time.monotonic()
    assert q.claim_batch(0.3) == []
    assert 0.25 <= time.monotonic() - t0 < 1.5

    def produce():
        time.sleep(0.2)
        admin().enqueue("default", vcons(1))

    threading.Thread(target=produce).start()
    t0 = time.monotonic()
    got = q.claim_batch(5.0)
    assert len(got) == 1 and time.monotonic() - t0 < 1.0  # woken by the push, not by the timeout


def test_blocking_claim_with_several_lists_sees_a_low_priority_list_quickly(r, make_claims, admin):
    q = make_claims(("high", "low"), poll_max=0.05)

    def produce():
        time.sleep(0.3)
        admin(("high", "low")).enqueue("low", vcons(1))

    threading.Thread(target=produce).start()
    t0 = time.monotonic()
    got = q.claim_batch(5.0)
    assert [c.source for c in got] == ["low"] and time.monotonic() - t0 < 1.0
    assert r.llen("high") == 0  # the wait (BLMOVE of a list onto itself) leaves no trace


def test_weighted_fair_choice(r, make_claims):
    q = make_claims(("a", "b", "c"), batch_size=1, weights={"a": 3, "b": 2, "c": 1})
    for name in ("a", "b", "c"):
        r.rpush(name, *[f"{name}{i}" for i in range(60)])
    sources = [q.claim_batch(0)[0].source for _ in range(60)]
    assert (sources.count("a"), sources.count("b"), sources.count("c")) == (30, 20, 10)
    assert sources[:6].count("a") == 3 and sources[:6].count("c") == 1  # smooth: interleaved
    r.delete("a", "b")  # only c left: it gets everything
    assert {q.claim_batch(0)[0].source for _ in range(5)} == {"c"}


def test_claim_rerun_after_lost_reply_returns_the_same_batch(r, make_claims, admin):
    """redis-py re-sends a command whose reply was lost; the claim token makes that harmless."""
    q = make_claims(batch_size=3)
    admin().enqueue("default", vcons(9))
    first = q._run_claim(3, "tok-1")
    second = q._run_claim(3, "tok-1")
    assert first[0] == second[0] == 3
    assert first[3][::8] == second[3][::8] and len(first[3][::8]) == 3  # the same items
    assert first[6] == second[6] == 0  # and the same fencing tokens (the first batch: 1, 2, 3)
    assert r.llen("default") == 6 and r.llen(K.processing(q.worker_id, "default")) == 3
    assert r.hget(K.deliveries, first[3][0]) == b"1"  # not counted twice


# --- bodies and producers ---------------------------------------------------------------------

def test_vcon_server_style_producer_is_consumed(r, make_claims):
    q = make_claims()
    doc = sample_vcon(random.Random(5))
    r.set(f"vcon:{doc['uuid']}", orjson.dumps(doc).decode())  # SET vcon:{uuid} then RPUSH uuid
    r.rpush("default", doc["uuid"])
    (claim,) = q.claim_batch(0)
    v = parse(q, claim)
    assert v.uuid == doc["uuid"] and v.tenant == doc["attachments"][0]["body"]["id"]
    assert q.ack([claim]) == 1
    assert r.exists(f"vcon:{doc['uuid']}")  # the body is kept, as vcon-server does


def test_inline_item_and_bad_items(r, make_claims):
    q = make_claims(max_vcon_bytes=2048)
    doc = sample_vcon(random.Random(6))
    missing = str(uuid_mod.uuid4())
    big = str(uuid_mod.uuid4())
    r.set(f"vcon:{big}", b"x" * 5000)
    r.hset(f"vcon:{uuid_mod.UUID(int=7)}", "a", "b")
    r.rpush("default", orjson.dumps(doc), missing, big, "../../etc/passwd", str(uuid_mod.UUID(int=7)), "nope")
    claims = q.claim_batch(0)
    inline, c_missing, c_big, c_unsafe, c_hash, c_bad = claims
    assert inline.inline and inline.uuid == doc["uuid"] and parse(q, inline).uuid == doc["uuid"]
    assert inline.item_id.startswith("sha1:")

    def reason(c):
        with pytest.raises(InvalidVcon) as info:
            parse(q, c)
        return info.value.reason

    assert (c_big.status, c_big.size, c_big.body) == ("too_large", 5000, None)
    assert [reason(c) for c in (c_missing, c_big, c_unsafe, c_hash, c_bad)] == [
        "missing_body", "too_large", "unsafe_uuid", "missing_body", "bad_uuid"]
    for c in claims[1:]:
        assert q.dead_letter(c, reason(c), "invalid")
    assert q.ack([inline]) == 1
    assert r.llen(K.dlq("default")) == 5 and r.llen(K.processing(q.worker_id, "default")) == 0
    meta = r.hgetall(K.dlq_meta("default", item_id(b"../../etc/passwd")))
    assert meta[b"reason"] == b"unsafe_uuid"


def test_redisjson_body_fast_path(redisjson_url):
    """A body that vcon-server's API wrote (RedisJSON) comes with the claim: one EVALSHA, the
    JSON.GET inside the script, no round trip of its own (MONITOR tells the two apart)."""
    r = redis.Redis.from_url(redisjson_url)
    q = WorkerClaims(r, settings(batch_size=10), "test:json:1")
    doc = sample_vcon(random.Random(8))
    r.execute_command("JSON.SET", f"vcon:{doc['uuid']}", "$", orjson.dumps(doc))
    r.rpush("default", doc["uuid"])
    q.beat()
    r.script_load(QUEUE_SCRIPTS["claim"].text)  # as after a first claim
    watcher = redis.Redis.from_url(redisjson_url)
    with watcher.monitor() as m:
        r.echo("start")
        (claim,) = q.claim_batch(0)
        r.echo("end")
        seen = []
        while True:
            cmd = m.next_command()
            if cmd["command"] == "ECHO end":
                break
            seen.append((cmd["client_type"], cmd["command"].split()[0].upper()))
    ours = [c for t, c in seen if t != "lua"]
    assert ours == ["ECHO", "EVALSHA"], seen
    assert ("lua", "JSON.GET") in seen
    assert (claim.status, claim.body_type) == ("ok", "json") and parse(q, claim).data == doc
    r.close()
    watcher.close()


# --- ack, give back -----------------------------------------------------------------------------

def test_ack_removes_and_clears_counters_and_marks(r, make_claims, admin):
    q = make_claims(batch_size=5)
    data = vcons(8)
    admin().enqueue("default", data)
    batch = q.claim_batch(0)
    q.mark_stored({batch[0].uuid: {"postgres", "s3"}})
    assert q.stores_done([batch[0].uuid]) == {batch[0].uuid: {"postgres", "s3"}}
    assert r.hlen(K.deliveries) == 5
    assert q.ack(batch[:2]) == 2
    assert items(r, K.processing(q.worker_id, "default")) == uuids_of(batch[2:])
    assert q.ack(batch[2:]) == 3  # the whole list: deleted in one go
    assert not r.exists(K.processing(q.worker_id, "default"))
    assert r.hlen(K.deliveries) == 0 and q.stores_done([batch[0].uuid]) == {batch[0].uuid: set()}
    assert q.ack(batch) == 0  # twice is harmless
    assert r.llen("default") == 3


def test_store_marks_come_back_with_the_claim(r, make_claims, admin, recovery):
    q = make_claims(batch_size=1)
    admin().enqueue("default", vcons(1))
    (c,) = q.claim_batch(0)
    q.mark_stored({c.uuid.upper(): ["postgres"]})
    assert q.defer(c, "s3 down", delay=0)
    recovery().move_due()
    (again,) = q.claim_batch(0)
    assert again.done == frozenset({"postgres"}) and again.attempts == 1
    assert 0 < r.ttl(f"conserver:stored:{c.uuid}") <= 7 * 86400


def test_body_expiry_on_ack(r, make_claims, admin):
    q = make_claims(body_expiry_s=60)
    admin().enqueue("default", vcons(2))
    batch = q.claim_batch(0)
    q.ack(batch)
    assert all(0 < r.ttl(f"vcon:{c.uuid}") <= 60 for c in batch)


def test_requeue_unstarted_claims(r, make_claims, admin):
    q = make_claims(batch_size=5)
    admin().enqueue("default", vcons(7))
    batch = q.claim_batch(0)
    started, unstarted = batch[1], [batch[0], batch[2], batch[3], batch[4]]
    assert q.requeue_unstarted(unstarted) == 4
    assert items(r, "default")[:4] == uuids_of(unstarted)
    assert items(r, K.processing(q.worker_id, "default")) == [started.uuid]
    assert q.requeue_unstarted(unstarted) == 0  # idempotent
    assert q.claim_batch(0)[0].deliveries == 1  # a drain does not count as a delivery
    assert q.ack([started]) == 1


def test_retire_gives_back_and_unregisters(r, make_claims, admin):
    q = make_claims()
    admin().enqueue("default", vcons(3))
    q.claim_batch(0)
    assert q.retire() == 3
    assert r.llen("default") == 3 and not r.smembers(K.workers)


# --- poison, defer, dead letters ----------------------------------------------------------------

def test_poison_after_max_deliveries(r, make_claims, admin, recovery):
    q = make_claims(max_deliveries=3)
    (u, body), = vcons(1)
    admin().enqueue("default", [(u, body)])
    for n in range(1, 4):
        (c,) = q.claim_batch(0)
        assert c.deliveries == n
        recovery().requeue_worker(q.worker_id)  # the worker "crashed" while holding it
        q.beat()
    assert q.claim_batch(0) == []
    assert items(r, K.dlq("default")) == [u]
    meta = {k.decode(): v.decode() for k, v in r.hgetall(K.dlq_meta("default", u)).items()}
    assert meta["reason"] == "poison" and meta["deliveries"] == "4" and meta["list"] == "default"
    assert meta["uuid"] == u and meta["worker"] == q.worker_id and meta["time"].endswith("+00:00")
    assert not r.hexists(K.deliveries, u)
    assert admin().dlq_list()[0]["reason"] == "poison"


def test_poison_in_the_middle_of_a_batch(r, make_claims):
    q = make_claims(max_deliveries=1)
    r.hset(K.deliveries, "bad", 1)
    r.rpush("default", "ok1", "bad", "ok2")
    assert [c.uuid for c in q.claim_batch(0)] == ["ok1", "ok2"]
    assert items(r, K.dlq("default")) == ["bad"]


def test_defer_move_due_and_retries_exhausted(r, make_claims, admin, recovery):
    q = make_claims(max_retries=2, retry_backoff=10.0, retry_backoff_max=15.0)
    rec = recovery()
    (u, _), = vcons(1)
    admin().enqueue("default", vcons(1))
    r.rpush("default", "behind")
    due_in = []
    for attempt in (1, 2):
        (c,) = q.claim_batch(0, max_items=1)
        assert c.uuid == u and c.attempts == attempt - 1
        t0 = time.time()
        assert q.defer(c, RuntimeError("postgres down")) is True
        assert r.llen(K.processing(q.worker_id, "default")) == 0
        (member, score), = r.zrange(K.delayed, 0, -1, withscores=True)
        assert member == f"default\n{u}".encode()
        due_in.append(score - t0)
        assert rec.move_due() == 0  # not due yet
        assert rec.move_due(now=time.time() + 60) == 1
        assert items(r, "default")[0] == u  # back at the head
    assert 5 - 0.5 <= due_in[0] <= 10 + 0.5 and 7.5 - 0.5 <= due_in[1] <= 15 + 0.5  # exp. backoff, jitter, cap
    (c,) = q.claim_batch(0, max_items=1)
    assert q.defer(c, RuntimeError("still down")) is False
    meta = r.hgetall(K.dlq_meta("default", u))
    assert meta[b"reason"] == b"retries_exhausted" and meta[b"attempts"] == b"3"
    assert meta[b"error"] == b"RuntimeError: still down"
    assert not r.hexists(K.attempts, u) and items(r, "default") == ["behind"]


def test_defer_without_counting_does_not_burn_retries(r, make_claims, admin, recovery):
    q = make_claims(max_retries=1, max_deliveries=3)
    rec = recovery()
    admin().enqueue("default", vcons(1))
    for _ in range(6):  # more than max_retries and max_deliveries
        (c,) = q.claim_batch(0)
        assert q.defer(c, "circuit open", count_attempt=False, delay=0) is True
        assert rec.move_due() == 1
    (c,) = q.claim_batch(0)
    assert c.attempts == 0 and c.deliveries == 1
    assert q.defer(c, "real failure") is True
    rec.move_due(now=time.time() + 3600)
    (c,) = q.claim_batch(0)
    assert c.attempts == 1 and q.defer(c, "real failure") is False


def test_resolving_what_is_no_longer_ours_is_a_no_op(r, make_claims, admin, recovery):
    q = make_claims()
    admin().enqueue("default", vcons(2))
    a, b = q.claim_batch(0)
    recovery().requeue_worker(q.worker_id)  # e.g. swept while we were paused
    assert q.dead_letter(a, "bad_uuid", "x") is False
    assert q.defer(b, "x") is True
    assert r.llen(K.dlq("default")) == 0 and r.zcard(K.delayed) == 0 and r.llen("default") == 2


def test_dead_letter_meta_contents(r, make_claims, admin):
    q = make_claims()
    a = admin()
    a.enqueue("default", vcons(1))
    (c,) = q.claim_batch(0)
    assert q.dead_letter(c, "broken_json", ValueError("unexpected character " + "x" * 5000), attempts=2)
    meta = {k.decode(): v.decode() for k, v in r.hgetall(K.dlq_meta("default", c.uuid)).items()}
    assert set(meta) == {"reason", "error", "attempts", "deliveries", "worker", "time", "list", "uuid", "item_id",
                         "excerpt"}
    assert meta["reason"] == "broken_json" and meta["attempts"] == "2" and meta["deliveries"] == "1"
    assert meta["error"].startswith("ValueError: unexpected character") and len(meta["error"]) < 2100
    assert meta["uuid"] == meta["item_id"] == c.uuid and meta["list"] == "default"
    shown = a.dlq_show(c.uuid.upper())
    assert shown["reason"] == "broken_json" and orjson.loads(shown["body"])["uuid"] == c.uuid


def test_recent_errors_are_capped(r, make_claims, admin):
    q = make_claims()
    for n in range(105):
        q.record_error(f"u{n}", "postgres: down " + "x" * 600)
    newest = admin().recent_errors(3)
    assert [e["uuid"] for e in newest] == ["u104", "u103", "u102"] and len(newest[0]["error"]) == 500
    assert r.llen(K.errors) == 100

"""Shared limits (conserver/limits.py) against a real private redis-server: tenant slots under
threads and processes, expiry, partial grants, hostile names; the shared token bucket's rate,
its adaptive slow-down and recovery (CONSERVER_RATE_LIMITS is parsed and tested in config)."""

from __future__ import annotations

import math
import multiprocessing
import random
import re
import threading
import time

import pytest
import redis

from conserver.limits import BUCKET, TENANT, SharedTokenBucket, TenantSlots, key_part

CTX = multiprocessing.get_context("fork")


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def redis_now(r) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


def script_calls(r) -> int:
    stats = r.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "evalsha"))


# --- tenant slots ---------------------------------------------------------------------------

def _hammer(url: str, who: str, rounds: int, limit: int, seed: int) -> int:
    """Take 1-2 slots of tenant 't', count them in `active` (and its high-water mark in
    `peak`) while held, give them back; `rounds` grants in all. Returns the grants."""
    client = redis.Redis.from_url(url)
    slots = TenantSlots(client, limit)
    bump = client.register_script(
        "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) "
        "if v > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], v) end return v")
    rng = random.Random(seed)
    done = 0
    while done < rounds:
        got = slots.acquire("t", who, rng.randint(1, 2))
        if not got:
            time.sleep(rng.random() * 0.002)
            continue
        bump(keys=["active", "peak"], args=[got])
        time.sleep(rng.random() * 0.002)
        client.decrby("active", got)
        assert slots.release("t", who, got) == got
        done += 1
    client.close()
    return done


def _hammer_proc(url: str, who: str, rounds: int, limit: int, seed: int, results) -> None:
    results.put((who, _hammer(url, who, rounds, limit, seed)))


def test_tenant_cap_holds_across_threads_and_processes(r, redis_url):
    limit, rounds = 3, 40
    results = CTX.Queue()
    # fork first, threads after: forking a process that has threads can deadlock (gh-90622)
    procs = [CTX.Process(target=_hammer_proc, args=(redis_url, f"host-b:{i}", rounds, limit, 100 + i, results))
             for i in range(4)]
    for p in procs:
        p.start()
    done: dict[str, int] = {}
    threads = [threading.Thread(target=lambda i=i: done.__setitem__(f"host-a:{i}", _hammer(
        redis_url, f"host-a:{i}", rounds, limit, i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for _ in procs:
        who, n = results.get(timeout=30)
        done[who] = n
    for p in procs:
        p.join(5)
        assert p.exitcode == 0
    assert len(done) == 12 and set(done.values()) == {rounds}
    assert int(r.get("peak")) == limit  # reached (the test contends) and never passed
    assert int(r.get("active")) == 0
    assert not r.exists(TENANT + "t")  # the last release removes the key


def test_acquire_release_and_partial_grants(r):
    slots = TenantSlots(r, 3)
    assert slots.acquire("acme", "w1", 2) == 2
    assert slots.acquire("acme", "w2", 5) == 1
    assert slots.acquire("acme", "w3") == 0
    assert slots.held("acme") == 3
    assert slots.release("acme", "w1") == 1
    assert slots.acquire("acme", "w3", 2) == 1
    assert slots.release("acme", "w2", 9) == 1  # only what it held
    assert slots.release("acme", "w1", None) == 1
    assert slots.release("acme", "nobody") == 0
    assert slots.held("acme") == 1
    assert slots.acquire("acme", "w3", 0) == 0
    assert slots.release("acme", "w3") == 1
    assert not r.exists(TENANT + "acme")


def test_acquire_many_is_one_round_trip_with_partial_counts(r):
    slots = TenantSlots(r, 3)
    assert slots.acquire("a", "other", 2) == 2
    slots.acquire_many({"x": 1}, "warm")  # the script is loaded now
    r.config_resetstat()
    granted = slots.acquire_many({"a": 2, "b": 5, "c": 0, "d": 3}, "w1")
    assert script_calls(r) == 1
    assert granted == {"a": 1, "b": 3, "c": 0, "d": 3}
    assert slots.acquire_many({"a": 1, "b": 1, "e": 1}, "w2") == {"a": 0, "b": 0, "e": 1}
    r.config_resetstat()
    assert slots.release_many({"a": 1, "b": 2, "d": None}, "w1") == {"a": 1, "b": 2, "d": 3}
    assert slots.renew_many(["a", "b", "d"], "w1") == {"a": 0, "b": 1, "d": 0}
    assert script_calls(r) == 2
    assert [slots.held(t) for t in "abcde"] == [2, 1, 0, 0, 1]


def test_dead_holder_loses_slots_after_ttl_and_renew_keeps_them(r):
    slots = TenantSlots(r, 3, ttl=1.0)
    assert slots.acquire("t", "dead", 3) == 3
    assert slots.acquire("u", "alive", 3) == 3
    assert slots.acquire("t", "other") == 0
    for _ in range(3):  # 1.5 s: past the ttl, but "alive" renews
        time.sleep(0.5)
        assert slots.renew("u", "alive") == 3
    assert slots.renew("t", "dead") == 0  # expired: it can tell
    assert slots.acquire("t", "other", 3) == 3
    assert slots.acquire("u", "other") == 0
    time.sleep(1.1)
    assert slots.acquire("u", "other", 3) == 3
    assert 0 < r.pttl(TENANT + "u") <= 2000  # an idle tenant's key goes away by itself


def test_acquire_renews_the_holders_other_slots(r):
    slots = TenantSlots(r, 4, ttl=1.0)
    assert slots.acquire("t", "w", 2) == 2
    time.sleep(0.6)
    assert slots.acquire("t", "w", 1) == 1
    time.sleep(0.6)  # 1.2 s after the first two: still held, renewed by the second acquire
    assert slots.held("t") == 3
    assert slots.release("t", "w", 3) == 3


def test_limit_zero_never_touches_redis(r):
    slots = TenantSlots(r, 0)
    r.config_resetstat()
    assert slots.acquire("t", "w", 1000) == 1000
    assert slots.acquire_many({"a": 5, "b": 0}, "w") == {"a": 5, "b": 0}
    assert slots.release("t", "w", 7) == 7
    assert slots.renew("t", "w") == 0
    assert script_calls(r) == 0
    assert r.dbsize() == 0


def test_bad_arguments(r):
    with pytest.raises(ValueError):
        TenantSlots(r, -1)
    with pytest.raises(ValueError):
        TenantSlots(r, 2, ttl=0)
    slots = TenantSlots(r, 2)
    with pytest.raises(ValueError):
        slots.acquire("t", "w", -1)
    with pytest.raises(ValueError):
        slots.acquire("t", "", 1)
    with pytest.raises(TypeError):
        slots.acquire(None, "w", 1)  # type: ignore[arg-type]


HOSTILE = ["", " ", "a b", "x:y", "{tag}", "*", "conserver:tenant:*", "../../etc", "a\nb", "\x00", "é", "租户",
           "\ud800", "a" * 64, "a" * 65, "a" * 100_000, "t~" + "0" * 32, "A", "a"]


def test_hostile_tenant_names_stay_in_their_own_keys(r):
    parts = [key_part(t) for t in HOSTILE]
    assert len(set(parts)) == len(HOSTILE)
    for name, part in zip(HOSTILE, parts):
        assert re.fullmatch(r"[A-Za-z0-9._\-~]{1,64}", part), (name[:20], part)
        if not re.fullmatch(r"[A-Za-z0-9._\-]{1,64}", name):
            assert "~" in part  # escaped names cannot look like a raw one
    assert key_part("tenant-1.a_b") == "tenant-1.a_b"
    slots = TenantSlots(r, 1)
    assert slots.acquire_many(dict.fromkeys(HOSTILE, 2), "w") == dict.fromkeys(HOSTILE, 1)
    keys = sorted(k.decode() for k in r.keys("*"))
    assert keys == sorted(TENANT + p for p in parts)
    assert slots.acquire_many(dict.fromkeys(HOSTILE, 1), "w2") == dict.fromkeys(HOSTILE, 0)
    assert slots.release_many(dict.fromkeys(HOSTILE, 1), "w") == dict.fromkeys(HOSTILE, 1)
    assert r.dbsize() == 0


# --- shared token bucket --------------------------------------------------------------------

def _take_until(url: str, name: str, rate: float, burst: float, until: float, results) -> None:
    """Take one token at a time until `until` (epoch); report the grant times."""
    client = redis.Redis.from_url(url)
    bucket = SharedTokenBucket(client, name, rate, burst)
    times = []
    while True:
        left = until - time.time()
        if left <= 0:
            break
        if bucket.acquire(1, timeout=left):
            times.append(time.time())
    client.close()
    results.put(times)


def test_burst_then_steady_rate_across_processes(r, redis_url):
    rate, burst = 100.0, 30.0
    start = time.time() + 0.3
    results = CTX.Queue()
    # each process first waits until `start` so all begin together
    procs = [CTX.Process(target=lambda: (time.sleep(max(0.0, start - time.time())),
                                          _take_until(redis_url, "es", rate, burst, start + 2.3, results)))
             for _ in range(4)]
    for p in procs:
        p.start()
    times = sorted(t for _ in procs for t in results.get(timeout=30))
    for p in procs:
        p.join(5)
        assert p.exitcode == 0
    first = times[0]
    assert sum(1 for t in times if t < first + 0.2) >= burst  # the burst comes at once
    steady = [t for t in times if first + 0.3 <= t < first + 2.3]
    assert len(steady) / 2.0 == pytest.approx(rate, rel=0.2)
    assert len(times) == pytest.approx(burst + rate * (times[-1] - first), rel=0.1)


def test_try_acquire_wait_estimate(r):
    bucket = SharedTokenBucket(r, "s3", rate=10.0, burst=5.0)
    assert bucket.try_acquire(5) == 0.0
    wait = bucket.try_acquire(2)
    assert wait == pytest.approx(0.2, abs=0.02)
    assert bucket.wait_time(2) <= wait  # peeking takes nothing
    time.sleep(wait * 0.7)
    assert bucket.try_acquire(2) > 0.0
    time.sleep(bucket.wait_time(2) + 0.01)
    assert bucket.try_acquire(2) == 0.0
    assert 0.0 <= bucket.state()["tokens"] < 0.6  # taken as soon as there were two


def test_more_than_burst_waits_for_a_full_bucket_then_leaves_a_debt(r):
    bucket = SharedTokenBucket(r, "big", rate=20.0, burst=4.0)
    assert bucket.try_acquire(3) == 0.0
    assert bucket.try_acquire(10) == pytest.approx(3 / 20, abs=0.02)  # until full, not forever
    assert bucket.acquire(10, timeout=1.0)
    assert bucket.state()["tokens"] == pytest.approx(-6.0, abs=0.1)
    assert bucket.try_acquire(1) == pytest.approx(7 / 20, abs=0.02)


def test_acquire_sleeps_in_short_steps_and_stops_when_asked(r):
    bucket = SharedTokenBucket(r, "slow", rate=0.1, burst=1.0)
    assert bucket.try_acquire() == 0.0
    sleeps: list[float] = []
    assert not bucket.acquire(1, timeout=None, sleep=sleeps.append, should_stop=lambda: len(sleeps) >= 3)
    assert len(sleeps) == 3 and all(0 < s <= 0.5 for s in sleeps)
    t0 = time.monotonic()
    assert not bucket.acquire(1, timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 0.6


def test_throttled_halves_the_shared_rate_then_it_recovers(r, redis_url):
    rate = 100.0
    one = SharedTokenBucket(r, "pg", rate, 1.0, recover_after=60.0)
    other = SharedTokenBucket(redis.Redis.from_url(redis_url), "pg", rate, 1.0, recover_after=60.0)
    one.throttled()
    other.throttled()  # a volley of 429s from one overload halves once
    assert other.state()["rate"] == pytest.approx(rate / 2)
    t0, granted = time.monotonic(), 0
    while time.monotonic() - t0 < 1.0:
        if other.acquire(1, timeout=1.0 - (time.monotonic() - t0)):
            granted += 1
    assert granted == pytest.approx(rate / 2, rel=0.2)  # measured: half the rate, for everyone

    fast = SharedTokenBucket(r, "pg", rate, 1.0, recover_after=0.3, min_throttle_interval=0.0)
    for _ in range(10):
        fast.throttled()
    assert fast.state()["rate"] == pytest.approx(rate / 32)  # the floor
    time.sleep(0.2)
    assert fast.state()["rate"] == pytest.approx(rate / 32)  # no recovery before recover_after
    time.sleep(1.1)  # ramp for ~1.0 s: +10 % of the rate per second
    assert fast.state()["rate"] == pytest.approx(rate / 32 + 0.1 * rate, abs=0.03 * rate)
    other.redis.close()


def test_recovery_integral_and_cap(r):
    """The refill while the rate ramps back is the exact integral; the rate stops at `rate`."""
    bucket = SharedTokenBucket(r, "ramp", rate=10.0, burst=100.0, recover_after=5.0)
    now = redis_now(r)
    # throttled 7 s ago, ramping for 2 s from 5/s: now 7/s, refilled 2 * (5 + 7) / 2 = 12
    r.hset(BUCKET + "ramp", mapping={"tokens": 0, "ts": repr(now - 2), "rate": 5, "throttled": repr(now - 7)})
    state = bucket.state()
    assert state["rate"] == pytest.approx(7.0, abs=0.2)  # (a loaded machine's delays)
    assert state["tokens"] == pytest.approx(12.0, abs=1.0)
    # throttled 12 s ago: 3 s flat at 5/s, 5 s of ramp to 10/s (avg 7.5), 2 s at 10/s: 15 + 37.5 + 20
    r.hset(BUCKET + "ramp", mapping={"tokens": 0, "ts": repr(now - 10), "rate": 5, "throttled": repr(now - 12)})
    state = bucket.state()
    assert state["rate"] == 10.0
    assert state["tokens"] == pytest.approx(72.5, abs=1.0)
    assert 0 < r.pttl(BUCKET + "ramp")


def test_unlimited_bucket_never_touches_redis(r):
    bucket = SharedTokenBucket(r, "free", 0, 0)
    assert bucket.try_acquire(1e9) == 0.0
    assert bucket.acquire(5, timeout=0)
    bucket.throttled()
    assert bucket.state()["rate"] == math.inf
    assert r.dbsize() == 0


def test_bucket_bad_arguments(r):
    for rate, burst in ((-1, 1), (1, 0), (math.nan, 1), (math.inf, 1)):
        with pytest.raises(ValueError):
            SharedTokenBucket(r, "x", rate, burst)
    with pytest.raises(ValueError):
        SharedTokenBucket(r, "x", 1, 1).try_acquire(-1)


def test_a_store_answering_429_slows_every_worker_down(redis_url):
    """The fan-out gives the store's shared bucket a throttle on 429, through real Redis."""
    import random as _random

    import redis as _redis

    from conserver.config import config_from_mapping
    from conserver.fanout import Fanout, Status
    from conserver.storage import StoreError
    from conserver.dev.samples import sample_vcon
    from conserver.vcon import parse_vcon
    from conserver.limits import SharedTokenBucket
    from tests.helpers.faulty_store import FaultyStore

    class Throttling(FaultyStore):
        def write_batch(self, vcons):
            return {v.uuid: StoreError("429 Too Many Requests", transient=True, status=429) for v in vcons}

    cfg = config_from_mapping({"REDIS_URL": redis_url})
    client = _redis.Redis.from_url(redis_url)
    bucket = SharedTokenBucket(client, "store:throttling", rate=100, burst=100)
    sink = Throttling(cfg)
    sink.name = "throttling"
    fanout = Fanout([sink], parallel=False, retries=0, rate_limiters={"throttling": bucket}).start()
    try:
        raw = orjson_dumps(sample_vcon(_random.Random(1)))
        vcon = parse_vcon(raw, None, 1 << 20)
        out = fanout.store_batch([vcon], {})
        assert out[vcon.uuid]["throttling"].status is Status.TRANSIENT
        # every worker sharing this bucket (another client, as another process would) sees half the rate
        other = SharedTokenBucket(_redis.Redis.from_url(redis_url), "store:throttling", rate=100, burst=100)
        assert other.state()["rate"] == pytest.approx(50, rel=0.01)
    finally:
        fanout.close()


def orjson_dumps(doc):
    import orjson

    return orjson.dumps(doc)

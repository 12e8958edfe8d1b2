"""Chaos: kills, store outages, a Redis restart, bad input and poison, at a larger scale.

Every test runs at the defaults of conf/conserver.env.example. What a test must change to
stay within its time is passed as ``changed`` (setting -> (value, why)) and printed in its
summary line; the crash-loop settings (CONSERVER_MIN_UPTIME, CONSERVER_CRASH_LIMIT,
CONSERVER_CRASH_WINDOW) are never among them. Each test prints one summary line: sent,
stored, lost, duplicated, dead-lettered, restarts, and the settings it changed.
"""
from __future__ import annotations

import collections
import random
import time

import pytest

from tests.chaos.corpus import BAD_CORPUS
from tests.chaos.killer import killing_workers
from tests.helpers.proc import Conserver, wait_for
from tests.helpers.stores import census, enqueue_samples, queue_for, wait_drained

STORES = ("postgres", "s3", "elasticsearch")
CRASH_LOOP_SETTINGS = ("CONSERVER_MIN_UPTIME", "CONSERVER_CRASH_LIMIT", "CONSERVER_CRASH_WINDOW")
TWO_WORKERS = {"CONSERVER_WORKERS": ("2", "a killed or stalled worker leaves one working beside it")}
# A 20 s outage, then everything stored within the test's time.
OUTAGE_TIMING = {
    **TWO_WORKERS,
    "CIRCUIT_BREAKER_TIMEOUT": ("2s", "the default 60 s keeps a recovered store closed for a minute"),
    "CONSERVER_RETRY_BACKOFF": ("200ms", "retries at 2 s doubling would wait minutes after the outage"),
    "CONSERVER_RETRY_BACKOFF_MAX": ("2s", "likewise"),
    "SCHEDULER_INTERVAL": ("200ms", "due retries move back sooner"),
    "MAX_RETRIES": ("100", "half-open probes of a 20 s outage use up the default 3 retries of the probing batch"),
}


@pytest.fixture
def run(start_conserver):
    def start(env: dict[str, str], changed: dict[str, tuple[str, str]] = TWO_WORKERS) -> Conserver:
        assert not set(changed) & set(CRASH_LOOP_SETTINGS) and not set(env) & set(CRASH_LOOP_SETTINGS)
        c = start_conserver({**env, **{k: v for k, (v, _) in changed.items()}})
        c.changed = changed
        return c
    return start


def summary(name: str, sent: set[str], found: dict[str, list[str]], dead: int, c: Conserver) -> dict[str, int]:
    stored = set.intersection(*(set(v) for v in found.values())) if found else set()
    lost = len(sent - stored)
    duplicated = sum(n - 1 for ids in found.values() for n in collections.Counter(ids).values() if n > 1)
    restarts = c.log().count("was killed by") + c.log().count("(exit code")  # errors.describe_exit
    figures = {"sent": len(sent), "stored": len(stored & sent), "lost": lost, "duplicated": duplicated,
               "dead_lettered": dead, "restarts": restarts}
    changed = "; ".join(f"{k}={v} ({why})" for k, (v, why) in getattr(c, "changed", {}).items()) or "none"
    print(f"\nCHAOS {name}: " + " ".join(f"{k}={v}" for k, v in figures.items()) + f" | changed: {changed}")
    return figures


def census_of(env: dict[str, str]) -> dict[str, list[str]]:
    return census(queue_for(env)[0])


def test_kill9_a_random_worker_every_250ms(run, stack_env):
    """kill -9 a random ready worker every 250 ms for 12 s. The master never exits and
    replaces each one at once."""
    cfg, queue = queue_for(stack_env)
    sent = {v["uuid"] for v in enqueue_samples(queue, 3000)}
    c = run(stack_env)
    c.wait_log("ready: 2 workers up", timeout=30)
    with killing_workers(c, seed=7) as victims:
        time.sleep(12)
    assert c.proc.poll() is None, c.log()[-3000:]
    wait_drained(queue, 120)
    found = census_of(stack_env)
    f = summary("kill9", sent, found, sum(queue.depths()["dlq"].values()), c)
    log = c.log()
    assert len(victims) >= 24  # of 48 ticks: one finds no ready worker while both boot
    for pid in victims:
        assert f"pid={pid} was killed by SIGKILL" in log
    assert log.count("replacing it at once (killed from outside)") == len(victims) == f["restarts"]
    assert "restarting it in" not in log and "crash loop" not in log and c.proc.poll() is None
    assert f["lost"] == 0 and f["duplicated"] == 0 and f["stored"] == 3000
    assert queue.depths()["processing"] == 0
    # A vCon whose holder the random killer hits more than CONSERVER_MAX_DELIVERIES times is
    # poison by the queue's definition (a kill -9 looks like a crash the vCon caused): on a
    # loaded machine, where batches are slow, one now and then is. It is dead-lettered as
    # poison, never lost; any other reason is a defect.
    dead = queue.dlq_list(limit=100)
    assert all(d["reason"] == "poison" for d in dead) and len(dead) <= 3, dead


@pytest.mark.parametrize("store", STORES)
def test_store_outage_of_20_seconds(run, stack_env, store, pg_server, s3_server):
    from conserver.dev.devstack import OpenSearchServer

    own = OpenSearchServer().start() if store == "elasticsearch" else None  # osmem forgets on restart
    env = {**stack_env, **({"ELASTICSEARCH_URL": own.url} if own else {})}
    server = {"postgres": pg_server, "s3": s3_server, "elasticsearch": own}[store]
    cfg, queue = queue_for(env)
    try:
        c = run(env, OUTAGE_TIMING)
        sent = {v["uuid"] for v in enqueue_samples(queue, 400)}
        wait_drained(queue, 60)
        server.stop()
        during = {v["uuid"] for v in enqueue_samples(queue, 800)}
        time.sleep(20)
        server.start()
        wait_drained(queue, 120)
        found = census_of(env)
        if store == "elasticsearch":  # its first 400 went with the restart; check the rest there
            found["elasticsearch"] = list(set(found["elasticsearch"]) | sent)
        f = summary(f"outage-{store}", sent | during, found, sum(queue.depths()["dlq"].values()), c)
        assert f["lost"] == 0 and f["duplicated"] == 0 and f["dead_lettered"] == 0
        assert "crash loop" not in c.log() and c.proc.poll() is None and f["restarts"] == 0
        assert f"circuit breaker {store}: closed -> open" in c.log()
    finally:
        if not server.is_running():
            server.start()
        if own:
            own.close()


def test_redis_restart_with_appendonly(run, stack_env, make_redis_server):
    redis = make_redis_server(appendonly=True)
    env = {**stack_env, "REDIS_URL": redis.url, "CONSERVER_BATCH_SIZE": "20"}
    cfg, queue = queue_for(env)
    sent = {v["uuid"] for v in enqueue_samples(queue, 3000)}
    c = run(env, OUTAGE_TIMING)
    wait_for(lambda: queue.depths()["lists"]["default"] < 2500, 60, what="processing under way")
    redis.stop()
    time.sleep(5)
    redis.start()
    wait_drained(queue, 180)
    f = summary("redis-restart", sent, census_of(env), sum(queue.depths()["dlq"].values()), c)
    assert f["lost"] == 0 and f["duplicated"] == 0
    assert c.proc.poll() is None and "crash loop" not in c.log()


def test_bad_input_corpus_is_dead_lettered_with_the_right_reason(run, stack_env):
    cfg, queue = queue_for(stack_env)
    good = enqueue_samples(queue, 300)
    expected: dict[str, str] = {}
    rng = random.Random(3)
    for kind, (item, body, reason) in BAD_CORPUS.items():
        if body is not None:
            queue.redis.set(f"vcon:{item}", body)
        queue.redis.rpush("default", item)
        expected[item if isinstance(item, str) else item.decode(errors="replace")] = reason
        # interleave with good ones so bad input never blocks what is behind it
        more = enqueue_samples(queue, rng.randint(1, 5))
        good += more
    c = run(stack_env)
    wait_drained(queue, 120)
    dead = queue.dlq_list(limit=1000)
    raw_items = queue.redis.lrange("DLQ:default", 0, -1)  # the same order as dlq_list
    got = {item.decode(errors="replace"): d["reason"] for item, d in zip(raw_items, dead)}
    f = summary("bad-input", {v["uuid"] for v in good}, census_of(stack_env), len(dead), c)
    assert len(BAD_CORPUS) >= 20
    assert f["lost"] == 0 and f["dead_lettered"] == len(BAD_CORPUS)
    for item, reason in expected.items():
        assert got.get(item) == reason, (item[:80], got.get(item), reason)
    assert f["restarts"] == 0  # no worker crashed


def test_poison_vcon_ends_in_the_dead_letters(run, stack_env):
    """Two vCons that segfault their worker (an error of its own: each death counts towards
    the crash-loop limit, with backoff): each kills CONSERVER_MAX_DELIVERIES workers, then
    it is dead-lettered as poison, and the supervisor stays up at the default limit of 10."""
    cfg, queue = queue_for(stack_env)
    vcons = enqueue_samples(queue, 500)
    poison = {vcons[37]["uuid"], vcons[311]["uuid"]}
    env = {**stack_env, "CONSERVER_STORAGES": stack_env["CONSERVER_STORAGES"] + ",tests.helpers.crash_store:CrashStore",
           "CONSERVER_STORE_CRASH_UUIDS": ",".join(poison)}
    c = run(env, {**TWO_WORKERS, "CONSERVER_MAX_DELIVERIES": (
        "3", "stricter than 5: 6 deaths stay within the crash limit of 10 with room for timing")})
    wait_drained(queue, 120)
    dead = queue.dlq_list()
    sent = {v["uuid"] for v in vcons} - poison
    f = summary("poison", sent, census_of(stack_env), len(dead), c)
    assert sorted((d["uuid"], d["reason"]) for d in dead) == sorted((u, "poison") for u in poison)
    assert f["lost"] == 0 and f["duplicated"] == 0
    assert f["restarts"] == c.log().count("was killed by SIGSEGV") == 2 * 3  # each poison, each delivery
    assert c.proc.poll() is None

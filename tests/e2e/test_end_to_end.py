"""conserver end to end: real supervisor, real workers, real Redis, PostgreSQL, S3 and OpenSearch."""
from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from conserver.dev.devstack import OpenSearchServer
from tests.e2e.test_storage import expected_fetch
from tests.helpers.proc import Conserver, title, wait_for
from tests.helpers.stores import (StoreReader, census, claims_for, enqueue_samples, postgres_ids, queue_for, wait_all_stored,
                                  wait_drained)
from tests.helpers.vcon_server_reads import vcon_server_view

FAST_RETRIES = {"CONSERVER_RETRY_BACKOFF": "200ms", "CONSERVER_RETRY_BACKOFF_MAX": "1s", "SCHEDULER_INTERVAL": "200ms",
                "CONSERVER_STORE_RETRIES": "1", "CONSERVER_STORE_TIMEOUT": "2s", "CIRCUIT_BREAKER_THRESHOLD": "3", "CIRCUIT_BREAKER_TIMEOUT": "1s"}


@pytest.fixture
def run(start_conserver):
    def _run(env: dict[str, str], workers: int = 2, **extra: str) -> Conserver:
        return start_conserver({"CONSERVER_WORKERS": str(workers), "CONSERVER_ENABLE_SCHEDULER": "true",
                                "CONSERVER_GRACEFUL_TIMEOUT": "10", **env, **extra})
    return _run


def test_one_vcon_lands_in_all_three_stores_with_equal_content(run, stack_env):
    cfg, queue = queue_for(stack_env)
    c = run(stack_env)
    [vcon] = enqueue_samples(queue, 1)
    wait_drained(queue, 60)
    reader = StoreReader(cfg)
    try:
        stored = vcon_server_view(vcon)  # what vcon-server stores: legacy field names normalized
        assert reader.fetch("postgres", vcon["uuid"]) == stored
        assert reader.fetch("s3", vcon["uuid"]) == stored
        assert reader.fetch("elasticsearch", vcon["uuid"]) == expected_fetch(reader.sinks["elasticsearch"], vcon)
        es = reader.es_document("vcon_dialog", f"{vcon['uuid']}_0")
        assert es["vcon_id"] == vcon["uuid"] and es["started_at"] == vcon["dialog"][0]["start"]
        assert es["tenant_id"] == vcon["attachments"][0]["body"]["id"]
        key = next(k for k in reader.s3_keys() if k.endswith(".vcon"))
        assert key == f"{vcon['created_at'][:4]}/{vcon['created_at'][5:7]}/{vcon['created_at'][8:10]}/{vcon['uuid']}.vcon"
        assert f"lookup/{vcon['uuid']}.txt" in reader.s3_keys()
    finally:
        reader.close()
    c.signal(signal.SIGTERM)
    assert c.wait(20) == 0


@pytest.mark.parametrize("parallel", ["true", "false"])
def test_1000_vcons_end_to_end(run, stack_env, parallel):
    cfg, queue = queue_for(stack_env)
    vcons = enqueue_samples(queue, 1000)
    run(stack_env, CONSERVER_PARALLEL_STORAGE=parallel)
    wait_drained(queue, 120)
    found = census(cfg)
    want = sorted(v["uuid"] for v in vcons)
    for store, ids in found.items():
        assert sorted(ids) == want, store  # every one, exactly once
    assert queue.depths()["dlq"] == {"default": 0}


def test_same_uuid_twice_leaves_one_row_object_and_document(run, stack_env):
    cfg, queue = queue_for(stack_env)
    [vcon] = enqueue_samples(queue, 1)
    queue.enqueue("default", [(vcon["uuid"], orjson.dumps(vcon))])  # delivered twice
    run(stack_env)
    wait_drained(queue, 60)
    reader = StoreReader(cfg)
    try:
        assert reader.census() == {"postgres": [vcon["uuid"]], "s3": [vcon["uuid"]], "elasticsearch": [vcon["uuid"]]}
    finally:
        reader.close()


def test_partial_failure_retries_only_the_failed_store(run, stack_env, tmp_path):
    control, calls = tmp_path / "mode", tmp_path / "calls.jsonl"
    control.write_text("down")
    env = {**stack_env, **FAST_RETRIES, "CONSERVER_STORAGES": "postgres,tests.helpers.faulty_store:FaultyStore",
           "CONSERVER_STORE_FAULTY_CONTROL": str(control), "CONSERVER_STORE_FAULTY_LOG": str(calls)}
    cfg, queue = queue_for(env)
    reader = StoreReader(cfg, ("postgres",))
    [vcon] = enqueue_samples(queue, 1)
    c = run(env, workers=1)
    try:
        first = wait_for(lambda: reader.pg_xmin(vcon["uuid"]), 30, what="postgres row")
        wait_for(lambda: queue.depths()["delayed"] == 1, 10, what="deferred for a retry")
        assert queue.stores_done([vcon["uuid"]])[vcon["uuid"]] == {"postgres"}
        control.write_text("ok")
        wait_drained(queue, 30)
        assert reader.pg_xmin(vcon["uuid"]) == first  # postgres was not written again
        tries = [orjson.loads(l) for l in calls.read_text().splitlines()]
        assert tries[-1]["failed"] == [] and all(vcon["uuid"] in t["uuids"] for t in tries)
        assert queue.depths()["dlq"] == {"default": 0}
        assert "circuit breaker" not in c.log() or "-> open" not in c.log()  # one vCon, no outage
    finally:
        reader.close()


@pytest.mark.parametrize("store", ["postgres", "s3", "elasticsearch"])
def test_store_stopped_mid_run_loses_nothing_and_breaker_opens_and_closes(run, stack_env, store, pg_server, s3_server):
    own_os = None
    env = {**stack_env, **FAST_RETRIES, "MAX_RETRIES": "50"}
    if store == "elasticsearch":  # osmem keeps data in memory: give this test its own
        own_os = OpenSearchServer().start()
        env["ELASTICSEARCH_URL"] = own_os.url
    server = {"postgres": pg_server, "s3": s3_server, "elasticsearch": own_os}[store]
    cfg, queue = queue_for(env)
    reader = StoreReader(cfg)
    try:
        c = run(env)
        first = enqueue_samples(queue, 300)
        wait_drained(queue, 60)
        server.stop()
        rest = enqueue_samples(queue, 300)
        c.wait_log(f"circuit breaker {store}: closed -> open", timeout=30)
        time.sleep(2)
        server.start()
        wait_drained(queue, 90)
        c.wait_log(f"circuit breaker {store}: half-open -> closed", timeout=10)
        found = wait_all_stored(reader, {v["uuid"] for v in rest}, 30)
        for name, ids in found.items():
            want = rest if name == store == "elasticsearch" else first + rest  # osmem forgets on restart
            assert sorted(ids) == sorted(v["uuid"] for v in want), name  # each once
        assert queue.depths()["dlq"] == {"default": 0}
        assert "crash loop" not in c.log() and c.proc.poll() is None
    finally:
        reader.close()
        if not server.is_running():
            server.start()
        if own_os:
            own_os.close()


def test_kill9_of_a_busy_worker_loses_nothing(run, stack_env):
    env = {**stack_env, "CONSERVER_STORAGES": "postgres,tests.helpers.faulty_store:FaultyStore",
           "CONSERVER_STORE_FAULTY_MODE": "slow:0.5", "CONSERVER_BATCH_SIZE": "20"}
    cfg, queue = queue_for(env)
    vcons = enqueue_samples(queue, 200)
    c = run(env)
    victim = wait_for(lambda: next((w for w in c.workers() if " busy " in title(w.pid)), None), 30, what="a busy worker")
    os.kill(victim.pid, signal.SIGKILL)
    # (how soon its claims are back is benchmarks/lifecycle.py's requeue figure)
    log = c.wait_log(f"claimed by pid {victim.pid}", timeout=15)
    assert f"pid={victim.pid} was killed by SIGKILL" in log and "replacing it at once" in log
    wait_drained(queue, 90)
    assert postgres_ids(cfg) == sorted(v["uuid"] for v in vcons)


def test_whole_instance_killed_is_recovered_after_heartbeat_expiry(run, stack_env):
    """Host death: every process of instance A dies at once, so no one requeues its claims
    but instance B's scheduler, once A's heartbeats expire."""
    env = {**stack_env, "CONSERVER_STORAGES": "postgres,tests.helpers.faulty_store:FaultyStore",
           "CONSERVER_STORE_FAULTY_MODE": "slow:1", "CONSERVER_BATCH_SIZE": "25",
           "CONSERVER_WORKER_HEARTBEAT_TTL": "2s"}
    cfg, queue = queue_for(env)
    vcons = enqueue_samples(queue, 100)
    a = run(env, CONSERVER_ENABLE_SCHEDULER="false")
    wait_for(lambda: queue.depths()["processing"] > 0, 30, what="instance A holding claims")
    for pid in a.all_pids():
        os.kill(pid, signal.SIGKILL)
    held = queue.depths()["processing"]
    assert held > 0
    b = run({**env, "CONSERVER_STORE_FAULTY_MODE": "ok"}, workers=1)
    b.wait_log("heartbeat expired", timeout=30)
    wait_drained(queue, 60)
    assert postgres_ids(cfg) == sorted(v["uuid"] for v in vcons)


def test_poison_vcon_is_dead_lettered_after_the_delivery_limit(run, stack_env):
    cfg, queue = queue_for(stack_env)
    vcons = enqueue_samples(queue, 60)
    poison = vcons[10]["uuid"]
    env = {**stack_env, "CONSERVER_STORAGES": "postgres,tests.helpers.crash_store:CrashStore",
           "CONSERVER_STORE_CRASH_UUIDS": poison, "CONSERVER_MAX_DELIVERIES": "3"}
    c = run(env, workers=1)
    wait_drained(queue, 60)
    dead = queue.dlq_list()
    assert [(d["uuid"], d["reason"]) for d in dead] == [(poison, "poison")]
    stored = set(postgres_ids(cfg))
    assert stored >= {v["uuid"] for v in vcons} - {poison}  # its neighbours all made it
    assert c.log().count("was killed by SIGSEGV") == 3  # one death per delivery, then the dead letters
    assert c.proc.poll() is None


def test_redis_restart_mid_run_loses_nothing(run, stack_env, make_redis_server):
    redis = make_redis_server(appendonly=True)
    env = {**stack_env, "REDIS_URL": redis.url, "CONSERVER_BATCH_SIZE": "20"}
    cfg, queue = queue_for(env)
    vcons = enqueue_samples(queue, 1500)
    c = run(env)
    wait_for(lambda: queue.depths()["lists"]["default"] < 1300, 60, what="processing under way")
    redis.stop()
    time.sleep(3)
    redis.start()
    assert queue.depths()["lists"]["default"] > 0  # the restart really was mid-run
    wait_drained(queue, 120)
    found = census(cfg)
    for store, ids in found.items():
        assert set(ids) == {v["uuid"] for v in vcons}, store
    assert c.proc.poll() is None  # the supervisor never exited
    assert "crash loop" not in c.log() and "was killed" not in c.log()


def test_a_bug_that_crashes_every_batch_stops_the_supervisor_without_losing_vcons(run, redis_url):
    """Not poison in the data but a bug in the code: the crash-loop limit ends the supervisor
    (exit 4, so systemd restarts it and someone looks), and the vCons wait in Redis; at
    most a couple are dead-lettered as poison, and `dlq requeue` brings those back."""
    env = {"REDIS_URL": redis_url, "CONSERVER_STORAGES": "null,tests.helpers.crash_store:CrashStore",
           "CONSERVER_STORE_CRASH_UUIDS": "*", "CONSERVER_CRASH_LIMIT": "6", "CONSERVER_ENABLE_SCHEDULER": "false"}
    cfg, queue = queue_for(env)
    vcons = enqueue_samples(queue, 100)
    c = run(env, workers=1)
    assert c.wait(60) == 4
    assert "crash loop" in c.log()
    d = queue.depths()
    dead = d["dlq"]["default"]
    # every claim was given back by the supervisor as it reaped each crashed worker
    assert d["processing"] == 0 and dead <= 2 and d["lists"]["default"] + dead == len(vcons)


def test_claims_whose_reply_was_lost_in_a_redis_outage_are_given_back(run, make_redis_server):
    """A claim the server ran while Redis went down, its reply lost: the vCons sit in a live
    worker's processing list unknown to it, and its heartbeat keeps the sweep away. After
    the outage, the worker (holding nothing) gives back whatever its lists hold."""
    redis = make_redis_server(appendonly=True)
    env = {"REDIS_URL": redis.url, "CONSERVER_STORAGES": "null", "CONSERVER_ENABLE_SCHEDULER": "false"}
    cfg, queue = queue_for(env)
    c = run(env, workers=1)
    c.wait_workers(1, state="idle")
    wid = wait_for(lambda: next(iter(queue.workers()), None), 10, what="the worker's heartbeat")
    # the lost reply: a claim made in the worker's name that the worker never saw (from a
    # list it does not serve, so only the give-back can move these vCons again)
    enqueue_samples(queue, 10, "other")
    ghost = claims_for(cfg, queue, wid, lists=("other",)).claim_batch(0)
    assert len(ghost) == 10 and queue.depths()["processing"] == 10
    time.sleep(1.5)
    assert queue.depths()["processing"] == 10  # a live worker's claims stay put
    redis.stop()
    time.sleep(5)  # longer than redis-py's own retries (about 3 s): the worker sees the outage
    redis.start()
    wait_for(lambda: queue.depths()["processing"] == 0, 30, what="the lost claims given back")
    assert queue.redis.llen("other") == 10
    c.wait_log("gave back 10 vCons claimed during a Redis outage", timeout=5)

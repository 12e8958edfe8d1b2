"""Worker pools, scheduler placement, weighted fairness, recycling and autoscaling (real Redis)."""
from __future__ import annotations

import collections
import signal

import orjson
import pytest

from conserver.autoscale import Autoscaler
from tests.helpers.proc import title, wait_for
from tests.helpers.stores import claims_for, enqueue_samples, queue_for, wait_drained

FAULTY = "tests.helpers.faulty_store:FaultyStore"


@pytest.fixture
def run(start_conserver):
    return lambda env, args=("run",): start_conserver({"CONSERVER_GRACEFUL_TIMEOUT": "10", **env}, args)


def _calls(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_each_pool_takes_only_its_own_lists(run, redis_url, tmp_path):
    calls = tmp_path / "calls.jsonl"
    env = {"REDIS_URL": redis_url, "CONSERVER_POOLS": "high=2:high; rest=1:normal,low", "CONSERVER_STORAGES": FAULTY,
           "CONSERVER_STORE_FAULTY_LOG": str(calls)}
    cfg, queue = queue_for({**env, "CONSERVER_INGRESS_LISTS": "high,normal,low"})
    batches = {name: {v["uuid"] for v in enqueue_samples(queue, 100, name)} for name in ("high", "normal", "low")}
    c = run(env)
    wait_drained(queue, 60)
    titles = c.worker_titles()
    assert sorted(t.split("[")[1].split("]")[0] for t in titles.values()) == ["high", "high", "rest"]
    pool_of = {pid: t.split("[")[1].split("]")[0] for pid, t in titles.items()}
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for call in _calls(calls):
        seen[pool_of[call["pid"]]].update(call["uuids"])
    assert seen["high"] == batches["high"]
    assert seen["rest"] == batches["normal"] | batches["low"]


def test_weighted_fairness_shares(run, redis_url, tmp_path):
    """high:6,normal:3,low:1 with every list full: low is served, in about its share."""
    calls = tmp_path / "calls.jsonl"
    env = {"REDIS_URL": redis_url, "CONSERVER_INGRESS_LISTS": "high,normal,low", "CONSERVER_QUEUE_WEIGHTS": "high:6,normal:3,low:1",
           "CONSERVER_STORAGES": FAULTY, "CONSERVER_STORE_FAULTY_LOG": str(calls), "CONSERVER_BATCH_SIZE": "10",
           "CONSERVER_WORKERS": "1"}
    cfg, queue = queue_for(env)
    origin = {}
    for name in ("high", "normal", "low"):
        origin.update({v["uuid"]: name for v in enqueue_samples(queue, 400, name)})
    c = run(env)
    wait_for(lambda: len(_calls(calls)) >= 60, 60, what="60 batches")
    c.signal(signal.SIGTERM)
    c.wait(20)
    first = _calls(calls)[:60]
    shares = collections.Counter(origin[call["uuids"][0]] for call in first)
    print(f"observed shares over 60 batches: {dict(shares)} (weights 6:3:1 -> 36:18:6)")
    assert 30 <= shares["high"] <= 42 and 14 <= shares["normal"] <= 22 and 4 <= shares["low"] <= 8
    # strict priority (no weights) would have served only "high"


def test_strict_priority_by_default(run, redis_url, tmp_path):
    calls = tmp_path / "calls.jsonl"
    env = {"REDIS_URL": redis_url, "CONSERVER_INGRESS_LISTS": "high,normal,low", "CONSERVER_STORAGES": FAULTY,
           "CONSERVER_STORE_FAULTY_LOG": str(calls), "CONSERVER_BATCH_SIZE": "10", "CONSERVER_WORKERS": "1"}
    cfg, queue = queue_for(env)
    origin = {}
    for name in ("low", "normal", "high"):
        origin.update({v["uuid"]: name for v in enqueue_samples(queue, 50, name)})
    run(env)
    wait_drained(queue, 60)
    order = [origin[call["uuids"][0]] for call in _calls(calls)]
    assert order == ["high"] * 5 + ["normal"] * 5 + ["low"] * 5


def test_scheduler_runs_in_exactly_one_place(run, redis_url):
    env = {"REDIS_URL": redis_url, "CONSERVER_STORAGES": "null", "CONSERVER_ENABLE_SCHEDULER": "true",
           "CONSERVER_WORKERS": "1", "SCHEDULER_INTERVAL": "200ms"}
    a, b = run(env), run(env)
    off = run({**env, "CONSERVER_ENABLE_SCHEDULER": "false"})
    for c in (a, b, off):
        c.wait_log("ready: 1 workers up")
    for c in (a, b):
        assert "(and monitor, scheduler)" in c.log()
        assert sum(title(p).startswith("conserver: scheduler") for p in c.all_pids()) == 1
    # where it is off there is no scheduler process at all (every child's role, not only the
    # queue workers), no scheduler log line, and the master's ready line names only the monitor
    off_roles = sorted(title(p).split()[1] for p in off.all_pids())
    assert off_roles == ["master", "monitor", "worker"], off_roles
    assert "[scheduler" not in off.log() and "(and monitor)" in off.log()
    wait_for(lambda: (a.log() + b.log()).count("scheduler is now the leader") == 1, 10, what="one leader")
    leader, standby = (a, b) if "is now the leader" in a.log() else (b, a)
    leader.signal(signal.SIGTERM)  # the lock moves to the other instance
    standby.wait_log("scheduler is now the leader", timeout=20)
    assert "is now the leader" not in off.log()


def test_scheduler_only_mode_moves_due_retries(run, redis_url):
    env = {"REDIS_URL": redis_url, "SCHEDULER_INTERVAL": "200ms"}
    cfg, queue = queue_for(env)
    [vcon] = enqueue_samples(queue, 1)
    worker = claims_for(cfg, queue)
    claim = worker.claim_batch(0)[0]
    worker.defer(claim, "simulated store error", delay=0.3)
    assert queue.depths()["delayed"] == 1
    c = run(env, ("run", "--scheduler-only"))
    wait_for(lambda: queue.depths()["lists"]["default"] == 1, 10, what="the retry moved back")
    kinds = [title(w.pid).split()[1] for w in c.workers()]
    assert kinds == ["scheduler"]  # no queue workers at all


def test_recycling_after_max_vcons_replaces_before_the_old_one_drains(run, redis_url):
    env = {"REDIS_URL": redis_url, "CONSERVER_STORAGES": FAULTY, "CONSERVER_STORE_FAULTY_MODE": "slow:0.1",
           "CONSERVER_WORKERS": "1", "CONSERVER_MAX_VCONS_PER_WORKER": "100", "CONSERVER_BATCH_SIZE": "10"}
    cfg, queue = queue_for(env)
    enqueue_samples(queue, 800)
    c = run(env)
    wait_drained(queue, 90)
    log = c.wait_log("(replaced)", timeout=10)
    lines = log.splitlines()
    asked = [i for i, l in enumerate(lines) if "asking to be recycled" in l]
    started = [i for i, l in enumerate(lines) if "started worker 1/1" in l]
    retired = [i for i, l in enumerate(lines) if "retiring worker 1" in l and "(replaced)" in l]
    assert len(asked) >= 3 and len(retired) >= 3
    for r in retired:  # each retirement follows the start of its replacement
        assert any(a < s < r for a in asked for s in started)
    assert queue.depths()["dlq"] == {"default": 0}


def test_autoscale_grows_with_backlog_and_shrinks_when_idle(run, redis_url):
    env = {"REDIS_URL": redis_url, "CONSERVER_STORAGES": FAULTY, "CONSERVER_STORE_FAULTY_MODE": "slow:0.3",
           "CONSERVER_AUTOSCALE": "1,3", "CONSERVER_AUTOSCALE_COOLDOWN": "2s", "CONSERVER_BATCH_SIZE": "5",
           "CONSERVER_METRICS_LOG_INTERVAL": "0"}
    cfg, queue = queue_for(env)
    c = run(env)
    c.wait_workers(1, state="idle")
    enqueue_samples(queue, 1000)
    # (it grows only while the machine has CPU to spare: give a loaded test machine time)
    wait_for(lambda: len([w for w in c.workers() if "worker" in title(w.pid)]) == 3, 60, what="3 workers")
    assert "autoscale: 1 -> 2 workers" in c.log() and "autoscale: pool default 2 -> 3 workers" in c.log()
    wait_drained(queue, 180)
    wait_for(lambda: len([w for w in c.workers() if "worker" in title(w.pid)]) == 1, 30, what="back to 1 worker")
    assert "lists empty and workers" in c.log()


def test_autoscaler_needs_spare_cpu_and_memory():
    t = [0.0]
    a = Autoscaler(1, 4, 512, cooldown=5, up_every=0, cpu_idle=lambda: 5.0, clock=lambda: t[0])
    assert a.decide(1, 1000, 1.0) == (1, "")  # busy machine: no more workers
    a.cpu_idle = lambda: 80.0
    a.mem_available_mb = lambda: 100.0
    assert a.decide(1, 1000, 1.0) == (1, "")  # no memory for another
    a.mem_available_mb = lambda: 8000.0
    assert a.decide(1, 1000, 1.0)[0] == 2
    for step in range(1, 6):  # quiet from t=1: nothing retires before a full cool-down
        t[0] = step * 1.0
        assert a.decide(2, 0, 0.0)[0] == 2
    t[0] = 6.0
    assert a.decide(2, 0, 0.0)[0] == 1
    t[0] = 6.5
    assert a.decide(1, 0, 0.0)[0] == 1  # never below the minimum


def test_tenant_cap_holds_across_concurrent_workers(run, redis_url, make_redis_server):
    """4 workers, one busy tenant capped at 3 in flight: the store never sees more than 3 of
    its vCons at once, the other tenant is not held back, and every vCon is stored."""
    import random as _random

    from conserver.dev.samples import sample_vcon

    measure = make_redis_server()
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "4", "CONSERVER_BATCH_SIZE": "5",
           "CONSERVER_STORAGES": "tests.helpers.concurrency_store:ConcurrencyStore",
           "CONSERVER_STORE_CONCURRENCY_REDIS": measure.url, "DEFAULT_TENANT_CONCURRENCY": "3",
           "SCHEDULER_INTERVAL": "100ms", "CONSERVER_ENABLE_SCHEDULER": "true"}
    cfg, queue = queue_for(env)
    rng = _random.Random(5)
    vcons = [sample_vcon(rng, tenant="acme") for _ in range(60)] + [sample_vcon(rng, tenant="small") for _ in range(20)]
    rng.shuffle(vcons)
    queue.enqueue("default", [(v["uuid"], orjson.dumps(v)) for v in vcons])
    run(env)
    wait_drained(queue, 120)
    m = measure.client()
    top_acme, done_acme = int(m.get("test:max:acme")), int(m.get("test:done:acme"))
    print(f"tenant acme: at most {top_acme} in flight (cap 3), {done_acme} stored; "
          f"small: at most {int(m.get('test:max:small'))} in flight")
    assert top_acme == 3  # reached, never passed
    assert done_acme == 60 and int(m.get("test:done:small")) == 20
    assert queue.depths()["dlq"] == {"default": 0}


def test_store_rate_limit_is_shared_by_all_workers(run, redis_url, tmp_path):
    """50 vCons/s (burst 10) for the store, 3 workers together: 310 vCons take about 6 s."""
    import time as _time

    calls = tmp_path / "calls.jsonl"
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "3", "CONSERVER_BATCH_SIZE": "10", "CONSERVER_STORAGES": FAULTY,
           "CONSERVER_STORE_FAULTY_LOG": str(calls), "CONSERVER_RATE_LIMITS": f"{FAULTY}:50/10"}
    cfg, queue = queue_for(env)
    c = run(env)
    c.wait_workers(3, state="idle")
    enqueue_samples(queue, 310)
    started = _time.monotonic()
    wait_drained(queue, 60)
    took = _time.monotonic() - started
    print(f"310 vCons through a 50/s shared limit in {took:.2f}s (ideal 6.0s)")
    assert 5.0 <= took <= 9.0
    assert sum(len(call["uuids"]) for call in _calls(calls)) == 310


def test_recycling_by_age(run, redis_url):
    env = {"REDIS_URL": redis_url, "CONSERVER_STORAGES": "null", "CONSERVER_WORKERS": "2", "CONSERVER_MAX_WORKER_AGE": "2s"}
    c = run(env)
    first = {w.pid for w in c.wait_workers(2, state="idle")}
    wait_for(lambda: not first & {w.pid for w in c.wait_workers(2, state="idle")}, 20, what="both workers recycled")
    assert c.log().count("asking to be recycled: age") >= 2


def test_recycling_by_rss(run, redis_url):
    # CONSERVER_MIN_UPTIME=1: the RSS check waits for it (10 s by default), so the test would
    # wait 10 s per recycling; it changes no crash counting here (no worker crashes)
    env = {"REDIS_URL": redis_url, "CONSERVER_STORAGES": "null", "CONSERVER_WORKERS": "1", "CONSERVER_MAX_WORKER_RSS_MB": "1",
           "CONSERVER_MIN_UPTIME": "1"}
    c = run(env)
    first = c.wait_workers(1, state="idle")[0].pid
    log = c.wait_log("asking to be recycled: rss", timeout=15)
    assert "CONSERVER_MAX_WORKER_RSS_MB" in log
    wait_for(lambda: first not in {w.pid for w in c.workers()}, 15, what="the worker replaced")
    # a limit below a fresh worker's size replaces workers at most once per CONSERVER_MIN_UPTIME
    import time as _time
    _time.sleep(2.5)
    assert 2 <= c.log().count("asking to be recycled: rss") <= 5
    assert len(c.worker_titles()) <= 2

"""The live gauges, the report and the metrics line, driven in-process through their inputs
(a real Redis, a real shared-memory board); the monitor process itself is test_monitor.py."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conserver.dev.samples import sample_vcon
from conserver.observability.logging import untrusted
from conserver.observability.metrics import (LiveCollector, LiveInputs, ProcessRow, SupervisorCounts, interval_line,
                                             quantile)
from conserver.observability.page import render_status
from conserver.observability.status import monitor_report
from conserver.process.board import BUSY, Board
from tests.helpers.proc import ROOT, wait_for
from tests.helpers.stores import enqueue_samples, queue_for

INF = float("inf")


def worker_row(state: str, number: int, utilization: float = 0.5, rss_bytes: int = 1048576) -> ProcessRow:
    return {"pid": 1000 + number, "role": "worker", "pool": "default", "number": number, "state": state, "current": "",
            "processed": 0, "failed": 0, "rss_bytes": rss_bytes, "uptime_s": 1.0, "utilization": utilization}


def scrape(live: LiveInputs) -> str:
    registry = CollectorRegistry()
    registry.register(LiveCollector(live))
    return generate_latest(registry).decode()


def test_live_gauges_read_their_inputs_at_every_scrape(redis_url):
    cfg, queue = queue_for({"REDIS_URL": redis_url})
    enqueue_samples(queue, 3)
    rows = [worker_row("busy", 1, utilization=0.25), worker_row("idle", 2, utilization=0.75, rss_bytes=2097152)]
    live = LiveInputs(workers=lambda: rows, supervisor=lambda: SupervisorCounts(wanted=2, restarts=1), depths=queue.depths)
    text = scrape(live)
    for line in ('conserver_workers{state="busy"} 1.0', 'conserver_workers{state="idle"} 1.0',
                 'conserver_workers{state="starting"} 0.0', "conserver_workers_wanted 2.0",
                 "conserver_worker_restarts_total 1.0", "conserver_worker_utilization 0.5",
                 'conserver_worker_rss_bytes{number="2",pool="default"} 2.097152e+06', "conserver_redis_up 1.0",
                 'conserver_queue_depth{list="default"} 3.0', 'conserver_dead_letters{list="default"} 0.0',
                 "conserver_processing_depth 0.0", "conserver_delayed_depth 0.0"):
        assert line + "\n" in text, line
    rows.append(worker_row("draining", 3))
    queue.redis.delete("default")
    text = scrape(live)
    assert 'conserver_workers{state="draining"} 1.0' in text and 'conserver_queue_depth{list="default"} 0.0' in text


def test_without_redis_the_gauges_say_so_and_the_report_keeps_the_board(make_redis_server):
    server = make_redis_server()
    cfg, queue = queue_for({"REDIS_URL": server.url})
    server.close()
    text = scrape(LiveInputs(workers=lambda: [], supervisor=lambda: SupervisorCounts(0, 0), depths=queue.depths))
    assert "conserver_redis_up 0.0\n" in text and "conserver_workers_wanted 0.0\n" in text
    assert "conserver_queue_depth" not in text  # unknown, not zero

    board = Board()
    now = time.time()
    slot = board.slots[3]
    slot.pid, slot.state, slot.role, slot.pool, slot.number = os.getpid(), BUSY, b"worker", b"default", 1
    slot.current, slot.started, slot.busy_seconds, slot.busy_since = b"<uuid-in-hand>", now - 1000.0, 400.0, now - 100.0
    report = monitor_report(queue, board)
    assert report["error"].startswith("redis unavailable")
    (row,) = report["processes"]  # the empty slots are left out
    assert (row["pid"], row["state"], row["current"], row["pool"]) == (os.getpid(), "busy", "<uuid-in-hand>", "default")
    # busy 400 s before the batch in hand and 100 s in it, of 1000 s (and the seconds Redis took to fail)
    assert 0.49 < row["utilization"] < 0.51 and row["rss_bytes"] > 0
    page = render_status(report)
    assert "redis unavailable" in page and f"<td>{os.getpid()}</td>" in page
    assert "&lt;uuid-in-hand&gt;" in page and "<uuid-in-hand>" not in page


def test_quantile_interpolates_inside_its_bucket():
    buckets = [(0.1, 50.0), (0.2, 100.0), (INF, 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.95) == pytest.approx(0.19)
    assert quantile([(0.1, 0.0), (INF, 10.0)], 0.5) == 0.1  # past the last bound: that bound, not infinity
    assert quantile([], 0.95) == 0.0 and quantile([(0.1, 0.0), (INF, 0.0)], 0.95) == 0.0


def test_the_metrics_line_counts_the_interval_only():
    prev = {"completed": 10.0, "failed": 0.0, "dead": 0.0, "sum": 1.0, "count": 10.0,
            "buckets": {0.1: 10.0, 0.2: 10.0, INF: 10.0}}
    cur = {"completed": 28.0, "failed": 2.0, "dead": 1.0, "sum": 3.0, "count": 30.0,
           "buckets": {0.1: 20.0, 0.2: 30.0, INF: 30.0}}
    assert interval_line(prev, cur, uptime=12.34, utilization=0.25) == {
        "processed": 20, "completed": 18, "failed": 2, "dead_lettered": 1, "avg_duration_ms": 100.0,
        "p95_ms": 190.0, "worker_utilization": 0.25, "error_rate": 0.1, "uptime": 12.3}


def test_untrusted_escapes_and_caps():
    assert untrusted("a\nb\r\x1b[31m\u2028\u202e") == "a\\nb\\r\\x1b[31m\\u2028\\u202e"
    assert untrusted("x" * 1000, 10) == "x" * 10 + "...[990 more]"
    assert untrusted(b"\xff" * (8 << 20), 4) == "\ufffd" * 4 + f"...[{(8 << 20) - 4} more]"  # reads 4 bytes only
    assert untrusted("plain-uuid-1234") == "plain-uuid-1234" and untrusted(None) == "None"


GARBAGE = 8 << 20  # issue 12: 20 garbage items of 8 MB


def test_twenty_garbage_items_of_8_mb_make_a_report_of_kilobytes(redis_url, tmp_path):
    """What Redis may hold about untrusted items today (whole items in the DLQ, in their
    metadata, in the recent errors): the report, the pages and the CLI show a bounded excerpt."""
    from conserver.observability import dead_letters
    from conserver.queue.client import item_id

    env = {"REDIS_URL": redis_url}
    cfg, queue = queue_for(env)
    keys = queue.keys
    for i in range(20):
        item = (b"%02d" % i) + b"\n" + b"\x1b" * 100 + b"g" * (GARBAGE - 103)
        queue.redis.rpush(keys.dlq("default"), item)
        queue.redis.hset(keys.dlq_meta("default", item_id(item)),
                         mapping={"uuid": item, "reason": "unsafe_uuid", "error": b"bad item " + item})
        queue.redis.lpush(keys.errors, orjson.dumps({"time": "t", "uuid": item.decode(), "error": "e" * GARBAGE}))
    report = monitor_report(queue, Board())
    size = len(orjson.dumps(report, default=str))
    assert size < 100_000, size
    assert len(report["dead_letters"]) == 20 and report["dead_letters"][0]["uuid"].startswith("00\\n\\x1b\\x1b")
    page = render_status(report)
    assert len(page) < 200_000 and "\x1b" not in page
    listing = dead_letters.render_list(queue, {}, admin=True)
    assert len(listing) < 600_000 and "\x1b" not in listing
    code, one = dead_letters.render_one(queue, {"list": "default", "id": item_id(item)}, admin=False)
    assert code == 200 and len(one) < 20_000 and f"...[{GARBAGE - dead_letters.META_SHOWN} more]" in one
    uuid = "6f1c2a9e-8d3b-4c57-9a61-0b2e4f6d8c10"  # a dead letter whose body is 8 MB
    body = b'{"uuid": "' + uuid.encode() + b'", "subject": "' + b"s" * GARBAGE + b'"}'
    queue.redis.set(keys.body(uuid), body)
    queue.redis.rpush(keys.dlq("default"), uuid)
    code, one = dead_letters.render_one(queue, {"list": "default", "id": uuid}, admin=False)
    assert code == 200 and len(one) < 100_000 and f"the first {dead_letters.BODY_SHOWN} of {len(body)} characters" in one
    r = subprocess.run([sys.executable, "-m", "conserver", "status", "--json"], capture_output=True, env=_env(env),
                       timeout=120)
    assert r.returncode == 0 and len(r.stdout) < 200_000, len(r.stdout)
    assert json.loads(r.stdout)["queues"]["dlq"]["default"] == 21


def _env(env: dict[str, str]) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_newline_echoed_by_a_store_forges_no_log_line(start_conserver, redis_url, fmt):
    """A store quotes the vCon's subject in its error (a database does): the subject's
    newline and escape codes stay inside the one WARNING line, in text and in JSON."""
    forged = "2024-01-01T00:00:00.000Z ERROR [master pid=1] conserver: forged"
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "1", "LOG_FORMAT": fmt,
           "CONSERVER_STORAGES": "tests.helpers.faulty_store:FaultyStore", "CONSERVER_STORE_FAULTY_MODE": "echo"}
    c = start_conserver(env)
    cfg, queue = queue_for(env)
    vcon = sample_vcon(random.Random(1))
    vcon["subject"] = f"hello\n{forged}\r\x1b[2K"
    queue.enqueue("default", [(vcon["uuid"], orjson.dumps(vcon))])
    wait_for(lambda: queue.depths()["dlq"]["default"] == 1, 30, what="the vCon dead-lettered")
    line = c.wait_log("faulty store: invalid value hello", timeout=10)
    text = c.log()
    lines = text.splitlines()
    assert not any(x.startswith(forged) or x.startswith('{"ts":"2024') for x in lines)
    assert "\x1b" not in text and "\r" not in text
    if fmt == "text":
        assert f"hello\\n{forged}\\r\\x1b[2K" in line
    else:
        assert all(json.loads(x) for x in lines if x.startswith("{"))
        assert f"hello\\\\n{forged}" in line  # escaped by the helper, then by JSON


def test_readyz_is_false_while_redis_refuses_writes(make_redis_server, tmp_path, monkeypatch):
    """Redis that answers PING but refuses writes (over maxmemory with noeviction, a replica
    after a failover) cannot take acknowledgements: not ready, with Redis's own reason."""
    import redis

    from conserver.dev.devstack import free_port
    from conserver.tasks.monitor import MonitorTask
    from tests.unit.harness import make_context

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    server = make_redis_server()
    task = MonitorTask(make_context({"REDIS_URL": server.url}, role="monitor"))
    task.open()
    r = redis.Redis.from_url(server.url)
    try:
        assert task.readyz() == (200, {"ok": True, "redis": True, "breakers": {}, "draining": False})
        r.set("filler", b"x" * 100_000)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)
        assert r.ping()  # PING alone would say ready
        code, doc = task.readyz()
        assert code == 503 and doc["redis"] is False and doc["redis_error"].startswith("OutOfMemoryError: command not allowed when used memory")
        r.config_set("maxmemory", 0)
        assert task.readyz()[0] == 200
        r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that nobody answers for
        code, doc = task.readyz()
        assert code == 503 and doc["redis_error"].startswith("ReadOnlyError: You can't write against a read only")
        r.execute_command("REPLICAOF", "NO", "ONE")
        assert task.readyz()[0] == 200
        server.close()
        code, doc = task.readyz()
        assert code == 503 and doc["redis_error"].startswith("ConnectionError")
    finally:
        task.close()
        r.close()

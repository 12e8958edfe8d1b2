"""The live gauges, the report and the metrics line, driven in-process through their inputs
(a real Redis, a real shared-memory board); the monitor process itself is test_monitor.py."""
from __future__ import annotations

import os
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conserver.observability.metrics import (LiveCollector, LiveInputs, ProcessRow, SupervisorCounts, interval_line,
                                             quantile)
from conserver.observability.page import render_status
from conserver.observability.status import monitor_report
from conserver.process.board import BUSY, Board
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

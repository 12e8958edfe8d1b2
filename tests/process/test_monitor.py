"""Metrics, health endpoints, the status page (in headless Chromium) and `conserver status`."""
from __future__ import annotations

import collections

import json
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from conserver.dev.devstack import free_port
from tests.helpers.proc import ROOT, Conserver, title, wait_for
from tests.helpers.stores import enqueue_samples, queue_for, wait_drained

SECRET = "s3cr3t-pw-123"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):  # the monitor is not listening yet: callers wait
        return 0, ""


@pytest.fixture
def monitored(tmp_path, redis_url):
    port = free_port()
    # default user without a password accepts any: a URL with a secret in it, for the redaction checks
    url = redis_url.replace("redis://", f"redis://default:{SECRET}@")
    env = {"REDIS_URL": url, "CONSERVER_WORKERS": "2", "CONSERVER_STORAGES": "null", "CONSERVER_METRICS_PORT": str(port),
           "CONSERVER_METRICS_LOG_INTERVAL": "1s", "AWS_SECRET_ACCESS_KEY": SECRET, "CONSERVER_ENABLE_SCHEDULER": "true"}
    c = Conserver(tmp_path, env)
    yield c, env, f"http://127.0.0.1:{port}"
    c.stop()


def test_metrics_health_and_status(monitored):
    c, env, base = monitored
    cfg, queue = queue_for(env)
    # the metrics lines count from the monitor's first snapshot: enqueue after it
    c.wait_log("metrics processed=", timeout=20)
    enqueue_samples(queue, 500)
    queue.redis.rpush("default", "not-a-uuid")
    wait_drained(queue, 60)
    wait_for(lambda: get(base + "/healthz")[0] == 200, 10, what="/healthz")
    code, body = get(base + "/healthz")
    assert json.loads(body)["workers_running"] == 2
    code, body = get(base + "/readyz")
    assert code == 200 and json.loads(body)["redis"] is True

    def metrics_settled():
        text = get(base + "/metrics")[1]
        return text if 'conserver_vcons_processed_total{list="default"} 500.0' in text else None

    text = wait_for(metrics_settled, 10, what="metrics add up across workers")
    assert 'conserver_vcons_dead_lettered_total{list="default",reason="bad_uuid"} 1.0' in text
    assert 'conserver_store_write_seconds_count{store="null"}' in text
    assert 'conserver_queue_depth{list="default"} 0.0' in text and 'conserver_dead_letters{list="default"} 1.0' in text
    assert "conserver_worker_utilization" in text
    # the restart counter reports the supervisor's real restarts (none, unless the loaded
    # machine made one: then the log says which, and the metric must agree with it)
    restarts = next(float(line.split()[1]) for line in text.splitlines()
                    if line.startswith("conserver_worker_restarts_total "))
    log = c.log()
    assert restarts == log.count("was killed by") + log.count("(exit code"), log[-3000:]
    assert 'conserver_circuit_breaker_state{pid=' in text and "conserver_delayed_depth 0.0" in text
    # seed 001's metrics line, every CONSERVER_METRICS_LOG_INTERVAL
    line = c.wait_log("metrics processed=", timeout=5)
    for field in ("processed=", "completed=", "failed=", "avg_duration_ms=", "p95_ms=", "worker_utilization=",
                  "error_rate=", "uptime="):
        assert field in line

    def interval_sums() -> dict[str, int] | None:  # the lines are per interval: they add up to the run
        sums = collections.Counter()
        for l in c.log().splitlines():
            if "metrics processed=" in l:
                for f in ("processed", "completed", "failed"):
                    sums[f] += int(l.split(f" {f}=")[1].split()[0]) if f" {f}=" in l else 0
        return sums if sums["completed"] == 500 else None

    sums = wait_for(interval_sums, 10, what="metrics lines adding up to 500 completed")
    assert sums == {"processed": 501, "completed": 500, "failed": 1}  # the 500 samples, and not-a-uuid
    code, page = get(base + "/status")
    assert code == 200 and "not-a-uuid" in page and "bad_uuid" in page
    for w in c.workers():
        if "worker" in title(w.pid):
            assert f"<td>{w.pid}</td>" in page
    # the CLI shows the same facts from Redis
    def status_of_all_500():
        # (each worker's figures are in its Redis heartbeat, refreshed every heartbeat TTL / 3)
        r = subprocess.run([sys.executable, "-m", "conserver", "status", "--json"], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, timeout=60)
        s = json.loads(r.stdout)
        return (r, s) if sum((i or {}).get("processed", 0) for i in s["workers"].values()) == 500 else None

    r, status = wait_for(status_of_all_500, cfg.worker_heartbeat_ttl / 3 + 10, interval=1, what="status: 500 processed")
    assert status["queues"]["dlq"]["default"] == 1
    assert len([i for i in status["workers"].values() if i]) == 2
    # no secret anywhere an operator looks
    titles = " ".join(title(p) for p in c.all_pids())
    for where, content in (("log", c.log()), ("titles", titles), ("metrics", text), ("page", page), ("cli", r.stdout)):
        assert SECRET not in content, where
    c.signal(signal.SIGTERM)
    assert c.wait(20) == 0


def test_readyz_fails_when_every_breaker_is_open(tmp_path, redis_url):
    port = free_port()
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "1", "CONSERVER_STORAGES": "tests.helpers.faulty_store:FaultyStore",
           "CONSERVER_STORE_FAULTY_MODE": "down", "CIRCUIT_BREAKER_THRESHOLD": "1", "CIRCUIT_BREAKER_TIMEOUT": "60s",
           "CONSERVER_STORE_RETRIES": "0", "CONSERVER_METRICS_PORT": str(port), "CONSERVER_METRICS_LOG_INTERVAL": "0"}
    c = Conserver(tmp_path, env)
    try:
        cfg, queue = queue_for(env)
        enqueue_samples(queue, 5)
        c.wait_log("circuit breaker tests.helpers.faulty_store:FaultyStore: closed -> open", timeout=20)
        code, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(f"http://127.0.0.1:{port}/readyz")),
                              10, what="readyz 503")
        assert json.loads(body)["breakers"] == {"tests.helpers.faulty_store:FaultyStore": "open"}
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # alive, just not ready
    finally:
        c.stop()


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="Debian chromium not installed")
def test_status_page_in_headless_chromium(monitored, tmp_path):
    c, env, base = monitored
    cfg, queue = queue_for(env)
    enqueue_samples(queue, 200)
    queue.redis.rpush("default", "../../etc/passwd")
    wait_drained(queue, 60)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", base + "/status"], capture_output=True, text=True, timeout=60).stdout
    assert "Workers on this host" in dom and "Dead letters" in dom and "Recent errors" in dom
    assert "unsafe_uuid" in dom and "../../etc/passwd" in dom  # shown, escaped, not followed
    assert "<noscript><meta http-equiv=refresh" in dom  # refreshes itself without JavaScript too
    pids = [w.pid for w in c.workers() if "worker" in title(w.pid)]
    assert all(f"<td>{pid}</td>" in dom for pid in pids)
    # no CONSERVER_ADMIN_TOKEN: the dead letters are read-only, no button, and a POST is refused
    dom = subprocess.run([chromium, *flags, "--dump-dom", base + "/status/dead-letters"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "../../etc/passwd" in dom and "Read-only: set CONSERVER_ADMIN_TOKEN" in dom
    assert "do-requeue" not in dom and "do-purge" not in dom and 'type="checkbox"' not in dom
    req = urllib.request.Request(base + "/status/dead-letters/action", data=b"action=purge&item=default+x&token=",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403 and b"actions are off" in refused.value.read()
    assert queue.depths()["dlq"]["default"] == 1


def test_sighup_can_turn_metrics_on(tmp_path, redis_url):
    port = free_port()
    env_file = tmp_path / "conserver.env"
    env_file.write_text("CONSERVER_METRICS_PORT=0\n")
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "1", "CONSERVER_STORAGES": "null",
           "CONSERVER_METRICS_LOG_INTERVAL": "0", "CONSERVER_ENV_FILE": str(env_file)}
    c = Conserver(tmp_path, env)
    try:
        c.wait_workers(1, state="idle")
        assert "started monitor" not in c.log()
        env_file.write_text(f"CONSERVER_METRICS_PORT={port}\n")
        c.signal(signal.SIGHUP)
        c.wait_log("metrics, health and status on", timeout=20)
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20, what="the monitor after SIGHUP")
        cfg, queue = queue_for(env)
        enqueue_samples(queue, 50)
        wait_drained(queue, 30)
        wait_for(lambda: 'conserver_vcons_processed_total{list="default"} 50.0' in get(f"http://127.0.0.1:{port}/metrics")[1],
                 10, what="metrics from the workers started by the reload")
    finally:
        c.stop()

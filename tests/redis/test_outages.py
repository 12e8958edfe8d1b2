"""Redis trouble of every kind is an outage, not a bug (issue 12): what make_redis's clients
raise for each kind is in REDIS_DOWN, and a real ``conserver run`` over a Redis at maxmemory
with noeviction backs off, keeps every process, logs one WARNING per interval and stores
everything once memory is freed."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from types import SimpleNamespace

import pytest
import redis

from conserver.queue.admin import QueueAdmin
from conserver.queue.client import REDIS_DOWN, make_redis
from conserver.queue.outage import WARN_EVERY, OutageLog, meaning
from tests.helpers.ledger_store import stored_counts
from tests.helpers.proc import wait_for
from tests.helpers.stores import drained
from tests.redis.helpers import vcons


def _client(server) -> redis.Redis:
    return make_redis(SimpleNamespace(redis_url=server.url, redis_sentinels=()), retries=0, socket_timeout=5)


def _refused(client: redis.Redis) -> list[BaseException]:
    """What a plain write, a writing script and a MULTI/EXEC raise now."""
    out = []
    for write in (lambda: client.set("k", "v"),
                  lambda: client.eval("redis.call('RPUSH', KEYS[1], 'x') return 1", 1, "l"),
                  lambda: client.pipeline(transaction=True).set("k", "v").sadd("s", "1").execute()):
        with pytest.raises(redis.RedisError) as info:
            write()
        out.append(info.value)
    return out


def test_oom_readonly_and_misconf_are_outages(make_redis_server):
    server = make_redis_server()
    client = _client(server)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    for exc in _refused(client):
        assert isinstance(exc, REDIS_DOWN) and "out of memory" in meaning(exc), repr(exc)
    client.config_set("maxmemory", "0")

    master = make_redis_server()
    client.replicaof("127.0.0.1", master.port)  # what a failover makes of an old master
    for exc in _refused(client):
        assert isinstance(exc, REDIS_DOWN) and "read-only replica" in meaning(exc), repr(exc)
    client.replicaof("NO", "ONE")

    # MISCONF: a snapshot that cannot be written (its folder is gone, even for root) stops writes
    client.config_set("save", "3600 1")
    shutil.rmtree(server.dir)
    client.bgsave()
    wait_for(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err", 10, what="a failed BGSAVE")
    for exc in _refused(client):
        assert isinstance(exc, REDIS_DOWN) and "MISCONF" in meaning(exc), repr(exc)
    server.dir.mkdir(parents=True)
    client.config_set("save", "")
    client.close()


def test_busy_script_is_an_outage(make_redis_server):
    server = make_redis_server()
    client = _client(server)
    client.config_set("busy-reply-threshold", "100")  # ms before others hear BUSY (default 5 s): to stay fast
    looping = threading.Thread(target=lambda: _client(server).eval(
        "local t = redis.call('TIME')[1] + 2 while tonumber(redis.call('TIME')[1]) < t do end return 1", 0))
    looping.start()
    time.sleep(0.5)
    with pytest.raises(REDIS_DOWN) as info:
        client.get("k")
    assert "busy" in meaning(info.value)
    looping.join()
    client.close()


def test_outage_log_warns_once_per_interval(caplog):
    now = [0.0]
    outage = OutageLog(logging.getLogger("test.outage"), clock=lambda: now[0])
    exc = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    with caplog.at_level(logging.INFO, logger="test.outage"):
        for step in range(200):  # a retry every 0.5 s for 100 s, a step passing now and then
            now[0] = step * 0.5
            outage.failed("claiming", exc)
            if step % 7 == 0:
                outage.ok()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == int(99.5 // WARN_EVERY) + 1 == 4
    assert "out of memory" in warnings[0].getMessage() and "more failures" in warnings[1].getMessage()
    outage.ok()
    assert caplog.records[-1].getMessage().startswith("Redis answers again")


# --- a real conserver over a Redis at maxmemory -------------------------------------------------

def _env(server, tmp_path) -> dict[str, str]:
    return {
        "REDIS_URL": server.url,
        "CONSERVER_WORKERS": "2",  # as conf/conserver.env.example is used in issue 12
        "CONSERVER_ENABLE_SCHEDULER": "true",  # the shipped default (the helper turns it off)
        "CONSERVER_STORAGES": "tests.helpers.ledger_store:LedgerStore",
        "CONSERVER_STORE_LEDGER_FILE": str(tmp_path / "ledger.jsonl"),
    }


def _over_maxmemory(client: redis.Redis, on: bool) -> None:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1" if on else "0")


def _oom_warnings(log: str) -> int:
    return len(re.findall(r"WARNING.*Redis is out of memory", log))


def _check_survived(c, pids: set[int], seconds: float) -> None:
    """Every process of ``c`` lives through ``seconds`` of the outage."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert c.proc.poll() is None, c.log()
        time.sleep(0.2)
    assert {p.pid for p in c.workers()} == pids, c.log()


def _check_all_stored(admin: QueueAdmin, ledger, uuids: set[str], c) -> None:
    wait_for(lambda: drained(admin), 60, interval=0.2, what="the queue drained")
    counts = stored_counts(ledger)
    assert set(counts) == uuids, c.log()
    assert admin.depths()["dlq"] == {"default": 0}


@pytest.mark.parametrize("when", ["mid-run", "at start"])
def test_redis_over_maxmemory_is_an_outage(make_redis_server, start_conserver, tmp_path, when):
    server = make_redis_server()
    client = server.client()
    admin = QueueAdmin(client, ["default"])
    env = _env(server, tmp_path)
    first = vcons(400, seed=1)
    admin.enqueue("default", first)
    if when == "at start":
        _over_maxmemory(client, True)
    c = start_conserver(env)
    procs = c.wait_workers(2) + [w for w in c.workers() if "scheduler" in c.worker_titles().get(w.pid, "")]
    if when == "mid-run":
        wait_for(lambda: sum(stored_counts(env["CONSERVER_STORE_LEDGER_FILE"]).values()) >= 50, 30,
                 what="some vCons stored")
        _over_maxmemory(client, True)
    started = time.monotonic()
    # past a heartbeat (every CONSERVER_WORKER_HEARTBEAT_TTL / 3 = 10 s), whose SET is refused
    _check_survived(c, {p.pid for p in c.workers()}, 12.0)
    assert len(procs) >= 2
    outage_s = time.monotonic() - started
    _over_maxmemory(client, False)
    second = vcons(200, seed=2)
    admin.enqueue("default", second)
    _check_all_stored(admin, env["CONSERVER_STORE_LEDGER_FILE"], {u for u, _ in first + second}, c)
    log = c.log()
    assert "Traceback" not in log, log
    # one WARNING per process and interval, not one per retry
    assert 1 <= _oom_warnings(log) <= 3 * (int(outage_s // WARN_EVERY) + 1), log
    c.signal(15)
    assert c.wait(30) == 0, c.log()
    client.close()

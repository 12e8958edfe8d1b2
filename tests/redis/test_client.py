"""Clients, worker ids and settings of the queue (conserver/queue/client.py, protocol.py),
and a Redis restart in the middle of a batch, against real private redis-servers."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from conserver.config import Config
from conserver.dev.devstack import free_port
from conserver.queue.admin import QueueAdmin
from conserver.queue.claims import WorkerClaims
from conserver.queue.client import make_redis, make_worker_id
from conserver.queue.protocol import QueueSettings
from conserver.queue.recovery import Recovery
from tests.redis.helpers import settings, uuids_of, vcons


def test_make_worker_id_and_from_config(r):
    wid = make_worker_id(pid=42, started=1.5)
    assert wid.endswith(":42:1500") and wid.count(":") == 2
    cfg = Config(ingress_lists=("x", "y"), batch_size=7, max_retries=9)
    q = WorkerClaims(r, QueueSettings.from_config(cfg), "w")
    assert (q.ingress_lists, q.settings.batch_size, q.settings.max_retries, q.worker_id) == (("x", "y"), 7, 9, "w")


def test_make_redis_from_url(redis_url):
    client = make_redis(Config(redis_url=redis_url))
    assert client.ping() and client.connection_pool.connection_kwargs["decode_responses"] is False
    client.close()


def test_redis_restart_between_claim_and_ack_loses_nothing(make_redis_server):
    server = make_redis_server(appendonly=True)
    client = make_redis(Config(redis_url=server.url), retries=10)
    q = WorkerClaims(client, settings(batch_size=5), "restart:1:1")
    a, rec = QueueAdmin(client, ["default"]), Recovery(client, ["default"])
    data = vcons(8)
    a.enqueue("default", data)
    batch = q.claim_batch(0)
    server.stop()
    with pytest.raises(redis.ConnectionError):
        QueueAdmin(make_redis(Config(redis_url=server.url), retries=0), ["default"]).depths()
    server.start()
    assert q.ack(batch[:3]) == 3  # reconnects
    q.defer(batch[3], "later", delay=0)
    server.restart()
    rest = [batch[4]] + q.claim_batch(0)
    assert rec.move_due() == 1
    rest += q.claim_batch(0)
    q.ack(rest)
    assert sorted(uuids_of(batch[:4] + rest)) == sorted([u for u, _ in data] + [batch[3].uuid])
    assert a.depths()["processing"] == 0 and a.depths()["lists"] == {"default": 0}
    client.close()


def test_make_redis_through_sentinel(redis_server, redis_url, tmp_path):
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

"""Redis Sentinel: workers find the master through a real redis-sentinel."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import redis

from conserver.dev.devstack import free_port
from tests.helpers.proc import Conserver
from tests.helpers.stores import enqueue_samples, queue_for, wait_drained


@pytest.fixture
def sentinel(redis_server, tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # sentinel rewrites its file: it must be writable
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor conserver-master 127.0.0.1 {redis_server.url.rsplit(':', 1)[1].split('/')[0]} 1\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            if client.execute_command("SENTINEL", "get-master-addr-by-name", "conserver-master"):
                break
        except redis.ConnectionError:
            pass
        import time
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


def test_workers_reach_redis_through_sentinel(tmp_path, redis_url, sentinel):
    env = {"REDIS_URL": "redis://unused.invalid:1/0", "REDIS_SENTINELS": f"127.0.0.1:{sentinel}",
           "REDIS_SENTINEL_MASTER": "conserver-master", "CONSERVER_STORAGES": "null", "CONSERVER_WORKERS": "2"}
    cfg, queue = queue_for(env)  # the test's own client goes through the sentinel too
    enqueue_samples(queue, 300)
    c = Conserver(tmp_path, env)
    try:
        wait_drained(queue, 60)
        direct = redis.Redis.from_url(redis_url)
        assert direct.llen("default") == 0 and direct.scard("conserver:workers") == 2
    finally:
        c.stop()

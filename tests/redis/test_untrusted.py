"""What is kept about an untrusted item is bounded (issue 12): 20 garbage items of 8 MB through a
real ``conserver run`` leave dead-letter metadata, recent errors and ``conserver status --json``
of a few KB, not of megabytes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import redis

from conserver.queue.admin import QueueAdmin
from conserver.queue.client import item_id
from conserver.queue.keys import DEFAULT_KEYS as K
from tests.helpers.proc import ROOT, wait_for

ITEM_BYTES, ITEMS = 8 << 20, 20


def test_garbage_items_of_8_mb_keep_bounded_metadata(redis_url, start_conserver):
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(20)
    garbage = [(b"{" if i % 2 else b"x") + rng.randbytes(ITEM_BYTES - 1) for i in range(ITEMS)]
    for item in garbage:  # half look like inline vCons, half like uuids
        client.rpush("default", item)
    c = start_conserver({"REDIS_URL": redis_url, "CONSERVER_STORAGES": "null"})
    try:
        wait_for(lambda: client.llen(K.dlq("default")) == ITEMS, 120, interval=0.2, what="every item dead-lettered")
    except TimeoutError:
        raise AssertionError(c.log()[-3000:])
    for item in garbage:
        meta = client.hgetall(K.dlq_meta("default", item_id(item)))
        assert meta[b"item_id"].startswith(b"sha1:") and meta[b"uuid"] == b""
        assert meta[b"excerpt"].endswith(b"... (8388608 bytes)")
        assert sum(len(k) + len(v) for k, v in meta.items()) < 4096, meta
    errors = client.lrange(K.errors, 0, -1)
    assert len(errors) == ITEMS and sum(map(len, errors)) < ITEMS * 1024
    admin = QueueAdmin(client, ["default"])
    assert len(json.dumps(admin.dlq_list())) < ITEMS * 4096
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONSERVER_")}, "REDIS_URL": redis_url,
           "PYTHONPATH": str(ROOT)}
    status = subprocess.run([sys.executable, "-m", "conserver", "status", "--json"], env=env, capture_output=True,
                            timeout=60, check=True)
    report = json.loads(status.stdout)
    assert len(report["dead_letters"]) == ITEMS and len(status.stdout) < 200_000
    assert client.llen("default") == 0 and c.proc.poll() is None
    client.close()

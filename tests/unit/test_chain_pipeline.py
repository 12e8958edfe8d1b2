"""A chain in the store pipeline, one loop turn at a time, on the in-memory queue: links in
order, halts, link failures, and the body rewrite and egress pushes that ride with the ack.
The same through real processes, Redis and stores: tests/e2e/test_chains.py."""

from __future__ import annotations

import json
import random
import time

import orjson
import pytest
import yaml

from conserver.dev.samples import sample_vcon
from conserver.queue.memory import MemoryQueue
from conserver.queue.protocol import AckEffect, QueueSettings
from tests.helpers.faulty_store import FaultyStore
from tests.helpers.links import Stamp
from tests.unit.harness import MemoryPipeline, make_context

LINKS = {
    "tag": {"module": "links.tag", "options": {"tags": ["Geddy", "Alex"]}},
    "stamp_a": {"module": "tests.helpers.links:Stamp", "options": {"name": "a"}},
    "stamp_b": {"module": "tests.helpers.links:Stamp", "options": {"name": "b"}},
    "slow": {"module": "tests.helpers.links:Stamp", "options": {"name": "slow", "sleep": 0.05}},
    "keep_even": {"module": "links.jq_link", "options": {"filter": ".keep == true"}},
    "route": {"module": "links.tag_router", "options": {"tag_routes": {"Geddy": "routed"}}},
    "expire": {"module": "links.expire_vcon", "options": {"seconds": 120}},
    "flaky": {"module": "tests.helpers.links:Flaky", "options": {"conserver": {"retries": 0}}},
    "refuses": {"module": "tests.helpers.links:Flaky", "options": {"permanent": True}},
}
FAULTY = "tests.helpers.faulty_store:FaultyStore"


@pytest.fixture
def memory():
    return MemoryQueue()


@pytest.fixture
def chain(memory, opened, tmp_path):
    """``chain(links, egress=..., **env)``: an opened pipeline running one chain of config.yml."""
    def make(links: list[str], egress: tuple[str, ...] = ("out",), **env):
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump({
            "links": {name: LINKS[name] for name in links},
            "storages": {"faulty": {"module": FAULTY}},
            "chains": {"main": {"links": links, "ingress_lists": ["default"], "storages": ["faulty"],
                                "egress_lists": list(egress), "enabled": 1}}}))
        ctx = make_context({"CONSERVER_CONFIG_FILE": str(path), "CONSERVER_STORE_RETRY_BACKOFF": "1ms",
                            "CONSERVER_STORE_RETRY_BACKOFF_MAX": "1ms", **env})
        return opened(MemoryPipeline(ctx, memory))
    return make


def enqueue(memory, n: int, seed: int = 1, **fields) -> list[str]:
    rng = random.Random(seed)
    docs = [{**sample_vcon(rng), **fields} for _ in range(n)]
    memory.enqueue("default", [(d["uuid"], orjson.dumps(d)) for d in docs])
    return [d["uuid"] for d in docs]


def faulty(task) -> FaultyStore:
    (store,) = task.fanout.sinks
    return store


def tags_of(doc: dict) -> list[str]:
    (att,) = [a for a in doc.get("attachments", []) if a.get("purpose") == "tags"]
    return json.loads(att["body"])


def test_links_change_what_is_stored_and_the_body_and_egress_follow(chain, memory):
    task = chain(["tag", "stamp_a", "stamp_b"])
    uuids = enqueue(memory, 4)
    task.run_once()
    for u in uuids:
        stored = orjson.loads(faulty(task).stored[u])
        assert tags_of(stored) == ["Geddy:Geddy", "Alex:Alex"] and stored["stamps"] == ["a", "b"]
        assert orjson.loads(memory.bodies[u]) == stored  # rewritten before the egress push
    assert memory.lists["out"] == [u.encode() for u in uuids]
    assert memory.depths(["default"])["processing"] == 0 and task.ctx.processed == 4


def test_a_halted_vcon_is_acked_not_stored_not_on_egress(chain, memory):
    task = chain(["keep_even", "stamp_a"])
    kept = enqueue(memory, 2, keep=True)
    dropped = enqueue(memory, 2, seed=2, keep=False)
    task.run_once()
    assert set(faulty(task).stored) == set(kept)
    assert sorted(memory.lists["out"]) == sorted(u.encode() for u in kept)
    assert memory.depths(["default"]) == {"lists": {"default": 0}, "processing": 0, "delayed": 0,
                                          "dlq": {"default": 0}, "workers": 1}
    assert all(b"stamps" not in memory.bodies[u] for u in dropped)  # the halt came first: unchanged


def test_nothing_goes_on_egress_or_a_routed_list_before_every_store_committed(chain, memory):
    task = chain(["tag", "route", "expire"], egress=("out", "audit"))
    (uuid,) = enqueue(memory, 1)
    faulty(task).mode = "down"
    task.run_once()
    assert not memory.lists["out"] and not memory.lists["routed"] and uuid not in memory.ttls
    assert b"tags" not in memory.bodies[uuid]  # a retry's links start from the body as it came
    faulty(task).mode = "ok"
    memory.recovery().move_due(now=time.time() + 3600)
    task.run_once()
    assert memory.lists["out"] == memory.lists["audit"] == memory.lists["routed"] == [uuid.encode()]
    assert memory.ttls[uuid] == 120 and b"Geddy" in memory.bodies[uuid]


def test_a_transient_link_failure_is_retried_then_dead_lettered_link_failed(chain, memory):
    task = chain(["stamp_a", "flaky"])  # MAX_RETRIES: the shipped 3
    (uuid,) = enqueue(memory, 1)
    for _ in range(3):
        task.run_once()
        assert memory.depths(["default"])["delayed"] == 1 and not memory.dead["default"]
        memory.recovery().move_due(now=time.time() + 3600)
    task.run_once()
    (dead,) = memory.dlq_list("default")
    assert (dead["reason"], dead["uuid"]) == ("link_failed", uuid) and "link flaky" in dead["error"]
    assert memory.ttls[uuid] == 604800 and not faulty(task).stored and not memory.lists["out"]


def test_a_permanent_link_failure_is_dead_lettered_at_once_with_the_link_named(chain, memory):
    task = chain(["refuses"], VCON_DLQ_EXPIRY="3600")
    enqueue(memory, 2)
    task.run_once()
    assert [(d["reason"], "link refuses" in d["error"]) for d in memory.dlq_list("default")] == \
        [("link_failed", True)] * 2
    assert set(memory.ttls.values()) == {3600}


def test_vcons_of_a_batch_run_their_links_at_once_in_order_within_each(chain, memory):
    # CONSERVER_VCON_CONCURRENCY=8: what is under test (the shipped 1 runs them one by one)
    task = chain(["slow", "stamp_a"], CONSERVER_VCON_CONCURRENCY="8")
    Stamp.peak = 0
    uuids = enqueue(memory, 16)
    task.run_once()
    assert Stamp.peak >= 4  # several vCons in their slow link at once
    assert [orjson.loads(faulty(task).stored[u])["stamps"] for u in uuids] == [["slow", "a"]] * 16
    assert memory.lists["out"] == [u.encode() for u in uuids]  # egress in the batch's order


def test_one_at_a_time_by_default(chain, memory):
    task = chain(["slow"])
    Stamp.peak = 0
    enqueue(memory, 4)
    task.run_once()
    assert Stamp.peak == 1


def test_an_inline_vcon_goes_on_egress_inline_with_the_links_changes(chain, memory):
    task = chain(["stamp_a"])
    doc = sample_vcon(random.Random(5))
    memory.push("default", orjson.dumps(doc))
    task.run_once()
    (item,) = memory.lists["out"]
    assert orjson.loads(item) == {**doc, "stamps": ["a"]} and doc["uuid"] not in memory.bodies


def test_a_chain_without_links_pushes_egress_after_commit(chain, memory):
    task = chain([], egress=("next",))
    uuids = enqueue(memory, 3)
    before = dict(memory.bodies)
    task.run_once()
    assert memory.lists["next"] == [u.encode() for u in uuids] and memory.bodies == before


def test_an_ack_made_twice_applies_its_effects_once():
    memory = MemoryQueue()
    memory.enqueue("default", [("0b6b1b6e-8d2a-4c53-9c1e-2f3a4b5c6d7e", b'{"uuid": "x"}')])
    settings = QueueSettings(("default",), 10, 5, 1 << 20, 3, 1.0, 1.0, 30.0)
    claims = memory.claims(settings, "w:1:1")
    batch = claims.claim_batch()
    effects = {batch[0].item_id: [AckEffect("push", "out", batch[0].uuid)]}
    assert claims.ack(batch, effects) == 1 and claims.ack(batch, effects) == 0
    assert memory.lists["out"] == [batch[0].uuid.encode()]

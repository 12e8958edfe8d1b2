"""The store pipeline (conserver/tasks/pipeline.py), one loop turn at a time, on the
in-memory queue: claim, validate, fan out, then ack, defer or dead-letter. The stores are
tests.helpers.faulty_store's, in this process; the same paths through real processes, Redis and
stores are in tests/e2e/test_end_to_end.py."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from conserver.dev.samples import sample_vcon
from conserver.queue.memory import MemoryQueue
from tests.helpers.faulty_store import FaultyStore
from tests.unit.harness import MemoryPipeline, SecondStore, make_context

SECOND = "tests.unit.harness:SecondStore"
ENV = {
    "CONSERVER_STORAGES": SECOND + ",tests.helpers.faulty_store:FaultyStore",
    # A store fault costs its retries in a millisecond each instead of the shipped
    # 200 ms..2 s backoff; the number of retries stays the shipped one.
    "CONSERVER_STORE_RETRY_BACKOFF": "1ms", "CONSERVER_STORE_RETRY_BACKOFF_MAX": "1ms",
}


@pytest.fixture
def memory():
    return MemoryQueue()


@pytest.fixture
def pipeline(memory, opened):
    """``pipeline(**env)``: an opened StorePipeline on ``memory``, with ENV and ``env``."""
    return lambda **env: opened(MemoryPipeline(make_context({**ENV, **env}), memory))


def stores(task) -> tuple[SecondStore, FaultyStore]:
    by_type = {type(s): s for s in task.fanout.sinks}
    return by_type[SecondStore], by_type[FaultyStore]


def enqueue(memory, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = [sample_vcon(rng) for _ in range(n)]
    memory.enqueue("default", [(d["uuid"], orjson.dumps(d)) for d in docs])
    return [d["uuid"] for d in docs]


def later(memory) -> None:
    """Every delayed retry is due (the scheduler's move_due, an hour on)."""
    memory.recovery().move_due(now=time.time() + 3600)


def test_a_batch_goes_to_every_store_then_is_acked(pipeline, memory):
    task = pipeline()
    uuids = enqueue(memory, 5)
    task.run_once()
    second, faulty = stores(task)
    assert set(second.stored) == set(faulty.stored) == set(uuids)
    assert memory.depths(["default"]) == {"lists": {"default": 0}, "processing": 0, "delayed": 0,
                                          "dlq": {"default": 0}, "workers": 1}
    assert task.ctx.processed == 5 and not memory.deliveries


def test_bad_input_is_dead_lettered_alone(pipeline, memory):
    task = pipeline()
    good = enqueue(memory, 2)
    memory.bodies["0b6b1b6e-8d2a-4c53-9c1e-2f3a4b5c6d7e"] = b"{not json"
    memory.push("default", "not-a-uuid", "0b6b1b6e-8d2a-4c53-9c1e-2f3a4b5c6d7e",
                "5a0c7f0e-1b2c-4d3e-8f40-112233445566")  # the last has no body
    task.run_once()
    assert set(stores(task)[1].stored) == set(good)
    assert [e["reason"] for e in memory.dlq_list("default")] == ["bad_uuid", "broken_json", "missing_body"]
    assert len(memory.errors) == 3 and memory.depths(["default"])["processing"] == 0


def test_an_outage_of_one_store_defers_and_the_retry_writes_only_that_store(pipeline, memory):
    task = pipeline()
    (uuid,) = enqueue(memory, 1)
    second, faulty = stores(task)
    faulty.mode = "down"
    task.run_once()
    assert memory.depths(["default"])["delayed"] == 1 and memory.stored[uuid].keys() == {SECOND}
    assert memory.attempts[uuid] == 1 and memory.errors[0]["uuid"] == uuid
    faulty.mode = "ok"
    later(memory)
    calls_before = len(second.calls)
    task.run_once()
    assert uuid in faulty.stored and len(second.calls) == calls_before  # the second store was not written again
    assert memory.depths(["default"])["processing"] == 0 and uuid not in memory.stored


def test_a_permanent_refusal_is_dead_lettered(pipeline, memory):
    task = pipeline()
    enqueue(memory, 2)
    stores(task)[1].mode = "error"
    task.run_once()
    assert [e["reason"] for e in memory.dlq_list("default")] == ["store_rejected", "store_rejected"]


def test_retries_run_out_into_the_dead_letters(pipeline, memory):
    # MAX_RETRIES: the shipped 3. CONSERVER_STORE_RETRIES=0: one store call per delivery, so
    # the store's breaker (5 failed calls) stays closed through the 4 deliveries; an open
    # breaker defers without using up a retry (tests/e2e/test_fanout.py).
    task = pipeline(CONSERVER_STORE_RETRIES="0")
    (uuid,) = enqueue(memory, 1)
    stores(task)[1].mode = "down"
    for _ in range(4):
        task.run_once()
        later(memory)
    (dead,) = memory.dlq_list("default")
    assert (dead["reason"], dead["attempts"], dead["uuid"]) == ("retries_exhausted", 4, uuid)


def test_a_drain_hands_back_what_it_claimed_unstarted(pipeline, memory):
    task = pipeline()
    uuids = enqueue(memory, 3)
    task.ctx.stopping = True
    task.run_once()
    assert memory.lists["default"] == [u.encode() for u in uuids] and not memory.deliveries
    assert not stores(task)[1].calls


def test_a_batch_delivered_again_and_again_is_taken_apart(pipeline, memory):
    task = pipeline()
    uuids = enqueue(memory, 4)
    for u in uuids:  # two earlier deliveries, each ended by a dead worker
        memory.deliveries[u] = 2
    task.run_once()
    assert stores(task)[1].calls == [uuids[:1]] and task.isolating
    assert memory.lists["default"] == [u.encode() for u in uuids[1:]]
    assert [memory.deliveries[u] for u in uuids[1:]] == [2, 2, 2]  # handed back uncounted
    task.run_once()
    assert stores(task)[1].calls == [uuids[:1], uuids[1:2]]


def test_close_gives_back_and_leaves(pipeline, memory):
    task = pipeline()
    enqueue(memory, 2)
    claims = task.queue.claim_batch(0)
    assert len(claims) == 2 and memory.workers == {"unit:1:1"}
    task.close()
    assert len(memory.lists["default"]) == 2 and not memory.workers and not memory.processing

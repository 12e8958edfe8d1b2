"""The in-memory queue (conserver/queue/memory.py) keeps the rules of the Redis one: every
scenario here runs on both, with the same assertions. The unit tests of the pipeline and
the scheduler (tests/unit/) rely on it."""

from __future__ import annotations

import time

import orjson
import pytest

from conserver.queue.admin import QueueAdmin
from conserver.queue.claims import WorkerClaims
from conserver.queue.memory import MemoryQueue
from conserver.queue.recovery import LeaderLock, Recovery
from conserver.queue.protocol import escaped_excerpt
from tests.redis.helpers import settings, uuids_of, vcons


class RedisSide:
    def __init__(self, r):
        self.r = r

    def claims(self, lists=("default",), worker_id="w:1:1", **kw):
        return WorkerClaims(self.r, settings(lists, **kw), worker_id)

    def recovery(self):
        return Recovery(self.r)

    def lock(self, owner, ttl):
        return LeaderLock(self.r, "scheduler", owner, ttl)

    def enqueue(self, list_name, data):
        return QueueAdmin(self.r, [list_name]).enqueue(list_name, data)

    def push(self, list_name, *items):
        self.r.rpush(list_name, *items)

    def depths(self, lists=("default",)):
        return QueueAdmin(self.r, lists).depths()

    def dead(self, list_name="default"):
        return [(e["reason"], e["attempts"], e["deliveries"], e["uuid"], e["inline"])
                for e in QueueAdmin(self.r, [list_name]).dlq_list()]

    def listed(self, list_name="default"):
        return [i.decode() for i in self.r.lrange(list_name, 0, -1)]

    def wait(self, seconds):
        time.sleep(seconds)


class MemorySide(RedisSide):
    def __init__(self):
        self.offset = 0.0
        self.q = MemoryQueue(clock=lambda: time.time() + self.offset)

    def claims(self, lists=("default",), worker_id="w:1:1", **kw):
        return self.q.claims(settings(lists, **kw), worker_id)

    def recovery(self):
        return self.q.recovery()

    def lock(self, owner, ttl):
        return self.q.leader_lock("scheduler", owner, ttl)

    def enqueue(self, list_name, data):
        return self.q.enqueue(list_name, data)

    def push(self, list_name, *items):
        self.q.push(list_name, *items)

    def depths(self, lists=("default",)):
        return self.q.depths(lists)

    def dead(self, list_name="default"):
        return [(e["reason"], e["attempts"], e["deliveries"], e["uuid"], e["inline"])
                for e in self.q.dlq_list(list_name)]

    def listed(self, list_name="default"):
        return [i.decode() for i in self.q.lists[list_name]]

    def wait(self, seconds):
        self.offset += seconds


@pytest.fixture(params=["redis", "memory"])
def side(request):
    if request.param == "memory":
        return MemorySide()
    return RedisSide(request.getfixturevalue("r"))


def test_priority_batches_and_ack(side):
    q = side.claims(("high", "low"), batch_size=3)
    low, high = vcons(4, 1), vcons(2, 2)
    side.enqueue("low", low)
    side.enqueue("high", high)
    first, second, third = q.claim_batch(0), q.claim_batch(0), q.claim_batch(0)
    assert [(c.source, c.uuid) for c in first + second + third] == \
        [("high", u) for u, _ in high] + [("low", u) for u, _ in low]
    assert [len(b) for b in (first, second, third)] == [2, 3, 1] and q.claim_batch(0) == []
    assert all(c.status == "ok" and c.body == b and c.deliveries == 1 for c, (_, b) in zip(second, low))
    assert side.depths(("high", "low"))["processing"] == 6
    assert q.ack(first + second) == 5 and q.ack(first) == 0
    assert side.depths(("high", "low"))["processing"] == 1


def test_batch_cut_at_max_batch_bytes(side):
    q = side.claims(batch_size=50, max_batch_bytes=7000)
    side.enqueue("default", [(f"u{i}", b"x" * 3000) for i in range(5)])
    assert [len(q.claim_batch(0)) for _ in range(3)] == [3, 2, 0]


def test_item_kinds(side):
    q = side.claims(max_vcon_bytes=2048)
    side.enqueue("default", [("big", b"x" * 5000), ("fine", b"{}")])
    inline = orjson.dumps({"uuid": "in-line", "vcon": "0.0.1"})
    side.push("default", inline, "gone", "../../etc/passwd")
    big, fine, c_inline, gone, unsafe = q.claim_batch(0)
    assert [c.status for c in (big, fine, c_inline, gone, unsafe)] == ["too_large", "ok", "inline", "missing", "missing"]
    assert (big.size, big.body, fine.body) == (5000, None, b"{}")
    assert c_inline.uuid == "in-line" and c_inline.item_id.startswith("sha1:") and c_inline.body is None
    assert unsafe.uuid == "../../etc/passwd" and unsafe.item_id.startswith("sha1:")
    assert q.dead_letter(unsafe, "unsafe_uuid", ValueError("no"), attempts=2)
    assert q.dead_letter(c_inline, "bad", "x") and not q.dead_letter(c_inline, "bad", "x")
    assert side.dead() == [("unsafe_uuid", 2, 1, "../../etc/passwd", False), ("bad", 0, 1, "in-line", True)]


def test_poison_after_max_deliveries(side):
    q = side.claims(max_deliveries=2)
    side.enqueue("default", vcons(1))
    side.push("default", "behind")
    for n in (1, 2):
        (c,) = q.claim_batch(0, max_items=1)
        assert c.deliveries == n
        side.recovery().requeue_worker(q.worker_id)  # it "crashed" holding it
    assert uuids_of(q.claim_batch(0)) == ["behind"]  # the poison one went to the dead letters
    assert side.dead() == [("poison", 0, 3, c.uuid, False)]


def test_defer_marks_backoff_and_retries_exhausted(side):
    q = side.claims(max_retries=1, retry_backoff=10.0, retry_backoff_max=15.0)
    side.enqueue("default", vcons(1))
    (c,) = q.claim_batch(0)
    q.mark_stored({c.uuid: ["postgres"]})
    assert q.defer(c, RuntimeError("s3 down")) is True
    assert side.depths()["delayed"] == 1 and side.depths()["processing"] == 0
    assert side.recovery().move_due() == 0  # 5-10 s away
    assert side.recovery().move_due(now=time.time() + 11) == 1
    (again,) = q.claim_batch(0)
    assert (again.attempts, again.deliveries, again.done) == (1, 1, frozenset({"postgres"}))
    assert q.defer(again, RuntimeError("still down")) is False
    assert side.dead() == [("retries_exhausted", 2, 1, c.uuid, False)]


def test_uncounted_defer_and_unstarted_give_back(side):
    q = side.claims(max_retries=1, max_deliveries=2, batch_size=3)
    side.enqueue("default", vcons(4))
    batch = q.claim_batch(0)
    assert q.requeue_unstarted(batch[1:]) == 2 and q.requeue_unstarted(batch[1:]) == 0
    assert side.listed()[:2] == uuids_of(batch[1:]) and len(side.listed()) == 3  # at the head, in order
    for _ in range(3):  # more than max_retries and max_deliveries
        assert q.defer(batch[0], "breaker open", count_attempt=False, delay=0) is True
        assert side.recovery().move_due() == 1
        batch = q.claim_batch(0, max_items=1)
        assert batch[0].deliveries == 1 and batch[0].attempts == 0
    assert [c.deliveries for c in q.claim_batch(0)] == [1, 1, 1]  # a give-back is no delivery


def test_sweep_after_heartbeat_expiry(side):
    dead = side.claims(worker_id="dead:1:1", heartbeat_ttl=0.5, batch_size=2)
    alive = side.claims(worker_id="alive:1:1", heartbeat_ttl=30, batch_size=2)
    side.enqueue("default", vcons(4))
    mine, theirs = dead.claim_batch(0), alive.claim_batch(0)
    sweep = side.recovery()
    assert sweep.sweep_orphans() == 0
    side.wait(0.6)
    alive.beat()
    assert sweep.sweep_orphans(scan=True) == 2 and sweep.sweep_orphans() == 0
    assert side.listed() == uuids_of(mine) and side.depths()["processing"] == len(theirs)
    assert alive.retire() == 2 and side.depths()["workers"] == 0


def test_weighted_choice(side):
    q = side.claims(("a", "b", "c"), batch_size=1, weights={"a": 3, "b": 2, "c": 1})
    for name in ("a", "b", "c"):
        side.push(name, *[f"{name}{i}" for i in range(12)])
    sources = "".join(q.claim_batch(0)[0].source for _ in range(12))
    assert sources == "abacba" * 2  # smooth weighted round robin (nginx), 3:2:1


def test_leader_lock(side):
    a, b = side.lock("a", 0.5), side.lock("b", 0.5)
    assert a.acquire() and not b.acquire() and a.acquire() and a.holder() == "a"
    assert not b.release() and a.holder() == "a"
    side.wait(0.6)
    assert a.holder() is None and b.acquire() and not a.acquire()
    assert b.release() and a.acquire()


def test_copies_of_an_item_are_one_delivery(side):
    """A producer pushing a uuid again: copies in one batch are one claim, a copy of an item in
    flight waits (merged into one delayed entry) until that claim is resolved, and neither
    counts as a delivery, however many there are; a copy of one back from a dead worker counts."""
    q = side.claims(max_deliveries=2, batch_size=50)
    data = vcons(3)
    for _ in range(8):
        side.enqueue("default", data)
    batch = q.claim_batch(0)
    assert uuids_of(batch) == [u for u, _ in data] and [c.deliveries for c in batch] == [1, 1, 1]
    assert side.listed() == [] and side.depths()["processing"] == 3
    for _ in range(8):  # pushed again while in flight
        side.enqueue("default", data)
    assert q.claim_batch(0) == [] and side.listed() == []
    assert side.depths()["delayed"] == 3 and side.dead() == []
    assert q.ack(batch) == 3
    assert side.recovery().move_due(now=time.time() + 5) == 3
    again = q.claim_batch(0)
    assert sorted(uuids_of(again)) == sorted(u for u, _ in data) and [c.deliveries for c in again] == [1, 1, 1]
    side.recovery().requeue_worker(q.worker_id)  # it "crashed" holding them
    side.enqueue("default", data[:1])
    q.beat()
    back = q.claim_batch(0)
    assert [c.deliveries for c in back] == [2, 2, 2] and len(side.listed()) == 0  # the copy went with it
    side.recovery().requeue_worker(q.worker_id)
    q.beat()
    assert q.claim_batch(0) == [] and [d[0] for d in side.dead()] == ["poison"] * 3


def test_dead_letter_metadata_of_untrusted_items_is_bounded(side):
    """Its id, its uuid only when short, and a short excerpt escaped byte by byte: the Lua of the
    scripts and protocol.escaped_excerpt write the same."""
    q = side.claims(batch_size=10)
    every_byte = bytes(range(256)) * 40
    inline = b'{"uuid": "' + b"u" * 200 + b'", "x": "\\u0007\xc3\xa9"}'
    side.push("default", every_byte, b"a\\x41\n\x00", inline, "../../etc/passwd")
    for c in q.claim_batch(0):
        assert q.dead_letter(c, "bad", "x")
    dead = side.dead()
    assert [d[3] for d in dead] == ["", "a\\\\x41\\x0a\\x00", "", "../../etc/passwd"]
    expected = [escaped_excerpt(i) for i in (every_byte, b"a\\x41\n\x00", inline, b"../../etc/passwd")]
    entries = side.q.dlq_list("default") if isinstance(side, MemorySide) else QueueAdmin(side.r, ["default"]).dlq_list()
    assert [e["excerpt"] for e in entries] == expected
    assert expected[0].startswith("\\x00\\x01") and expected[0].endswith("... (10240 bytes)") and len(expected[0]) < 300


def test_fencing_tokens_grow_and_the_lease_check_sees_a_sweep(side):
    """Every later claim has a larger token, whoever makes it; a claim a sweep took away from a
    stalled worker is no longer held, and its next claim has a larger token than the stale one."""
    stalled = side.claims(worker_id="stalled:1:1", heartbeat_ttl=0.5, batch_size=2)
    other = side.claims(worker_id="other:1:1", heartbeat_ttl=30, batch_size=2)
    side.enqueue("default", vcons(4))
    first, second = stalled.claim_batch(0), other.claim_batch(0)
    tokens = [c.fence for c in first + second]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4 and tokens[0] > 0
    assert stalled.still_holds(first) == [True, True] and other.still_holds(first) == [False, False]
    side.wait(1.0)  # the stalled worker's heartbeat expires
    assert side.recovery().sweep_orphans() == 2
    assert stalled.still_holds(first) == [False, False]
    other.beat()
    again = other.claim_batch(0)
    assert uuids_of(again) == uuids_of(first) and min(c.fence for c in again) > max(tokens)

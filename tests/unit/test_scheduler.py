"""The scheduler task (conserver/tasks/scheduler.py), one loop turn at a time, on the
in-memory queue: only the holder of the leader lock moves due retries and sweeps the
claims of dead workers; a standby takes over when the lock is released. The same with
real processes and Redis: tests/process/test_pools.py."""

from __future__ import annotations

import time

import pytest

from conserver.queue.memory import MemoryQueue
from conserver.queue.protocol import QueueSettings
from tests.unit.harness import MemoryScheduler, make_context

# Each loop turn waits one SCHEDULER_INTERVAL; 100 ms (its lower bound) keeps these few turns short.
ENV = {"SCHEDULER_INTERVAL": "100ms"}


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def memory(clock):
    return MemoryQueue(clock=clock)


@pytest.fixture
def scheduler(memory, opened):
    """``scheduler(owner)``: an opened SchedulerTask on ``memory``, its lock owned by ``owner``."""
    return lambda owner: opened(MemoryScheduler(make_context(ENV, role="scheduler"), memory, owner))


def dead_worker_with_a_retry(memory, clock, uuids=("u1", "u2")) -> None:
    """A worker claimed two vCons, deferred one, and died; a minute later both are due."""
    memory.enqueue("default", [(u, b"{}") for u in uuids])
    worker = memory.claims(QueueSettings.from_config(make_context({}).config), "dead:1:1")
    first, _ = worker.claim_batch(0)
    assert worker.defer(first, "store down", delay=1.0)
    clock.offset += 60  # past the retry and past the worker's heartbeat (30 s)


def test_only_the_leader_moves_due_retries_and_sweeps(scheduler, memory, clock):
    dead_worker_with_a_retry(memory, clock)
    leader, standby = scheduler("sched-a"), scheduler("sched-b")
    assert leader.lock.acquire()  # sched-a takes the lock first
    standby.run_once()
    assert memory.depths(["default"])["delayed"] == 1 and memory.depths(["default"])["processing"] == 1
    leader.run_once()
    assert leader.leader and memory.lists["default"] == [b"u2", b"u1"]  # each put at the head
    assert memory.depths(["default"])["delayed"] == 0 and not memory.processing and not memory.workers


def test_a_standby_takes_over_when_the_leader_lets_go(scheduler, memory, clock):
    leader, standby = scheduler("sched-a"), scheduler("sched-b")
    leader.run_once()
    standby.run_once()
    assert leader.leader and not standby.leader and memory.leases["scheduler"][0] == "sched-a"
    dead_worker_with_a_retry(memory, clock)
    standby.run_once()  # sched-a renews every turn, but its last turn was 60 s ago...
    assert standby.leader and memory.lists["default"] == [b"u2", b"u1"]  # ...so the lease expired
    leader.run_once()
    assert not leader.leader  # the lock is sched-b's now


def test_closing_releases_the_lock(scheduler, memory):
    leader = scheduler("sched-a")
    leader.run_once()
    assert memory.leases["scheduler"][0] == "sched-a"
    leader.close()
    assert "scheduler" not in memory.leases
    standby = scheduler("sched-b")
    standby.run_once()
    assert standby.leader

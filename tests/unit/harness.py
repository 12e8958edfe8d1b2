"""Tasks run in this process on the in-memory queue: no Redis, no worker process.

A task's ``open_queue`` is the seam: the subclasses here take their queue from a
:class:`MemoryQueue` the test holds. ``REDIS_URL`` points at a closed port, so a task that
reached Redis anyway would fail, not quietly use some other server.
"""

from __future__ import annotations

import os

from conserver.config import config_from_mapping
from conserver.process.board import Board
from conserver.process.worker import WorkerContext, WorkerSpec
from conserver.queue.memory import MemoryQueue
from conserver.queue.protocol import QueueSettings
from conserver.tasks.pipeline import StorePipeline
from conserver.tasks.scheduler import SchedulerTask
from tests.helpers.faulty_store import FaultyStore

NO_REDIS = {"REDIS_URL": "redis://127.0.0.1:1/0"}


class QuietContext(WorkerContext):
    """A worker context that leaves the process title alone: this process is pytest."""

    def _title(self, what: str) -> None:
        pass


def make_context(env: dict[str, str], role: str = "worker") -> QuietContext:
    cfg = config_from_mapping({**NO_REDIS, **env})
    spec = WorkerSpec(cfg, cfg.pools[0], 1, role, "", os.getpid(), 0)
    board = Board()  # in-process: nothing shared, nothing forked
    return QuietContext(spec, board.slots[0], board)


class MemoryPipeline(StorePipeline):
    def __init__(self, ctx: WorkerContext, memory: MemoryQueue, worker_id: str = "unit:1:1"):
        super().__init__(ctx)
        self.memory, self.worker_id = memory, worker_id

    def open_queue(self):
        return self.memory.claims(QueueSettings.from_config(self.ctx.config, self.ctx.pool), self.worker_id)


class MemoryScheduler(SchedulerTask):
    def __init__(self, ctx: WorkerContext, memory: MemoryQueue, owner: str):
        super().__init__(ctx)
        self.memory, self.owner = memory, owner

    def open_queue(self):
        ttl = max(5.0, 5 * self.ctx.config.scheduler_interval)
        return self.memory.recovery(), self.memory.leader_lock("scheduler", self.owner, ttl)


class SecondStore(FaultyStore):
    """A second store that records its calls, beside tests.helpers.faulty_store:FaultyStore."""

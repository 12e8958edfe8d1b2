"""The process table: every child the supervisor started, and the board slot it holds.

gunicorn keeps ``{pid: Worker}`` on its arbiter; here it is its own small room, so the
supervisor's loop reads as decisions (start, retire, restart, give up) while this module
does the bookkeeping: a free board slot for each new process, a spec it can be started
from (pickled for spawn and forkserver), reaping, and handing the slot back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

from conserver.config import Config, PoolConfig
from conserver.process.board import EMPTY, STARTING, Board, SlotPool, WorkerSlot
from conserver.process.environment import ChildProcess, Environment
from conserver.process.worker import SERVICE_TASKS, WorkerSpec, worker_main

REAP_TIMEOUT = 5.0  # how long a blocking reap waits for processes that were sent SIGKILL


@dataclass
class WorkerHandle:
    """The supervisor's record of one child process."""

    process: ChildProcess
    spec: WorkerSpec
    started: float  # monotonic
    retiring: bool = False  # we asked it to stop: its exit is not a crash
    kill_at: float | None = None  # SIGKILL deadline once we sent SIGTERM
    pid: int = field(init=False)

    def __post_init__(self) -> None:
        self.pid = self.process.pid

    @property
    def key(self) -> tuple[str, int]:
        """Its worker slot: (pool, number). A replacement has the same key."""
        return (self.spec.pool.name, self.spec.number)

    @property
    def who(self) -> str:
        """How log lines name it: ``worker 2 [default]``."""
        return f"{self.spec.role} {self.spec.number} [{self.spec.pool.name}]"


class ProcessTable:
    def __init__(self, env: Environment, board: Board):
        self.env = env
        self.board = board
        self.free_slots = SlotPool()
        self.by_pid: dict[int, WorkerHandle] = {}
        self.processed_by_dead = 0  # vCons finished by processes no longer in the table

    def __len__(self) -> int:
        return len(self.by_pid)

    def __iter__(self) -> Iterator[WorkerHandle]:
        return iter(list(self.by_pid.values()))

    def slot(self, h: WorkerHandle) -> WorkerSlot:
        return self.board.slots[h.spec.slot_index]

    def booting(self, h: WorkerHandle) -> bool:
        return self.slot(h).state == STARTING

    def start(self, cfg: Config, pool: PoolConfig, number: int, generation: int) -> WorkerHandle:
        """Start process ``number`` of ``pool``; OSError when the system refuses (no slot is kept)."""
        role = pool.name if pool.name in SERVICE_TASKS else "worker"
        slot_index = self.free_slots.take()
        slot = self.board.slots[slot_index]
        slot.reset(role, pool.name, number, self.env.wall_time())
        spec = WorkerSpec(config=cfg, pool=pool, number=number, role=role,
                          task=SERVICE_TASKS.get(role, cfg.pipeline),
                          master_pid=os.getpid(), slot_index=slot_index, generation=generation)
        process = self.env.create_process(worker_main, (spec, self.board), f"conserver-{pool.name}-{number}")
        try:
            process.start()
        except OSError:
            slot.state = EMPTY
            self.free_slots.give_back(slot_index)
            raise
        handle = WorkerHandle(process, spec, self.env.monotonic())
        self.by_pid[handle.pid] = handle
        return handle

    def reap(self, block: bool = False) -> list[WorkerHandle]:
        """Take the ended processes out of the table (``block``: wait for them a while
        first); each still holds its slot, for the caller to read, until :meth:`release`."""
        deadline = self.env.monotonic() + REAP_TIMEOUT
        ended = []
        for h in self:
            if block:
                h.process.join(max(0.0, deadline - self.env.monotonic()))
            if not h.process.is_alive():
                del self.by_pid[h.pid]
                ended.append(h)
        return ended

    def release(self, h: WorkerHandle) -> None:
        slot = self.slot(h)
        self.processed_by_dead += slot.processed
        self.board.processed_by_dead = self.processed_by_dead
        slot.state = EMPTY
        h.process.close()
        self.free_slots.give_back(h.spec.slot_index)

    def signal(self, h: WorkerHandle, sig: int) -> None:
        self.env.send_signal(h.pid, sig)

    def signal_all(self, sig: int) -> None:
        for h in self:
            self.signal(h, sig)

    def processed(self) -> int:
        """vCons finished by every process this supervisor started."""
        return self.processed_by_dead + sum(self.slot(h).processed for h in self)

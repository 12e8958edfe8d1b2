"""Autoscaling inside one instance (seed 003's dynamic scaling, Celery's ``--autoscale``).

The monitor process looks once a second at the backlog of the first pool's lists and at
how busy its workers were, decides how many workers that pool should have, and writes
the number on the shared board; the supervisor, which owns the processes, follows it.
So the main process still talks to no Redis and runs no thread.

Up: one worker at a time while the backlog grows or every worker is busy, and only if
the machine has CPU and memory to spare. Down: one at a time, once the lists are empty
and the workers mostly idle for a whole cool-down.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("conserver.autoscale")


@dataclass
class Sample:
    at: float
    backlog: int
    utilization: float  # mean share of time the pool's workers were busy since the last sample


@dataclass
class Autoscaler:
    low: int
    high: int
    worker_memory_mb: int
    cooldown: float = 30.0  # seconds of quiet before retiring a worker
    up_every: float = 3.0  # at most one worker added per this many seconds
    cpu_idle: Callable[[], float] = field(default=lambda: 100.0)  # percent
    mem_available_mb: Callable[[], float] = field(default=lambda: float("inf"))
    clock: Callable[[], float] = time.monotonic
    samples: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10))
    last_up: float = float("-inf")
    quiet_since: float | None = None

    def decide(self, current: int, backlog: int, utilization: float) -> tuple[int, str]:
        """The number of workers wanted now, and why (empty when unchanged)."""
        now = self.clock()
        self.samples.append(Sample(now, backlog, utilization))
        current = max(self.low, min(self.high, current))
        growing = len(self.samples) >= 3 and self.samples[-1].backlog > self.samples[-3].backlog > 0
        saturated = backlog > 0 and utilization >= 0.8
        if (growing or saturated) and current < self.high and now - self.last_up >= self.up_every:
            self.quiet_since = None
            idle, mem = self.cpu_idle(), self.mem_available_mb()
            if idle < 15.0:
                return current, ""  # no CPU to spare: another worker would only share it
            if mem < 1.5 * self.worker_memory_mb:
                return current, ""
            self.last_up = now
            why = "backlog growing" if growing else "every worker busy"
            return current + 1, f"{why} (backlog {backlog}, utilization {utilization:.0%}, cpu idle {idle:.0f}%)"
        if backlog == 0 and utilization < 0.2:
            if self.quiet_since is None:
                self.quiet_since = now
            elif now - self.quiet_since >= self.cooldown and current > self.low:
                self.quiet_since = now  # one at a time, each after a full cool-down
                return current - 1, f"lists empty and workers {utilization:.0%} busy for {self.cooldown:g}s"
        else:
            self.quiet_since = None
        return current, ""

"""What the supervisor wants running: the pools, and how many processes each one.

The configuration's worker pools, plus one scheduler and one monitor process when the
configuration asks for them. SIGTTIN/SIGTTOU and the autoscaler change the number of the
first worker pool; SIGHUP replaces the whole table. The supervisor compares this with its
process table every loop turn (``manage_workers``) and starts or retires the difference.
"""

from __future__ import annotations

import dataclasses
import logging

from conserver.config import Config, PoolConfig
from conserver.process.board import Board
from conserver.process.worker import SERVICE_TASKS

log = logging.getLogger("conserver.process.pools")

SCHEDULER_POOL = PoolConfig("scheduler", 1, (), ())
MONITOR_POOL = PoolConfig("monitor", 1, (), ())
MAX_POOL_WORKERS = 256


class PoolTargets:
    def __init__(self, board: Board):
        self.board = board  # target_workers is written here, for the monitor and the status page
        self.pools: dict[str, PoolConfig] = {}
        self.targets: dict[str, int] = {}

    def apply(self, cfg: Config) -> None:
        self.pools = {p.name: p for p in cfg.pools}
        self.targets = {p.name: p.workers for p in cfg.pools}
        services = [SCHEDULER_POOL] if cfg.enable_scheduler else []
        if cfg.metrics_port or cfg.metrics_log_interval or cfg.autoscale:
            services.append(MONITOR_POOL)
        for pool in services:
            self.pools[pool.name] = pool
            self.targets[pool.name] = 1
        self.board.target_workers = sum(t for p, t in self.targets.items() if p not in SERVICE_TASKS)

    def wanted(self) -> int:
        """Processes wanted in all, services included."""
        return sum(self.targets.values())

    def first_worker_pool(self) -> str | None:
        """The pool TTIN/TTOU and autoscaling act on (not the scheduler or monitor)."""
        return next(iter(p for p in self.pools if p not in SERVICE_TASKS), None)

    def resize(self, delta: int, why: str) -> None:
        pool = self.first_worker_pool()
        if pool is None:
            return
        new = self.targets[pool] + delta
        if not 1 <= new <= MAX_POOL_WORKERS:
            log.warning("%s: pool %s stays at %d workers (allowed 1..%d)", why, pool, self.targets[pool],
                        MAX_POOL_WORKERS)
            return
        self.set_target(pool, new)
        log.info("%s: pool %s now wants %d workers", why, pool, new)

    def follow_autoscale(self, cfg: Config) -> None:
        """The monitor decided how many workers the first pool needs; we own the processes."""
        want = self.board.autoscale_target
        pool = self.first_worker_pool()
        if not cfg.autoscale or not want or pool is None:
            return
        low, high = cfg.autoscale
        want = max(low, min(high, want))
        if want != self.targets[pool]:
            log.info("autoscale: pool %s %d -> %d workers", pool, self.targets[pool], want)
            self.set_target(pool, want)

    def set_target(self, name: str, workers: int) -> None:
        self.board.target_workers += workers - self.targets[name]
        self.targets[name] = workers
        self.pools[name] = dataclasses.replace(self.pools[name], workers=workers)

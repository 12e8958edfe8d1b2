"""The scheduler task: under a leader lock, move due retries back and sweep orphaned claims.

Exactly one scheduler in a deployment acts at a time (the lock); the others wait as
hot standbys, so a host that dies takes no duty with it.
"""

from __future__ import annotations

import logging
import time

from conserver.process.worker import WorkerTask
from conserver.queue.client import REDIS_DOWN, make_redis, make_worker_id
from conserver.queue.outage import OutageLog
from conserver.queue.recovery import LeaderLock, Recovery

log = logging.getLogger("conserver.tasks.scheduler")


class SchedulerTask(WorkerTask):
    """Where the leader lock is held: move due retries back, sweep orphaned claims."""

    SWEEP_EVERY = 5.0
    SCAN_EVERY = 300.0  # SCAN walks the whole keyspace: rarely

    def open(self) -> None:
        cfg = self.ctx.config
        self.redis = make_redis(cfg, client_name="conserver-scheduler")
        self.recovery, self.lock = self.open_queue()
        self.interval = cfg.scheduler_interval
        self.next_sweep = self.next_scan = 0.0  # a sweep (with a scan) also runs at start
        self.leader = False
        self.outage = OutageLog(log)

    def open_queue(self) -> tuple[Recovery, LeaderLock]:
        """What the scheduler acts with, and the lock that says when. The one seam where a
        unit test puts the in-memory queue (conserver.queue.memory) instead."""
        cfg = self.ctx.config
        lock = LeaderLock(self.redis, "scheduler", owner=make_worker_id(), ttl=max(5.0, 5 * cfg.scheduler_interval))
        return Recovery(self.redis, cfg.ingress_lists), lock

    def run_once(self) -> None:
        try:
            leader = self.lock.acquire()
            if leader != self.leader:
                self.leader = leader
                log.info("scheduler %s the leader", "is now" if leader else "is no longer")
            if leader:
                moved = self.recovery.move_due()
                if moved:
                    log.info("moved %d due retries back to their lists", moved)
                now = time.monotonic()
                if now >= self.next_sweep:
                    self.next_sweep = now + self.SWEEP_EVERY
                    scan = now >= self.next_scan
                    if scan:
                        self.next_scan = now + self.SCAN_EVERY
                    self.recovery.sweep_orphans(scan=scan)
            self.outage.ok()
        except REDIS_DOWN as exc:
            self.outage.failed("the scheduler's turn", exc)
        self.ctx.heartbeat()
        deadline = time.monotonic() + self.interval
        while not self.ctx.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, self.interval))

    def close(self) -> None:
        try:
            self.lock.release()
        except REDIS_DOWN:
            pass
        self.redis.close()

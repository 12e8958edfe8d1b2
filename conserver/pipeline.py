"""The default worker tasks: the store pipeline and the scheduler (filled in by the queue issue)."""
from __future__ import annotations

import time

from conserver.worker import WorkerTask


class StorePipeline(WorkerTask):
    def run_once(self) -> None:
        time.sleep(min(self.ctx.config.tick_interval, 1.0))


class SchedulerTask(WorkerTask):
    def run_once(self) -> None:
        time.sleep(min(self.ctx.config.scheduler_interval, 1.0))

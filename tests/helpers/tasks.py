"""Worker tasks for supervisor tests: real processes doing controllable things.

They read their knobs from the environment the test gives ``conserver run``.
"""
from __future__ import annotations

import os
import time

from conserver.process.worker import WorkerTask


class IdleTask(WorkerTask):
    """Does nothing, but like a real task returns often so drains are seen at once."""

    def run_once(self) -> None:
        time.sleep(0.05)


class SlowTask(WorkerTask):
    """Works on one item for TEST_SLOW_SECONDS, then writes TEST_DONE_DIR/<pid> and idles."""

    def run_once(self) -> None:
        done = os.path.join(os.environ["TEST_DONE_DIR"], str(os.getpid()))
        if os.path.exists(done):
            time.sleep(0.05)
            return
        self.ctx.busy("slow-item")
        time.sleep(float(os.environ.get("TEST_SLOW_SECONDS", "2")))
        with open(done, "w") as fh:
            fh.write("finished")
        self.ctx.idle(processed=1)


class HangTask(WorkerTask):
    """Gets stuck on one item and ignores the drain: JOB_TIMEOUT must end it."""

    def run_once(self) -> None:
        self.ctx.busy("stuck-item")
        while True:
            time.sleep(0.1)


class CrashAtStartTask(WorkerTask):
    def open(self) -> None:
        raise RuntimeError("cannot start: simulated boot failure")

    def run_once(self) -> None:  # pragma: no cover - never reached
        pass


class SilentTask(WorkerTask):
    """Idle, then stuck outside any batch: its heartbeat stops (a deadlock in idle code)."""

    def run_once(self) -> None:
        while True:
            time.sleep(0.1)

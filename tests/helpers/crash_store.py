"""A store that crashes its own worker process when a batch holds a "poison" uuid.

CONSERVER_STORE_CRASH_UUIDS: comma list of uuids that crash the worker, or * for every batch
(a bug in the code, not in the data); everything else is accepted (use it beside a real
store, which keeps the data).
CONSERVER_STORE_CRASH_SIGNAL: how it dies, SEGV by default (a segfault in a C extension:
an error of the worker's own, which counts towards the crash-loop limit); KILL plays the
OOM killer ending it from outside (replaced at once, never counted).
"""
from __future__ import annotations

import os
import resource
import signal
from typing import Sequence

from conserver.storage import BatchResult, Sink


class CrashStore(Sink):
    name = "crash"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.poison = {u for u in config.extra.get("CONSERVER_STORE_CRASH_UUIDS", "").split(",") if u}
        self.signal = signal.Signals["SIG" + config.extra.get("CONSERVER_STORE_CRASH_SIGNAL", "SEGV").upper()]

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write_batch(self, vcons: Sequence) -> BatchResult:
        if "*" in self.poison or any(v.uuid in self.poison for v in vcons):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test's folder
            os.kill(os.getpid(), self.signal)
        return {v.uuid: None for v in vcons}

    def fetch(self, uuid: str):
        return None

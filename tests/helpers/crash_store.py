"""A store that kills its own worker process (SIGKILL) when a batch holds a "poison" uuid.

CONSERVER_STORE_CRASH_UUIDS: comma list of uuids that crash the worker, or * for every batch
(a bug in the code, not in the data); everything else is accepted (use it beside a real
store, which keeps the data).
"""
from __future__ import annotations

import os
import signal
from typing import Sequence

from conserver.storage import BatchResult, Sink


class CrashStore(Sink):
    name = "crash"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.poison = {u for u in config.extra.get("CONSERVER_STORE_CRASH_UUIDS", "").split(",") if u}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write_batch(self, vcons: Sequence) -> BatchResult:
        if "*" in self.poison or any(v.uuid in self.poison for v in vcons):
            os.kill(os.getpid(), signal.SIGKILL)  # like a segfault in a C extension
        return {v.uuid: None for v in vcons}

    def fetch(self, uuid: str):
        return None

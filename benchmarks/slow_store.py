"""A store that takes its time: ``write_batch`` sleeps, then accepts every vCon.

For the lifecycle benchmark, which needs a worker that holds a claimed batch::

    CONSERVER_STORAGES=benchmarks.slow_store:SlowStore
    CONSERVER_STORE_SLOW_SECONDS=2.5     # how long each write_batch sleeps (default 1)

(Every ``CONSERVER_STORE_*`` variable reaches a custom store through ``config.extra``.)
Keep CONSERVER_STORE_TIMEOUT and JOB_TIMEOUT above the sleep, or the fan-out and the
supervisor cut the batch short.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

from conserver.storage.base import BatchResult, Sink

if TYPE_CHECKING:
    from conserver.config import Config
    from conserver.vcon import Vcon

SECONDS_VAR = "CONSERVER_STORE_SLOW_SECONDS"


class SlowStore(Sink):
    def __init__(self, config: "Config") -> None:
        super().__init__(config)
        extra = config.extra
        self.seconds = float(extra.get(SECONDS_VAR, "1") or 1)

    def write_batch(self, vcons: Sequence["Vcon"]) -> BatchResult:
        time.sleep(self.seconds)
        return dict.fromkeys((v.uuid for v in vcons), None)

    def fetch(self, uuid: str) -> dict | None:
        return None

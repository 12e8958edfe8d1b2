"""A custom store that writes down every vCon it stores: one JSON line per vCon,
``{"uuid", "subject", "pid"}``, appended to the file ``CONSERVER_STORE_LEDGER_FILE``.

For tests that ask which vCons reached a store, how often, and which body (the subject says
which version a producer wrote). Load it as ``CONSERVER_STORAGES=tests.helpers.ledger_store:LedgerStore``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Sequence

from conserver.storage import BatchResult, Sink


class LedgerStore(Sink):
    name = "ledger"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.path = config.extra["CONSERVER_STORE_LEDGER_FILE"]
        self._lock = threading.Lock()

    def write_batch(self, vcons: Sequence) -> BatchResult:
        lines = "".join(json.dumps({"uuid": v.uuid, "subject": v.subject, "pid": os.getpid()}) + "\n" for v in vcons)
        with self._lock, open(self.path, "a") as fh:  # one write: lines of two workers never mix
            fh.write(lines)
        return dict.fromkeys((v.uuid for v in vcons), None)

    def fetch(self, uuid: str) -> dict | None:
        return None


def read_ledger(path: str | os.PathLike) -> list[dict]:
    """Every line written so far, in order."""
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def stored_counts(path: str | os.PathLike) -> Counter:
    """uuid -> how many times it was stored."""
    return Counter(e["uuid"] for e in read_ledger(path))

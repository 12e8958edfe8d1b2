"""A custom store that fails on command, for fault-injection tests.

Load it like any custom store: ``CONSERVER_STORAGES=postgres,tests.helpers.faulty_store:FaultyStore``.

In-process tests change ``mode`` on the instance (``fanout.sinks``). A store in another
process (a real worker) is driven by settings, read from ``config.extra``:

    CONSERVER_STORE_FAULTY_MODE      the mode at start (default ok)
    CONSERVER_STORE_FAULTY_UUIDS     comma list: per-item failures only for these uuids
    CONSERVER_STORE_FAULTY_CONTROL   a file; when it exists, its content is the mode,
                                     read again on every call (flip a running worker)
    CONSERVER_STORE_FAULTY_LOG       a file; every call appends one JSON line
                                     {"pid", "mode", "uuids", "failed"}

Modes:
    ok                 stores everything
    down               raises ConnectionRefusedError for the whole batch (transient)
    error              raises ValueError for the whole batch (permanent)
    transient          per-item transient StoreError (for the UUIDS, or all)
    permanent          per-item permanent StoreError (for the UUIDS, or all)
    flaky:N            the next N calls raise ConnectionRefusedError, then ok
    slow:SECONDS       sleeps, then stores
    echo               per-item permanent StoreError that quotes the vCon's subject, as a
                       database quoting the value it refused (for the log-escaping tests)
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Sequence

from conserver.storage import BatchResult, Sink, StoreError


class FaultyStore(Sink):
    name = "faulty"

    def __init__(self, config) -> None:
        super().__init__(config)
        extra = config.extra
        self.mode = extra.get("CONSERVER_STORE_FAULTY_MODE", "ok")
        self.fail_uuids = {u for u in extra.get("CONSERVER_STORE_FAULTY_UUIDS", "").split(",") if u}
        self.control = extra.get("CONSERVER_STORE_FAULTY_CONTROL", "")
        self.log_path = extra.get("CONSERVER_STORE_FAULTY_LOG", "")
        self.calls: list[list[str]] = []  # the uuids of every call, in order
        self.stored: dict[str, bytes] = {}  # uuid -> raw, what a fetch returns
        self.opened = self.closed = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def _current_mode(self) -> str:
        if self.control:
            try:
                with open(self.control) as fh:
                    return fh.read().strip() or "ok"
            except FileNotFoundError:
                pass
        return self.mode

    def write_batch(self, vcons: Sequence) -> BatchResult:
        mode = self._current_mode()
        uuids = [v.uuid for v in vcons]
        with self._lock:
            self.calls.append(uuids)
        failed: list[str] = []
        try:
            kind, _, arg = mode.partition(":")
            if kind == "down":
                failed = uuids
                raise ConnectionRefusedError(f"faulty store is down ({len(uuids)} vCons)")
            if kind == "error":
                failed = uuids
                raise ValueError("faulty store refuses the batch")
            if kind == "flaky":
                left = int(arg or 1)
                if left > 0:
                    self.mode = f"flaky:{left - 1}"
                    failed = uuids
                    raise ConnectionRefusedError("faulty store is flaky")
            if kind == "slow":
                time.sleep(float(arg or 1))
            result: BatchResult = {}
            for v in vcons:
                targeted = not self.fail_uuids or v.uuid in self.fail_uuids
                if kind == "echo" and targeted:
                    result[v.uuid] = StoreError(f"faulty store: invalid value {v.subject!s}", transient=False)
                    failed.append(v.uuid)
                elif kind in ("transient", "permanent") and targeted:
                    result[v.uuid] = StoreError(f"faulty store: {kind} failure", transient=kind == "transient")
                    failed.append(v.uuid)
                else:
                    with self._lock:
                        self.stored[v.uuid] = v.raw
                    result[v.uuid] = None
            return result
        finally:
            if self.log_path:
                line = json.dumps({"pid": os.getpid(), "mode": mode, "uuids": uuids, "failed": failed})
                with open(self.log_path, "a") as fh:
                    fh.write(line + "\n")

    def fetch(self, uuid: str) -> dict | None:
        raw = self.stored.get(uuid)
        return None if raw is None else json.loads(raw)

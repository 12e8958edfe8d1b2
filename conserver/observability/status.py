"""The status report and its page: what ``/status``, ``/status.json`` and ``conserver status`` show.

The facts come from two places:

- Redis, for every host: the workers' heartbeats, queue depths, dead letters, recent errors;
- the shared-memory board, for this host only (so only in the monitor): every process's
  state, current vCon and counters, and the supervisor's own facts.

This module is the one that knows the board's slots (their states, which are live): the
monitor's health answers, autoscaler and live gauges all take their rows from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from conserver.observability.logging import untrusted
from conserver.observability.metrics import ProcessRow
from conserver.process.board import BUSY, EMPTY, STATE_NAMES


def live_slots(board: Any) -> Iterator[Any]:
    """The board's slots that hold a started process."""
    for i in range(len(board.slots)):
        slot = board.slots[i]
        if slot.state != EMPTY and slot.pid:
            yield slot


def busy_seconds(slot: Any, now: float) -> float:
    """Time the slot's process spent busy so far, the batch in hand included."""
    return slot.busy_seconds + (now - slot.busy_since if slot.busy_since else 0.0)


def board_processes(board: Any) -> list[ProcessRow]:
    """Every live process of the board as a row (no secrets: titles and counters only)."""
    import psutil

    now = time.time()
    out: list[ProcessRow] = []
    for s in live_slots(board):
        try:
            rss = psutil.Process(s.pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            rss = 0
        uptime = max(1e-6, now - s.started) if s.started else 0.0
        out.append({
            "pid": s.pid, "role": s.role.decode(), "pool": s.pool.decode(), "number": s.number,
            "state": STATE_NAMES.get(s.state, "?"), "current": s.current.decode(errors="replace") if s.state == BUSY else "",
            "processed": s.processed, "failed": s.failed, "rss_bytes": rss, "uptime_s": round(uptime, 1),
            "utilization": round(busy_seconds(s, now) / uptime, 4) if uptime else 0.0,
        })
    return out


def board_workers(board: Any) -> list[ProcessRow]:
    """The rows of the worker processes (no service process)."""
    return [p for p in board_processes(board) if p["role"] == "worker"]


SHOWN = 300  # characters kept of one untrusted value (an item, a uuid, an error) in a report or page
SHOWN_FIELDS = 32


def bounded(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A record about untrusted input (dead-letter metadata, a recent error, a heartbeat)
    with every text value escaped and capped: 20 items of 8 MB make a report of kilobytes."""
    out: dict[str, Any] = {}
    for k, v in list(doc.items())[:SHOWN_FIELDS]:
        out[untrusted(k, 64)] = untrusted(v, SHOWN) if isinstance(v, (str, bytes)) else v
    return out


def status_report(queue: Any, board: Any = None) -> dict[str, Any]:
    """The facts of ``/status`` and ``conserver status``: workers of every host (from their
    Redis heartbeats), queue depths, dead letters, recent errors; this host's processes
    and supervisor when given the board."""
    report: dict[str, Any] = {
        "workers": {untrusted(w, SHOWN): bounded(i) if i else i for w, i in queue.workers().items()},
        "queues": queue.depths(),
        "dead_letters": [bounded(d) for d in queue.dlq_list(limit=20)],
        "recent_errors": [bounded(x) for x in queue.recent_errors(20)],
    }
    if board is not None:
        report["processes"] = board_processes(board)
        report["master"] = {"pid": board.master_pid, "restarts": board.restarts,
                            "uptime_s": round(time.time() - board.started, 1),
                            "start_method": board.start_method.decode(), "draining": bool(board.draining),
                            "target_workers": board.target_workers}
    return report


def monitor_report(queue: Any, board: Any) -> dict[str, Any]:
    """The monitor's report: with Redis down it still shows this host's processes."""
    try:
        return status_report(queue, board)
    except Exception as exc:
        return {"processes": board_processes(board), "error": f"redis unavailable: {exc}",
                "workers": {}, "queues": {"lists": {}, "dlq": {}, "processing": "?", "delayed": "?"},
                "dead_letters": [], "recent_errors": []}

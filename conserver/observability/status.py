"""The status report and its page: what ``/status``, ``/status.json`` and ``conserver status`` show.

The facts come from two places:

- Redis, for every host: the workers' heartbeats, queue depths, dead letters, recent errors;
- the shared-memory board, for this host only (so only in the monitor): every process's
  state, current vCon and counters, and the supervisor's own facts.

This module is the one that knows the board's slots (their states, which are live): the
monitor's health answers, autoscaler and live gauges all take their rows from here.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator
from typing import Any

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


def status_report(queue: Any, board: Any = None) -> dict[str, Any]:
    """The facts of ``/status`` and ``conserver status``: workers of every host (from their
    Redis heartbeats), queue depths, dead letters, recent errors; this host's processes
    and supervisor when given the board."""
    report: dict[str, Any] = {
        "workers": queue.workers(),
        "queues": queue.depths(),
        "dead_letters": queue.dlq_list(limit=20),
        "recent_errors": queue.recent_errors(20),
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


def render_status(s: dict[str, Any]) -> str:
    """Seed 003's worker dashboard as one self-refreshing HTML page (no scripts, no assets)."""
    e = html.escape

    def table(headers: list[str], rows: list[list[Any]], empty: str) -> str:
        if not rows:
            return f"<p class=empty>{e(empty)}</p>"
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    m = s.get("master", {})
    procs = s.get("processes", [])
    workers = table(["#", "pool", "role", "pid", "state", "current vCon", "processed", "failed", "RSS MB", "utilization"],
                    [[p["number"], p["pool"], p["role"], p["pid"], p["state"], p["current"] or "-", p["processed"],
                      p["failed"], f"{p['rss_bytes'] / 1048576:.1f}", f"{p['utilization'] * 100:.0f}%"] for p in procs],
                    "no processes")
    q = s.get("queues", {})
    queues = table(["list", "waiting", "dead letters"],
                   [[name, n, q.get("dlq", {}).get(name, 0)] for name, n in q.get("lists", {}).items()], "no lists")
    hosts = table(["worker (all hosts)", "state", "processed", "current"],
                  [[wid, (i or {}).get("state", "gone"), (i or {}).get("processed", ""), (i or {}).get("current", "")]
                   for wid, i in s.get("workers", {}).items()], "no worker heartbeats in Redis")
    dead = table(["uuid", "list", "reason", "attempts", "time", "error"],
                 [[d.get("uuid") or d.get("item_id"), d.get("list"), d.get("reason"), d.get("attempts", ""),
                   d.get("time", ""), str(d.get("error", ""))[:160]] for d in s.get("dead_letters", [])],
                 "no dead letters")
    errors = table(["time", "uuid", "what"], [[x.get("time", ""), x.get("uuid", ""), x.get("error", "")[:200]]
                                              for x in s.get("recent_errors", [])], "no recent errors")
    problem = f"<p class=warn>{e(s['error'])}</p>" if s.get("error") else ""
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=2>
<title>conserver status</title>
<style>
body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}} h1{{font-size:1.4em}} h2{{font-size:1.1em;margin-top:1.4em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
th{{background:#f2f2f2}} .empty{{color:#777}} .warn{{color:#a00;font-weight:bold}} .facts span{{margin-right:1.5em}}
</style></head><body>
<h1>conserver</h1>
<p class=facts><span>master pid {e(str(m.get('pid', '?')))}</span><span>start method {e(str(m.get('start_method', '?')))}</span>
<span>workers wanted {e(str(m.get('target_workers', '?')))}</span><span>restarts {e(str(m.get('restarts', 0)))}</span>
<span>uptime {e(str(m.get('uptime_s', '?')))} s</span><span>processing {e(str(q.get('processing', '?')))}</span>
<span>delayed retries {e(str(q.get('delayed', '?')))}</span>{'<span class=warn>draining</span>' if m.get('draining') else ''}</p>
{problem}
<h2>Workers on this host</h2>{workers}
<h2>Queues</h2>{queues}
<h2>Dead letters</h2>{dead}
<h2>Recent errors</h2>{errors}
<h2>Workers on every host</h2>{hosts}
</body></html>
"""

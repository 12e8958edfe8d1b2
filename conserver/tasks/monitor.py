"""The monitor process: Prometheus metrics, health endpoints, the status page, the metrics log.

It runs beside the workers (the supervisor starts it when ``CONSERVER_METRICS_PORT`` or
``CONSERVER_METRICS_LOG_INTERVAL`` is set), so the main process stays free of threads
and sockets. What it reports comes from three places:

- the shared-memory board (``worker.Board``): every process's state, current vCon,
  counters, the supervisor's restarts;
- prometheus-client's multiprocess files, which each worker writes (``metrics.py``);
- Redis: queue depths, dead letters, recent errors.
"""

from __future__ import annotations

import html
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from conserver.observability import metrics
from conserver.process.board import BUSY, EMPTY, STATE_NAMES
from conserver.process.worker import WorkerTask, pid_alive

log = logging.getLogger("conserver.tasks.monitor")


def board_processes(board: Any) -> list[dict[str, Any]]:
    """Every live slot of the board as a dict (no secrets: titles and counters only)."""
    import psutil

    now = time.time()
    out = []
    for i in range(len(board.slots)):
        s = board.slots[i]
        if s.state == EMPTY or not s.pid:
            continue
        try:
            rss = psutil.Process(s.pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            rss = 0
        uptime = max(1e-6, now - s.started) if s.started else 0.0
        busy = s.busy_seconds + (now - s.busy_since if s.busy_since else 0.0)
        out.append({
            "pid": s.pid, "role": s.role.decode(), "pool": s.pool.decode(), "number": s.number,
            "state": STATE_NAMES.get(s.state, "?"), "current": s.current.decode(errors="replace") if s.state == BUSY else "",
            "processed": s.processed, "failed": s.failed, "rss_bytes": rss, "uptime_s": round(uptime, 1),
            "utilization": round(busy / uptime, 4) if uptime else 0.0,
        })
    return out


def status_report(queue: Any, board: Any = None) -> dict[str, Any]:
    """The facts of ``/status`` and ``conserver status``: workers of every host (from their
    Redis heartbeats), queue depths, dead letters, recent errors."""
    report: dict[str, Any] = {
        "workers": queue.workers(),
        "queues": queue.depths(),
        "dead_letters": queue.dlq_list(limit=20),
        "recent_errors": metrics.recent_errors(queue.redis, 20),
    }
    if board is not None:
        report["processes"] = board_processes(board)
        report["master"] = {"pid": board.master_pid, "restarts": board.restarts,
                            "uptime_s": round(time.time() - board.started, 1),
                            "start_method": board.start_method.decode(), "draining": bool(board.draining),
                            "target_workers": board.target_workers}
    return report


class MonitorTask(WorkerTask):
    """Serves HTTP on a thread of its own (this process never forks) and logs the metrics line."""

    def open(self) -> None:
        from conserver.queue import WorkQueue, make_redis

        cfg = self.ctx.config
        self.board = self.ctx.board
        self.redis = make_redis(cfg, client_name="conserver-monitor", socket_timeout=2.0, retries=1)
        lists = tuple(dict.fromkeys(l for p in cfg.pools for l in p.ingress_lists)) or cfg.ingress_lists
        self.queue = WorkQueue(self.redis, lists, worker_id="monitor")
        self.collector = metrics.Aggregator(self)
        self.server: ThreadingHTTPServer | None = None
        if cfg.metrics_port:
            self.server = _ReusePortServer((cfg.metrics_host, cfg.metrics_port), _handler(self))
            self.server.daemon_threads = True
            threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()
            log.info("metrics, health and status on http://%s:%d/", cfg.metrics_host, cfg.metrics_port)
        self.autoscaler = self._make_autoscaler(cfg)
        self.next_scale = 0.0
        self.busy_seen: dict[int, tuple[float, float]] = {}  # pid -> (time, busy seconds)
        self.log_every = cfg.metrics_log_interval
        self.next_log = time.monotonic() + self.log_every if self.log_every else float("inf")
        self.last_snapshot = self.collector.snapshot()

    def _make_autoscaler(self, cfg: Any) -> Any:
        if not cfg.autoscale:
            return None
        import psutil

        from conserver.autoscale import Autoscaler

        psutil.cpu_percent()  # the first call only starts the measurement
        self.board.autoscale_target = cfg.autoscale[0]
        return Autoscaler(cfg.autoscale[0], cfg.autoscale[1], cfg.worker_memory_mb, cooldown=cfg.autoscale_cooldown,
                          cpu_idle=lambda: 100.0 - psutil.cpu_percent(),
                          mem_available_mb=lambda: psutil.virtual_memory().available / 1048576)

    def autoscale(self) -> None:
        pool = self.ctx.config.pools[0]
        try:
            backlog = sum(self.redis.llen(name) for name in pool.ingress_lists)
        except Exception:
            return  # no backlog known: no decision
        now = time.time()
        busy_share = []
        for i in range(len(self.board.slots)):
            s = self.board.slots[i]
            if s.state in (EMPTY,) or s.role != b"worker" or s.pool.decode() != pool.name:
                continue
            busy = s.busy_seconds + (now - s.busy_since if s.busy_since else 0.0)
            seen_at, seen_busy = self.busy_seen.get(s.pid, (s.started or now, 0.0))
            if now > seen_at:
                busy_share.append(min(1.0, max(0.0, (busy - seen_busy) / (now - seen_at))))
            self.busy_seen[s.pid] = (now, busy)
        utilization = sum(busy_share) / len(busy_share) if busy_share else 0.0
        want, why = self.autoscaler.decide(self.board.autoscale_target, backlog, utilization)
        if why:
            log.info("autoscale: %d -> %d workers: %s", self.board.autoscale_target, want, why)
        self.board.autoscale_target = want

    def run_once(self) -> None:
        now = time.monotonic()
        if self.autoscaler is not None and now >= self.next_scale:
            self.next_scale = now + 1.0
            self.autoscale()
        if now >= self.next_log:
            self.next_log = now + self.log_every
            self.log_metrics()
        self.ctx.heartbeat()
        time.sleep(0.2)

    def log_metrics(self) -> None:
        """Seed 001's metrics line: processed, completed, failed, avg/p95 duration, utilization..."""
        snap = self.collector.snapshot()
        workers = [p for p in board_processes(self.board) if p["role"] == "worker"]
        utilization = sum(p["utilization"] for p in workers) / len(workers) if workers else 0.0
        line = metrics.interval_line(self.last_snapshot, snap, time.time() - self.board.started, utilization)
        self.last_snapshot = snap
        log.info("metrics %s", " ".join(f"{k}={v}" for k, v in line.items()), extra={"fields": line})

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.redis.close()

    # --- the answers ---
    def healthz(self) -> tuple[int, dict[str, Any]]:
        """Liveness: the supervisor is alive and its workers are running."""
        procs = [p for p in board_processes(self.board) if p["role"] == "worker"]
        running = [p for p in procs if p["state"] in ("idle", "busy")]
        master_alive = pid_alive(self.board.master_pid)
        ok = master_alive and (len(running) > 0 or self.board.target_workers == 0)
        return (200 if ok else 503), {"ok": ok, "master_alive": master_alive, "workers_running": len(running),
                                      "workers_wanted": self.board.target_workers}

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """Readiness: Redis answers and not every store's circuit breaker is open."""
        try:
            redis_ok = bool(self.redis.ping())
        except Exception:
            redis_ok = False
        breakers = self.collector.breaker_states()
        all_open = bool(breakers) and all(state == "open" for state in breakers.values())
        ok = redis_ok and not all_open and not self.board.draining
        return (200 if ok else 503), {"ok": ok, "redis": redis_ok, "breakers": breakers,
                                      "draining": bool(self.board.draining)}

    def status(self) -> dict[str, Any]:
        try:
            return status_report(self.queue, self.board)
        except Exception as exc:  # Redis down: still show the processes
            return {"processes": board_processes(self.board), "error": f"redis unavailable: {exc}",
                    "workers": {}, "queues": {"lists": {}, "dlq": {}, "processing": "?", "delayed": "?"},
                    "dead_letters": [], "recent_errors": []}


class _ReusePortServer(ThreadingHTTPServer):
    """SO_REUSEPORT: on SIGHUP the new monitor binds while the old one still drains."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def _handler(task: MonitorTask) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "conserver"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            try:
                if path == "/metrics":
                    body, ctype = task.collector.exposition()
                    return self._send(200, body, ctype)
                if path in ("/healthz", "/readyz"):
                    code, doc = task.healthz() if path == "/healthz" else task.readyz()
                    return self._send(code, orjson.dumps(doc), "application/json")
                if path == "/status.json":
                    return self._send(200, orjson.dumps(task.status(), default=str), "application/json")
                if path in ("/status", "/"):
                    return self._send(200, render_status(task.status()).encode(), "text/html; charset=utf-8")
                self._send(404, b"not found\n", "text/plain")
            except Exception as exc:  # one bad request must not take the monitor down
                log.exception("error serving %s", path)
                self._send(500, f"error: {type(exc).__name__}\n".encode(), "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http %s", fmt % args)

    return Handler


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

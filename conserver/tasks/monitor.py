"""The monitor process: it serves ``/metrics``, ``/healthz``, ``/readyz`` and the status page,
logs the metrics line and makes the autoscaler's decisions.

It runs beside the workers (the supervisor starts it when ``CONSERVER_METRICS_PORT`` or
``CONSERVER_METRICS_LOG_INTERVAL`` is set), so the main process stays free of threads
and sockets. This module only wires: the Prometheus side is ``observability.metrics``;
the report, the page and the rows of the shared-memory board are ``observability.status``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from conserver.observability import metrics, status
from conserver.process.worker import WorkerTask, pid_alive
from conserver.queue.admin import QueueAdmin
from conserver.queue.client import make_redis

log = logging.getLogger("conserver.tasks.monitor")


class MonitorTask(WorkerTask):
    """Serves HTTP on a thread of its own (this process never forks) and logs the metrics line."""

    def open(self) -> None:
        cfg = self.ctx.config
        self.board = self.ctx.board
        self.redis = make_redis(cfg, client_name="conserver-monitor", socket_timeout=2.0, retries=1)
        self.queue = QueueAdmin(self.redis, cfg.ingress_lists_used)
        self.collector = metrics.Aggregator(metrics.LiveInputs(
            workers=lambda: status.board_workers(self.board),
            supervisor=lambda: metrics.SupervisorCounts(self.board.target_workers, self.board.restarts),
            depths=self.queue.depths))
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
        seen: dict[int, tuple[float, float]] = {}  # only the live pids: replaced workers drop out
        for s in status.live_slots(self.board):
            if s.role != b"worker" or s.pool.decode() != pool.name:
                continue
            busy = status.busy_seconds(s, now)
            seen_at, seen_busy = self.busy_seen.get(s.pid, (s.started or now, 0.0))
            if now > seen_at:
                busy_share.append(min(1.0, max(0.0, (busy - seen_busy) / (now - seen_at))))
            seen[s.pid] = (now, busy)
        self.busy_seen = seen
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
        utilization = metrics.mean_utilization(status.board_workers(self.board))
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
        running = [p for p in status.board_workers(self.board) if p["state"] in ("idle", "busy")]
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

    def report(self) -> dict[str, Any]:
        return status.monitor_report(self.queue, self.board)


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
                    return self._send(200, orjson.dumps(task.report(), default=str), "application/json")
                if path in ("/status", "/"):
                    return self._send(200, status.render_status(task.report()).encode(), "text/html; charset=utf-8")
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


"""The monitor process: it serves ``/metrics``, ``/healthz``, ``/readyz``, the status page
with its graphs and dead letters, logs the metrics line and makes the autoscaler's decisions.

It runs beside the workers (the supervisor starts it when ``CONSERVER_METRICS_PORT`` or
``CONSERVER_METRICS_LOG_INTERVAL`` is set), so the main process stays free of threads
and sockets. This module only wires: the Prometheus side is ``observability.metrics``; the
report and the board's rows ``observability.status``; the graphs' ring ``observability.history``;
the pages ``observability.page`` and ``observability.dead_letters`` (which also checks and logs
the dead-letter actions, the only requests that change anything).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from conserver.observability import dead_letters, metrics, page, status
from conserver.observability.history import History
from conserver.observability.logging import untrusted
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
        self.history = History(lambda: (s for fam in self.collector.multi.collect() for s in fam.samples),
                               self.queue.depths)
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
        if self.server is not None and self.history.due():
            try:
                self.history.sample()
            except Exception:  # the files of a worker being replaced: the next sample reads them
                log.debug("history sample failed", exc_info=True)
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
        """Readiness: Redis accepts a write and not every store's circuit breaker is open.
        A write, not PING: over maxmemory (OOM), a replica after failover (READONLY), a
        failed snapshot (MISCONF) still answer PING, and conserver cannot work on them."""
        redis_error = ""
        try:
            self.redis.set(self.queue.keys.readiness, b"1", px=10_000)
        except Exception as exc:  # connection errors and error replies alike
            redis_error = untrusted(f"{type(exc).__name__}: {exc}", 200)
        breakers = self.collector.breaker_states()
        all_open = bool(breakers) and all(state == "open" for state in breakers.values())
        ok = not redis_error and not all_open and not self.board.draining
        doc = {"ok": ok, "redis": not redis_error, "breakers": breakers, "draining": bool(self.board.draining)}
        if redis_error:
            doc["redis_error"] = redis_error
        return (200 if ok else 503), doc

    def report(self) -> dict[str, Any]:
        return status.monitor_report(self.queue, self.board)


class _ReusePortServer(ThreadingHTTPServer):
    """SO_REUSEPORT: on SIGHUP the new monitor binds while the old one still drains."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".LICENSE": "text/plain"}
# The pages load their script and styles from here only, never run inline script, never sit in a frame.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
MAX_FORM = 256 * 1024


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The vendored uPlot and the page's own script and styles, read once."""
    out = {}
    for f in (files("conserver.observability") / "static").iterdir():
        ctype = next((t for ext, t in STATIC_TYPES.items() if f.name.endswith(ext)), None)
        if ctype:
            out[f.name] = (f.read_bytes(), ctype)
    return out


def _handler(task: MonitorTask) -> type[BaseHTTPRequestHandler]:
    static = _static_files()
    admin = bool(task.ctx.config.admin_token)
    html_type = "text/html; charset=utf-8"

    class Handler(BaseHTTPRequestHandler):
        server_version = "conserver"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            path, query = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
            try:
                if path == "/metrics":
                    body, ctype = task.collector.exposition()
                    return self._send(200, body, ctype)
                if path in ("/healthz", "/readyz"):
                    code, doc = task.healthz() if path == "/healthz" else task.readyz()
                    return self._send(code, orjson.dumps(doc), "application/json")
                if path == "/status.json":
                    return self._send(200, orjson.dumps(task.report(), default=str), "application/json")
                if path == "/status/history.json":
                    return self._send(200, orjson.dumps(task.history.as_json()), "application/json")
                if path in ("/status", "/"):
                    return self._send(200, page.render_status(task.report(), task.history.as_json()).encode(), html_type)
                if path == "/status/tables":
                    return self._send(200, page.render_tables(task.report()).encode(), html_type)
                if path == "/status/dead-letters":
                    return self._send(200, dead_letters.render_list(task.queue, query, admin).encode(), html_type)
                if path == "/status/dead-letters/show":
                    code, text = dead_letters.render_one(task.queue, query, admin)
                    return self._send(code, text.encode(), html_type)
                if path.startswith(page.STATIC) and path[len(page.STATIC):] in static:
                    return self._send(200, *static[path[len(page.STATIC):]], cache="max-age=300")
                self._send(404, b"not found\n", "text/plain")
            except Exception as exc:  # one bad request must not take the monitor down
                log.exception("error serving %s", untrusted(path, 200))
                self._send(500, f"error: {type(exc).__name__}\n".encode(), "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            if path != "/status/dead-letters/action":
                return self._send(404, b"not found\n", "text/plain")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_FORM:
                return self._send(413, b"form too large\n", "text/plain")
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            action = (form.get("action") or [""])[0]
            given = self.headers.get("X-Conserver-Token") or (form.get("token") or [""])[0]
            remote = self.client_address[0]
            why = dead_letters.refusal(task.ctx.config.admin_token, self.headers, given)
            if why is None and action not in dead_letters.ACTIONS:
                why = "unknown action"
            if why is not None:
                log.warning("dead letters: %s by %s refused: %s", untrusted(action, 20), remote, why)
                return self._send(403, orjson.dumps({"error": why}), "application/json")
            try:
                items = dead_letters.selection(form.get("item", []), task.queue.ingress_lists)
                result = dead_letters.act(task.queue, action, items, remote)
            except Exception as exc:
                log.exception("dead letters: %s by %s failed", action, remote)
                return self._send(503, orjson.dumps({"error": f"{type(exc).__name__}"}), "application/json")
            if "json" in self.headers.get("Accept", ""):
                return self._send(200, orjson.dumps(result), "application/json")
            self.send_response(303)  # a form from the page: back to the list, saying what was done
            self.send_header("Location", f"/status/dead-letters?done={action}&n={result['done']}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send(self, code: int, body: bytes, ctype: str, cache: str = "no-store") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http %s", untrusted(fmt % args, 300))

    return Handler

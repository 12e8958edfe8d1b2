"""What operators see: log lines, process titles and the systemd notify protocol.

Logs are one line per event, text or JSON (orjson), on stderr or in ``LOG_FILE``
(reopened on SIGUSR1 for logrotate). Every line carries the role (master, worker,
scheduler), the pid and the worker number, so ``grep`` finds one process's story.
Nothing here may print a secret: callers pass URLs through ``config.redact_url``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

import orjson

try:  # setproctitle is a dependency, but a title is never worth a crash
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # pragma: no cover
    _setproctitle = None

_context: dict[str, Any] = {"role": "main", "worker": None}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _context["role"]
        record.worker = _context["worker"]
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        who = record.role if record.worker is None else f"{record.role} {record.worker}"
        line = f"{ts} {record.levelname} [{who} pid={record.process}] {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "role": record.role,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.worker is not None:
            doc["worker"] = record.worker
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "INFO", fmt: str = "text", log_file: str = "",
                  role: str = "main", worker: Any = None) -> None:
    """(Re)configure the root logger for this process. Safe to call again in a child."""
    _context["role"], _context["worker"] = role, worker
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        if isinstance(h, logging.FileHandler):
            h.close()
    handler: logging.Handler
    if log_file:
        from logging.handlers import WatchedFileHandler
        handler = WatchedFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log every retry at INFO; keep them to warnings.
    for noisy in ("botocore", "boto3", "urllib3", "opensearch", "elastic_transport", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def reopen_logs() -> None:
    """SIGUSR1: logrotate moved the file away; open it again under the same name."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                if h.stream:
                    h.stream.close()
                h.stream = h._open()
            finally:
                h.release()


def set_title(title: str) -> None:
    if _setproctitle is not None:
        _setproctitle(title)


def process_title(pid: int) -> str:
    """What `ps` shows for ``pid`` (setproctitle rewrites argv, so /proc/PID/cmdline has it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def sd_notify(*lines: str) -> bool:
    """Send ``READY=1``-style lines to systemd's NOTIFY_SOCKET; a no-op when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec when it asks for pings (and asks this process), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None

"""Log lines: text or JSON, one line per event.

Logs are one line per event, text or JSON (orjson), on stderr or in ``LOG_FILE``
(reopened on SIGUSR1 for logrotate). Every line carries the role (master, worker,
scheduler), the pid and the worker number, so ``grep`` finds one process's story.
Nothing here may print a secret: callers pass URLs through ``config.redact_url``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

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

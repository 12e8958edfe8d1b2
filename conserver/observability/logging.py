"""Log lines: text or JSON, one line per event.

Logs are one line per event, text or JSON (orjson), on stderr or in ``LOG_FILE``
(reopened on SIGUSR1 for logrotate). Every line carries the role (master, worker,
scheduler), the pid and the worker number, so ``grep`` finds one process's story.
Nothing here may print a secret: callers pass URLs through ``config.redact_url``.

Untrusted text (vCon content a store echoes in its error, item ids and uuids from the
input) goes through :func:`untrusted` before it reaches a log line or a page: control
characters escaped, length capped. The text formatter escapes the message once more and
indents traceback lines, so even a call site that forgot cannot forge a line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_context: dict[str, Any] = {"role": "main", "worker": None}

# C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides: what
# could end a log line early or make text read differently from what it is.
_UNSAFE = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x200E, 0x2010), *range(0x202A, 0x202F),
           *range(0x2066, 0x206A)]
_ESCAPES = {c: ascii(chr(c))[1:-1] for c in _UNSAFE}


def untrusted(value: Any, limit: int = 200) -> str:
    """Text from outside made safe for one log line or one table cell: every control
    character escaped (``\\n``, ``\\x1b``), at most ``limit`` characters of the original
    kept, and how much was cut said. Reads only what it keeps of a huge value. Backslashes
    stay as they are, so text escaped before (the queue's labels) is not escaped twice."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        total = len(value)
        text = bytes(value[:limit]).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
        total = len(text)
        text = text[:limit]
    out = text.translate(_ESCAPES)
    return out if total <= limit else f"{out}...[{total - limit} more]"


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _context["role"]
        record.worker = _context["worker"]
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        who = record.role if record.worker is None else f"{record.role} {record.worker}"
        line = f"{ts} {record.levelname} [{who} pid={record.process}] {record.name}: {record.getMessage().translate(_ESCAPES)}"
        if record.exc_info:  # indented, so that no line of it (an echoed message) reads as a log line
            line += "\n" + "\n".join("  | " + x.translate(_ESCAPES) for x in self.formatException(record.exc_info).splitlines())
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

"""A local HTTP server for the link tests: stands in for webhooks, media stores and
OpenAI-compatible chat endpoints. It records every request (arrival time, path, headers,
JSON body) and answers with what ``answer(request)`` returns: ``(status, json body)``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    at: float  # time.time() on arrival (the same clock in every process of a test)
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = field(repr=False, default=b"")


Answer = Callable[[Request], tuple[int, Any]]


def ok(_request: Request) -> tuple[int, Any]:
    return 200, {"ok": True}


def chat_answer(content: str) -> Answer:
    """An OpenAI chat-completions answer whose first choice says ``content``."""
    def answer(_request: Request) -> tuple[int, Any]:
        return 200, {"id": "chatcmpl-1", "object": "chat.completion",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
    return answer


class StubServer:
    """``with StubServer(answer) as stub:`` serves on ``stub.url`` in a thread of its own.
    ``bind()`` then ``serve()`` split it, so a test can fork before the thread starts."""

    def __init__(self, answer: Answer = ok):
        self.answer = answer
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def bind(self) -> StubServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                request = Request(time.time(), self.command, self.path, dict(self.headers), body, raw)
                with stub._lock:
                    stub.requests.append(request)
                status, payload = stub.answer(request)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST

            def log_message(self, *args):  # quiet: the test output is for the tests
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        return self

    def serve(self) -> StubServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="http-stub", daemon=True)
        self._thread.start()
        return self

    def received(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        if self._server is not None:
            self._server.server_close()

    def __enter__(self) -> StubServer:
        if self._server is None:
            self.bind()
        return self.serve()

    def __exit__(self, *exc) -> None:
        self.close()

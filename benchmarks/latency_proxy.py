"""A small asyncio TCP proxy that puts a fixed latency in front of a real server.

Every chunk the server sends is held for ``delay`` seconds and then passed on, in order
(each chunk is released at its arrival time + ``delay``; a chunk that follows another is
not held again on top of it). That is a link with a constant one-way latency on the way
back: every request/response round trip costs ``delay`` once, a response streamed in many
chunks costs it once too, and pipelined requests (PostgreSQL's pipeline mode, HTTP
keep-alive on several connections) overlap their delays the way they would on a real
network. The client-to-server direction is not delayed. Connection set-up is local; only
a protocol's own greeting round trips (PostgreSQL's startup) pay the delay.

Each proxy counts its *round trips*: server-to-client bursts that follow client-to-server
traffic on the same connection (a new response after a request), plus connections, so a
benchmark can say how many round trips a store spends per batch.

In-process::

    with ProxyGroup({"postgres": ("127.0.0.1", 5433, 0.100)}) as proxies:
        port = proxies.ports["postgres"]

As its own process (what the fanout benchmark does, so the delays never wait on the
harness's GIL)::

    python -m benchmarks.latency_proxy NAME=HOST:PORT:DELAY_S [...]

prints one JSON line ``{"ports": {NAME: PORT}}`` once listening, then answers each line
``stats`` on stdin with a JSON line of the counters (``reset`` zeroes them first and
answers the same), and exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Mapping

_CHUNK = 256 * 1024


@dataclass
class Stats:
    connections: int = 0
    round_trips: int = 0  # server->client bursts that answer client->server traffic
    bytes_up: int = 0
    bytes_down: int = 0


class DelayProxy:
    """One listening socket forwarding to one upstream, delaying server->client data."""

    def __init__(self, upstream_host: str, upstream_port: int, delay: float,
                 listen_host: str = "127.0.0.1", listen_port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.delay = float(delay)
        self.listen = (listen_host, listen_port)
        self.stats = Stats()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "DelayProxy":
        self._server = await asyncio.start_server(self._handle, *self.listen, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                c_writer.close()
                return
            self.stats.connections += 1
            state = {"up_since_down": True}  # the first server bytes answer the connection
            up = asyncio.ensure_future(self._pipe_up(c_reader, s_writer, state))
            down = asyncio.ensure_future(self._pipe_down(s_reader, c_writer, state))
            try:
                await asyncio.gather(up, down)  # each direction ends on its own EOF (half-close)
            except asyncio.CancelledError:
                pass  # the proxy is closing
            finally:
                for t in (up, down):
                    t.cancel()
                for w in (c_writer, s_writer):
                    try:
                        w.close()
                    except Exception:
                        pass
        finally:
            self._tasks.discard(task)

    async def _pipe_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                state["up_since_down"] = True
                self.stats.bytes_up += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError, RuntimeError):
                pass

    async def _pipe_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def release() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    try:
                        if writer.can_write_eof():
                            writer.write_eof()
                    except (ConnectionError, OSError, RuntimeError):
                        pass
                    return
                writer.write(data)
                await writer.drain()

        releaser = asyncio.ensure_future(release())
        try:
            while True:
                data = await reader.read(_CHUNK)
                now = loop.time()
                if not data:
                    queue.put_nowait((now + self.delay, None))
                    break
                if state["up_since_down"]:
                    state["up_since_down"] = False
                    self.stats.round_trips += 1
                self.stats.bytes_down += len(data)
                queue.put_nowait((now + self.delay, data))
            await releaser
        except (ConnectionError, OSError):
            pass
        finally:
            releaser.cancel()


class ProxyGroup:
    """Several DelayProxy on one event loop in a background thread (in-process use)."""

    def __init__(self, upstreams: Mapping[str, tuple[str, int, float]]):
        self.upstreams = dict(upstreams)
        self.proxies: dict[str, DelayProxy] = {}
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)

    def start(self) -> "ProxyGroup":
        self._thread.start()
        for name, (host, port, delay) in self.upstreams.items():
            proxy = DelayProxy(host, port, delay)
            asyncio.run_coroutine_threadsafe(proxy.start(), self._loop).result(10)
            self.proxies[name] = proxy
            self.ports[name] = proxy.port
        return self

    def stats(self, reset: bool = False) -> dict[str, dict]:
        async def read():
            out = {n: asdict(p.stats) for n, p in self.proxies.items()}
            if reset:
                for p in self.proxies.values():
                    p.stats = Stats()
            return out
        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)

    def stop(self) -> None:
        for proxy in self.proxies.values():
            asyncio.run_coroutine_threadsafe(proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "ProxyGroup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_upstream(text: str) -> tuple[str, tuple[str, int, float]]:
    """``NAME=HOST:PORT:DELAY_S``."""
    name, _, rest = text.partition("=")
    host, port, delay = rest.rsplit(":", 2)
    return name, (host, int(port), float(delay))


async def _serve(upstreams: dict[str, tuple[str, int, float]]) -> None:
    proxies = {}
    for name, (host, port, delay) in upstreams.items():
        proxies[name] = await DelayProxy(host, port, delay).start()
    print(json.dumps({"ports": {n: p.port for n, p in proxies.items()}}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = line.strip().decode()
        if cmd in ("stats", "reset"):
            print(json.dumps({n: asdict(p.stats) for n, p in proxies.items()}), flush=True)
            if cmd == "reset":
                for p in proxies.values():
                    p.stats = Stats()
    for p in proxies.values():
        await p.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_proxy", description=__doc__.split("\n")[0])
    parser.add_argument("upstream", nargs="+", help="NAME=HOST:PORT:DELAY_S, e.g. postgres=127.0.0.1:5433:0.1")
    args = parser.parse_args(argv)
    upstreams = dict(parse_upstream(u) for u in args.upstream)
    try:
        asyncio.run(_serve(upstreams))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

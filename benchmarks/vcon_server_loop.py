"""The fan-out benchmark's baseline: a storage loop written the way vcon-server does it.

vcon-server's main loop (conserver/main.py) pops one vCon id at a time with BLPOP and, with
CONSERVER_PARALLEL_STORAGE on, saves it to every storage through a *new*
``ThreadPoolExecutor(max_workers=len(storages))`` per vCon, waiting for all of them
before the next pop. Each storage module (common/storage/*/__init__.py, commit b9b0381)
then writes vcon-server's layout, as this module does, with the store clients made as well
as vcon-server could make them (one per process, opened at start, not per save)::

    N processes (fork), each:  BLPOP {list} -> uuid
                               GET vcon:{uuid}, json.loads, normalize_legacy_fields
                               with ThreadPoolExecutor(3):       # new pool per vCon
                                   PostgreSQL INSERT ... ON CONFLICT (id) DO UPDATE of the
                                       peewee table's row (psycopg, one autocommit connection)
                                   S3 put_object {YYYY/MM/DD}/{uuid}.vcon, then
                                       put_object lookup/{uuid}.txt  (boto3, one client)
                                   index() of every part document, one call each
                                       (opensearch-py, one client), none without dialog
                               INCR {done key}               # so the harness sees progress

The same layout as conserver's stores (the documents come from the same functions,
conserver.storage.compat and conserver.storage.elasticsearch_parts), under names of its own;
no index template, as vcon-server puts none. Bodies are serialized with ``json.dumps`` as
vcon-server's ``vcon.to_dict()`` / ``json.dumps`` do. At most once, like BLPOP: nothing is
acknowledged. vcon-server reads the body once per storage (``VconRedis.get_vcon`` in each
``save()``); this loop reads it once per vCon.

    REDIS_URL=... POSTGRES_DSN=... S3_ENDPOINT_URL=... AWS_ACCESS_KEY_ID=... \\
    AWS_SECRET_ACCESS_KEY=... ELASTICSEARCH_URL=... \\
    python -m benchmarks.vcon_server_loop --processes 2 --list baseline \\
        --table baseline_vcons --bucket baseline --index-prefix baseline_

Each process INCRs ``{key prefix}:ready`` once its clients are open; errors are counted
in ``{key prefix}:errors`` (and the first few logged). SIGTERM stops the loop within a
second (BLPOP blocks at most 1 s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime

_stopping = False


def _on_term(signum, frame) -> None:
    global _stopping
    _stopping = True


def _settings() -> dict[str, str]:
    env = os.environ
    return {
        "redis_url": env.get("REDIS_URL", ""),
        "dsn": env.get("POSTGRES_DSN", ""),
        "s3_endpoint": env.get("S3_ENDPOINT_URL", ""),
        "access_key": env.get("AWS_ACCESS_KEY_ID", ""),
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
        "region": env.get("AWS_REGION", "us-east-1"),
        "es_url": env.get("ELASTICSEARCH_URL", ""),
    }


def _s3_client(s: dict[str, str]):
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=s["s3_endpoint"] or None, aws_access_key_id=s["access_key"] or None,
        aws_secret_access_key=s["secret_key"] or None, region_name=s["region"])


def _es_client(s: dict[str, str]):
    from opensearchpy import OpenSearch

    return OpenSearch(hosts=[s["es_url"]], headers={"accept": "application/json"}, timeout=30)


def _upsert_sql(table: str) -> str:
    """peewee's ``insert(**vcon_data).on_conflict(conflict_target=id, update=vcon_data)``; the
    created_at string goes as text and PostgreSQL's timestamp parser reads it, as with peewee."""
    cols = ("id", "vcon", "uuid", "created_at", "updated_at", "subject", "vcon_json")
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "id")
    return (f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES (%s::uuid, %s, %s::uuid, %s::timestamp, %s, %s, '
            f"%s::jsonb) ON CONFLICT (id) DO UPDATE SET {updates}")


def setup(table: str, bucket: str) -> None:
    """Table and bucket, once, before the processes start (the part indices come dynamically)."""
    import psycopg
    from botocore.exceptions import ClientError

    from conserver.storage.postgres_layout import create_index_sql, create_table_sql

    s = _settings()
    with psycopg.connect(s["dsn"], autocommit=True) as conn:
        conn.execute(create_table_sql(table))
        conn.execute(create_index_sql(table))
    s3 = _s3_client(s)
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def worker(number: int, args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    try:
        from setproctitle import setproctitle

        setproctitle(f"vcon-server-loop: worker {number}/{args.processes}")
    except ImportError:
        pass
    import psycopg
    import redis

    from conserver.storage.compat import normalize_legacy_fields, wall_clock_date
    from conserver.storage.elasticsearch_parts import part_documents

    s = _settings()
    r = redis.Redis.from_url(s["redis_url"])
    pg = psycopg.connect(s["dsn"], autocommit=True)
    s3 = _s3_client(s)
    es = _es_client(s)
    upsert = _upsert_sql(args.table)
    prefix = args.key_prefix
    logged = 0

    def save_postgres(uuid: str, vcon: dict) -> None:
        pg.execute(upsert, (uuid, vcon["vcon"], uuid, vcon["created_at"], datetime.now(), vcon.get("subject"),
                            json.dumps(vcon)))

    def save_s3(uuid: str, vcon: dict) -> None:
        date_path = wall_clock_date(vcon["created_at"])
        s3.put_object(Bucket=args.bucket, Key=f"{date_path}/{uuid}.vcon", Body=json.dumps(vcon))
        s3.put_object(Bucket=args.bucket, Key=f"lookup/{uuid}.txt", Body=date_path.encode())

    def save_elasticsearch(uuid: str, vcon: dict) -> None:
        for index, doc_id, doc in part_documents(vcon, uuid, args.index_prefix):
            es.index(index=index, id=doc_id, body=doc)

    storages = (save_postgres, save_s3, save_elasticsearch)
    r.incr(f"{prefix}:ready")
    while not _stopping:
        popped = r.blpop([args.list], timeout=1)
        if popped is None:
            continue
        uuid = popped[1].decode()
        raw = r.get(f"vcon:{uuid}")
        if raw is None:
            r.incr(f"{prefix}:errors")
            continue
        vcon = normalize_legacy_fields(json.loads(raw))
        failed = False
        with ThreadPoolExecutor(max_workers=len(storages)) as executor:  # a new pool per vCon, as vcon-server
            futures = {executor.submit(save, uuid, vcon): save.__name__ for save in storages}
            for future in as_completed(futures):
                exc = future.exception()
                if exc is not None:
                    failed = True
                    if logged < 5:
                        logged += 1
                        print(f"worker {number}: {futures[future]} failed for {uuid}: {exc!r}", file=sys.stderr,
                              flush=True)
        if failed:
            r.incr(f"{prefix}:errors")
        r.incr(f"{prefix}:done")
    pg.close()
    es.close()
    r.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vcon_server_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--list", default="baseline", help="the Redis list of uuids to BLPOP")
    parser.add_argument("--table", default="baseline_vcons")
    parser.add_argument("--bucket", default="baseline")
    parser.add_argument("--index-prefix", default="baseline_", help="the part indices' prefix")
    parser.add_argument("--key-prefix", default="vcon_server_loop", help="Redis keys for ready/done/errors counters")
    parser.add_argument("--no-setup", action="store_true", help="the table and bucket exist already")
    args = parser.parse_args(argv)
    if not args.no_setup:
        setup(args.table, args.bucket)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    ctx = multiprocessing.get_context("fork")  # vcon-server's default on Linux
    procs = [ctx.Process(target=worker, args=(i + 1, args), name=f"worker-{i + 1}") for i in range(args.processes)]
    for p in procs:
        p.start()
    while not _stopping and any(p.is_alive() for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

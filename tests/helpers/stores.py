"""Helpers for end-to-end tests: enqueue sample vCons, wait for the queue, read the stores."""
from __future__ import annotations

import random
from typing import Any

import orjson

from conserver.config import Config, config_from_mapping
from conserver.queue.admin import QueueAdmin
from conserver.queue.claims import WorkerClaims
from conserver.queue.client import make_redis
from conserver.queue.protocol import QueueSettings
from conserver.storage import load_sinks
from conserver.dev.samples import sample_vcon
from tests.helpers.proc import wait_for


def queue_for(env: dict[str, str]) -> tuple[Config, QueueAdmin]:
    cfg = config_from_mapping(env)
    return cfg, QueueAdmin(make_redis(cfg), cfg.ingress_lists)


def claims_for(cfg: Config, queue: QueueAdmin, worker_id: str = "test",
               lists: tuple[str, ...] | None = None) -> WorkerClaims:
    """The test playing a worker named ``worker_id`` (on the lists of ``cfg``, or ``lists``)."""
    settings = QueueSettings.from_config(cfg, **({"ingress_lists": lists} if lists else {}))
    return WorkerClaims(queue.redis, settings, worker_id)


def enqueue_samples(queue: QueueAdmin, n: int, list_name: str = "default", seed: int | None = None) -> list[dict]:
    rng = random.Random(seed)
    vcons = [sample_vcon(rng) for _ in range(n)]
    for lo in range(0, n, 1000):
        queue.enqueue(list_name, [(v["uuid"], orjson.dumps(v)) for v in vcons[lo:lo + 1000]])
    return vcons


def drained(queue: QueueAdmin) -> bool:
    d = queue.depths()
    return not any(d["lists"].values()) and d["processing"] == 0 and d["delayed"] == 0


def wait_drained(queue: QueueAdmin, timeout: float) -> None:
    wait_for(lambda: drained(queue), timeout, interval=0.1, what="every list, processing list and retry empty")


class StoreReader:
    """Reads back what conserver wrote, with the stores' own read paths and raw clients."""

    def __init__(self, cfg: Config, names: tuple[str, ...] = ("postgres", "s3", "elasticsearch")):
        self.cfg = cfg
        self.sinks = {s.name: s for s in load_sinks(names, cfg)}
        for s in self.sinks.values():
            s.open()

    def close(self) -> None:
        for s in self.sinks.values():
            s.close()

    def fetch(self, store: str, uuid: str) -> Any:
        return self.sinks[store].fetch(uuid)

    def pg_rows(self) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.cfg.postgres_dsn) as conn:
            return conn.execute(f'SELECT id::text, count(*) OVER (PARTITION BY id) FROM "{self.cfg.postgres_table}"').fetchall()

    def pg_xmin(self, uuid: str) -> int | None:
        """The row version: it changes on every write, so an unchanged xmin proves no rewrite."""
        import psycopg

        with psycopg.connect(self.cfg.postgres_dsn) as conn:
            try:
                row = conn.execute(f'SELECT xmin::text FROM "{self.cfg.postgres_table}" WHERE id = %s', (uuid,)).fetchone()
            except psycopg.errors.UndefinedTable:  # the workers have not created it yet
                return None
        return int(row[0]) if row else None

    def s3_keys(self) -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.cfg.s3_endpoint_url, aws_access_key_id=self.cfg.aws_access_key_id,
                              aws_secret_access_key=self.cfg.aws_secret_access_key, region_name=self.cfg.aws_region)
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.cfg.s3_bucket):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def _es(self, method: str, path: str, body: dict | None = None) -> dict:
        import urllib.request

        req = urllib.request.Request(self.cfg.elasticsearch_url + path, method=method, headers={"Content-Type": "application/json"},
                                     data=None if body is None else orjson.dumps(body))
        return orjson.loads(urllib.request.urlopen(req, timeout=30).read())

    def es_ids(self) -> list[str]:
        """The uuid of every vCon with documents: vcon-server's layout indexes a vCon's first dialog
        as ``{uuid}_0`` in ``{prefix}vcon_dialog`` (the samples all have dialog)."""
        index = f"{self.cfg.elasticsearch_index_prefix}vcon_dialog"
        self._es("POST", f"/{index}/_refresh")
        page = self._es("POST", f"/{index}/_search?scroll=1m", {"size": 5000, "_source": ["vcon_id"]})
        ids: list[str] = []
        while page["hits"]["hits"]:
            ids += [h["_source"]["vcon_id"] for h in page["hits"]["hits"] if h["_id"].endswith("_0")]
            page = self._es("POST", "/_search/scroll", {"scroll": "1m", "scroll_id": page["_scroll_id"]})
        self._es("DELETE", "/_search/scroll", {"scroll_id": page["_scroll_id"]})
        return ids

    def es_document(self, index: str, doc_id: str) -> dict:
        """One document as indexed, ``index`` without the prefix."""
        return self._es("GET", f"/{self.cfg.elasticsearch_index_prefix}{index}/_doc/{doc_id}")["_source"]

    def census(self) -> dict[str, list[str]]:
        """Every uuid in each store read (duplicates kept, so a test can see them)."""
        readers = {"postgres": lambda: [r[0] for r in self.pg_rows()],
                   "s3": lambda: [k.rsplit("/", 1)[1][:-5] for k in self.s3_keys() if k.endswith(".vcon")],
                   "elasticsearch": self.es_ids}
        return {name: readers[name]() for name in self.sinks if name in readers}


def census(cfg: Config, stores: tuple[str, ...] = ("postgres", "s3", "elasticsearch")) -> dict[str, list[str]]:
    """Every uuid in each of ``stores`` (duplicates kept, so a test can see them)."""
    reader = StoreReader(cfg, stores)
    try:
        return reader.census()
    finally:
        reader.close()


def postgres_ids(cfg: Config) -> list[str]:
    """Every id in the PostgreSQL table, sorted."""
    return sorted(census(cfg, ("postgres",))["postgres"])


def wait_all_stored(reader: StoreReader, uuids: set[str], timeout: float) -> dict[str, list[str]]:
    def complete():
        c = reader.census()
        return c if all(set(v) >= uuids for v in c.values()) else None
    return wait_for(complete, timeout, interval=0.5, what=f"{len(uuids)} vCons in every store")

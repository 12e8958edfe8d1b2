"""The stores against real private servers (conftest.py): PostgreSQL, S3 (SeaweedFS), OpenSearch (osmem).

No store is mocked. Every test writes under names of its own (table, bucket, index prefix).
Helpers here (make_config, make_vcons, the counters) are shared with test_fanout.py.
"""

from __future__ import annotations

import json
import random
import urllib.request

import orjson
import psycopg
import pytest

from conserver.config import ConfigError, config_from_mapping
from conserver.storage import Sink, StoreError, load_sinks
from conserver.storage.elasticsearch import ElasticsearchSink
from conserver.storage.null import NullSink
from conserver.storage.postgres import PostgresSink
from conserver.storage.s3 import S3Sink
from conserver.dev.samples import sample_vcon
from conserver.vcon import Vcon, parse_vcon
from tests.helpers.vcon_server_reads import es_documents, vcon_server_view

STORES = ("postgres", "s3", "elasticsearch")

# ----------------------------------------------------------------------------- helpers


def make_config(stack_env: dict, **settings: str):
    return config_from_mapping({**stack_env, "CONSERVER_STORE_TIMEOUT": "5s", **settings})


def make_vcons(n: int, seed: int = 0, **changes) -> list[Vcon]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        data = sample_vcon(rng)
        data.update(changes)
        out.append(parse_vcon(orjson.dumps(data), None, 0))
    return out


def vcon_from(data: dict) -> Vcon:
    return parse_vcon(orjson.dumps(data), None, 0)


def pg_rows(config, uuid: str | None = None) -> int:
    with psycopg.connect(config.postgres_dsn) as conn:
        if uuid is None:
            return conn.execute(f'SELECT count(*) FROM "{config.postgres_table}"').fetchone()[0]
        return conn.execute(f'SELECT count(*) FROM "{config.postgres_table}" WHERE uuid = %s', [uuid]).fetchone()[0]


def pg_updated_at(config) -> dict[str, object]:
    with psycopg.connect(config.postgres_dsn) as conn:
        return dict(conn.execute(f'SELECT id::text, updated_at FROM "{config.postgres_table}"').fetchall())


def s3_keys(s3_server, config) -> list[str]:
    client = s3_server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=config.s3_bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def es_request(os_server, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(os_server.url + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def es_count(os_server, index: str, query: str | None = None) -> int:
    es_request(os_server, "POST", f"/{index}/_refresh")
    return es_request(os_server, "GET", f"/{index}/_count" + (f"?q={query}" if query else ""))["count"]


def expected_fetch(sink: Sink, data: dict) -> dict | None:
    """What ``sink.fetch`` gives back: what vcon-server stores (PostgreSQL, S3) or, without the vCon
    index, vcon-server's part documents put back in place, without the fields the store adds."""
    stored = vcon_server_view(data)
    if not isinstance(sink, ElasticsearchSink):
        return stored
    if sink.vcon_index:
        return stored
    docs = es_documents(stored, data["uuid"], sink.prefix)
    added = ("vcon_id", "started_at", "tenant_id")
    return {"uuid": data["uuid"], **{
        field: [{k: v for k, v in doc.items() if k not in added} for index, _, doc in docs
                if index.startswith(f"{sink.prefix}vcon_{field}")]
        for field in ("parties", "attachments", "analysis", "dialog")}} if docs else None


def part_count(vcons: list[Vcon], prefix: str = "") -> int:
    """vcon-server's part documents for these vCons."""
    return sum(len(es_documents(vcon_server_view(v.data), v.uuid, prefix)) for v in vcons)


def opened(config, name: str) -> Sink:
    (sink,) = load_sinks([name], config)
    sink.open()
    sink.ensure_schema()
    return sink


@pytest.fixture
def config(stack_env):
    return make_config(stack_env)


@pytest.fixture(params=STORES)
def sink(request, config):
    sink = opened(config, request.param)
    yield sink
    sink.close()


# ------------------------------------------------------------------- every store


def test_write_batch_then_fetch_returns_the_same_vcon(sink):
    vcons = make_vcons(12, seed=1)
    assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}
    for v in vcons:
        assert sink.fetch(v.uuid) == expected_fetch(sink, v.data)
    assert sink.fetch("00000000-0000-4000-8000-000000000000") is None


def test_writing_twice_leaves_one_copy(sink, config, pg_server, s3_server, os_server):
    vcons = make_vcons(10, seed=2)
    again = make_vcons(3, seed=2)  # the same uuids and content
    assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}
    assert sink.write_batch(vcons[:5] + again + [vcons[0]]) == {v.uuid: None for v in vcons[:5]}  # a uuid twice in one batch
    if sink.name == "postgres":
        assert pg_rows(config) == 10
        assert all(pg_rows(config, v.uuid) == 1 for v in vcons)
    elif sink.name == "s3":
        keys = s3_keys(s3_server, config)
        assert len(keys) == 20
        for v in vcons:
            main = f"{v.created_at:%Y/%m/%d}/{v.uuid}.vcon"
            assert main in keys and f"lookup/{v.uuid}.txt" in keys
    else:
        assert es_count(os_server, f"{sink.prefix}vcon*") == part_count(vcons)
        assert all(es_count(os_server, f"{sink.prefix}vcon_dialog", f"vcon_id:{v.uuid}") == 2 for v in vcons)


def test_ensure_schema_is_idempotent(sink):
    sink.ensure_schema()
    sink.ensure_schema()
    vcons = make_vcons(2, seed=3)
    assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}


# --------------------------------------------------------------------- postgres


def test_postgres_table_is_vcon_server_compatible(config):
    sink = opened(config, "postgres")
    try:
        v = make_vcons(1, seed=4)[0]
        sink.write_batch([v])
        with psycopg.connect(config.postgres_dsn) as conn:
            columns = conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position", [config.postgres_table],
            ).fetchall()
            row = conn.execute(f'SELECT id::text, vcon, uuid::text, created_at, updated_at, subject, vcon_json '
                               f'FROM "{config.postgres_table}"').fetchone()
    finally:
        sink.close()
    assert columns == [  # vcon-server's peewee model
        ("id", "uuid", "NO"), ("vcon", "text", "NO"), ("uuid", "uuid", "NO"),
        ("created_at", "timestamp without time zone", "NO"), ("updated_at", "timestamp without time zone", "YES"),
        ("subject", "text", "YES"), ("vcon_json", "jsonb", "YES"),
    ]  # fmt: skip
    assert row[:3] == (v.uuid, "0.0.1", v.uuid) and row[5] == v.subject
    assert row[3] == v.created_at.replace(tzinfo=None) and row[4] is not None  # the samples are written in UTC
    assert row[6] == vcon_server_view(v.data) and "mediatype" in row[6]["dialog"][0]


def test_postgres_bad_row_fails_alone_and_permanently(config):
    sink = opened(config, "postgres")
    try:
        good = make_vcons(4, seed=5)
        bad = vcon_from({**sample_vcon(random.Random(6)), "subject": "nul \u0000 inside"})  # jsonb refuses \u0000
        result = sink.write_batch(good[:2] + [bad] + good[2:])
        assert {u: e for u, e in result.items() if e is None} == {v.uuid: None for v in good}
        assert isinstance(result[bad.uuid], psycopg.DataError)
        assert not sink.is_transient(result[bad.uuid])
        assert pg_rows(config) == 4
    finally:
        sink.close()


# --------------------------------------------------------------------------- s3


def test_s3_objects_keys_content_type_and_prefix(stack_env, s3_server):
    config = make_config(stack_env, S3_PREFIX="archive")  # vcon-server's s3_path: one '/' follows it
    sink = opened(config, "s3")
    try:
        v = make_vcons(1, seed=7)[0]
        assert sink.write_batch([v]) == {v.uuid: None}
        assert sink.fetch(v.uuid) == vcon_server_view(v.data)
    finally:
        sink.close()
    key = f"archive/{v.created_at:%Y/%m/%d}/{v.uuid}.vcon"
    client = s3_server.client()
    main = client.get_object(Bucket=config.s3_bucket, Key=key)
    assert main["ContentType"] == "application/json" and json.loads(main["Body"].read()) == vcon_server_view(v.data)
    lookup = client.get_object(Bucket=config.s3_bucket, Key=f"archive/lookup/{v.uuid}.txt")
    assert lookup["Body"].read().decode() == f"{v.created_at:%Y/%m/%d}"


def test_s3_ensure_schema_creates_a_missing_bucket(stack_env, s3_server):
    bucket = stack_env["S3_BUCKET"] + "-new"
    config = make_config(stack_env, S3_BUCKET=bucket, S3_CREATE_BUCKET="true")
    sink = S3Sink(config)
    sink.ensure_schema()
    sink.ensure_schema()
    assert bucket in [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]


# ------------------------------------------------------------------ elasticsearch


def test_elasticsearch_vcon_index_document_fields_and_mapping(stack_env, os_server):
    config = make_config(stack_env, ELASTICSEARCH_VCON_INDEX="true")
    sink = opened(config, "elasticsearch")
    try:
        v = make_vcons(1, seed=8)[0]
        sink.write_batch([v])
        doc = es_request(os_server, "GET", f"/{sink.index}/_doc/{v.uuid}")["_source"]
        mapping = es_request(os_server, "GET", f"/{sink.index}/_mapping")[sink.index]["mappings"]
    finally:
        sink.close()
    earliest = min(d["start"] for d in v.data["dialog"])
    assert doc == {**vcon_server_view(v.data), "vcon_id": v.uuid, "tenant_id": v.tenant, "started_at": earliest}
    assert mapping["properties"]["tenant_id"] == {"type": "keyword"}
    assert str(mapping["dynamic"]).lower() == "false"
    assert es_count(os_server, f"{config.elasticsearch_index_prefix}vcon_dialog") == 2  # the parts as well


def test_elasticsearch_part_indices(config, os_server):
    sink = opened(config, "elasticsearch")  # the default layout
    p = config.elasticsearch_index_prefix
    try:
        vcons = make_vcons(6, seed=9)
        assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}
        assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}  # again: no duplicates
    finally:
        sink.close()
    parties = [(v.uuid, i, party) for v in vcons for i, party in enumerate(v.data["parties"])]
    assert es_count(os_server, f"{p}vcon_parties_customer") == sum(1 for *_, x in parties if x["role"] == "customer")
    assert es_count(os_server, f"{p}vcon_parties_agent") == sum(1 for *_, x in parties if x["role"] == "agent")
    assert es_count(os_server, f"{p}vcon_dialog") == sum(len(v.data["dialog"]) for v in vcons)
    assert es_count(os_server, f"{p}vcon_analysis_summary") == 6
    assert es_count(os_server, f"{p}vcon_attachments_tenant") == 6
    assert es_count(os_server, f"{p}vcon*") == part_count(vcons)  # and no {p}vcons document
    v = vcons[0]
    party = es_request(os_server, "GET", f"/{p}vcon_parties_agent/_doc/{v.uuid}_1")["_source"]
    assert party == {**v.data["parties"][1], "tenant_id": v.tenant, "vcon_id": v.uuid,
                     "started_at": v.data["dialog"][0]["start"]}
    sentiment = es_request(os_server, "GET", f"/{p}vcon_analysis_sentiment/_doc/{v.uuid}_1")["_source"]
    assert sentiment["body"] == v.data["analysis"][1]["body"]
    template = es_request(os_server, "GET", f"/_index_template/{p}vcon-parts")["index_templates"][0]
    assert f"{p}vcon_parties*" in template["index_template"]["index_patterns"]
    mapping = es_request(os_server, "GET", f"/{p}vcon_dialog/_mapping")[f"{p}vcon_dialog"]["mappings"]
    assert mapping["properties"]["vcon_id"] == {"type": "keyword", "fields": {"keyword": {"type": "keyword"}}}


def test_elasticsearch_item_errors_map_to_their_vcon(stack_env):
    # the vCon index maps parties.tel as a keyword, which an object cannot be
    sink = opened(make_config(stack_env, ELASTICSEARCH_VCON_INDEX="true"), "elasticsearch")
    try:
        good = make_vcons(3, seed=10)
        data = sample_vcon(random.Random(11))
        data["parties"][0]["tel"] = {"not": "a keyword"}  # mapper_parsing_exception, 400
        bad = vcon_from(data)
        result = sink.write_batch(good + [bad])
    finally:
        sink.close()
    assert all(result[v.uuid] is None for v in good)
    error = result[bad.uuid]
    assert isinstance(error, StoreError) and error.status == 400 and "mapper_parsing_exception" in str(error)
    assert not sink.is_transient(error)
    assert sink.is_transient(StoreError("429 es_rejected_execution_exception", transient=True, status=429))


def test_elasticsearch_splits_a_batch_too_large_for_one_request(config, os_server, monkeypatch):
    import conserver.storage.elasticsearch as es

    sink = opened(config, "elasticsearch")
    requests = []
    bulk = sink._bulk
    monkeypatch.setattr(sink, "_bulk", lambda lines, owners, result: (requests.append(len(owners)), bulk(lines, owners, result)))
    monkeypatch.setattr(es, "MAX_BULK_BYTES", 12000)  # the part documents of about three vCons
    try:
        vcons = make_vcons(10, seed=15)
        assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}
    finally:
        sink.close()
    assert len(requests) > 2 and sum(requests) == part_count(vcons)  # the documents, each sent once
    assert es_count(os_server, f"{sink.prefix}vcon*") == part_count(vcons)


# ------------------------------------------------------------------------ loading


def test_load_sinks_builtin_and_custom_import_path(config):
    sinks = load_sinks(["postgres", "s3", "elasticsearch", "null", "tests.helpers.faulty_store:FaultyStore"], config)
    assert [type(s) for s in sinks[:4]] == [PostgresSink, S3Sink, ElasticsearchSink, NullSink]
    assert [s.name for s in sinks] == ["postgres", "s3", "elasticsearch", "null", "tests.helpers.faulty_store:FaultyStore"]
    from tests.helpers.faulty_store import FaultyStore

    assert isinstance(sinks[4], FaultyStore)
    for bad in ("tests.nowhere:Store", "tests.helpers.faulty_store:Missing", "conserver.config:Config", "no-colon"):
        with pytest.raises(ConfigError):
            load_sinks([bad], config)


def test_null_sink_accepts_everything(config):
    (sink,) = load_sinks(["null"], config)
    vcons = make_vcons(3)
    assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}


# --------------------------------------------------------- a stopped store is transient


def _failure(sink: Sink, vcons: list[Vcon]) -> BaseException:
    try:
        result = sink.write_batch(vcons)
    except Exception as exc:
        return exc
    errors = [e for e in result.values() if e is not None]
    assert len(errors) == len(vcons), result
    return errors[0]


@pytest.mark.parametrize("store", STORES)
def test_a_stopped_store_fails_transiently_and_recovers(store, stack_env, pg_server, s3_server, os_server):
    server = {"postgres": pg_server, "s3": s3_server, "elasticsearch": os_server}[store]
    # a short timeout bounds the wait for a pooled connection; SeaweedFS needs more than
    # a second for the first PUT into a new bucket, and a stopped one refuses at once
    config = make_config(stack_env, CONSERVER_STORE_TIMEOUT="1s" if store == "postgres" else "5s")
    sink = opened(config, store)
    try:
        assert sink.write_batch(make_vcons(2, seed=12)) == {v.uuid: None for v in make_vcons(2, seed=12)}
        server.stop()
        try:
            error = _failure(sink, make_vcons(3, seed=13))
            assert sink.is_transient(error), repr(error)
        finally:
            server.start()
        if store == "elasticsearch":
            sink.ensure_schema()  # osmem keeps nothing over a restart
        vcons = make_vcons(3, seed=14)
        assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}  # stale connections replaced
    finally:
        sink.close()

"""The stores write vcon-server's layout: read back with vcon-server's own get()/delete() logic
(tests/vcon_server_reads.py, from vcon-server commit b9b0381), they give what vcon-server itself
would have stored, over vCons with offsets in created_at, roles only in meta, dotted analysis types,
no dialog, JSON-encoded bodies and legacy field names. Real PostgreSQL, SeaweedFS and osmem.
"""

from __future__ import annotations

import json
import random
import uuid as uuid_mod
from datetime import datetime

import psycopg
import pytest
from opensearchpy import OpenSearch

from conserver.cli import main as cli_main
from conserver.dev.samples import sample_vcon
from tests.e2e.test_storage import es_count, expected_fetch, make_config, opened, vcon_from
from tests.helpers.vcon_server_reads import (es_delete, es_documents, pg_delete, pg_expected_created_at, pg_get, s3_delete,
                                     s3_get, s3_key, s3_lookup_key, vcon_server_view)


def drop_in_vcons() -> list[dict]:
    """20 sample vCons (legacy ``mimetype`` in every dialog) and 8 that vcon-server treats specially."""
    rng = random.Random(1401)
    out = [sample_vcon(rng) for _ in range(20)]

    def crafted(**changes) -> dict:
        v = sample_vcon(rng)
        v.update(changes)
        out.append(v)
        return v

    crafted(created_at="2024-05-17T23:30:00-05:00")  # UTC: 2024-05-18
    crafted(created_at="2024-03-01T02:00:00+09:00")  # UTC: 2024-02-29
    crafted(created_at="2024-12-31T23:59:59.123Z")
    crafted(created_at="2024-05-17 23:30:00+05:00")  # peewee reads this one as an aware datetime
    crafted(parties=[{"tel": "+15550001", "meta": {"role": "customer"}}, {"mailto": "a@example.com", "meta": {"role": "agent"}},
                     {"name": "Bot", "role": "agent"}])
    crafted(analysis=[{"type": "llm.summary", "dialog": 0, "vendor": "openai", "encoding": "json",
                       "body": json.dumps({"summary": "refund issued", "topics": ["billing"]})},
                      {"type": "wtf.transcription", "dialog": [0, 1], "vendor": "x", "encoding": "none", "body": "hi"}])
    crafted(dialog=[])
    legacy = crafted(appended={"uuid": str(uuid_mod.UUID(int=rng.getrandbits(128), version=4))}, must_support=["x"])
    legacy["dialog"][0]["mediatype"] = "audio/wav"  # both names: the spec one wins, mimetype is dropped
    legacy["analysis"][0]["schema_version"] = "1.0"
    legacy["attachments"] = [
        {"type": "tags", "encoding": "json", "body": json.dumps(["topic:billing"])},
        {"type": "lawful_basis", "purpose": "consent", "encoding": "json", "body": {"granted": True}},
        {"type": "transcript", "mimetype": "text/plain", "encoding": "none", "body": "hi", "must_support": True},
        {"purpose": "tenant", "encoding": "json", "body": json.dumps({"id": 42})},  # an id that is a number
    ]
    return out


CRAFTED = 20  # index of the first crafted vCon


@pytest.fixture
def dicts() -> list[dict]:
    return drop_in_vcons()


def written(config, store: str, dicts: list[dict]):
    sink = opened(config, store)
    vcons = [vcon_from(d) for d in dicts]
    assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}
    return sink


# ---------------------------------------------------------------------------- PostgreSQL


def test_postgres_rows_are_vcon_server_rows(stack_env, dicts):
    config = make_config(stack_env)
    written(config, "postgres", dicts).close()
    table = config.postgres_table
    with psycopg.connect(config.postgres_dsn, autocommit=True) as conn:
        for d in dicts:
            expected = vcon_server_view(d)
            assert pg_get(conn, table, d["uuid"]) == expected
            row = conn.execute(f'SELECT vcon, uuid::text, created_at, subject, updated_at FROM "{table}" WHERE id = %s',
                               [d["uuid"]]).fetchone()
            assert row[:4] == (expected["vcon"], d["uuid"], pg_expected_created_at(conn, d["created_at"]), d["subject"])
            assert row[4] is not None and row[4].tzinfo is None
        created = dict(conn.execute(f'SELECT id::text, created_at FROM "{table}"').fetchall())
        zone = conn.execute("SELECT current_setting('TimeZone')").fetchone()[0]
        assert created[dicts[CRAFTED]["uuid"]] == datetime(2024, 5, 17, 23, 30)  # as written, not 2024-05-18 04:30
        assert created[dicts[CRAFTED + 2]["uuid"]] == datetime(2024, 12, 31, 23, 59, 59, 123000)
        if zone in ("UTC", "Etc/UTC"):  # the aware form is converted to the session's zone, as psycopg2 does
            assert created[dicts[CRAFTED + 3]["uuid"]] == datetime(2024, 5, 17, 18, 30)
        assert conn.execute(f'SELECT vcon_json->\'dialog\'->0 ? \'mimetype\' FROM "{table}" WHERE id = %s',
                            [dicts[0]["uuid"]]).fetchone()[0] is False
        first = dicts[0]["uuid"]
        assert pg_delete(conn, table, first) and pg_get(conn, table, first) is None and not pg_delete(conn, table, first)


PEEWEE_DDL = ('CREATE TABLE IF NOT EXISTS "vcons" ("id" UUID NOT NULL PRIMARY KEY, "vcon" TEXT NOT NULL, '
              '"uuid" UUID NOT NULL, "created_at" TIMESTAMP NOT NULL, "updated_at" TIMESTAMP, "subject" TEXT, '
              '"vcon_json" JSONB)',
              'CREATE INDEX IF NOT EXISTS "dynamicvcons_vcon_json" ON "vcons" USING GIN ("vcon_json")')


@pytest.fixture
def own_database(pg_server):
    """A database of this test's own, so the table can be vcon-server's default ``vcons``."""
    name = f"vs_{uuid_mod.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _table_shape(conn) -> tuple:
    columns = conn.execute("SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                           "WHERE table_name = 'vcons' ORDER BY ordinal_position").fetchall()
    indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'vcons' ORDER BY 1").fetchall()
    return columns, indexes


def test_a_table_vcon_server_created_is_used_unchanged(stack_env, own_database, dicts, caplog):
    with psycopg.connect(own_database, autocommit=True) as conn:
        for statement in PEEWEE_DDL:  # what peewee 4.0.1 runs for vcon-server's model (checked against peewee)
            conn.execute(statement)
        before = _table_shape(conn)
    config = make_config(stack_env, POSTGRES_DSN=own_database, POSTGRES_TABLE="vcons")
    with caplog.at_level("WARNING", logger="conserver.storage.postgres"):
        sink = written(config, "postgres", dicts)
    try:
        assert sink.migrate(apply=False) == []
        assert not [r for r in caplog.records if "migrate" in r.getMessage()]
    finally:
        sink.close()
    with psycopg.connect(own_database, autocommit=True) as conn:
        assert _table_shape(conn) == before
        assert all(pg_get(conn, "vcons", d["uuid"]) == vcon_server_view(d) for d in dicts)


def test_conserver_creates_the_table_vcon_server_creates(stack_env, own_database, dicts):
    config = make_config(stack_env, POSTGRES_DSN=own_database, POSTGRES_TABLE="vcons")
    written(config, "postgres", dicts[:2]).close()
    with psycopg.connect(own_database, autocommit=True) as conn:
        ours = _table_shape(conn)
        conn.execute('DROP TABLE "vcons"')
        for statement in PEEWEE_DDL:
            conn.execute(statement)
        assert _table_shape(conn) == ours


OLD_CONSERVER_DDL = ('CREATE TABLE "{t}" (id uuid PRIMARY KEY, uuid uuid, vcon text, vcon_json jsonb, subject text, '
                     "created_at timestamptz, updated_at timestamptz)")


def test_migrate_brings_an_earlier_conserver_table_to_vcon_servers_layout(stack_env, dicts, monkeypatch, capsys, caplog):
    config = make_config(stack_env)
    table = config.postgres_table
    with psycopg.connect(config.postgres_dsn, autocommit=True) as conn:
        conn.execute(OLD_CONSERVER_DDL.format(t=table))
        with conn.cursor() as cur:  # rows as conserver wrote them before: the whole JSON twice, created_at in UTC
            cur.executemany(f'INSERT INTO "{table}" VALUES (%s, %s, %s, %s::jsonb, %s, %s, now())',
                            [(d["uuid"], d["uuid"], json.dumps(d), json.dumps(d), d["subject"],
                              vcon_from(d).created_at) for d in dicts])
    with caplog.at_level("WARNING", logger="conserver.storage.postgres"):
        opened(config, "postgres").close()
    assert any("conserver migrate" in r.getMessage() and "timestamptz" in r.getMessage() for r in caplog.records)

    for key, value in {**stack_env, "CONSERVER_STORAGES": "postgres"}.items():
        monkeypatch.setenv(key, value)
    assert cli_main(["migrate", "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "postgres: to do: created_at: timestamptz -> timestamp" in planned
    assert f"in {len(dicts)} rows" in planned  # the vcon column, and the legacy bodies (every sample's mimetype)
    with psycopg.connect(config.postgres_dsn) as conn:  # nothing changed yet
        assert conn.execute(f"SELECT count(*) FROM \"{table}\" WHERE left(vcon, 1) = '{{'").fetchone()[0] == len(dicts)
    assert cli_main(["migrate"]) == 0
    done = capsys.readouterr().out
    assert "postgres: done: created_at" in done and "GIN index" in done
    assert cli_main(["migrate"]) == 0
    assert capsys.readouterr().out == "postgres: ready, nothing to change\n"

    with psycopg.connect(config.postgres_dsn, autocommit=True) as conn:
        types = dict(conn.execute("SELECT column_name, data_type || ':' || is_nullable FROM information_schema.columns "
                                  "WHERE table_name = %s", [table]).fetchall())
        assert types == {"id": "uuid:NO", "vcon": "text:NO", "uuid": "uuid:NO", "created_at": "timestamp without time zone:NO",
                         "updated_at": "timestamp without time zone:YES", "subject": "text:YES", "vcon_json": "jsonb:YES"}
        for d in dicts:
            row = conn.execute(f'SELECT vcon, created_at FROM "{table}" WHERE id = %s', [d["uuid"]]).fetchone()
            assert row == (d["vcon"], pg_expected_created_at(conn, d["created_at"]))
            assert pg_get(conn, table, d["uuid"]) == vcon_server_view(d)
    written(config, "postgres", dicts[:3]).close()  # and conserver writes on into it


# ------------------------------------------------------------------------------------ S3


@pytest.mark.parametrize("s3_path", ["", "archive", "archive/", "a/b//"])
def test_s3_objects_read_back_with_vcon_servers_get_and_delete(stack_env, s3_server, dicts, s3_path):
    config = make_config(stack_env, S3_PREFIX=s3_path)
    written(config, "s3", dicts).close()
    client, bucket = s3_server.client(), config.s3_bucket
    keys = sorted(o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for o in p.get("Contents", []))
    assert keys == sorted([s3_key(d["uuid"], d["created_at"], s3_path) for d in dicts] +
                          [s3_lookup_key(d["uuid"], s3_path) for d in dicts])
    for d in dicts:
        assert s3_get(client, bucket, d["uuid"], s3_path) == vcon_server_view(d)
    offset = dicts[CRAFTED]
    prefix = s3_path.rstrip("/") + "/" if s3_path else ""
    assert f"{prefix}2024/05/17/{offset['uuid']}.vcon" in keys  # the date as written, not UTC's 2024/05/18
    pointer = client.get_object(Bucket=bucket, Key=f"{prefix}lookup/{offset['uuid']}.txt")["Body"].read()
    assert pointer == b"2024/05/17"
    assert s3_delete(client, bucket, offset["uuid"], s3_path) is True
    left = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(left) == len(keys) - 2 and not [k for k in left if offset["uuid"] in k]


@pytest.mark.parametrize("s3_prefix, moved", [("archive/", 2), ("archive", 4)])
def test_migrate_rewrites_an_earlier_conservers_s3_pointers(stack_env, s3_server, dicts, s3_prefix, moved):
    config = make_config(stack_env, S3_PREFIX=s3_prefix)
    client, bucket = s3_server.client(), config.s3_bucket
    old = dicts[CRAFTED:CRAFTED + 4]  # offsets in created_at: two have another date in UTC
    for d in old:  # as conserver wrote them before: S3_PREFIX as it was, the UTC date, the key in the pointer
        key = f"{s3_prefix}{vcon_from(d).created_at:%Y/%m/%d}/{d['uuid']}.vcon"
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(d).encode())
        client.put_object(Bucket=bucket, Key=f"{s3_prefix}lookup/{d['uuid']}.txt", Body=key.encode())
    assert all(s3_get(client, bucket, d["uuid"], s3_prefix) is None for d in old)  # vcon-server finds none
    sink = opened(config, "s3")
    try:
        assert sink.migrate(apply=False) == ["4 lookup pointers holding a whole key: the date path instead"]
        assert sink.migrate() == ["4 lookup pointers holding a whole key: the date path instead; "
                                  f"{moved} vCons moved to the key vcon-server reads"]
        assert sink.migrate() == []
        for d in old:
            assert s3_get(client, bucket, d["uuid"], s3_prefix) == vcon_server_view(d)
            assert sink.fetch(d["uuid"]) == vcon_server_view(d)
    finally:
        sink.close()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == sorted([s3_key(d["uuid"], d["created_at"], s3_prefix) for d in old] +
                          [s3_lookup_key(d["uuid"], s3_prefix) for d in old])


# ------------------------------------------------------------------------- Elasticsearch


def _es(os_server) -> OpenSearch:
    return OpenSearch(hosts=[os_server.url], headers={"accept": "application/json"})


def test_elasticsearch_part_documents_are_vcon_servers(stack_env, os_server, dicts):
    config = make_config(stack_env)
    p = config.elasticsearch_index_prefix
    sink = written(config, "elasticsearch", dicts)
    es = _es(os_server)
    try:
        expected = [doc for d in dicts for doc in es_documents(vcon_server_view(d), d["uuid"], p)]
        assert es_count(os_server, f"{p}vcon*") == len(expected)  # nothing more
        for index, doc_id, doc in expected:
            assert es.get(index=index, id=doc_id)["_source"] == doc, (index, doc_id)
        indices = {index for index, _, _ in expected}
        assert {f"{p}vcon_analysis_llm.summary", f"{p}vcon_parties", f"{p}vcon_attachments_lawful_basis",
                f"{p}vcon_attachments_tags"} <= indices
        assert not any("_supervisor" in i or "llm_summary" in i for i in indices)
        summary = es.get(index=f"{p}vcon_analysis_llm.summary", id=f"{dicts[CRAFTED + 5]['uuid']}_0")["_source"]
        assert summary["body"] == {"summary": "refund issued", "topics": ["billing"]}  # parsed
        assert es.get(index=f"{p}vcon_dialog", id=f"{dicts[0]['uuid']}_0")["_source"]["started_at"] == \
            dicts[0]["dialog"][0]["start"]
        legacy = dicts[CRAFTED + 7]
        assert es.get(index=f"{p}vcon_dialog", id=f"{legacy['uuid']}_0")["_source"]["tenant_id"] == 42
        no_dialog = dicts[CRAFTED + 6]
        assert es_count(os_server, f"{p}vcon*", f"vcon_id:{no_dialog['uuid']}") == 0
        assert sink.fetch(no_dialog["uuid"]) is None
        first = dicts[0]["uuid"]
        mine = [doc for _, _, doc in expected if doc["vcon_id"] == first]
        assert sink.fetch(first) == expected_fetch(sink, dicts[0])
        # vcon-server's delete(): exactly this vCon's documents go (vcon_id is a keyword here)
        assert es_delete(es, first, p) == len(mine)
        assert es_count(os_server, f"{p}vcon*") == len(expected) - len(mine)
    finally:
        sink.close()
        es.close()


def test_elasticsearch_vcon_index_is_an_option_and_migrate_adds_the_parts(stack_env, os_server, dicts):
    p = stack_env["ELASTICSEARCH_INDEX_PREFIX"]
    old = make_config(stack_env, ELASTICSEARCH_PART_INDICES="false", ELASTICSEARCH_VCON_INDEX="true")
    written(old, "elasticsearch", dicts).close()
    assert es_count(os_server, f"{p}vcons") == len(dicts)
    assert es_count(os_server, f"{p}vcon_*") == 0
    sink = opened(make_config(stack_env), "elasticsearch")
    try:
        assert sink.migrate(apply=False) == [f"part documents of the {len(dicts)} vCons in {p}vcons: to be indexed"]
        assert sink.migrate()[0].startswith(f"part documents of the {len(dicts)} vCons in {p}vcons: indexed")
    finally:
        sink.close()
    es = _es(os_server)
    try:
        expected = [doc for d in dicts for doc in es_documents(vcon_server_view(d), d["uuid"], p)]
        assert es_count(os_server, f"{p}vcon_*") == len(expected)
        for index, doc_id, doc in expected:
            assert es.get(index=index, id=doc_id)["_source"] == doc
    finally:
        es.close()


def test_index_names_vcon_server_cannot_create_are_folded(stack_env, os_server):
    config = make_config(stack_env)
    p = config.elasticsearch_index_prefix
    d = sample_vcon(random.Random(5))
    d["parties"][1]["role"] = "Team Lead"  # vcon-server: vcon_parties_Team Lead, refused by the server
    d["analysis"][0].pop("type")  # vcon-server: vcon_analysis_None, refused
    written(config, "elasticsearch", [d]).close()
    assert es_count(os_server, f"{p}vcon_parties_team_lead") == 1
    assert es_count(os_server, f"{p}vcon_analysis_none") == 1


def test_the_stores_normalize_legacy_fields_without_touching_the_vcon(stack_env, dicts):
    vcons = [vcon_from(d) for d in dicts]
    before = [json.dumps(v.data) for v in vcons]
    config = make_config(stack_env)
    for store in ("postgres", "s3", "elasticsearch"):
        sink = opened(config, store)
        assert sink.write_batch(vcons) == {v.uuid: None for v in vcons}
        sink.close()
    assert [json.dumps(v.data) for v in vcons] == before  # the fan-out threads share these dicts

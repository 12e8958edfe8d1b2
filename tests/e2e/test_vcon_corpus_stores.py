"""Every published vCon the draft accepts (tests/data/vcons/MANIFEST.json) lands in all three
real stores, signed and encrypted ones as received; every one it refuses is refused with its
reason (issue 13). The path is the pipeline's: parse_vcon, Conformance.admit, the fan-out."""

from __future__ import annotations

import json

import orjson
import psycopg
import pytest

from conserver.conformance import Conformance
from conserver.fanout import Action, Fanout, decide
from conserver.storage import load_sinks
from conserver.storage.compat import normalize_legacy_fields
from conserver.vcon import InvalidVcon, parse_vcon
from tests.e2e.test_storage import es_request, make_config
from tests.unit.test_vcon_corpus import ANY_ITEM, DATA, LIMIT, MANIFEST

STORES = ("postgres", "s3", "elasticsearch")


@pytest.fixture(scope="module")
def corpus_fanout(request):
    made: list[Fanout] = []

    def make(stack_env):
        # ELASTICSEARCH_VCON_INDEX=true: one document per vCon, so each one is seen indexed
        # (the part indices hold nothing for a vCon without dialog, as vcon-server's)
        config = make_config(stack_env, ELASTICSEARCH_VCON_INDEX="true")
        fanout = Fanout.from_config(load_sinks(STORES, config), config, backoff=0.0, backoff_max=0.0).start()
        fanout.ensure_schemas()
        made.append(fanout)
        return config, fanout

    yield make
    for fanout in made:
        fanout.close()


def test_every_vcon_the_draft_accepts_is_in_every_store_as_received(stack_env, s3_server, os_server, corpus_fanout):
    config, fanout = corpus_fanout(stack_env)
    sinks = {s.name: s for s in fanout.sinks}
    gate = Conformance()
    accepted = refused = 0
    for entry in MANIFEST:
        raw = (DATA / entry["file"]).read_bytes()
        if entry["verdict"] == "refused":
            with pytest.raises(InvalidVcon) as info:
                gate.admit(parse_vcon(raw, entry.get("uuid") or ANY_ITEM, LIMIT))
            assert info.value.reason == entry["reason"], entry["file"]
            refused += 1
            continue
        v = gate.admit(parse_vcon(raw, entry["uuid"], LIMIT))
        outcomes = fanout.store_batch([v])[v.uuid]
        assert decide(outcomes).action is Action.ACK, (entry["file"], outcomes)
        accepted += 1
        # S3: the bytes as received (a signed or encrypted vCon's envelope; an unsigned one
        # normalized only where it has legacy field names, as vcon-server's)
        s3 = s3_server.client()
        # the date path from the lookup pointer, as vcon-server's get() reads it (an encrypted
        # vCon is filed under the day it was stored: not recomputed here, so midnight is no race)
        date_path = s3.get_object(Bucket=config.s3_bucket, Key=sinks["s3"].lookup_key(v.uuid))["Body"].read().decode()
        body = s3.get_object(Bucket=config.s3_bucket, Key=sinks["s3"].key_for(v.uuid, date_path.strip()))["Body"].read()
        readable = v.data if v.form != "unsigned" else normalize_legacy_fields(v.data)
        assert body == (raw if v.form != "unsigned" or readable is v.data else orjson.dumps(readable)), entry["file"]
        # PostgreSQL: the same JSON in vcon_json (jsonb keeps the value, not the bytes)
        with psycopg.connect(config.postgres_dsn) as conn:
            row = conn.execute(f'SELECT vcon, vcon_json, created_at FROM "{config.postgres_table}" WHERE id = %s',
                               [v.uuid]).fetchone()
        assert row[1] == json.loads(body), entry["file"]
        assert row[0] == (readable.get("vcon") if isinstance(readable.get("vcon"), str) else "")
        assert row[2] is not None
        # Elasticsearch: the readable part (a JWS's payload; a JWE's uuid only)
        doc = es_request(os_server, "GET", f"/{sinks['elasticsearch'].index}/_doc/{v.uuid}")["_source"]
        assert doc["vcon_id"] == v.uuid
        if v.form == "encrypted":
            assert set(doc) == {"uuid", "vcon_id", "form"}
        else:
            assert doc["created_at"] == v.data["created_at"]
    assert accepted == sum(e["verdict"] != "refused" for e in MANIFEST) and refused
    assert {e.get("form") for e in MANIFEST if e["verdict"] != "refused"} == {"unsigned", "signed", "encrypted"}

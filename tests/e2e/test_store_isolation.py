"""One bad vCon never takes its batch-mates with it (issue 12), against the real stores.

A vCon a store's client cannot handle (orjson encodes 254 levels of nesting, not 300; a
dialog start in year 1 with an offset overflows ``astimezone``; a ``\\u0000`` jsonb refuses)
is an error for that vCon alone: the stores catch it per vCon, and a call that still fails as
a whole is split by the fan-out until the vCon at fault is found.
"""

from __future__ import annotations

import json
import uuid as uuid_mod

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conserver.fanout import Action, Fanout, decide
from conserver.storage import load_sinks
from conserver.vcon import parse_vcon
from tests.e2e.test_storage import es_request, make_config, make_vcons, pg_rows, s3_keys

REAL = ("postgres", "s3", "elasticsearch")
WHOLE_CALL = "tests.helpers.whole_call_store:WholeCallElasticsearch"


def nested(depth: int) -> dict:
    doc: dict = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"n": doc}
    return doc


def hostile(kind: str, seed: int):
    """A vCon the parser admits but a store's client trips on."""
    (good,) = make_vcons(1, seed=seed)
    data = orjson.loads(good.raw)
    if kind == "deep":  # in a dialog, so the part documents carry it too
        data["dialog"][0]["meta"] = nested(300)
    elif kind == "year_one":
        data["dialog"][0]["start"] = "0001-01-01T00:10:00+05:00"
    elif kind == "nul":  # valid JSON, refused by jsonb
        data["subject"] = "before\u0000after"
    return parse_vcon(json.dumps(data).encode(), None, 0)  # orjson cannot write it either


def open_fanout(config, names=REAL) -> Fanout:
    fanout = Fanout.from_config(load_sinks(names, config), config, backoff=0.0, backoff_max=0.0)
    fanout.start()
    fanout.ensure_schemas()
    return fanout


def es_vcon_ids(os_server, prefix: str) -> set[str]:
    es_request(os_server, "POST", f"/{prefix}vcon*/_refresh")
    hits = es_request(os_server, "POST", f"/{prefix}vcon*/_search",
                      {"size": 10000, "_source": ["vcon_id"], "query": {"match_all": {}}})["hits"]["hits"]
    return {h["_source"]["vcon_id"] for h in hits}


def stored_everywhere(config, s3_server, os_server, uuids: set[str]) -> set[str]:
    """The uuids that have a row in PostgreSQL, an object in S3 and documents in Elasticsearch."""
    s3 = {k.rsplit("/", 1)[1].split(".")[0] for k in s3_keys(s3_server, config) if k.endswith(".vcon")}
    es = es_vcon_ids(os_server, config.elasticsearch_index_prefix)
    return {u for u in uuids if pg_rows(config, u) == 1 and u in s3 and u in es}


def test_a_batch_of_50_with_two_hostile_vcons_stores_48(stack_env, s3_server, os_server):
    # ELASTICSEARCH_VCON_INDEX=true: the vCon index is where started_at (astimezone) is computed
    config = make_config(stack_env, ELASTICSEARCH_VCON_INDEX="true")
    bad = [hostile("deep", 1000), hostile("year_one", 1001)]
    batch = make_vcons(48) + bad
    batch = batch[:20] + [bad[0]] + batch[20:40] + [bad[1]] + batch[40:48]
    with open_fanout(config) as fanout:
        outcomes = fanout.store_batch(batch)
    verdicts = {u: decide(o).action for u, o in outcomes.items()}
    assert {u for u, a in verdicts.items() if a is Action.DEAD_LETTER} == {v.uuid for v in bad}
    assert sum(a is Action.ACK for a in verdicts.values()) == 48
    good = {v.uuid for v in batch} - {v.uuid for v in bad}
    assert stored_everywhere(config, s3_server, os_server, good) == good
    # refused for their content: the deep one by every store that must encode it again (its
    # legacy attachment field is renamed), the year-1 one by Elasticsearch alone
    assert {s: o.status.value for s, o in outcomes[bad[0].uuid].items()} == dict.fromkeys(REAL, "permanent")
    assert {s: o.status.value for s, o in outcomes[bad[1].uuid].items()} == \
        {"postgres": "ok", "s3": "ok", "elasticsearch": "permanent"}


def test_a_call_that_fails_as_a_whole_is_split_down_to_the_bad_vcon(stack_env, os_server):
    config = make_config(stack_env)
    batch = make_vcons(15, seed=7) + [hostile("deep", 99)]
    with open_fanout(config, names=(WHOLE_CALL,)) as fanout:
        outcomes = fanout.store_batch(batch)
        (store,) = fanout.sinks
    statuses = {u: o[WHOLE_CALL].status.value for u, o in outcomes.items()}
    assert statuses == {**{v.uuid: "ok" for v in batch[:15]}, batch[15].uuid: "permanent"}
    assert store.calls[0] == 16 and len(store.calls) > 2  # the whole batch, then its halves
    assert es_vcon_ids(os_server, config.elasticsearch_index_prefix) == {v.uuid for v in batch[:15]}


def test_a_store_that_returns_nothing_for_a_good_vcon_is_not_split(stack_env):
    # a transient whole-call failure is retried, never split (it is nobody's content)
    config = make_config(stack_env, CONSERVER_STORE_RETRIES="0")
    with open_fanout(config, names=("tests.helpers.faulty_store:FaultyStore",)) as fanout:
        (store,) = fanout.sinks
        store.mode = "down"
        outcomes = fanout.store_batch(make_vcons(8))
    assert store.calls and all(len(c) == 8 for c in store.calls)
    assert {o[store.name].status.value for o in outcomes.values()} == {"transient"}


KINDS = st.sampled_from(("deep", "year_one", "nul"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_good=st.integers(1, 30), bad_kinds=st.lists(KINDS, min_size=1, max_size=4), where=st.randoms())
def test_every_good_vcon_of_a_batch_with_hostile_ones_is_stored(stack_env, s3_server, os_server, n_good,
                                                                bad_kinds, where):
    config = make_config(stack_env, ELASTICSEARCH_VCON_INDEX="true",
                         POSTGRES_TABLE=f"t_{uuid_mod.uuid4().hex[:12]}")
    seed = where.randrange(1 << 30)
    good = make_vcons(n_good, seed=seed)
    bad = [hostile(kind, seed + 10_000 + i) for i, kind in enumerate(bad_kinds)]
    batch = good + bad
    where.shuffle(batch)
    with open_fanout(config) as fanout:
        outcomes = fanout.store_batch(batch)
    good_uuids = {v.uuid for v in good}
    assert stored_everywhere(config, s3_server, os_server, good_uuids) == good_uuids
    assert all(decide(outcomes[u]).action is Action.ACK for u in good_uuids)
    for v in bad:  # refused for its content, not deferred: retrying would never help
        assert decide(outcomes[v.uuid]).action is Action.DEAD_LETTER, outcomes[v.uuid]

"""Index names derived from content are bounded (issue 12): 200 analysis types, 100 indices."""

from __future__ import annotations

import logging

import orjson
from prometheus_client import CollectorRegistry

from conserver.storage.index_cap import overflow_counter
from tests.e2e.test_storage import es_count, es_request, make_config, make_vcons, opened
from conserver.vcon import parse_vcon


def with_analysis_type(v, kind: str):
    data = orjson.loads(v.raw)
    data["analysis"] = [{"type": kind, "dialog": 0, "vendor": "test", "body": "b", "encoding": "none"}]
    return parse_vcon(orjson.dumps(data), None, 0)


def test_200_analysis_types_make_at_most_100_derived_indices_and_lose_no_document(stack_env, os_server, caplog):
    config = make_config(stack_env)
    assert config.es_max_derived_indices == 100  # the default
    prefix = config.elasticsearch_index_prefix
    sink = opened(config, "elasticsearch")
    registry = CollectorRegistry()
    sink.index_cap.counter = overflow_counter(registry)
    vcons = [with_analysis_type(v, f"kind{i}") for i, v in enumerate(make_vcons(200, seed=3))]
    try:
        with caplog.at_level(logging.WARNING, "conserver.storage.elasticsearch"):
            for start in range(0, 200, 50):
                assert set(sink.write_batch(vcons[start:start + 50]).values()) == {None}
    finally:
        sink.close()
    names = set(es_request(os_server, "GET", f"/{prefix}vcon_*"))
    derived = {n for n in names if n.startswith((f"{prefix}vcon_parties_", f"{prefix}vcon_attachments_",
                                                 f"{prefix}vcon_analysis_")) and not n.endswith("_overflow")}
    assert len(derived) == 100
    overflow = f"{prefix}vcon_analysis_overflow"
    parties_and_attachments = len({n for n in derived if "_analysis_" not in n})
    assert overflow in names
    assert es_count(os_server, overflow) == 200 - (100 - parties_and_attachments)
    assert es_count(os_server, f"{prefix}vcon_analysis*") == 200  # every analysis document is somewhere
    assert len([r for r in caplog.records if "CONSERVER_ES_MAX_DERIVED_INDICES" in r.getMessage()]) == 1
    assert registry.get_sample_value("conserver_es_overflow_documents_total", {"kind": "vcon_analysis"}) == \
        es_count(os_server, overflow)

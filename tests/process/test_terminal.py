"""Ctrl-C in a terminal: conserver as the foreground process group of a real pseudo-terminal.

The terminal's SIGINT reaches the master and every worker at once; a wrapper (make, a
script) may send its own SIGTERM with it. Either way it is one drain request: exit 0,
nothing lost, no worker SIGKILLed.
"""
from __future__ import annotations

import json
import signal

import pytest

from tests.helpers.stores import enqueue_samples, queue_for

SLOW_STORE = "tests.helpers.faulty_store:FaultyStore"


def stored_uuids(calls_log) -> set[str]:
    calls = [json.loads(line) for line in calls_log.read_text().splitlines()]
    return {u for call in calls for u in call["uuids"] if u not in call["failed"]}


@pytest.mark.parametrize("wrapper_sigterm", [False, True], ids=["ctrl-c", "ctrl-c-and-a-wrappers-sigterm"])
def test_ctrl_c_drains_1000_vcons_in_flight(start_conserver, redis_url, tmp_path, wrapper_sigterm):
    calls = tmp_path / "calls.jsonl"
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "2", "CONSERVER_STORAGES": SLOW_STORE,
           "CONSERVER_STORE_FAULTY_MODE": "slow:0.3", "CONSERVER_STORE_FAULTY_LOG": str(calls)}
    cfg, queue = queue_for(env)
    sent = {v["uuid"] for v in enqueue_samples(queue, 1000)}
    c = start_conserver(env, terminal=True)
    c.wait_workers(2, state="busy", timeout=30)
    c.ctrl_c()
    if wrapper_sigterm:
        c.signal(signal.SIGTERM)
    assert c.wait(cfg.graceful_timeout + 10) == 0, c.log()[-3000:]
    log = c.log()
    assert "SIGKILL" not in log and "stopping at once" not in log, log[-3000:]
    if wrapper_sigterm:  # whichever the master saw first began the drain; the other joined it
        assert log.count(": draining 4 processes") == 1 and "the same request, still draining" in log, log[-3000:]
    else:
        assert "SIGINT: draining 4 processes" in log, log[-3000:]
    depths = queue.depths()
    waiting = {v.decode() for v in queue.redis.lrange("default", 0, -1)}
    done = stored_uuids(calls)
    assert depths["processing"] == 0 and depths["delayed"] == 0 and sum(depths["dlq"].values()) == 0
    assert done | waiting == sent and waiting and done  # stopped mid-run, nothing lost

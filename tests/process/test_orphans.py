"""The master ``kill -9``ed while its workers hang in a store call: the orphans end within
CONSERVER_STORE_TIMEOUT (shipped default, 10 s) and their claims come back."""
from __future__ import annotations

import json
import signal
import time

from tests.helpers.proc import gone, wait_for
from tests.helpers.stores import enqueue_samples, queue_for, wait_drained

HANGING_STORE = "tests.helpers.faulty_store:FaultyStore"
MARGIN = 3.0  # a loaded 2-core machine: process exit and reaping


def test_orphaned_workers_blocked_in_a_hanging_store_exit_and_give_their_claims_back(
        start_conserver, redis_url, tmp_path):
    control, calls = tmp_path / "mode", tmp_path / "calls.jsonl"
    control.write_text("slow:3600")  # a write that never returns
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "2", "CONSERVER_STORAGES": HANGING_STORE,
           "CONSERVER_STORE_FAULTY_CONTROL": str(control), "CONSERVER_STORE_FAULTY_LOG": str(calls)}
    cfg, queue = queue_for(env)
    sent = {v["uuid"] for v in enqueue_samples(queue, 200)}
    a = start_conserver(env)
    a.wait_workers(2, state="busy", timeout=30)
    held = wait_for(lambda: queue.depths()["processing"] >= 2 * cfg.batch_size and queue.depths()["processing"],
                    10, what="both workers holding a batch")
    children = [p for p in a.all_pids() if p != a.pid]
    a.signal(signal.SIGKILL)
    killed = time.monotonic()
    a.wait(5)
    wait_for(lambda: gone(children), cfg.store_timeout + MARGIN, interval=0.1, what="every orphan gone")
    took = time.monotonic() - killed
    assert took <= cfg.store_timeout + MARGIN
    d = queue.depths()
    assert d["processing"] == 0 and d["lists"]["default"] == len(sent), (held, d)  # given back by the orphans
    assert a.log().count("is gone and this worker is still busy") == 2
    print(f"\nORPHANS: 2 workers held {held} claims; gone {took:.1f}s after the master's SIGKILL "
          f"(CONSERVER_STORE_TIMEOUT={cfg.store_timeout:g}s)")

    control.write_text("ok")
    b = start_conserver(env)
    wait_drained(queue, 60)
    stored = {u for line in calls.read_text().splitlines() for u in json.loads(line)["uuids"]
              if json.loads(line)["mode"] == "ok"}
    assert stored == sent and sum(queue.depths()["dlq"].values()) == 0
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0

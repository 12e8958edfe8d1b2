"""A producer pushing the same uuid again and again (issue 12): real workers take the copies
as one delivery, dead-letter none of them as poison, and store the newest body last."""

from __future__ import annotations

import random

import orjson

from conserver.dev.samples import sample_vcon
from conserver.queue.admin import QueueAdmin
from tests.helpers.ledger_store import read_ledger
from tests.helpers.proc import wait_for
from tests.helpers.stores import drained

COPIES, UUIDS = 8, 50


def test_same_uuid_pushed_8_times_is_one_delivery(redis_url, start_conserver, tmp_path):
    import redis

    client = redis.Redis.from_url(redis_url)
    admin = QueueAdmin(client, ["default"])
    ledger = tmp_path / "ledger.jsonl"
    rng = random.Random(12)
    docs = [sample_vcon(rng) for _ in range(UUIDS)]

    def push(version: int, batch: list[dict]) -> None:  # a newer body, then the uuid again
        admin.enqueue("default", [(d["uuid"], orjson.dumps({**d, "subject": f"v{version}"})) for d in batch])

    for d in docs:  # a producer retrying each one 8 times before any worker runs: adjacent copies
        for version in range(1, COPIES + 1):
            push(version, [d])
    c = start_conserver({
        "REDIS_URL": redis_url,
        "CONSERVER_WORKERS": "2",  # as conf/conserver.env.example is used in issue 12
        "CONSERVER_ENABLE_SCHEDULER": "true",  # the shipped default: it moves waiting copies back
        "CONSERVER_STORAGES": "tests.helpers.ledger_store:LedgerStore",
        "CONSERVER_STORE_LEDGER_FILE": str(ledger),
    })
    c.wait_workers(2)
    for version in range(COPIES + 1, 2 * COPIES + 1):  # and 8 times more while they run
        for lo in range(0, UUIDS, 10):
            push(version, docs[lo:lo + 10])
    wait_for(lambda: drained(admin), 60, interval=0.2, what="every copy resolved")
    assert admin.dlq_list() == [], c.log()
    last: dict[str, str] = {}
    for entry in read_ledger(ledger):
        last[entry["uuid"]] = entry["subject"]
    assert last == {d["uuid"]: f"v{2 * COPIES}" for d in docs}
    assert c.proc.poll() is None
    client.close()

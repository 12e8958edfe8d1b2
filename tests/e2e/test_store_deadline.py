"""A store that hangs is cut off by the fan-out's deadline (issue 12), with a real ``conserver run``.

A PostgreSQL stopped with SIGSTOP still accepts TCP (the kernel completes the handshake and
acknowledges the data), so no client-side socket timeout fires and statement_timeout is the
stopped server's: without a deadline of its own every worker waits on it for as long as it
is stopped, and S3 and Elasticsearch wait with it.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

from conserver.dev.devstack import PostgresServer
from tests.helpers.proc import wait_for
from tests.helpers.stores import StoreReader, census, enqueue_samples, queue_for, wait_all_stored, wait_drained

STOPPED_FOR = 25.0  # seconds PostgreSQL is stopped


def freeze(pid: int, sig: int) -> None:
    """``sig`` to the postmaster and every backend it forked."""
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def test_a_hung_postgres_is_cut_off_while_s3_and_elasticsearch_keep_committing(start_conserver, stack_env):
    # CONSERVER_STORE_TIMEOUT=3s (the default is 10s): the breaker opens after five failed
    # calls, which must happen inside the 25 s the server is stopped (3 s, not less: a _bulk
    # to osmem on a loaded 2-core machine can take 2 s). Everything else is at
    # its default (breaker threshold 5, reset 60 s; 3 store retries; MAX_RETRIES 3).
    with PostgresServer() as pg:
        env = {**stack_env, "POSTGRES_DSN": pg.dsn, "CONSERVER_WORKERS": "2", "CONSERVER_STORE_TIMEOUT": "3s",
               "CONSERVER_ENABLE_SCHEDULER": "true"}  # the default (the test helper turns it off)
        cfg, queue = queue_for(env)
        c = start_conserver(env)
        first = enqueue_samples(queue, 200)
        reader = StoreReader(cfg)
        try:
            wait_drained(queue, 60)  # PostgreSQL is stopped under load from a steady state
            stopped_at = time.monotonic()
            freeze(pg.pid, signal.SIGSTOP)
            try:
                rest = enqueue_samples(queue, 400)
                c.wait_log("circuit breaker postgres: closed -> open", timeout=STOPPED_FOR)
                assert "ran past CONSERVER_STORE_TIMEOUT" in c.log()
                rest_ids = {v["uuid"] for v in rest}

                def s3_and_es_have_the_rest():
                    held = census(cfg, ("s3", "elasticsearch"))
                    return all(rest_ids <= set(ids) for ids in held.values())

                # the other stores commit while PostgreSQL is still stopped
                wait_for(s3_and_es_have_the_rest, max(1.0, STOPPED_FOR - (time.monotonic() - stopped_at)),
                         interval=0.5, what="S3 and Elasticsearch holding the vCons sent while PostgreSQL hangs")
                left = STOPPED_FOR - (time.monotonic() - stopped_at)
                if left > 0:
                    time.sleep(left)
            finally:
                freeze(pg.pid, signal.SIGCONT)
            # the breaker half-opens after CIRCUIT_BREAKER_TIMEOUT (60 s), its probe closes it
            wait_drained(queue, 150)
            found = wait_all_stored(reader, rest_ids | {v["uuid"] for v in first}, 30)
            for name, ids in found.items():
                assert sorted(ids) == sorted(v["uuid"] for v in first + rest), name  # each once
            assert queue.depths()["dlq"] == {"default": 0}
            assert c.proc.poll() is None and "crash loop" not in c.log()
            sent, stored = len(first) + len(rest), len(found["postgres"])
            print(f"\nsummary: sent={sent} stored={stored} lost={sent - stored} dead-lettered=0 "
                  f"(PostgreSQL SIGSTOPped {STOPPED_FOR:g}s, CONSERVER_STORE_TIMEOUT=3s)")
        finally:
            reader.close()

"""fanout.py with the real stores (conftest.py servers) and tests/faulty_store.py for the faults."""

from __future__ import annotations

import threading
import time

import pytest

from conserver.fanout import ALREADY_DONE, BREAKER_OPEN, Action, Fanout, Outcome, Status, decide
from conserver.storage import StoreError, load_sinks
from tests.e2e.test_storage import es_count, make_config, make_vcons, part_count, pg_rows, pg_updated_at, s3_keys
from tests.helpers.faulty_store import FaultyStore

FAULTY = "tests.helpers.faulty_store:FaultyStore"
REAL = ("postgres", "s3", "elasticsearch")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_fanout(config, names=(*REAL, FAULTY), **options) -> Fanout:
    settings = dict(parallel=True, retries=1, backoff=0.0, backoff_max=0.0, breaker_threshold=5, breaker_timeout=30)
    settings.update(options)
    fanout = Fanout(load_sinks(names, config), **settings)
    fanout.start()
    fanout.ensure_schemas()
    return fanout


def faulty(fanout: Fanout) -> FaultyStore:
    (store,) = [s for s in fanout.sinks if isinstance(s, FaultyStore)]
    return store


@pytest.fixture
def config(stack_env):
    return make_config(stack_env)


@pytest.fixture
def fanout(config):
    fanout = make_fanout(config)
    yield fanout
    fanout.close()


def assert_all_stored(config, fanout, s3_server, os_server, vcons) -> None:
    uuids = {v.uuid for v in vcons}
    assert pg_rows(config) == len(vcons)
    assert len(s3_keys(s3_server, config)) == 2 * len(vcons)
    assert es_count(os_server, f"{config.elasticsearch_index_prefix}vcon*") == part_count(vcons)
    assert set(faulty(fanout).stored) == uuids


# ------------------------------------------------------------------------------ decide


def test_decide():
    ok, transient = Outcome(Status.OK, None, 1), Outcome(Status.TRANSIENT, TimeoutError(), 2)
    permanent = Outcome(Status.PERMANENT, ValueError(), 1)
    assert decide({"a": ok, "b": ALREADY_DONE}).action is Action.ACK
    v = decide({"a": ok, "b": transient, "c": BREAKER_OPEN})
    assert (v.action, v.count_attempt, v.done) == (Action.DEFER, True, {"a"})
    assert set(v.errors) == {"b"}
    v = decide({"a": ok, "c": BREAKER_OPEN})
    assert (v.action, v.count_attempt) == (Action.DEFER, False)  # not tried: no attempt used up
    assert decide({"a": transient, "b": permanent}).action is Action.DEAD_LETTER


# ------------------------------------------------------------------ everything stored


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
def test_every_store_gets_every_vcon(parallel, config, s3_server, os_server):
    calls: list[tuple] = []
    fanout = make_fanout(config, parallel=parallel, on_store_result=lambda *args: calls.append(args))
    try:
        vcons = make_vcons(25, seed=21)
        results = fanout.store_batch(vcons, {})
    finally:
        fanout.close()
    assert list(results) == [v.uuid for v in vcons]
    for per_store in results.values():
        assert list(per_store) == [*REAL, FAULTY]
        assert all(o.status is Status.OK and o.attempts == 1 for o in per_store.values())
        assert decide(per_store).action is Action.ACK
    assert_all_stored(config, fanout, s3_server, os_server, vcons)
    assert sorted((store, n_ok, n_failed) for store, _, n_ok, n_failed in calls) == sorted((s, 25, 0) for s in (*REAL, FAULTY))
    assert all(seconds > 0 for _, seconds, _, _ in calls)
    assert faulty(fanout).closed == 1


def test_parallel_writes_the_stores_at_the_same_time(config):
    # Two slow stores: together in about the time of one when parallel.
    names = ("null", FAULTY)
    for parallel, bound in ((True, 0.7), (False, None)):
        fanout = make_fanout(config, names=names, parallel=parallel)
        faulty(fanout).mode = "slow:0.4"
        fanout.sinks[0].write_batch = lambda vcons: (time.sleep(0.4), {v.uuid: None for v in vcons})[1]
        try:
            started = time.perf_counter()
            fanout.store_batch(make_vcons(2), {})
            elapsed = time.perf_counter() - started
        finally:
            fanout.close()
        if bound:
            assert elapsed < bound
        else:
            assert elapsed >= 0.8


# --------------------------------------------------------- partial failure and resume


def test_a_failed_store_is_retried_alone_with_already_done(config, fanout, s3_server, os_server):
    store = faulty(fanout)
    store.mode = "down"
    vcons = make_vcons(10, seed=22)
    results = fanout.store_batch(vcons, {})
    for per_store in results.values():
        assert all(per_store[name].status is Status.OK for name in REAL)
        failed = per_store[FAULTY]
        assert failed.status is Status.TRANSIENT and isinstance(failed.error, ConnectionRefusedError)
        assert failed.attempts == 2  # retries=1
        verdict = decide(per_store)
        assert (verdict.action, verdict.count_attempt, verdict.done) == (Action.DEFER, True, frozenset(REAL))
    assert len(store.calls) == 2

    # The worker persisted verdict.done; the next delivery writes the faulty store only.
    before = pg_updated_at(config)
    store.mode = "ok"
    done = {uuid: decide(per_store).done for uuid, per_store in results.items()}
    again = fanout.store_batch(vcons, done)
    for per_store in again.values():
        assert [per_store[name] for name in REAL] == [ALREADY_DONE] * 3
        assert per_store[FAULTY].status is Status.OK
        assert decide(per_store).action is Action.ACK
    assert store.calls[2:] == [[v.uuid for v in vcons]]
    assert pg_updated_at(config) == before  # postgres was not written again
    assert_all_stored(config, fanout, s3_server, os_server, vcons)


def test_only_the_vcons_that_failed_are_retried(config, fanout):
    store = faulty(fanout)
    vcons = make_vcons(6, seed=23)
    store.mode, store.fail_uuids = "transient", {vcons[1].uuid, vcons[4].uuid}
    results = fanout.store_batch(vcons, {})
    assert store.calls == [[v.uuid for v in vcons], [vcons[1].uuid, vcons[4].uuid]]
    assert {u for u, r in results.items() if r[FAULTY].status is Status.TRANSIENT} == store.fail_uuids
    assert all(results[v.uuid][FAULTY].status is Status.OK for v in vcons if v.uuid not in store.fail_uuids)


def test_a_permanent_error_dead_letters_only_its_vcon(config, fanout):
    store = faulty(fanout)
    vcons = make_vcons(4, seed=24)
    store.mode, store.fail_uuids = "permanent", {vcons[2].uuid}
    results = fanout.store_batch(vcons, {})
    assert len(store.calls) == 1  # a permanent error is not retried
    bad = results[vcons[2].uuid][FAULTY]
    assert bad.status is Status.PERMANENT and isinstance(bad.error, StoreError)
    assert [decide(results[v.uuid]).action for v in vcons] == [Action.ACK, Action.ACK, Action.DEAD_LETTER, Action.ACK]


def test_a_retried_call_that_passes_is_ok(config, fanout):
    store = faulty(fanout)
    store.mode = "flaky:1"
    results = fanout.store_batch(make_vcons(3, seed=25), {})
    assert all(r[FAULTY] == Outcome(Status.OK, None, 2) for r in results.values())
    assert fanout.breakers[FAULTY].state == "closed"


# ------------------------------------------------------------------------- breaker


def test_breaker_opens_defers_without_calling_then_closes_after_a_probe(config, caplog):
    clock = Clock()
    fanout = make_fanout(config, names=("postgres", FAULTY), retries=0, breaker_threshold=2, breaker_timeout=30, clock=clock)
    store = faulty(fanout)
    store.mode = "down"
    try:
        for seed in (26, 27):
            results = fanout.store_batch(make_vcons(3, seed=seed), {})
            assert all(r[FAULTY].status is Status.TRANSIENT for r in results.values())
        assert fanout.breakers[FAULTY].state == "open"
        assert "circuit breaker tests.helpers.faulty_store:FaultyStore: closed -> open after 2 failures" in caplog.text
        assert len(store.calls) == 2

        vcons = make_vcons(3, seed=28)
        results = fanout.store_batch(vcons, {})
        assert len(store.calls) == 2  # not called
        for per_store in results.values():
            assert per_store[FAULTY] is BREAKER_OPEN and per_store["postgres"].ok
            verdict = decide(per_store)
            assert (verdict.action, verdict.count_attempt) == (Action.DEFER, False)

        clock.now += 30
        store.mode = "ok"
        results = fanout.store_batch(vcons, {uuid: {"postgres"} for uuid in results})
        assert len(store.calls) == 3  # the probe
        assert all(decide(r).action is Action.ACK for r in results.values())
        assert fanout.breakers[FAULTY].state == "closed"
    finally:
        fanout.close()


def test_a_failed_probe_reopens_the_breaker(config):
    clock = Clock()
    fanout = make_fanout(config, names=(FAULTY,), retries=3, breaker_threshold=1, breaker_timeout=10, clock=clock)
    store = faulty(fanout)
    store.mode = "down"
    try:
        fanout.store_batch(make_vcons(1), {})
        assert len(store.calls) == 1  # the breaker opened after the first failure: no retry
        clock.now += 10
        results = fanout.store_batch(make_vcons(1), {})
        assert len(store.calls) == 2  # one probe, no retries while half-open
        assert next(iter(results.values()))[FAULTY].status is Status.TRANSIENT
        assert fanout.breakers[FAULTY].state == "open"
    finally:
        fanout.close()


# ---------------------------------------------------------------------- lifecycle


def test_one_long_lived_thread_per_store(config):
    fanout = make_fanout(config, names=("null", FAULTY))
    try:
        def pool_threads() -> set[threading.Thread]:
            return {t for t in threading.enumerate() if t.name.startswith("fanout-")}

        fanout.store_batch(make_vcons(4), {})
        first = pool_threads()
        for seed in range(1, 6):
            fanout.store_batch(make_vcons(4, seed=seed), {})
        assert len(first) == 2 and pool_threads() == first
    finally:
        fanout.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fanout-")]
    with pytest.raises(RuntimeError):
        fanout.store_batch(make_vcons(1), {})


# ---------------------------------------------------------------------- deadline


def test_a_call_past_the_deadline_is_abandoned_and_counts_for_the_breaker(config):
    # call_timeout=0.5 s stands in for CONSERVER_STORE_TIMEOUT (10 s) so the test stays short
    fanout = make_fanout(config, names=("null", FAULTY), call_timeout=0.5, retries=0, breaker_threshold=2)
    try:
        faulty(fanout).mode = "slow:3"
        outcomes = fanout.store_batch(make_vcons(3), {})
        assert not faulty(fanout).stored  # returned while the hung call still sleeps
        for o in outcomes.values():
            assert o["null"].status is Status.OK
            assert o[FAULTY].status is Status.TRANSIENT and "CONSERVER_STORE_TIMEOUT" in str(o[FAULTY].error)
        fanout.store_batch(make_vcons(3, seed=1), {})
        assert fanout.breakers[FAULTY].state == "open"  # two abandoned calls, threshold 2
        faulty(fanout).mode = "ok"
        assert {o[FAULTY].status for o in fanout.store_batch(make_vcons(3, seed=2), {}).values()} == {Status.BREAKER_OPEN}
    finally:
        fanout.close()

"""resilience.py: backoff bounds, retry_call, the circuit breaker (driven by a fake clock)."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from conserver.resilience import CircuitBreaker, backoff_delay, retry_call


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, Transient)


# --------------------------------------------------------------------------- backoff


def test_backoff_is_exponential_capped_and_fully_jittered():
    top = 1 - 1e-12
    assert [round(backoff_delay(k, 0.5, 10, rand=lambda: top), 6) for k in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff_delay(5, 0.5, 10, rand=lambda: 0.0) == 0.0
    assert backoff_delay(10_000, 1, 30, rand=lambda: top) == pytest.approx(30)  # no overflow
    rng = random.Random(7)
    delays = [backoff_delay(3, 0.1, 60, rand=rng.random) for _ in range(2000)]
    assert all(0 <= d < 0.8 for d in delays)
    assert min(delays) < 0.05 and max(delays) > 0.75  # spread over the whole range, not bunched


def test_retry_call_retries_transient_errors_with_growing_waits():
    calls, sleeps = [], []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise Transient("not yet")
        return "done"

    result = retry_call(fn, attempts=5, base=0.1, cap=1.0, is_transient=is_transient, sleep=sleeps.append, rand=lambda: 0.999)
    assert result == "done"
    assert len(calls) == 3
    assert sleeps == pytest.approx([0.0999, 0.1998])


def test_retry_call_raises_a_permanent_error_at_once():
    calls, sleeps = [], []

    def fn():
        calls.append(1)
        raise Permanent("bad data")

    with pytest.raises(Permanent):
        retry_call(fn, attempts=5, base=0.1, cap=1.0, is_transient=is_transient, sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == []


def test_retry_call_gives_up_after_attempts_and_raises_the_last_error():
    calls, sleeps = [], []

    def fn():
        calls.append(1)
        raise Transient(f"failure {len(calls)}")

    with pytest.raises(Transient, match="failure 4"):
        retry_call(fn, attempts=4, base=0.2, cap=0.5, is_transient=is_transient, sleep=sleeps.append, rand=random.Random(3).random)
    assert len(calls) == 4
    assert len(sleeps) == 3
    assert all(0 <= s < bound for s, bound in zip(sleeps, [0.2, 0.4, 0.5]))


def test_retry_call_with_one_attempt_does_not_retry():
    calls = []

    def fn():
        calls.append(1)
        raise Transient()

    with pytest.raises(Transient):
        retry_call(fn, attempts=1, base=1, cap=1, is_transient=is_transient, sleep=lambda s: pytest.fail("slept"))
    assert len(calls) == 1
    with pytest.raises(ValueError):
        retry_call(fn, attempts=0, base=1, cap=1, is_transient=is_transient)


# --------------------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_threshold_consecutive_failures(caplog):
    clock = Clock()
    breaker = CircuitBreaker("s3", threshold=3, reset_timeout=30, clock=clock)
    caplog.set_level(logging.INFO, logger="conserver.resilience")
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["circuit breaker s3: closed -> open after 3 failures"]
    assert caplog.records[0].levelno == logging.WARNING


def test_breaker_half_open_probe_success_closes(caplog):
    clock = Clock()
    breaker = CircuitBreaker("pg", threshold=1, reset_timeout=10, clock=clock)
    caplog.set_level(logging.INFO, logger="conserver.resilience")
    breaker.record_failure()
    clock.advance(9.9)
    assert not breaker.allow() and breaker.state == "open"
    clock.advance(0.1)
    assert breaker.allow()  # the probe
    assert breaker.state == "half-open"
    assert not breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker pg: closed -> open after 1 failures",
        "circuit breaker pg: open -> half-open after 10s",
        "circuit breaker pg: half-open -> closed probe succeeded",
    ]


def test_breaker_half_open_probe_failure_reopens_for_a_full_timeout():
    clock = Clock()
    breaker = CircuitBreaker("es", threshold=2, reset_timeout=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5)
    assert breaker.allow()
    clock.advance(3)  # the probe was slow
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow() and breaker.state == "half-open"


def test_breaker_ignores_results_while_open_and_a_lost_probe_is_replaced():
    clock = Clock()
    breaker = CircuitBreaker("s3", threshold=1, reset_timeout=5, clock=clock)
    breaker.record_failure()
    breaker.record_success()  # a call allowed before it opened: changes nothing
    assert breaker.state == "open"
    clock.advance(5)
    assert breaker.allow()  # probe that never reports
    clock.advance(4)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()  # given up on the lost probe
    breaker.record_success()
    assert breaker.state == "closed"


def test_breaker_lets_exactly_one_probe_through_under_threads():
    clock = Clock()
    breaker = CircuitBreaker("s3", threshold=1, reset_timeout=1, clock=clock)
    breaker.record_failure()
    clock.advance(1)
    for _round in range(20):
        start = threading.Barrier(32)
        allowed: list[bool] = []

        def ask():
            start.wait()
            allowed.append(breaker.allow())

        threads = [threading.Thread(target=ask) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert allowed.count(True) == 1
        breaker.record_failure()  # probe failed: open again
        clock.advance(1)


def test_breaker_rejects_a_zero_threshold():
    with pytest.raises(ValueError):
        CircuitBreaker("x", threshold=0, reset_timeout=1)

"""Fan-out: one batch of vCons to every store at once, with retries and a breaker per store.

::

    store_batch(vcons, already_done)
        │  per store: the vCons that store has not committed yet
        ├──▶ pool "fanout-postgres" ──▶ breaker ─▶ retry_call(write_batch) ──┐
        ├──▶ pool "fanout-s3"       ──▶ breaker ─▶ retry_call(write_batch) ──┤ (parallel: all at
        └──▶ pool "fanout-elasticsearch" ─▶ ...                            ──┤  once; sequential:
                                                                             ▼  one after another)
        {uuid: {store: Outcome}} ──▶ decide() ──▶ ack / defer / dead-letter (the worker)

It knows nothing of Redis: the worker passes in which stores already committed each vCon
(from an earlier delivery) and persists what comes back. Each store has one long-lived
single-thread pool for the whole life of the worker (threads are never made per vCon or
per batch); a store that writes concurrently inside ``write_batch`` (S3) has its own.

Deadline: every store call runs on the store's own call thread and is waited for at most
CONSERVER_STORE_TIMEOUT. A call past it is abandoned: the store's ``abort()`` breaks what
it waits on (PostgreSQL: the connection's socket, so the pool drops it), the call thread is
replaced, and the call counts as a transient failure (the breaker sees it). A store that
hangs (a PostgreSQL stopped by SIGSTOP still accepts TCP) cannot stall the other stores.

Splitting: a call that fails as a whole with a permanent error (one vCon the store's client
cannot encode) is split in halves, and those again, down to the vCon at fault, before
anything is called permanent: its batch-mates are stored.

Retries: a call that fails as a whole with a transient error is repeated for every vCon
still pending; vCons that failed transiently one by one are repeated alone. Each call asks
the store's circuit breaker first. A call counts as a breaker failure when it raised a
transient error or every vCon in it failed transiently; a permanent error is the vCon's
fault, not the store's, and counts as a success.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from conserver.observability.logging import untrusted
from conserver.resilience import CircuitBreaker, retry_call
from conserver.outcomes import ALREADY_DONE, BREAKER_OPEN, Action, Outcome, Status, Verdict, decide
from conserver.storage.base import Sink, StoreError

if TYPE_CHECKING:
    from conserver.config import Config
    from conserver.vcon import Vcon

__all__ = ["ALREADY_DONE", "Action", "BREAKER_OPEN", "Fanout", "Outcome", "Status", "StoreCallTimeout", "Verdict",
           "decide"]

log = logging.getLogger("conserver.fanout")


# store name, seconds spent (retries and waits included), vCons committed, vCons not committed
StoreResultHook = Callable[[str, float, int, int], None]


class _BreakerOpen(Exception):
    pass


class _SomeFailed(Exception):
    """Some vCons of a call failed transiently: retry_call repeats the call for them."""


class StoreCallTimeout(StoreError):
    """A store call ran past CONSERVER_STORE_TIMEOUT and was abandoned (transient)."""

    def __init__(self, store: str, seconds: float, n: int) -> None:
        super().__init__(f"store {store}: a call of {n} vCons did not finish in {seconds:g}s "
                         "(CONSERVER_STORE_TIMEOUT); abandoned", transient=True)


class Fanout:
    """Writes batches to a fixed list of stores. ``start()`` before use, ``close()`` after."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        parallel: bool = True,
        retries: int = 3,
        backoff: float = 0.2,
        backoff_max: float = 2.0,
        breaker_threshold: int = 5,
        breaker_timeout: float = 60.0,
        call_timeout: float | None = None,
        on_store_result: StoreResultHook | None = None,
        rate_limiters: Mapping[str, Any] | None = None,
        rate_wait: float = 5.0,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"store names must be distinct: {names}")
        self.sinks = list(sinks)
        self.parallel = parallel
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.call_timeout = call_timeout or None  # None: no deadline
        self.on_store_result = on_store_result
        # store -> a token bucket shared by every worker (limits.SharedTokenBucket)
        self.rate_limiters = dict(rate_limiters or {})
        self.rate_wait = rate_wait
        self.should_stop = should_stop
        self._sleep = sleep
        self.breakers = {s.name: CircuitBreaker(s.name, breaker_threshold, breaker_timeout, clock) for s in sinks}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._callers: dict[str, ThreadPoolExecutor] = {}  # store -> the thread its calls run on
        self._started = False

    @classmethod
    def from_config(cls, sinks: Sequence[Sink], config: "Config", **overrides) -> "Fanout":
        """Settings from the configuration: CONSERVER_PARALLEL_STORAGE, CONSERVER_STORE_RETRIES,
        CONSERVER_STORE_RETRY_BACKOFF, CONSERVER_STORE_RETRY_BACKOFF_MAX, CONSERVER_STORE_TIMEOUT,
        CIRCUIT_BREAKER_THRESHOLD and CIRCUIT_BREAKER_TIMEOUT."""
        settings = dict(
            parallel=config.parallel_storage,
            retries=config.store_retries,
            backoff=config.store_retry_backoff,
            backoff_max=config.store_retry_backoff_max,
            call_timeout=config.store_timeout,
            breaker_threshold=config.circuit_breaker_threshold,
            breaker_timeout=config.circuit_breaker_timeout,
        )
        settings.update(overrides)
        return cls(sinks, **settings)

    # -- lifecycle

    def start(self) -> "Fanout":
        """Open every store, start its call thread and, when parallel, its pool."""
        opened: list[Sink] = []
        try:
            for sink in self.sinks:
                sink.open()
                opened.append(sink)
        except BaseException:
            for sink in opened:
                self._close_sink(sink)
            raise
        self._callers = {s.name: self._caller(s.name) for s in self.sinks}
        if self.parallel:
            self._pools = {
                s.name: ThreadPoolExecutor(1, thread_name_prefix=f"fanout-{s.name}") for s in self.sinks
            }
        self._started = True
        return self

    def close(self) -> None:
        """Wait for running writes, stop the pools, close every store. Idempotent."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        callers, self._callers = self._callers, {}
        for caller in callers.values():
            caller.shutdown(wait=True, cancel_futures=True)
        if self._started:
            for sink in self.sinks:
                self._close_sink(sink)
        self._started = False

    def __enter__(self) -> "Fanout":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _caller(name: str) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(1, thread_name_prefix=f"store-call-{name}")

    @staticmethod
    def _close_sink(sink: Sink) -> None:
        try:
            sink.close()
        except Exception:
            log.exception("store %s: close failed", sink.name)

    def ensure_schemas(self) -> dict[str, BaseException | None]:
        """ensure_schema() on every store; a failure is returned, not raised."""
        result: dict[str, BaseException | None] = {}
        for sink in self.sinks:
            try:
                sink.ensure_schema()
                result[sink.name] = None
            except Exception as exc:
                log.warning("store %s: cannot ensure its schema: %s", sink.name, exc)
                result[sink.name] = exc
        return result

    # -- writing

    def store_batch(
        self, vcons: Sequence["Vcon"], already_done: Mapping[str, Iterable[str]] | None = None
    ) -> dict[str, dict[str, Outcome]]:
        """Write each vCon to every store that has not committed it yet.

        ``already_done`` maps a uuid to the names of the stores that hold it already;
        those get :data:`ALREADY_DONE` without a call. Returns {uuid: {store: Outcome}}
        with every store for every uuid (stores in the order given).
        """
        if not self._started:
            raise RuntimeError("Fanout.store_batch() before start()")
        already_done = already_done or {}
        done_sets = {v.uuid: set(already_done.get(v.uuid, ())) for v in vcons}
        jobs: list[tuple[Sink, list]] = []
        for sink in self.sinks:
            todo = [v for v in vcons if sink.name not in done_sets[v.uuid]]
            if todo:
                jobs.append((sink, todo))
        by_store: dict[str, dict[str, Outcome]] = {}
        if self.parallel and len(jobs) > 1:
            futures: list[tuple[Sink, list, Future]] = [
                (sink, todo, self._pools[sink.name].submit(self._write, sink, todo)) for sink, todo in jobs
            ]
            for sink, todo, future in futures:
                try:
                    by_store[sink.name] = future.result()
                except Exception as exc:  # a bug in a store's error handling: retry later
                    log.exception("store %s: write failed unexpectedly", sink.name)
                    by_store[sink.name] = {v.uuid: Outcome(Status.TRANSIENT, exc, 1) for v in todo}
        else:
            for sink, todo in jobs:
                by_store[sink.name] = self._write(sink, todo)
        return {
            v.uuid: {s.name: by_store.get(s.name, _NONE).get(v.uuid, ALREADY_DONE) for s in self.sinks} for v in vcons
        }

    def _write(self, sink: Sink, vcons: Sequence["Vcon"]) -> dict[str, Outcome]:
        """One store, through its breaker and retry_call. Never raises."""
        breaker = self.breakers[sink.name]
        is_transient = sink.is_transient
        pending: dict[str, "Vcon"] = {v.uuid: v for v in vcons}
        out: dict[str, Outcome] = {}
        last_error: dict[str, BaseException] = {}
        calls = 0

        limiter = self.rate_limiters.get(sink.name)

        def call() -> None:
            nonlocal calls
            if limiter is not None and not limiter.acquire(len(pending), timeout=self.rate_wait,
                                                           should_stop=self.should_stop):
                raise _BreakerOpen()  # over the rate limit: not tried, deferred without using a retry
            if not breaker.allow():
                raise _BreakerOpen()
            calls += 1
            batch = list(pending.values())
            try:
                result = self._call(sink, batch)
            except Exception as exc:
                if limiter is not None and _throttling(exc):
                    limiter.throttled()
                if is_transient(exc):
                    breaker.record_failure()
                    last_error.update(dict.fromkeys(pending, exc))
                    raise
                if len(batch) == 1:
                    breaker.record_success()
                    raise
                log.warning("store %s: a call of %d vCons failed as a whole (%s): splitting it to find the vCon at "
                            "fault", sink.name, len(batch), untrusted(exc, 300))
                result = self._split(sink, batch)
            for uuid in list(pending):
                error = result.get(uuid, _MISSING)
                if error is None:
                    out[uuid] = Outcome(Status.OK, None, calls)
                    del pending[uuid]
                    continue
                if error is _MISSING:
                    error = StoreError(f"store {sink.name} returned no result for {uuid}", transient=True)
                if is_transient(error):
                    last_error[uuid] = error
                    if limiter is not None and _throttling(error):
                        limiter.throttled()
                else:
                    out[uuid] = Outcome(Status.PERMANENT, error, calls)
                    del pending[uuid]
            if pending and len(pending) == len(batch):
                breaker.record_failure()
            else:
                breaker.record_success()
            if pending:
                raise _SomeFailed()

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _SomeFailed) or (not isinstance(exc, _BreakerOpen) and is_transient(exc))

        started = time.perf_counter()
        try:
            retry_call(call, attempts=self.retries + 1, base=self.backoff, cap=self.backoff_max,
                       is_transient=retryable, sleep=self._sleep)
        except (_BreakerOpen, _SomeFailed):
            pass
        except Exception as exc:
            if not is_transient(exc):
                for uuid in pending:
                    out[uuid] = Outcome(Status.PERMANENT, exc, calls)
                pending.clear()
        for uuid in pending:
            out[uuid] = Outcome(Status.TRANSIENT, last_error[uuid], calls) if uuid in last_error else BREAKER_OPEN
        seconds = time.perf_counter() - started
        self._report(sink.name, seconds, out, calls)
        return out

    def _call(self, sink: Sink, batch: list["Vcon"]) -> Mapping[str, BaseException | None]:
        """``sink.write_batch(batch)`` on the store's call thread, within the deadline."""
        future = self._callers[sink.name].submit(sink.write_batch, batch)
        try:
            return future.result(timeout=self.call_timeout)
        except FutureTimeout:
            pass
        log.warning("store %s: a call of %d vCons ran past CONSERVER_STORE_TIMEOUT (%gs): abandoning it",
                    sink.name, len(batch), self.call_timeout)
        # A fresh thread for the next call first: the abandoned one may stay blocked a while.
        stuck, self._callers[sink.name] = self._callers[sink.name], self._caller(sink.name)
        stuck.shutdown(wait=False)
        try:
            sink.abort()
        except Exception:
            log.exception("store %s: abort failed", sink.name)
        raise StoreCallTimeout(sink.name, self.call_timeout or 0, len(batch))

    def _split(self, sink: Sink, batch: list["Vcon"]) -> dict[str, BaseException | None]:
        """Each half of a batch that failed as a whole, again and again down to single vCons:
        only the vCon at fault keeps the permanent error; a transient one stays its half's."""
        result: dict[str, BaseException | None] = {}
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            try:
                result.update(self._call(sink, part))
            except Exception as exc:
                if len(part) == 1 or sink.is_transient(exc):
                    result.update(dict.fromkeys((v.uuid for v in part), exc))
                else:
                    result.update(self._split(sink, part))
        return result

    def _report(self, store: str, seconds: float, out: dict[str, Outcome], calls: int) -> None:
        if not calls:
            return  # breaker open: the store was not called
        n_ok = sum(1 for o in out.values() if o.status is Status.OK)
        n_failed = len(out) - n_ok
        if n_failed:
            first = next(o for o in out.values() if o.status is not Status.OK)
            log.warning("store %s: %d of %d vCons not stored after %d call(s) in %.3fs (%s): %s",
                        store, n_failed, len(out), calls, seconds, first.status.value, untrusted(first.error, 300))
        if self.on_store_result is not None:
            try:
                self.on_store_result(store, seconds, n_ok, n_failed)
            except Exception:
                log.exception("on_store_result hook failed")


def _throttling(exc: BaseException) -> bool:
    """429 Too Many Requests or 503 Slow Down: the store asks everyone to slow down."""
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    return status in (429, 503) or "SlowDown" in str(exc)


_MISSING = object()
_NONE: dict = {}

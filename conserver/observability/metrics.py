"""Prometheus metrics: written by each worker, added up by the monitor process.

prometheus-client's multiprocess mode: every process writes its own mmap'ed files in
``PROMETHEUS_MULTIPROC_DIR`` (the supervisor sets it before any child starts), and the
monitor's ``MultiProcessCollector`` sums them. Without that directory (metrics off)
workers get :class:`NullMetrics`, which costs nothing.

The monitor's :class:`Aggregator` adds gauges read at scrape time (processes, queue
depths) through :class:`LiveInputs`: plain functions the monitor builds from the board
and Redis. This module knows neither; it imports nothing else of conserver.

Label values are list names, store names and reasons: never a URL, key or password.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BREAKER_STATES = {0: "closed", 1: "half_open", 2: "open"}


class NullMetrics:
    def batch(self, source: str, ok: int, failed: int, seconds: float) -> None: ...
    def dead_lettered(self, source: str, reason: str, n: int = 1) -> None: ...
    def store_result(self, store: str, seconds: float, n_ok: int, n_failed: int) -> None: ...
    def breaker_state(self, store: str, state: str) -> None: ...


class WorkerMetrics(NullMetrics):
    """Created in the worker process, after it started."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.processed = Counter("conserver_vcons_processed", "vCons committed by every store and acknowledged", ["list"])
        self.failed = Counter("conserver_vcons_failed", "vCons whose processing failed (deferred or dead-lettered)", ["list"])
        self.dead = Counter("conserver_vcons_dead_lettered", "vCons moved to the dead letters", ["list", "reason"])
        self.vcon_seconds = Histogram("conserver_vcon_duration_seconds", "From claim to acknowledgement, per vCon",
                                      buckets=DURATION_BUCKETS)
        self.store_seconds = Histogram("conserver_store_write_seconds", "One batch write to one store", ["store"],
                                       buckets=DURATION_BUCKETS)
        self.store_items = Counter("conserver_store_writes", "vCons written per store and outcome", ["store", "outcome"])
        self.breaker = Gauge("conserver_circuit_breaker_state", "0 closed, 1 half-open, 2 open", ["store"],
                             multiprocess_mode="liveall")

    def batch(self, source: str, ok: int, failed: int, seconds: float) -> None:
        if ok:
            self.processed.labels(source).inc(ok)
            observe = self.vcon_seconds.observe
            for _ in range(ok):  # every vCon of the batch took the batch's time
                observe(seconds)
        if failed:
            self.failed.labels(source).inc(failed)

    def dead_lettered(self, source: str, reason: str, n: int = 1) -> None:
        self.dead.labels(source, reason).inc(n)

    def store_result(self, store: str, seconds: float, n_ok: int, n_failed: int) -> None:
        self.store_seconds.labels(store).observe(seconds)
        if n_ok:
            self.store_items.labels(store, "ok").inc(n_ok)
        if n_failed:
            self.store_items.labels(store, "failed").inc(n_failed)

    def breaker_state(self, store: str, state: str) -> None:
        code = {v: k for k, v in BREAKER_STATES.items()}.get(state.replace("-", "_"), 0)
        self.breaker.labels(store).set(code)


def worker_metrics() -> NullMetrics:
    return WorkerMetrics() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else NullMetrics()


class ProcessRow(TypedDict):
    """One live process of this host as the board shows it (titles and counters, no secrets)."""

    pid: int
    role: str  # "worker" or a service process ("scheduler", "monitor")
    pool: str
    number: int
    state: str  # "starting", "idle", "busy", "draining", "exited"
    current: str  # the vCon in hand while busy
    processed: int
    failed: int
    rss_bytes: int
    uptime_s: float
    utilization: float  # share of its lifetime spent busy


class SupervisorCounts(NamedTuple):
    wanted: int  # workers the supervisor keeps running
    restarts: int  # workers restarted after an unexpected exit


QueueDepths = Mapping[str, Any]  # {"lists": {name: n}, "dlq": {name: n}, "processing": n, "delayed": n}


@dataclass(frozen=True)
class LiveInputs:
    """What the live gauges read at scrape time, each a function called once per scrape."""

    workers: Callable[[], list[ProcessRow]]  # this host's worker processes
    supervisor: Callable[[], SupervisorCounts]
    depths: Callable[[], QueueDepths]  # raises when Redis does not answer


class Aggregator:
    """The monitor's view: every worker's files plus live gauges read at scrape time."""

    def __init__(self, live: LiveInputs) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.multi = CollectorRegistry()  # the workers' files alone: snapshots read no Redis
        MultiProcessCollector(self.multi)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry)
        self.registry.register(LiveCollector(live))

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _samples(self) -> list[Any]:
        return [s for fam in self.multi.collect() for s in fam.samples]

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"completed": 0.0, "failed": 0.0, "dead": 0.0, "sum": 0.0, "count": 0.0, "buckets": {}}
        for s in self._samples():
            if s.name == "conserver_vcons_processed_total":
                snap["completed"] += s.value
            elif s.name == "conserver_vcons_failed_total":
                snap["failed"] += s.value
            elif s.name == "conserver_vcons_dead_lettered_total":
                snap["dead"] += s.value
            elif s.name == "conserver_vcon_duration_seconds_sum":
                snap["sum"] += s.value
            elif s.name == "conserver_vcon_duration_seconds_count":
                snap["count"] += s.value
            elif s.name == "conserver_vcon_duration_seconds_bucket":
                le = float(s.labels["le"])
                snap["buckets"][le] = snap["buckets"].get(le, 0.0) + s.value
        return snap

    def breaker_states(self) -> dict[str, str]:
        """Per store: open only when it is open in every live worker (the least open state)."""
        least: dict[str, float] = {}
        for s in self._samples():
            if s.name == "conserver_circuit_breaker_state":
                store = s.labels["store"]
                least[store] = min(least.get(store, 2.0), s.value)
        return {store: BREAKER_STATES.get(int(v), "closed") for store, v in least.items()}


def mean_utilization(workers: list[ProcessRow]) -> float:
    """The workers' mean share of time spent busy, 0 when there is none."""
    return sum(p["utilization"] for p in workers) / len(workers) if workers else 0.0


def interval_line(prev: dict[str, Any], cur: dict[str, Any], uptime: float, utilization: float) -> dict[str, Any]:
    """Seed 001's metrics log fields for the interval between two snapshots."""
    completed = cur["completed"] - prev["completed"]
    failed = cur["failed"] - prev["failed"]
    processed = completed + failed
    count = cur["count"] - prev["count"]
    avg_ms = (cur["sum"] - prev["sum"]) / count * 1000 if count else 0.0
    deltas = sorted((le, n - prev["buckets"].get(le, 0.0)) for le, n in cur["buckets"].items())
    return {
        "processed": int(processed), "completed": int(completed), "failed": int(failed),
        "dead_lettered": int(cur["dead"] - prev["dead"]),
        "avg_duration_ms": round(avg_ms, 2), "p95_ms": round(quantile(deltas, 0.95) * 1000, 2),
        "worker_utilization": round(utilization, 4),
        "error_rate": round(failed / processed, 4) if processed else 0.0, "uptime": round(uptime, 1),
    }


def quantile(cumulative: list[tuple[float, float]], q: float) -> float:
    """A quantile from cumulative histogram buckets [(le, count)], interpolating inside a bucket."""
    if not cumulative or cumulative[-1][1] <= 0:
        return 0.0
    target = q * cumulative[-1][1]
    lo_le, lo_n = 0.0, 0.0
    for le, n in cumulative:
        if n >= target:
            if le == float("inf"):
                return lo_le
            return lo_le + (le - lo_le) * ((target - lo_n) / (n - lo_n) if n > lo_n else 1.0)
        lo_le, lo_n = le, n
    return lo_le


class LiveCollector:
    """Gauges read when scraped: processes and supervisor counts, then queue depths."""

    def __init__(self, live: LiveInputs) -> None:
        self.live = live

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        procs = self.live.workers()
        states = GaugeMetricFamily("conserver_workers", "Worker processes by state", labels=["state"])
        for state in ("starting", "idle", "busy", "draining"):
            states.add_metric([state], sum(1 for p in procs if p["state"] == state))
        yield states
        counts = self.live.supervisor()
        yield GaugeMetricFamily("conserver_workers_wanted", "Workers the supervisor keeps running", value=counts.wanted)
        yield CounterMetricFamily("conserver_worker_restarts", "Workers restarted after an unexpected exit", value=counts.restarts)
        yield GaugeMetricFamily("conserver_worker_utilization", "Share of time workers spent busy (mean)",
                                value=mean_utilization(procs))
        rss = GaugeMetricFamily("conserver_worker_rss_bytes", "Resident memory per worker", labels=["pool", "number"])
        for p in procs:
            rss.add_metric([p["pool"], str(p["number"])], p["rss_bytes"])
        yield rss
        try:
            d = self.live.depths()
        except Exception:  # Redis down: the depths are unknown, not zero
            yield GaugeMetricFamily("conserver_redis_up", "Redis answered the last scrape", value=0)
            return
        yield GaugeMetricFamily("conserver_redis_up", "Redis answered the last scrape", value=1)
        depth = GaugeMetricFamily("conserver_queue_depth", "vCons waiting per ingress list", labels=["list"])
        dlq = GaugeMetricFamily("conserver_dead_letters", "vCons in the dead letters per list", labels=["list"])
        for name, n in d["lists"].items():
            depth.add_metric([name], n)
            dlq.add_metric([name], d["dlq"].get(name, 0))
        yield depth
        yield dlq
        yield GaugeMetricFamily("conserver_processing_depth", "vCons claimed by workers, all hosts", value=d["processing"])
        yield GaugeMetricFamily("conserver_delayed_depth", "vCons waiting for a retry", value=d["delayed"])


# ---------------------------------------------------------------------------- chains and links
# (one block: the pipeline's chain step writes these; conserver.tasks.chain and pipeline.py)

CHAIN_OUTCOMES = ("processed", "halted", "failed")  # stored + acked + on egress; a link said None; a link failed


class NullChainMetrics:
    def vcons(self, chain: str, outcome: str, n: int = 1) -> None: ...
    def link(self, chain: str, link: str, seconds: float, outcome: str) -> None: ...


class ChainMetrics(NullChainMetrics):
    """Per chain and per link, made in the worker process after it started."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.chain_vcons = Counter("conserver_chain_vcons", "vCons per chain: processed (stored, acknowledged, "
                                   "on its egress lists), halted (a link returned nothing), failed (a link failed)",
                                   ["chain", "outcome"])
        self.link_calls = Counter("conserver_link_calls", "Link runs per vCon by outcome: ok, halted, failed",
                                  ["chain", "link", "outcome"])
        self.link_seconds = Histogram("conserver_link_seconds", "One link on one vCon, its retries included",
                                      ["chain", "link"], buckets=DURATION_BUCKETS)

    def vcons(self, chain: str, outcome: str, n: int = 1) -> None:
        if n:
            self.chain_vcons.labels(chain, outcome).inc(n)

    def link(self, chain: str, link: str, seconds: float, outcome: str) -> None:
        self.link_calls.labels(chain, link, outcome).inc()
        self.link_seconds.labels(chain, link).observe(seconds)


def chain_metrics() -> NullChainMetrics:
    return ChainMetrics() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else NullChainMetrics()

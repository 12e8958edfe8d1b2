"""The status page's graphs: the last 15 minutes of a few numbers, kept by the monitor.

Every ``interval`` seconds the monitor calls :meth:`History.sample`. It reads the workers'
metric files (the samples the Aggregator sums) and the queue depths, turns counters into
rates over the interval and histograms into the interval's quantiles or means, and appends
one row to a ring that keeps ``window`` seconds. ``/status/history.json`` serves the ring
column by column, the shape the page's charting library (uPlot) draws::

    metric files ──┐
    queue depths ──┼─> rates, quantiles, means ─> ring of rows ─> {"t": [...], "charts": [...]}
    breakers ──────┘      (one row per interval)    (bounded)

Adding a series is one more ``(chart, name, value)`` from :func:`derive`; a new chart is
one line of :data:`CHARTS`. Histograms that carry a ``store`` or ``link`` label are drawn as
a mean time per label value with no change here (:data:`TIME_PER_LABEL`).

Bounded: at most ``window / interval`` rows, at most :data:`MAX_SERIES` series (the ones
past it are counted, not kept), and a series with no value left in the window is gone.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from conserver.observability.metrics import BREAKER_STATES, quantile


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    unit: str  # "/s", "s", "vCons" or "state": how the page formats its axis


CHARTS = (
    Chart("throughput", "vCons per second", "/s"),
    Chart("backlog", "Backlog per ingress list", "vCons"),
    Chart("latency", "Batch latency, claim to acknowledgement", "s"),
    Chart("stores", "Time per store write (mean)", "s"),
    Chart("links", "Time per link (mean)", "s"),
    Chart("breakers", "Circuit breakers: 0 closed, 1 half-open, 2 open", "state"),
)
# a histogram whose samples carry this label: mean seconds per observation, per label value
TIME_PER_LABEL = (("store", "stores"), ("link", "links"))
COUNTERS = {"conserver_vcons_processed_total": "stored", "conserver_vcons_failed_total": "failed",
            "conserver_vcons_dead_lettered_total": "dead-lettered"}
LATENCY = "conserver_vcon_duration_seconds_bucket"
MAX_SERIES = 64
WINDOW = 900.0
INTERVAL = 2.0

Key = tuple[str, str]  # (chart id, series name)


class Totals:
    """The cumulative numbers of one reading of the metric files."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.buckets: dict[float, float] = {}
        self.times: dict[Key, list[float]] = {}  # (chart, label value) -> [sum, count]
        self.breakers: dict[str, float] = {}  # store or link -> the least open state of its workers


def read_totals(samples: Iterable[Any]) -> Totals:
    """Add up Prometheus samples (``.name``, ``.labels``, ``.value``) of every worker."""
    t = Totals()
    for s in samples:
        name, labels = s.name, s.labels
        if name in COUNTERS:
            t.counters[name] = t.counters.get(name, 0.0) + s.value
        elif name == LATENCY:
            le = float(labels["le"])
            t.buckets[le] = t.buckets.get(le, 0.0) + s.value
        elif name.endswith("circuit_breaker_state"):
            who = labels.get("store") or labels.get("link") or "?"
            t.breakers[who] = min(t.breakers.get(who, 2.0), s.value)
        elif name.endswith("_seconds_sum") or name.endswith("_seconds_count"):
            for label, chart in TIME_PER_LABEL:
                if label in labels:
                    who = f"{labels['chain']}/{labels[label]}" if "chain" in labels else labels[label]
                    pair = t.times.setdefault((chart, who), [0.0, 0.0])
                    pair[name.endswith("_count")] += s.value
                    break
    return t


def derive(prev: Totals, cur: Totals, seconds: float, depths: Mapping[str, Any] | None) -> Iterator[tuple[str, str, float]]:
    """One row: what happened between two readings ``seconds`` apart, and the backlog now."""
    for metric, name in COUNTERS.items():  # a restarted monitor or a reset file: never below 0
        yield "throughput", name, max(0.0, cur.counters.get(metric, 0.0) - prev.counters.get(metric, 0.0)) / seconds
    deltas = sorted((le, n - prev.buckets.get(le, 0.0)) for le, n in cur.buckets.items())
    if deltas and deltas[-1][1] > 0:  # nothing acknowledged in the interval: no latency, a gap
        yield "latency", "p50", quantile(deltas, 0.5)
        yield "latency", "p95", quantile(deltas, 0.95)
    for (chart, who), (total, count) in cur.times.items():
        before = prev.times.get((chart, who), [0.0, 0.0])
        if count > before[1]:
            yield chart, who, max(0.0, total - before[0]) / (count - before[1])
    for who, state in cur.breakers.items():
        yield "breakers", who, state
    if depths is not None:  # Redis did not answer: a gap, not a zero
        for name, n in depths.get("lists", {}).items():
            yield "backlog", name, float(n)
        if "delayed" in depths:
            yield "backlog", "waiting for a retry", float(depths["delayed"])


class History:
    """The ring of rows. ``sample`` runs on the monitor's loop, ``as_json`` on HTTP threads."""

    def __init__(self, samples: Callable[[], Iterable[Any]], depths: Callable[[], Mapping[str, Any]], *,
                 interval: float = INTERVAL, window: float = WINDOW, clock: Callable[[], float] = time.time,
                 max_series: int = MAX_SERIES) -> None:
        self.samples, self.depths, self.clock = samples, depths, clock
        self.interval, self.window, self.max_series = interval, window, max_series
        self.rows: deque[tuple[float, dict[Key, float]]] = deque(maxlen=math.ceil(window / interval) + 1)
        self.dropped_series = 0  # series refused because MAX_SERIES were already drawn
        self._last: tuple[float, Totals] | None = None
        self._lock = threading.Lock()

    def due(self) -> bool:
        return self._last is None or self.clock() - self._last[0] >= self.interval

    def sample(self) -> None:
        """Read the metrics now and append a row (the first reading only sets the baseline)."""
        now = self.clock()
        cur = read_totals(self.samples())
        try:
            depths: Mapping[str, Any] | None = self.depths()
        except Exception:  # Redis down: the backlog is unknown for this row
            depths = None
        last, self._last = self._last, (now, cur)
        if last is None or now <= last[0]:
            return
        row: dict[Key, float] = {}
        with self._lock:
            known = {k for _, r in self.rows for k in r}
            for chart, name, value in derive(last[1], cur, now - last[0], depths):
                key = (chart, name)
                if key not in known and len(known) >= self.max_series:
                    self.dropped_series += 1
                    continue
                known.add(key)
                row[key] = round(value, 6)
            self.rows.append((now, row))
            while self.rows and self.rows[0][0] < now - self.window:
                self.rows.popleft()

    def as_json(self) -> dict[str, Any]:
        """Column by column: ``t`` (epoch seconds) and, per chart, each series' values with
        null where a row has none. Charts with no series are left out."""
        with self._lock:
            rows = list(self.rows)
        order: dict[Key, None] = {}
        for _, r in rows:
            order.update(dict.fromkeys(r))
        charts = []
        for c in CHARTS:
            names = [name for chart, name in order if chart == c.id]
            if names:
                charts.append({"id": c.id, "title": c.title, "unit": c.unit,
                               "series": [{"name": n, "values": [r.get((c.id, n)) for _, r in rows]} for n in names]})
        return {"interval_s": self.interval, "window_s": self.window, "t": [round(t, 3) for t, _ in rows],
                "charts": charts, "dropped_series": self.dropped_series, "breaker_states": {str(k): v for k, v in BREAKER_STATES.items()}}

"""The status page's history ring, driven with an injected clock and Prometheus samples as
the workers' files give them: rates, quantiles, means, gaps, and its bounds after hours."""
from __future__ import annotations

import math

import orjson
import pytest
from prometheus_client.samples import Sample

from conserver.observability.history import History

INF = float("inf")


class Workers:
    """What the metric files of two workers hold, advanced by ``tick``."""

    def __init__(self) -> None:
        self.stored = self.failed = self.dead = 0.0
        self.latency = {0.1: 0.0, 0.25: 0.0, INF: 0.0}
        self.pg = [0.0, 0.0]  # sum, count
        self.breaker = 0.0

    def tick(self, seconds: float) -> None:
        n = 10 * seconds  # 10 vCons/s stored, half of them in under 0.1 s, the rest under 0.25 s
        self.stored += n
        self.failed += seconds
        self.dead += seconds / 2
        self.latency[0.1] += n / 2
        self.latency[0.25] += n
        self.latency[INF] += n
        self.pg[0] += 0.02 * seconds
        self.pg[1] += seconds

    def samples(self) -> list[Sample]:
        out = []
        for pid in ("1", "2"):  # two workers, each with half of everything
            out += [Sample("conserver_vcons_processed_total", {"list": "default"}, self.stored / 2),
                    Sample("conserver_vcons_failed_total", {"list": "default"}, self.failed / 2),
                    Sample("conserver_vcons_dead_lettered_total", {"list": "default", "reason": "x"}, self.dead / 2),
                    Sample("conserver_store_write_seconds_sum", {"store": "postgres"}, self.pg[0] / 2),
                    Sample("conserver_store_write_seconds_count", {"store": "postgres"}, self.pg[1] / 2),
                    Sample("conserver_circuit_breaker_state", {"store": "postgres", "pid": pid},
                           self.breaker if pid == "1" else 2.0)]
            out += [Sample("conserver_vcon_duration_seconds_bucket", {"le": str(le)}, n / 2) for le, n in self.latency.items()]
        return out


def series(doc: dict, chart: str) -> dict[str, list]:
    (c,) = [c for c in doc["charts"] if c["id"] == chart]
    return {s["name"]: s["values"] for s in c["series"]}


def test_rates_quantiles_means_and_gaps():
    clock = [1000.0]
    w = Workers()
    depths = [{"lists": {"default": 7}, "delayed": 1}]

    def read_depths():
        if depths[0] is None:
            raise ConnectionError("redis down")
        return depths[0]

    h = History(w.samples, read_depths, clock=lambda: clock[0])
    h.sample()  # the baseline: no row yet
    assert h.as_json()["t"] == []
    for _ in range(3):
        clock[0] += 2
        w.tick(2)
        h.sample()
    depths[0] = None
    clock[0] += 2
    h.sample()  # nothing happened and Redis is down
    doc = h.as_json()
    assert doc["t"] == [1002.0, 1004.0, 1006.0, 1008.0]
    tp = series(doc, "throughput")
    assert tp["stored"] == [10.0, 10.0, 10.0, 0.0] and tp["failed"] == [1.0] * 3 + [0.0]
    assert tp["dead-lettered"] == [0.5] * 3 + [0.0]
    lat = series(doc, "latency")
    assert lat["p50"][:3] == [pytest.approx(0.1)] * 3 and lat["p95"][0] == pytest.approx(0.1 + 0.15 * 0.9)
    assert lat["p50"][3] is None  # nothing acknowledged: a gap, not 0
    assert series(doc, "stores")["postgres"][:3] == [pytest.approx(0.02)] * 3
    assert series(doc, "breakers")["postgres"] == [0.0] * 4  # open in one worker only: not open
    assert series(doc, "backlog") == {"default": [7.0, 7.0, 7.0, None], "waiting for a retry": [1.0, 1.0, 1.0, None]}
    assert "links" not in [c["id"] for c in doc["charts"]]  # no link metrics: no empty chart


def test_a_link_histogram_gets_its_chart_without_a_change():
    clock = [0.0]
    n = [0.0]
    link = lambda: [Sample("conserver_link_seconds_sum", {"chain": "main", "link": "tag"}, n[0] * 0.5),
                    Sample("conserver_link_seconds_count", {"chain": "main", "link": "tag"}, n[0])]
    h = History(link, lambda: {"lists": {}}, clock=lambda: clock[0])
    h.sample()
    clock[0], n[0] = 2.0, 4.0
    h.sample()
    assert series(h.as_json(), "links") == {"main/tag": [0.5]}


def test_the_history_stays_within_its_bounds_after_hours():
    clock = [0.0]
    w = Workers()
    lists = {"default": 0}

    def depths():  # a new list name every sample: label churn must not grow the ring
        lists.clear()
        lists.update({"default": 3, f"tenant-{int(clock[0])}": 1})
        return {"lists": dict(lists), "delayed": 0}

    h = History(w.samples, depths, clock=lambda: clock[0], interval=2.0, window=900.0)
    sizes = {}
    for step in range(6 * 3600 // 2):  # six hours, a sample every 2 s
        clock[0] += 2.0
        w.tick(2.0)
        if step % 1000 == 0:
            clock[0] += 0.5  # the monitor's loop is late now and then
        h.sample()
        if step in (3600 // 2, 6 * 3600 // 2 - 1):
            sizes[step] = len(orjson.dumps(h.as_json()))
    doc = h.as_json()
    assert len(doc["t"]) <= math.ceil(900 / 2) + 1 and doc["t"][-1] - doc["t"][0] <= 900
    assert all(len(s["values"]) == len(doc["t"]) for c in doc["charts"] for s in c["series"])
    assert sum(len(c["series"]) for c in doc["charts"]) <= 64
    assert h.dropped_series > 0  # the churn reached the series cap and was refused, not kept
    first, last = sizes.values()
    assert last <= first * 1.05 and last < 600_000, sizes
    assert series(doc, "throughput")["stored"][-1] == pytest.approx(10.0)


def test_series_out_of_the_window_are_forgotten():
    clock = [0.0]
    names = ["old"]
    h = History(lambda: [], lambda: {"lists": {n: 1 for n in names}}, clock=lambda: clock[0], window=10.0, max_series=8)
    for _ in range(4):
        clock[0] += 2
        h.sample()
    names[:] = ["new"]
    for _ in range(8):
        clock[0] += 2
        h.sample()
    backlog = series(h.as_json(), "backlog")
    assert set(backlog) == {"new"} and h.dropped_series == 0

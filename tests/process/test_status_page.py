"""The status page in headless Chromium, from a running conserver with real traffic: the
graphs hold the numbers that happened (read back from the charts' uPlot instances), the
dead-letter view filters, and its actions work with the admin token and only with it."""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import orjson
import pytest

from conserver.dev.devstack import free_port
from conserver.dev.samples import sample_vcon
from tests.helpers.proc import ROOT, wait_for
from tests.helpers.stores import queue_for, wait_drained
from tests.process.test_monitor import get

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="Debian chromium not installed")
TOKEN = "t0ken-for-the-test"
STORE = "tests.helpers.faulty_store:FaultyStore"
ARTIFACTS = ROOT / "test-artifacts"


def chromium(tmp_path, url: str, *extra: str) -> str:
    """The DOM after the page's script ran (virtual time: its 2 s refresh fires too)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
             "--window-size=1400,1000", "--virtual-time-budget=5000"]
    r = subprocess.run([CHROMIUM, *flags, *(extra or ("--dump-dom",)), url], capture_output=True, text=True, timeout=90)
    return r.stdout


def attr(dom: str, element_id: str, name: str) -> str:
    tag = re.search(rf"<[a-z]+ [^>]*id=\"{re.escape(element_id)}\"[^>]*>", dom)
    assert tag, f"no #{element_id} in the page"
    value = re.search(rf'{name}="([^"]*)"', tag.group(0))
    assert value, f"#{element_id} has no {name}"
    import html

    return html.unescape(value.group(1))


def post(base: str, fields: list[tuple[str, str]], headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(base + "/status/dead-letters/action", data=urllib.parse.urlencode(fields).encode(),
                                 headers={"Accept": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture
def traffic(start_conserver, redis_url, tmp_path):
    """300 vCons, 10 of them refused by the store for good; RATE_LIMIT_MAX=50 per second so
    that the backlog lasts several samples of the history (2 s apart)."""
    vcons = [sample_vcon(random.Random(i)) for i in range(300)]
    bad = [v["uuid"] for v in vcons[:10]]
    port = free_port()
    control = tmp_path / "store-mode"
    control.write_text("permanent")
    env = {"REDIS_URL": redis_url, "CONSERVER_WORKERS": "2", "CONSERVER_STORAGES": STORE,
           "CONSERVER_STORE_FAULTY_UUIDS": ",".join(bad), "CONSERVER_STORE_FAULTY_CONTROL": str(control),
           "CONSERVER_STORE_FAULTY_LOG": str(tmp_path / "store.log"), "CONSERVER_METRICS_PORT": str(port),
           "CONSERVER_ADMIN_TOKEN": TOKEN, "RATE_LIMIT_MAX": "50", "RATE_LIMIT_DURATION": "1000"}
    c = start_conserver(env)
    base = f"http://127.0.0.1:{port}"
    # the first row of the history before any traffic, so its rates cover all of it
    wait_for(lambda: json.loads(get(base + "/status/history.json")[1] or '{"t": []}')["t"], 30, what="a history row")
    cfg, queue = queue_for(env)
    queue.enqueue("default", [(v["uuid"], orjson.dumps(v)) for v in vcons])
    queue.redis.rpush("default", "not-a-uuid\n2024-01-01T00:00:00.000Z ERROR forged")
    wait_drained(queue, 90)
    wait_for(lambda: queue.depths()["dlq"]["default"] == 11, 20, what="11 dead letters")
    return c, queue, base, bad, control, tmp_path / "store.log"


def test_graphs_draw_what_happened(traffic, tmp_path):
    c, queue, base, bad, control, store_log = traffic
    # two more samples after the last vCon, so the history holds the whole run
    n = len(json.loads(get(base + "/status/history.json")[1])["t"])
    wait_for(lambda: len(json.loads(get(base + "/status/history.json")[1])["t"]) >= n + 2, 20, what="two more samples")
    dom = chromium(tmp_path, base + "/status")
    drawn = {}
    for chart in ("throughput", "backlog", "latency", "stores", "breakers"):
        assert re.search(rf'id="chart-{chart}"[^>]*>.*?<canvas', dom, re.S), f"{chart}: no canvas drawn"
        names = json.loads(attr(dom, f"chart-{chart}", "data-series"))
        data = json.loads(attr(dom, f"chart-{chart}", "data-drawn"))  # [t, series...] as uPlot holds them
        assert len(data) == len(names) + 1 and int(attr(dom, f"chart-{chart}", "data-points")) == len(data[0])
        drawn[chart] = dict(zip(["t", *names], data))
    t = drawn["throughput"]["t"]

    def integral(values):  # rate x interval, summed: how many happened
        return sum(v * (t[i] - t[i - 1]) for i, v in enumerate(values) if i and v is not None)

    tp = drawn["throughput"]
    assert round(integral(tp["stored"])) == 290 and round(integral(tp["dead-lettered"])) == 11
    assert round(integral(tp["failed"])) == 11
    assert max(tp["stored"]) <= 50 * 1.6  # the rate limit shows (its burst spread over an interval)
    backlog = drawn["backlog"]["default"]
    assert max(b for b in backlog if b is not None) >= 50 and backlog[-1] == 0
    assert any(v and v > 0 for v in drawn["latency"]["p95"])
    assert any(v and v > 0 for v in drawn["stores"][STORE])
    assert set(v for v in drawn["breakers"][STORE] if v is not None) == {0}  # per-item refusals: closed
    # the legend names the series, as text
    assert ">stored<" in dom and ">dead-lettered<" in dom and f">{STORE}<" in dom
    # the tables are there too, escaped: the forged line shows as one cell
    assert "not-a-uuid\\n2024-01-01T00:00:00.000Z ERROR forged" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    chromium(tmp_path, base + "/status", f"--screenshot={ARTIFACTS / 'status.png'}")
    assert (ARTIFACTS / "status.png").stat().st_size > 20_000
    # a newline in an item must not forge a log line
    assert not re.search(r"^2024-01-01T00:00:00.000Z ERROR forged", c.log(), re.M)


def test_dead_letters_filter_open_requeue_and_purge(traffic, tmp_path):
    c, queue, base, bad, control, store_log = traffic
    dom = chromium(tmp_path, base + "/status/dead-letters?reason=store_rejected")
    assert attr(dom, "counts", "data-shown") == "10" and attr(dom, "counts", "data-total") == "11"
    assert all(u in dom for u in bad) and "not-a-uuid" not in dom.split('id="counts"')[1]
    assert 'id="do-requeue"' in dom and 'id="do-purge"' in dom  # the token is set: the buttons are there
    dom = chromium(tmp_path, base + "/status/dead-letters?reason=unsafe_uuid")
    assert attr(dom, "counts", "data-shown") == "1"
    ARTIFACTS.mkdir(exist_ok=True)
    chromium(tmp_path, base + "/status/dead-letters", f"--screenshot={ARTIFACTS / 'dead-letters.png'}")
    # one dead letter opened: its metadata and its body, pretty-printed and escaped
    dom = chromium(tmp_path, base + f"/status/dead-letters/show?list=default&id={bad[0]}")
    assert "store_rejected" in dom and f'"uuid": "{bad[0]}"' in dom and 'id="body"' in dom

    host = base.removeprefix("http://")
    item = [("action", "requeue"), ("item", f"default {bad[0]}")]
    refused = [({}, "no token"), ({"X-Conserver-Token": "wrong"}, "wrong token"),
               ({"X-Conserver-Token": TOKEN, "Sec-Fetch-Site": "cross-site"}, "cross-site"),
               ({"X-Conserver-Token": TOKEN, "Origin": "http://evil.example"}, "another origin")]
    for headers, why in refused:
        code, doc = post(base, item, headers)
        assert code == 403, why
    assert queue.depths()["dlq"]["default"] == 11 and c.log().count("refused:") == len(refused)

    control.write_text("ok")  # the store takes it now
    code, doc = post(base, item + [("token", TOKEN)], {"Origin": base, "Sec-Fetch-Site": "same-origin", "Host": host})
    assert (code, doc) == (200, {"action": "requeue", "requested": 1, "done": 1})
    wait_drained(queue, 30)

    def stored():
        for line in store_log.read_text().splitlines():
            call = json.loads(line)
            if call["mode"] == "ok" and bad[0] in call["uuids"] and bad[0] not in call["failed"]:
                return True
        return False

    wait_for(stored, 20, what="the requeued vCon written by the store")
    assert queue.depths()["dlq"]["default"] == 10
    assert re.search(rf"dead letters: requeue by 127\.0\.0\.1: 1 of 1 done: default/{bad[0]}", c.log())
    # purge a selection of two; their bodies stay
    code, doc = post(base, [("action", "purge"), ("item", f"default {bad[1]}"), ("item", f"default {bad[2]}")],
                     {"X-Conserver-Token": TOKEN})
    assert doc == {"action": "purge", "requested": 2, "done": 2} and queue.depths()["dlq"]["default"] == 8
    assert queue.redis.exists(f"vcon:{bad[1]}")
    assert queue.dlq_show(bad[1]) is None and queue.dlq_show(bad[3]) is not None

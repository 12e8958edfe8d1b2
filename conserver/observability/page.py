"""The status page's HTML: ``/status`` (graphs and tables) and ``/status/tables`` (the
tables alone, which the page's script fetches every 2 s), with the frame the dead-letter
pages share. Every value is escaped here (``cell``) and capped; the page's script only
places the server's HTML and draws the history with the vendored uPlot (``static/``).
Without JavaScript the page refreshes itself and shows the tables.
"""

from __future__ import annotations

import html
from typing import Any

import orjson

from conserver.observability.logging import untrusted
from conserver.observability.status import SHOWN

STATIC = "/status/static/"


class Html(str):
    """Markup built here from escaped parts: ``table`` puts it in a cell as it is."""


def cell(value: Any, limit: int = SHOWN) -> str:
    """A value from anywhere as HTML text: escaped, control characters shown, capped."""
    if isinstance(value, Html):
        return value
    return html.escape(untrusted("" if value is None else value, limit))


def table(headers: list[str], rows: list[list[Any]], empty: str, cls: str = "") -> str:
    if not rows:
        return f"<p class=empty>{cell(empty)}</p>"
    head = "".join(f"<th>{cell(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def frame(title: str, body: str, *, refresh: bool = False, script: bool = True) -> str:
    """The document around a page: the shared stylesheet, the script, the navigation."""
    meta = "<noscript><meta http-equiv=refresh content=5></noscript>" if refresh else ""
    scripts = (f"<script src='{STATIC}uPlot.iife.min.js'></script><script src='{STATIC}status.js' defer></script>"
               if script else "")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8>{meta}
<title>{cell(title)}</title>
<link rel=stylesheet href='{STATIC}uPlot.min.css'><link rel=stylesheet href='{STATIC}status.css'>{scripts}
</head><body>
<nav><a href='/status'>status</a> <a href='/status/dead-letters'>dead letters</a> <a href='/metrics'>metrics</a>
<a href='/status.json'>status.json</a> <a href='/status/history.json'>history.json</a></nav>
{body}
</body></html>
"""


def render_tables(s: dict[str, Any]) -> str:
    """The facts and tables of the status page (what its script refreshes)."""
    m = s.get("master", {})
    procs = s.get("processes", [])
    workers = table(["#", "pool", "role", "pid", "state", "current vCon", "processed", "failed", "RSS MB", "utilization"],
                    [[p["number"], p["pool"], p["role"], p["pid"], p["state"], p["current"] or "-", p["processed"],
                      p["failed"], f"{p['rss_bytes'] / 1048576:.1f}", f"{p['utilization'] * 100:.0f}%"] for p in procs],
                    "no processes", "workers")
    q = s.get("queues", {})
    queues = table(["list", "waiting", "dead letters"],
                   [[name, n, q.get("dlq", {}).get(name, 0)] for name, n in q.get("lists", {}).items()], "no lists")
    hosts = table(["worker (all hosts)", "state", "processed", "current"],
                  [[wid, (i or {}).get("state", "gone"), (i or {}).get("processed", ""), (i or {}).get("current", "")]
                   for wid, i in s.get("workers", {}).items()], "no worker heartbeats in Redis")
    dead = table(["uuid", "list", "reason", "attempts", "time", "error"],
                 [[d.get("uuid") or d.get("item_id"), d.get("list"), d.get("reason"), d.get("attempts", ""),
                   d.get("time", ""), Html(cell(d.get("error", ""), 160))] for d in s.get("dead_letters", [])],
                 "no dead letters", "dead")
    errors = table(["time", "uuid", "what"], [[x.get("time", ""), x.get("uuid", ""), Html(cell(x.get("error", ""), 200))]
                                              for x in s.get("recent_errors", [])], "no recent errors")
    problem = f"<p class=warn>{cell(s['error'])}</p>" if s.get("error") else ""
    facts = [("master pid", m.get("pid", "?")), ("start method", m.get("start_method", "?")),
             ("workers wanted", m.get("target_workers", "?")), ("restarts", m.get("restarts", 0)),
             ("uptime", f"{m.get('uptime_s', '?')} s"), ("processing", q.get("processing", "?")),
             ("delayed retries", q.get("delayed", "?"))]
    spans = "".join(f"<span>{cell(k)} {cell(v)}</span>" for k, v in facts)
    draining = "<span class=warn>draining</span>" if m.get("draining") else ""
    return f"""<p class=facts>{spans}{draining}</p>
{problem}
<h2>Workers on this host</h2>{workers}
<h2>Queues</h2>{queues}
<h2>Dead letters <a class=more href='/status/dead-letters'>filter, inspect, requeue</a></h2>{dead}
<h2>Recent errors</h2>{errors}
<h2>Workers on every host</h2>{hosts}
"""


def script_json(doc: Any) -> str:
    """JSON inside a <script> element: ``</`` and ``<!--`` cannot end or bend it."""
    return orjson.dumps(doc).decode().replace("<", "\\u003c")


def render_status(s: dict[str, Any], history: dict[str, Any] | None = None) -> str:
    """Seed 003's worker dashboard: live graphs over the last 15 minutes, then the tables.
    The history is in the page, so the graphs are drawn as soon as it loads."""
    doc = history or {"t": [], "charts": []}
    charts = "".join(f"<figure class=chart id='chart-{cell(c['id'])}' data-chart='{cell(c['id'])}'>"
                     f"<figcaption>{cell(c['title'])}</figcaption></figure>" for c in doc["charts"])
    body = f"""<h1>conserver</h1>
<section id=charts data-src='/status/history.json'>{charts or "<p class=empty>collecting the first samples</p>"}</section>
<script type=application/json id=history-data>{script_json(doc)}</script>
<div id=tables data-src='/status/tables'>{render_tables(s)}</div>"""
    return frame("conserver status", body, refresh=True)

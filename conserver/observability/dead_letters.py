"""The dead letters on the status page: a list filtered by ingress list and reason, one
dead letter with its metadata and body, and the actions (requeue, purge) on a selection.

Reading needs nothing (the page is on 127.0.0.1 by default). An action is a POST that
must carry ``CONSERVER_ADMIN_TOKEN`` in the ``X-Conserver-Token`` header or the ``token``
form field, compared in constant time; with the setting empty there are no actions and no
buttons. A browser's cross-site request is refused on its ``Sec-Fetch-Site`` and ``Origin``
headers as well, and no cookie is ever read, so a page elsewhere cannot act with the
operator's browser. Every action is logged: who (remote address), what, which items, when.
"""

from __future__ import annotations

import hmac
import html
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from conserver.observability.logging import untrusted
from conserver.observability.page import Html, cell, frame, table

log = logging.getLogger("conserver.observability.dead_letters")

SCANNED = 500  # dead letters read per page view, the filters apply to these
BODY_SHOWN = 64 * 1024  # characters of a body shown
META_SHOWN = 2000  # characters of one metadata field shown
MAX_ITEMS = 1000  # items one action may name
ACTIONS = ("requeue", "purge")


def refusal(token: str, headers: Mapping[str, str], given: str) -> str | None:
    """Why an action request is refused, or None. ``given`` is the token it carries."""
    if not token:
        return "actions are off: CONSERVER_ADMIN_TOKEN is not set"
    site = headers.get("Sec-Fetch-Site", "")
    if site and site not in ("same-origin", "none"):
        return f"cross-site request (Sec-Fetch-Site: {untrusted(site, 40)})"
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != headers.get("Host", "").lower():
        return f"request from another origin ({untrusted(origin, 100)})"
    if not hmac.compare_digest(given.encode(), token.encode()):
        return "wrong or missing admin token"
    return None


def act(queue: Any, action: str, items: list[tuple[str, str]], remote: str) -> dict[str, Any]:
    """Requeue or purge ``items`` ((list, item id) pairs) and log who did what."""
    do = queue.dlq_requeue if action == "requeue" else queue.dlq_drop
    done = sum(do(iid, list_name=name) for name, iid in items)
    shown = ", ".join(f"{untrusted(n, 60)}/{untrusted(i, 60)}" for n, i in items[:20])
    more = f" and {len(items) - 20} more" if len(items) > 20 else ""
    log.warning("dead letters: %s by %s: %d of %d done: %s%s", action, untrusted(remote, 60), done, len(items), shown,
                more, extra={"fields": {"admin_action": action, "remote": untrusted(remote, 60), "done": done,
                                        "items": [f"{untrusted(n, 60)}/{untrusted(i, 60)}" for n, i in items]}})
    return {"action": action, "requested": len(items), "done": done}


def selection(values: list[str], lists: tuple[str, ...]) -> list[tuple[str, str]]:
    """Form values ``"list item_id"`` as pairs, only on the lists this conserver reads."""
    out = []
    for v in values[:MAX_ITEMS]:
        name, _, iid = v.partition(" ")
        if name in lists and iid:
            out.append((name, iid))
    return out


def _filters(lists: tuple[str, ...], reasons: list[str], chosen_list: str, chosen_reason: str) -> str:
    def options(values: list[str], chosen: str) -> str:
        return "".join(f"<option value='{cell(v)}'{' selected' if v == chosen else ''}>{cell(v) or 'all'}</option>"
                       for v in ["", *values])

    return (f"<form class=filters method=get action='/status/dead-letters'>"
            f"<label>list <select name=list id=filter-list>{options(list(lists), chosen_list)}</select></label>"
            f"<label>reason <select name=reason id=filter-reason>{options(reasons, chosen_reason)}</select></label>"
            f"<button type=submit>filter</button></form>")


def _actions(admin: bool, purge_note: str) -> tuple[str, str]:
    """The opening and closing of the action form, or a note when actions are off."""
    if not admin:
        return "<p class=note>Read-only: set CONSERVER_ADMIN_TOKEN to requeue or purge here.</p>", ""
    controls = ("<p><label>admin token <input type=password name=token autocomplete=off></label>"
                "<button type=submit name=action value=requeue id=do-requeue>requeue selected</button> "
                f"<button type=submit name=action value=purge id=do-purge>purge selected</button> "
                f"<span class=note>{cell(purge_note)}</span></p>")
    return (f"<form class=actions method=post action='/status/dead-letters/action' "
            f"data-confirm='Apply to N dead letters?'>{controls}"), "</form>"


def _done_note(query: Mapping[str, str]) -> str:
    action, n = query.get("done", ""), query.get("n", "")
    if action in ACTIONS and n.isdigit():
        return f"<p class=ok id=done>{cell(action)}: {int(n)} done</p>"
    return ""


def render_list(queue: Any, query: Mapping[str, str], admin: bool) -> str:
    """``/status/dead-letters?list=&reason=``: the first dead letters that match."""
    lists = queue.ingress_lists
    chosen_list = query.get("list", "") if query.get("list", "") in lists else ""
    reason = query.get("reason", "")
    entries = queue.dlq_list(chosen_list or None, limit=SCANNED)
    reasons = sorted({str(e.get("reason", "")) for e in entries} - {""} | ({reason} if reason else set()))
    shown = [e for e in entries if not reason or e.get("reason") == reason]
    depths = queue.depths()["dlq"]
    total = sum(n for name, n in depths.items() if not chosen_list or name == chosen_list)
    rows = []
    for e in shown:
        name, iid = str(e.get("list", "")), str(e.get("item_id", ""))
        link = f"/status/dead-letters/show?list={quote(name)}&id={quote(iid)}"
        label = e.get("uuid") or iid
        row: list[Any] = [Html(f"<a class=open href='{cell(link, 1000)}'>{cell(label, 80)}</a>"), name,
                          e.get("reason", ""), e.get("attempts", ""), e.get("time", ""),
                          Html(cell(e.get("error", ""), 200))]
        if admin:
            row.insert(0, Html(f"<input type=checkbox name=item value='{cell(name + ' ' + iid, 1000)}'>"))
        rows.append(row)
    headers = ["uuid", "list", "reason", "attempts", "time", "error"]
    if admin:
        headers.insert(0, Html("<input type=checkbox id=select-all title='select all'>"))
    opening, closing = _actions(admin, "purge drops the dead letter; its body stays in Redis")
    scanned = f"of the first {len(entries)} read" if len(entries) >= SCANNED else f"of {len(entries)}"
    body = (f"<h1>Dead letters</h1>{_done_note(query)}{_filters(lists, reasons, chosen_list, reason)}"
            f"<p class=facts id=counts data-shown={len(shown)} data-total={total}>{len(shown)} shown {scanned}; "
            f"{total} in the dead letters{' of ' + cell(chosen_list) if chosen_list else ''}</p>"
            f"{opening}{table(headers, rows, 'no dead letters match', 'dead')}{closing}")
    return frame("conserver dead letters", body)


def render_one(queue: Any, query: Mapping[str, str], admin: bool) -> tuple[int, str]:
    """``/status/dead-letters/show?list=&id=``: metadata and body, escaped and capped."""
    name, iid = query.get("list", ""), query.get("id", "")
    entry = queue.dlq_show(iid, name if name in queue.ingress_lists else None) if iid else None
    if entry is None:
        return 404, frame("not found", f"<h1>Dead letter</h1><p class=warn>{cell(iid)} is not a dead letter</p>")
    raw = entry.pop("body", None)
    meta = table(["field", "value"], [[k, Html(cell(v, META_SHOWN))] for k, v in sorted(entry.items())], "no metadata")
    if raw is None:
        shown = "<p class=empty>no body in Redis for this item (an item that is no uuid is its own uuid field)</p>"
    else:
        text, note = raw[:BODY_SHOWN], ""
        if len(raw) > BODY_SHOWN:
            note = f"<p class=note>the first {BODY_SHOWN} of {len(raw)} characters</p>"
        else:
            try:
                text = orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
            except orjson.JSONDecodeError:
                note = "<p class=note>not JSON</p>"
        shown = f"{note}<pre class=body id=body>{cell_text(text)}</pre>"
    opening, closing = _actions(admin, "")
    hidden = f"<input type=hidden name=item value='{cell(str(entry.get('list', '')) + ' ' + str(entry.get('item_id', '')), 1000)}'>"
    actions = f"{opening}{hidden}{closing}" if admin else opening
    body = f"<h1>Dead letter {cell(entry.get('uuid') or iid, 80)}</h1>{actions}<h2>Metadata</h2>{meta}<h2>Body</h2>{shown}"
    return 200, frame("conserver dead letter", body)


def cell_text(text: str) -> str:
    """A multi-line text for a <pre>: HTML-escaped, its lines kept, every other control shown."""
    return "\n".join(html.escape(untrusted(line, len(line))) for line in text.split("\n"))

"""The few vCon edits the built-in links share, written to give exactly what vcon-server's
``Vcon`` class (common/vcon.py, vcon-dev/vcon-server b9b0381) gives: the same attachment
and analysis entries, key for key, so a vCon leaves a conserver link as it would leave
vcon-server's. They work on the vCon dict in place.

This module depends on nothing else in the project.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["add_analysis", "add_tag", "decoded_body", "find_attachment_by_purpose", "get_path", "tag_entries"]

ENCODINGS = ("json", "none", "base64url")


def decoded_body(entry: dict | None) -> Any:
    """``Vcon.decoded_body``: a ``json``-encoded string body parsed, anything else as it is."""
    if not entry:
        return None
    body = entry.get("body")
    if entry.get("encoding") == "json" and isinstance(body, str):
        return json.loads(body)
    return body


def find_attachment_by_purpose(vcon: dict, purpose: str) -> dict | None:
    """The first attachment whose ``purpose`` (spec 0.4.0) or legacy ``type`` is ``purpose``."""
    return next((a for a in vcon.get("attachments") or [] if isinstance(a, dict)
                 and (a.get("purpose") == purpose or a.get("type") == purpose)), None)


def add_tag(vcon: dict, tag_name: str, tag_value: Any) -> None:
    """``Vcon.add_tag``: ``"name:value"`` appended to the ``tags`` attachment, made as
    ``{"purpose": "tags", "body": "[...]", "encoding": "json"}`` when there is none. The body
    is ``json.dumps`` of the list, as vcon-server writes it (", " separators)."""
    tags_attachment = find_attachment_by_purpose(vcon, "tags")
    if tags_attachment is None:
        tags_attachment = {"purpose": "tags"}
        vcon.setdefault("attachments", []).append(tags_attachment)
    tags = decoded_body(tags_attachment) or []
    tags.append(f"{tag_name}:{tag_value}")
    tags_attachment["body"] = json.dumps(tags)
    tags_attachment["encoding"] = "json"


def tag_entries(vcon: dict) -> list[str]:
    """The tag names on every ``tags`` attachment, in order (tag_router's reading): the name
    of each ``"name:value"`` string of a list body, or the keys of a dict body."""
    names: list[str] = []
    for attachment in vcon.get("attachments") or []:
        purpose = attachment.get("purpose") or attachment.get("type")
        if purpose != "tags" or "body" not in attachment:
            continue
        body = decoded_body(attachment)
        if isinstance(body, list):
            names.extend(t.split(":", 1)[0] for t in body if isinstance(t, str) and ":" in t and t.split(":", 1)[0])
        elif isinstance(body, dict):
            names.extend(name for name in body if name)
    return names


def add_analysis(vcon: dict, *, type: str, dialog: int | list, vendor: str, body: Any,
                 encoding: str = "none", extra: dict | None = None) -> dict:
    """``Vcon.add_analysis``: appends ``{type, dialog, vendor, body, encoding, **extra}``; a
    dict or list body is JSON-encoded with ``encoding: json``. Returns the entry."""
    if encoding not in ENCODINGS:
        raise ValueError(f"invalid encoding {encoding!r}")
    if isinstance(body, (dict, list)):
        body, encoding = json.dumps(body), "json"
    if encoding == "json":
        json.loads(body)  # a bad JSON body is refused here, as vcon-server does
    entry = {"type": type, "dialog": dialog, "vendor": vendor, "body": body, "encoding": encoding, **(extra or {})}
    vcon.setdefault("analysis", []).append(entry)
    return entry


def get_path(obj: Any, path: str) -> Any:
    """``pydash.get(obj, "a.b.0.c")``: None where the path leaves the data."""
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.lstrip("-").isdigit() and -len(obj) <= int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj

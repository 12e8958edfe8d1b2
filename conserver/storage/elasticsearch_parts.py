"""vcon-server's Elasticsearch documents: one per part of a vCon, in an index per kind of part.

What vcon-server's ``save()`` indexes (common/storage/elasticsearch/__init__.py, commit
b9b0381), for a vCon already through ``normalize_legacy_fields`` (compat.py)::

    {prefix}vcon_parties_{role}     a party with a ``role`` ({prefix}vcon_parties without one;
                                    a role kept only in ``meta`` does not count)
    {prefix}vcon_attachments_{k}    k = (type or purpose or "unknown"), lower-cased
    {prefix}vcon_analysis_{type}    the type as it is: ``llm.summary`` -> vcon_analysis_llm.summary
    {prefix}vcon_dialog

``_id`` is ``{uuid}_{i}``, i the part's position in its list. A document is the part plus
``vcon_id`` (the uuid), ``started_at`` (the first dialog's ``start``, as written) and, when
the first attachment whose purpose (or type) is ``tenant`` has a body with an ``id``,
``tenant_id`` (that id, of whatever JSON type). An attachment or analysis body whose
encoding is ``json`` and which is a string is indexed parsed. A vCon without dialog gets no
documents at all.

Where vcon-server's own write fails, the documents here differ on purpose and say so:
a value that makes an invalid index name (``vcon_analysis_None`` for an analysis without a
type, an upper-case role, a space) is folded to a valid one (lower case, ``_`` for what is
not allowed), where vcon-server's request is refused and the part is missing; a part it
would crash on (a ``json`` body that does not parse, a tenant body without ``id``) is
indexed as it is, without the parsed body or the ``tenant_id``.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import orjson

__all__ = ["ADDED_FIELDS", "KINDS", "index_patterns", "part_documents", "part_index", "parts_of", "tenant_id"]

ADDED_FIELDS = ("vcon_id", "started_at", "tenant_id")
# (index name after the prefix, the vCon's list)
KINDS = (("vcon_parties", "parties"), ("vcon_attachments", "attachments"), ("vcon_analysis", "analysis"),
         ("vcon_dialog", "dialog"))

# Elasticsearch and OpenSearch refuse index names with upper case, these characters, a
# leading - _ or +, or more than 255 bytes.
_NOT_IN_NAMES = re.compile(r'[\\/*?"<>| ,#:]')
_ABSENT = object()


def _valid(name: str) -> bool:
    return (name == name.lower() and not _NOT_IN_NAMES.search(name) and name[:1] not in ("-", "_", "+")
            and len(name.encode()) <= 255)


def part_index(prefix: str, kind: str, value: Any = _ABSENT) -> str:
    """``{prefix}{kind}_{value}`` as vcon-server writes it, folded only where that is invalid."""
    name = f"{prefix}{kind}" if value is _ABSENT else f"{prefix}{kind}_{value}"
    if _valid(name):
        return name
    folded = _NOT_IN_NAMES.sub("_", f"{value}".lower())
    return f"{prefix}{kind}_{folded}".encode()[:255].decode(errors="ignore")


def tenant_id(data: dict) -> tuple[bool, Any]:
    """(found, id) of vcon-server's ``find_attachment_by_purpose("tenant")`` body."""
    for att in _objects(data.get("attachments")):
        if att.get("purpose") != "tenant" and att.get("type") != "tenant":
            continue
        body = _parsed_body(att)
        return (True, body["id"]) if isinstance(body, dict) and "id" in body else (False, None)
    return False, None


def part_documents(data: dict, uuid: str, prefix: str) -> list[tuple[str, str, dict]]:
    """(index, _id, document) for every part of the (normalized) vCon ``data``."""
    dialog = _objects(data.get("dialog"))
    if not dialog:
        return []
    added: dict[str, Any] = {"vcon_id": uuid, "started_at": dialog[0].get("start")}
    found, tenant = tenant_id(data)
    if found:
        added["tenant_id"] = tenant
    out = []
    for i, party in enumerate(_objects(data.get("parties"))):
        role = party.get("role")
        index = part_index(prefix, "vcon_parties", role) if role else part_index(prefix, "vcon_parties")
        out.append((index, f"{uuid}_{i}", {**party, **added}))
    for i, att in enumerate(_objects(data.get("attachments"))):
        kind = f"{att.get('type') or att.get('purpose') or 'unknown'}".lower()
        out.append((part_index(prefix, "vcon_attachments", kind), f"{uuid}_{i}", {**_with_parsed_body(att), **added}))
    for i, analysis in enumerate(_objects(data.get("analysis"))):
        out.append((part_index(prefix, "vcon_analysis", analysis.get("type")), f"{uuid}_{i}",
                    {**_with_parsed_body(analysis), **added}))
    for i, entry in enumerate(dialog):
        out.append((part_index(prefix, "vcon_dialog"), f"{uuid}_{i}", {**entry, **added}))
    return out


def parts_of(uuid: str, hits: list[dict], prefix: str) -> dict | None:
    """The parts of one vCon from its documents (search hits), in their positions, without the
    added fields: ``{"uuid", "parties", "attachments", "analysis", "dialog"}``, or None."""
    found: dict[str, list[tuple[int, dict]]] = {field: [] for _, field in KINDS}
    for hit in hits:
        source = dict(hit.get("_source") or {})
        if source.get("vcon_id") != uuid:
            continue
        field = next((f for kind, f in KINDS if hit["_index"].startswith(prefix + kind)), None)
        if field is None:
            continue
        for name in ADDED_FIELDS:
            source.pop(name, None)
        found[field].append((int(hit["_id"].rsplit("_", 1)[1]), source))
    if not any(found.values()):
        return None
    return {"uuid": uuid, **{field: [doc for _, doc in sorted(docs, key=lambda p: p[0])] for field, docs in found.items()}}


def _objects(items: Any) -> list[dict]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _parsed_body(part: dict) -> Any:
    body = part.get("body")
    if part.get("encoding") == "json" and isinstance(body, str):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
    return body


def _with_parsed_body(part: dict) -> dict:
    body = _parsed_body(part)
    return part if body is part.get("body") else {**part, "body": body}


def index_patterns(prefix: str) -> Iterator[str]:
    """Every part index of this prefix, as wildcard patterns."""
    return (f"{prefix}{kind}*" for kind, _ in KINDS)

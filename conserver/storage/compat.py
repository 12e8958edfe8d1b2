"""What vcon-server stores for a vCon: its legacy-field normalization and its wall-clock date.

vcon-server reads every vCon through ``normalize_legacy_fields`` (common/lib/vcon_compat.py,
vcon-server commit b9b0381) before a storage module writes it, so the bodies in its
PostgreSQL rows, S3 objects and Elasticsearch part documents carry spec names only. The
stores here write the same: :func:`normalize_legacy_fields` applies the same renames in the
same order, with the same rule when both names are present (the spec name wins, the legacy
one is dropped) and the same key order (a renamed key moves to the end of its object, as
``d[new] = d.pop(old)`` does)::

    top level                      appended -> amended, must_support -> critical
    dialog, analysis, attachments  schema_version -> schema, mimetype -> mediatype,
                                   must_support -> critical
    attachments                    type -> purpose, only when purpose is absent (the
                                   lawful_basis extension uses type and purpose together)

Unlike vcon_compat it never mutates its argument (the fan-out threads share one parsed vCon):
it copies only the objects it changes and returns the argument itself when nothing changes,
so :func:`stored_body` can hand a store the JSON bytes exactly as received.

The date of ``created_at`` is the one written in it, offset ignored, as vcon-server's S3 keys
use it (``datetime.fromisoformat(created_at).strftime("%Y/%m/%d")``): a vCon created at
23:30-05:00 on 17 May belongs to 2024/05/17, not to the UTC date.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

import orjson

if TYPE_CHECKING:
    from conserver.vcon import Vcon

__all__ = ["LEGACY_ENTRY", "LEGACY_TOP_LEVEL", "normalize_legacy_fields", "stored_body", "stored_form",
           "wall_clock_date"]

# (legacy name, spec name), applied in this order
LEGACY_TOP_LEVEL = (("appended", "amended"), ("must_support", "critical"))
LEGACY_ENTRY = (("schema_version", "schema"), ("mimetype", "mediatype"), ("must_support", "critical"))


def _renamed(obj: dict, renames: tuple[tuple[str, str], ...]) -> dict:
    """``obj`` with every legacy key moved to its spec name, or ``obj`` itself when it has none."""
    if not any(old in obj for old, _ in renames):
        return obj
    out = dict(obj)
    for old, new in renames:
        if old in out:
            value = out.pop(old)
            if new not in out:  # both present: the spec field wins, the legacy one is dropped
                out[new] = value
    return out


def _entry(entry: Any) -> Any:
    return _renamed(entry, LEGACY_ENTRY) if isinstance(entry, dict) else entry


def _attachment(att: Any) -> Any:
    if not isinstance(att, dict):
        return att
    out = _renamed(att, LEGACY_ENTRY)
    if "purpose" not in out and "type" in out:
        out = dict(out) if out is att else out
        out["purpose"] = out.pop("type")
    return out


_PARTS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("dialog", _entry), ("analysis", _entry), ("attachments", _attachment))


def normalize_legacy_fields(data: dict) -> dict:
    """vcon_compat.normalize_legacy_fields without mutation: a new dict, or ``data`` if unchanged."""
    out = _renamed(data, LEGACY_TOP_LEVEL)
    for name, fix in _PARTS:
        items = out.get(name)
        if not isinstance(items, list):
            continue
        fixed = [fix(item) for item in items]
        if any(new is not old for new, old in zip(fixed, items)):
            out = dict(out) if out is data else out
            out[name] = fixed
    return out


def stored_body(vcon: "Vcon") -> tuple[dict, bytes]:
    """The normalized vCon and its JSON: the bytes received when nothing needed a rename."""
    data = normalize_legacy_fields(vcon.data)
    return data, (vcon.raw if data is vcon.data else orjson.dumps(data))


def stored_form(vcon: "Vcon") -> tuple[dict, bytes]:
    """What a store keeps of a vCon: (the readable vCon, the body to write). An unsigned vCon
    as :func:`stored_body`; a signed or encrypted one as received, the envelope (draft §5.3:
    the signed form is maintained; renaming legacy fields would break its signature), with
    the readable part ``vcon.data`` (a JWS's payload, a JWE's ``{"uuid"}``) beside it."""
    if vcon.form == "unsigned":
        return stored_body(vcon)
    return vcon.data, vcon.raw


def wall_clock_date(created_at: str) -> str:
    """``YYYY/MM/DD`` of ``created_at`` as written (vcon-server's S3 ``_date_prefix``)."""
    return datetime.fromisoformat(created_at).strftime("%Y/%m/%d")

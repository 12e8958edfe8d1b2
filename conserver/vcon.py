"""vCon parsing and validation: bytes from Redis in, a :class:`Vcon` or :class:`InvalidVcon` out.

This is the hot path of every worker, so :func:`parse_vcon` does one ``orjson.loads`` and a
handful of dict look-ups; the UUID is checked with a compiled regex, not ``uuid.UUID``.
The checks run in a fixed order and each failure has a short, stable ``reason`` code that
ends up in the dead-letter metadata and in metrics labels.

This module depends on nothing else in the project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

# Every reason InvalidVcon can carry (a stable vocabulary: metrics and DLQ metadata use it).
REASONS = (
    "too_large",        # the JSON is longer than max_bytes
    "invalid_utf8",     # the bytes are not UTF-8
    "broken_json",      # not JSON at all
    "not_object",       # JSON, but not an object
    "missing_uuid",     # no "uuid"
    "bad_uuid",         # "uuid" is not a canonical 8-4-4-4-12 hex UUID
    "unsafe_uuid",      # "uuid" (or the list item) could escape a key or a path
    "uuid_mismatch",    # the body's uuid is not the list item's uuid
    "missing_version",  # no "vcon" version string
    "bad_created_at",   # "created_at" missing or not ISO 8601
    "wrong_type",       # a known field has the wrong JSON type
    "missing_body",     # the vcon:{uuid} key is missing or expired (raised by the queue)
)

ARRAY_FIELDS = ("parties", "dialog", "analysis", "attachments")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
# Safe: ASCII letters, digits, '.', '_', '-' and no '..'. Anything else (/ \ : * ? whitespace,
# control characters, quotes, non-ASCII look-alikes of '/' ...) could escape a Redis key, an S3
# key, an index name or a file path, so it is refused before anything is derived from it.
_SAFE = re.compile(r"[A-Za-z0-9._\-]*\Z")
_UTC = timezone.utc


class InvalidVcon(Exception):
    """A vCon that can never be stored as it is. ``reason`` is a code from :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # picklable with both arguments (the default passes only args)
        return (InvalidVcon, (self.reason, self.detail))


@dataclass(slots=True)
class Vcon:
    """A validated vCon. ``raw`` is the JSON exactly as stored: stores write it as it is."""

    uuid: str  # canonical lowercase
    data: dict
    raw: bytes
    created_at: datetime  # tz-aware UTC

    @property
    def tenant(self) -> str | None:
        return tenant_of(self.data)

    @property
    def subject(self) -> str | None:
        subject = self.data.get("subject")
        return subject if isinstance(subject, str) else None


def check_uuid(value: Any, what: str = "uuid") -> str:
    """``value`` as a canonical lowercase UUID, or InvalidVcon (unsafe_uuid, bad_uuid, wrong_type).

    A canonical UUID is safe by construction; anything else is checked for safety before
    anything is derived from it, so a hostile value is named unsafe even when it is not a
    UUID either.
    """
    if type(value) is str and _UUID.match(value):  # hex and '-' only: safe by construction
        return value.lower()
    if not isinstance(value, str):
        raise InvalidVcon("wrong_type", f"{what} is {_type_name(value)}, not a string")
    if not _SAFE.match(value) or ".." in value or value == ".":
        raise InvalidVcon("unsafe_uuid", f"{what} {_preview(value)} could escape a key or path")
    raise InvalidVcon("bad_uuid", f"{what} {_preview(value)} is not a UUID")


def parse_vcon(raw: bytes | bytearray | memoryview | str, item_uuid: str | None, max_bytes: int) -> Vcon:
    """Parse and validate one vCon. ``item_uuid`` is the uuid the ingress list named (None for
    an inline vCon); ``max_bytes`` <= 0 means no size limit. Raises :class:`InvalidVcon`."""
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:  # lone surrogates
            raise InvalidVcon("invalid_utf8", str(exc)) from None
    elif not isinstance(raw, bytes):
        raw = bytes(raw)
    if 0 < max_bytes < len(raw):
        raise InvalidVcon("too_large", f"{len(raw)} bytes, the limit is {max_bytes}")
    expected = check_uuid(item_uuid, "list item") if item_uuid is not None else None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode()
        except UnicodeDecodeError as uexc:
            raise InvalidVcon("invalid_utf8", str(uexc)) from None
        raise InvalidVcon("broken_json", str(exc)) from None
    if type(data) is not dict:
        raise InvalidVcon("not_object", f"the JSON is {_type_name(data)}")

    value = data.get("uuid")
    if value is None:
        raise InvalidVcon("missing_uuid", "no uuid")
    vuuid = expected if value == item_uuid else check_uuid(value)
    if expected is not None and vuuid != expected:
        raise InvalidVcon("uuid_mismatch", f"body uuid {vuuid} is not the list item's {expected}")

    version = data.get("vcon")
    if version is None or version == "":
        raise InvalidVcon("missing_version", "no vcon version string")
    if type(version) is not str:
        raise InvalidVcon("wrong_type", f"vcon is {_type_name(version)}, not a string")

    created_at = _parse_time(data.get("created_at"))

    for name in ARRAY_FIELDS:
        items = data.get(name, _ABSENT)
        if items is _ABSENT:
            continue
        if type(items) is not list:
            raise InvalidVcon("wrong_type", f"{name} is {_type_name(items)}, not an array")
        for element in items:
            if type(element) is not dict:
                i = next(i for i, e in enumerate(items) if type(e) is not dict)
                raise InvalidVcon("wrong_type", f"{name}[{i}] is {_type_name(element)}, not an object")
    subject = data.get("subject")
    if subject is not None and type(subject) is not str:
        raise InvalidVcon("wrong_type", f"subject is {_type_name(subject)}, not a string")
    return Vcon(vuuid, data, raw, created_at)


_ABSENT = object()


def _parse_time(value: Any) -> datetime:
    if type(value) is not str or not value:
        raise InvalidVcon("bad_created_at", f"created_at is {_type_name(value)}, not an ISO 8601 string")
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            return dt.replace(tzinfo=_UTC)
        return dt if dt.utcoffset() == _ZERO else dt.astimezone(_UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidVcon("bad_created_at", f"created_at {_preview(value)}: {exc}") from None


_ZERO = timedelta(0)


def tenant_of(data: dict) -> str | None:
    """vcon-server's rule: the ``body.id`` of the attachment whose purpose (or type) is
    ``tenant``; the body may be an object or a JSON string."""
    attachments = data.get("attachments")
    if type(attachments) is not list:
        return None
    for att in attachments:
        if type(att) is not dict or (att.get("purpose") != "tenant" and att.get("type") != "tenant"):
            continue
        body = att.get("body")
        if isinstance(body, (str, bytes)):
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
        if type(body) is dict:
            tid = body.get("id")
            if isinstance(tid, str) and tid:
                return tid
            if type(tid) is int:
                return str(tid)
    return None


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
             bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _preview(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")

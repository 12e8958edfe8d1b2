"""Broken vCons, each with the dead-letter reason it must get.

kind -> (list item, body stored at vcon:{item} or None, expected reason)
"""
from __future__ import annotations

import uuid as _uuid

import orjson


def _u() -> str:
    return str(_uuid.uuid4())


def _good(u: str, **changes) -> bytes:
    doc = {"vcon": "0.0.1", "uuid": u, "created_at": "2026-01-02T03:04:05Z", "parties": [], "dialog": []}
    for k, v in changes.items():
        if v is _DROP:
            doc.pop(k, None)
        else:
            doc[k] = v
    return orjson.dumps(doc)


_DROP = object()


def _with(kind_body):
    u = _u()
    return u, kind_body(u)


BAD_CORPUS: dict[str, tuple[str, bytes | None, str]] = {}


def _add(kind: str, item: str, body: bytes | None, reason: str) -> None:
    BAD_CORPUS[kind] = (item, body, reason)


for kind, make, reason in [
    ("truncated json", lambda u: _good(u)[:-7], "broken_json"),
    ("not json at all", lambda u: b"hello, I am not JSON", "broken_json"),
    ("trailing garbage", lambda u: _good(u) + b"}}", "broken_json"),
    ("json array", lambda u: b"[1, 2, 3]", "not_object"),
    ("json string", lambda u: b'"a string"', "not_object"),
    ("json null", lambda u: b"null", "not_object"),
    ("invalid utf-8", lambda u: _good(u).replace(b'"parties"', b'"p\xff\xfearties"'), "invalid_utf8"),
    ("no uuid in body", lambda u: _good(u, uuid=_DROP), "missing_uuid"),
    ("uuid mismatch", lambda u: _good(_u()), "uuid_mismatch"),
    ("uuid not a uuid in body", lambda u: _good("not-a-uuid"), "bad_uuid"),
    # no "vcon" is fine since draft-ietf-vcon-vcon-core §4.1.1 deprecated it; critical is not
    ("critical extension not supported", lambda u: _good(u, critical=["x-unknown"]), "unsupported_critical"),
    ("signed, payload not base64url", lambda u: orjson.dumps({"payload": "%%", "signatures": [{"protected": "e30",
                                                               "signature": "AA"}]}), "bad_payload"),
    ("version is a number", lambda u: _good(u, vcon=1), "wrong_type"),
    ("no created_at", lambda u: _good(u, created_at=_DROP), "bad_created_at"),
    ("created_at not a date", lambda u: _good(u, created_at="yesterday"), "bad_created_at"),
    ("created_at a number", lambda u: _good(u, created_at=1700000000), "bad_created_at"),
    ("parties an object", lambda u: _good(u, parties={"a": 1}), "wrong_type"),
    ("dialog a string", lambda u: _good(u, dialog="hello"), "wrong_type"),
    ("analysis a number", lambda u: _good(u, analysis=3), "wrong_type"),
    ("attachments of strings", lambda u: _good(u, attachments=["x"]), "wrong_type"),
    ("too large", lambda u: _good(u, subject="x" * (17 * 1024 * 1024)), "too_large"),
]:
    u = _u()
    _add(kind, u, make(u), reason)

_add("missing body", _u(), None, "missing_body")
_add("list item not a uuid", "hello-world", None, "bad_uuid")
_add("path traversal item", "../../etc/passwd", None, "unsafe_uuid")
_add("key glob item", "vcon:*", None, "unsafe_uuid")
_add("empty item", "", None, "bad_uuid")

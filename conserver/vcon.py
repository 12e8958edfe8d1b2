"""vCon parsing and validation: bytes from Redis in, a :class:`Vcon` or :class:`InvalidVcon` out.

The rules follow **draft-ietf-vcon-vcon-core-03** (:data:`REVISION`; §-numbers below are
that revision's). conserver refuses only what it cannot store safely or what the draft
forbids processing (:data:`REASONS`); what the draft forbids but producers write anyway is
stored as received and named in :attr:`Vcon.nonconforming` (:data:`RULES`), for the
pipeline to count, log, or dead-letter under CONSERVER_STRICT_VCON (conserver/conformance.py).

The contract the stores build on, per form (§5.4 tells the forms apart)::

    form         uuid (canonical, lowercase)        data                      created_at
    unsigned     the vCon's uuid (§4.1.2)            the vCon                  its created_at
    signed       the payload's uuid; every uuid      the payload: the          the payload's
      (JWS §5.2) a header claims must match it       unsigned vCon that was    created_at
                                                     signed
    encrypted    the uuid the headers claim          only what the headers     None: it is
      (JWE §5.3) (§5.3.1 unprotected; protected;     reveal: {"uuid": ...}     inside the
                 recipients' headers), all equal                               ciphertext

``raw`` is always the bytes exactly as received (for a signed or encrypted vCon, the
envelope: §5.3 says the signed form MUST be maintained); ``tenant`` and ``subject`` are read from ``data``.
``created_at`` is a tz-aware UTC datetime for the unsigned and signed forms. ``critical``
holds the extensions the vCon requires (§4.1.4; unknown for the encrypted form). Signatures
are not verified and nothing is decrypted: no keys are configured here.

The checks run most basic first: size, UTF-8, JSON, an object (§3), the form and its
envelope (§5.2-§5.3), the uuid (§4.1.2), created_at (§4.1.5), the member types the stores
index, then ``critical`` (§4.1.4). This is the hot path of every worker: one
``orjson.loads`` (two for a JWS) and a handful of dict look-ups.

This module depends on nothing else in the project but jose.py and rfc3339.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Collection

import orjson

from conserver import rfc3339
from conserver.jose import Envelope, EnvelopeError, open_envelope

REVISION = "draft-ietf-vcon-vcon-core-03"

# Every reason InvalidVcon can carry (a stable vocabulary: metrics and DLQ metadata use it;
# CONSERVER_STRICT_VCON adds the names of RULES).
REASONS = {
    "too_large": "longer than CONSERVER_MAX_VCON_BYTES (a gzipped JWS payload once inflated)",
    "invalid_utf8": "not UTF-8 (RFC 8259 §8.1)",
    "broken_json": "not JSON (§3)",
    "not_object": "JSON, but not an object (§3)",
    "bad_payload": "a JWS whose payload is no base64url (gzip) JSON object (§5.2)",
    "missing_uuid": "no uuid: the vCon's (§4.1.2), or for a JWE the headers' (§5.3.1)",
    "bad_uuid": "a uuid that is not a canonical 8-4-4-4-12 hex UUID (§4.1.2): the stores key on it",
    "unsafe_uuid": "a uuid (or list item) that could escape a key or a path",
    "uuid_mismatch": "the body's uuid is not the list item's, or a JOSE header's uuid is not the payload's (§5.2.2)",
    "bad_created_at": "created_at missing or no date (§4.1.5 MUST be present; §2.2): the stores file by it",
    "wrong_type": "a member the stores index has another type than §4.1 gives it",
    "unsupported_critical": "critical names an extension not in CONSERVER_SUPPORTED_EXTENSIONS (§4.1.4 MUST NOT process)",
    "missing_body": "the vcon:{uuid} key is missing or expired (raised by the queue)",
}

# Departures from the draft that a vCon is stored with (a stable vocabulary: the metric's
# rule label, and the dead-letter reason under CONSERVER_STRICT_VCON).
RULES = {
    **{f"created_at_{d}": f"§4.1.5, §2.2: created_at has {t}" for d, t in rfc3339.DEFECTS.items()},
    **{f"updated_at_{d}": f"§4.1.6, §2.2: updated_at has {t}" for d, t in rfc3339.DEFECTS.items()},
    "updated_at_not_a_date": "§4.1.6, §2.2: updated_at is no date at all",
    "vcon_version": '§4.1.1: vcon (deprecated) is present but not "0.4.0": an older draft\'s syntax',
    "extensions_type": "§4.1.3: extensions is not an array of strings",
    "must_support": "§7.1: must_support, the name critical had before 0.4.0 (its names are honoured as critical)",
    "redacted_and_amended": "§4.1.8, §4.1.9: redacted and amended are mutually exclusive",
    "jose_flattened": "§5.2, §5.3: the flattened JWS/JWE serialization, not the general one",
    "jose_protected_header": "§5.2.1, §5.3: a protected header that is not base64url JSON (RFC 7515 §7.2.1)",
    "jws_signature": "§5.2, §5.2.1: signatures is not an array of objects with header, protected and signature",
    "jws_certificate": "§5.2, §5.2.2: a signature's headers lack alg, or both x5c and x5u",
    "jwe_members": "§5.3-§5.3.2: iv, ciphertext, tag, unprotected or recipients missing or of the wrong type",
}

# Stored or indexed by every store, so a value of another type cannot be stored the same
# way everywhere (see _check_types).
ARRAY_FIELDS = ("parties", "dialog", "analysis", "attachments")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
# Safe: ASCII letters, digits, '.', '_', '-' and no '..'. Anything else (/ \ : * ? whitespace,
# control characters, quotes, non-ASCII look-alikes of '/' ...) could escape a Redis key, an S3
# key, an index name or a file path, so it is refused before anything is derived from it.
_SAFE = re.compile(r"[A-Za-z0-9._\-]*\Z")
_ABSENT = object()
_MAX_JWS_NESTING = 8


class InvalidVcon(Exception):
    """A vCon that is not stored. ``reason`` is a code from :data:`REASONS` (or, under
    CONSERVER_STRICT_VCON, from :data:`RULES`)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # picklable with both arguments (the default passes only args)
        return (InvalidVcon, (self.reason, self.detail))


@dataclass(slots=True)
class Vcon:
    """A validated vCon; the module docstring gives the contract per form."""

    uuid: str  # canonical lowercase
    data: dict
    raw: bytes  # exactly as received: stores write it as it is
    created_at: datetime | None  # tz-aware UTC; None only for the encrypted form
    form: str = "unsigned"  # "unsigned", "signed" (JWS) or "encrypted" (JWE)
    nonconforming: tuple[str, ...] = ()  # names from RULES
    critical: tuple[str, ...] = ()  # extensions it requires (§4.1.4)

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


def parse_vcon(raw: bytes | bytearray | memoryview | str, item_uuid: str | None, max_bytes: int,
               supported_extensions: Collection[str] | None = None) -> Vcon:
    """Parse and validate one vCon. ``item_uuid`` is the uuid the ingress list named (None for
    an inline vCon); ``max_bytes`` <= 0 means no size limit. ``supported_extensions``: the
    extensions ``critical`` may name (§4.1.4); None leaves that check to the caller
    (:func:`check_critical`, which the pipeline runs). Raises :class:`InvalidVcon`."""
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
    data = _loads(raw)
    form, body, claimed, rules = "unsigned", data, [], []
    if "payload" in data or "ciphertext" in data:  # perhaps signed or encrypted (§5.4)
        envelope = _open(data, max_bytes)
        if envelope.form == "encrypted":
            vuuid = _claimed_uuid(envelope.claimed_uuids, expected)
            return Vcon(vuuid, {"uuid": vuuid}, raw, None, "encrypted", tuple(envelope.rules))
        form = envelope.form
        body, claimed, rules = _unwrap(data, envelope, max_bytes)
    vuuid = _body_uuid(body, expected, item_uuid, "uuid (in the JWS payload)" if form == "signed" else "uuid")
    for where, value in claimed:
        if check_uuid(value, where) != vuuid:
            raise InvalidVcon("uuid_mismatch", f"{where} {_preview(str(value))} is not the payload's {vuuid}")
    created_at = _created_at(body.get("created_at"), rules)
    _check_types(body)
    _check_members(body, rules)
    critical = _critical(body, rules)
    vcon = Vcon(vuuid, body, raw, created_at, form, tuple(dict.fromkeys(rules)) if rules else (), critical)
    if supported_extensions is not None:
        check_critical(vcon, supported_extensions)
    return vcon


def check_critical(vcon: Vcon, supported: Collection[str]) -> None:
    """§4.1.4: an implementation that does not support an extension listed in critical MUST
    NOT process the vCon except to reject it. Names compare exactly."""
    missing = [name for name in vcon.critical if name not in supported]
    if missing:
        raise InvalidVcon("unsupported_critical",
                          f"critical names {', '.join(map(repr, missing))}, not in CONSERVER_SUPPORTED_EXTENSIONS")


def _open(doc: dict, max_bytes: int) -> Envelope:
    try:
        return open_envelope(doc, max_bytes)
    except EnvelopeError as exc:
        raise InvalidVcon(exc.reason, exc.detail) from None


def _unwrap(doc: dict, envelope: Envelope, max_bytes: int) -> tuple[dict, list[tuple[str, Any]], list[str]]:
    """The unsigned vCon inside ``doc`` (``doc`` itself if unsigned), the uuids the JWS
    headers on the way claim, and the rules broken on the way."""
    claimed: list[tuple[str, Any]] = []
    rules = list(envelope.rules)
    for _ in range(_MAX_JWS_NESTING):  # §5.2.3: a re-signed vCon is a JWS whose payload is the JWS
        if envelope.form == "unsigned":
            return doc, claimed, rules
        if envelope.form == "encrypted":
            raise InvalidVcon("bad_payload", "a JWS payload that is a JWE (§5.3 encrypts the signed form, not the reverse)")
        claimed += envelope.claimed_uuids
        doc = _payload_object(envelope.payload)
        envelope = _open(doc, max_bytes)
        rules += envelope.rules
    raise InvalidVcon("bad_payload", f"JWS payloads nested more than {_MAX_JWS_NESTING} deep")


def _loads(raw: bytes) -> dict:
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
    return data


def _payload_object(payload: bytes | None) -> dict:
    try:
        body = orjson.loads(payload or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidVcon("bad_payload", f"the JWS payload is not JSON: {exc}") from None
    if type(body) is not dict:
        raise InvalidVcon("bad_payload", f"the JWS payload is {_type_name(body)}, not a vCon object")
    return body


def _body_uuid(body: dict, expected: str | None, item_uuid: str | None, what: str) -> str:
    value = body.get("uuid")
    if value is None:
        raise InvalidVcon("missing_uuid", f"no {what}")
    vuuid = expected if value == item_uuid else check_uuid(value, what)
    if expected is not None and vuuid != expected:
        raise InvalidVcon("uuid_mismatch", f"{what} {vuuid} is not the list item's {expected}")
    return vuuid


def _claimed_uuid(claimed: list[tuple[str, Any]], expected: str | None) -> str:
    """The one uuid a JWE's headers agree on (§5.3.1 says it SHOULD be there; without it
    there is nothing to file the envelope under)."""
    if not claimed:
        raise InvalidVcon("missing_uuid", "no uuid in the JWE's headers (§5.3.1 unprotected.uuid)")
    first_where, first = claimed[0]
    vuuid = check_uuid(first, first_where)
    for where, value in claimed[1:]:
        if check_uuid(value, where) != vuuid:
            raise InvalidVcon("uuid_mismatch", f"{where} {_preview(str(value))} is not {first_where}'s {vuuid}")
    if expected is not None and vuuid != expected:
        raise InvalidVcon("uuid_mismatch", f"{first_where} {vuuid} is not the list item's {expected}")
    return vuuid


def _created_at(value: Any, rules: list[str]) -> datetime:
    if type(value) is not str or not value:
        raise InvalidVcon("bad_created_at", f"created_at is {_type_name(value)}, not an RFC 3339 date-time")
    try:
        when, defects = rfc3339.read(value)
    except (ValueError, OverflowError) as exc:
        raise InvalidVcon("bad_created_at", f"created_at {_preview(value)}: {exc}") from None
    if defects:
        rules.extend(f"created_at_{d}" for d in defects)
    return when


def _check_types(body: dict) -> None:
    """Refuse what the stores cannot all store alike. The arrays are indexed part by part
    (the Elasticsearch mapping makes them objects: a string there is refused by the index
    after PostgreSQL and S3 committed it, a partial store), and vcon and subject fill
    mapped fields and the PostgreSQL columns, where another type is refused by one store
    or stored differently by each. These checks predate the draft rules: they refuse
    nothing that conserver stored before."""
    for name in ARRAY_FIELDS:  # §4.1.10-§4.1.13: arrays of objects
        items = body.get(name, _ABSENT)
        if items is _ABSENT:
            continue
        if type(items) is not list:
            raise InvalidVcon("wrong_type", f"{name} is {_type_name(items)}, not an array")
        for element in items:
            if type(element) is not dict:
                i = next(i for i, e in enumerate(items) if type(e) is not dict)
                raise InvalidVcon("wrong_type", f"{name}[{i}] is {_type_name(element)}, not an object")
    for name in ("vcon", "subject"):  # §4.1.1, §4.1.7: strings
        value = body.get(name)
        if value is not None and type(value) is not str:
            raise InvalidVcon("wrong_type", f"{name} is {_type_name(value)}, not a string")


def _check_members(body: dict, rules: list[str]) -> None:
    """The draft's rules for the other top-level members: stored as they are, named."""
    version = body.get("vcon")
    if version is not None and version != "0.4.0":
        rules.append("vcon_version")
    updated_at = body.get("updated_at")
    if updated_at is not None:
        try:
            if type(updated_at) is not str or not updated_at:
                raise ValueError("not a string")
            rules.extend(f"updated_at_{d}" for d in rfc3339.read(updated_at)[1])
        except (ValueError, OverflowError):
            rules.append("updated_at_not_a_date")
    extensions = body.get("extensions")
    if extensions is not None and (type(extensions) is not list or any(type(e) is not str for e in extensions)):
        rules.append("extensions_type")
    if body.get("redacted") and body.get("amended"):  # {} is "no value" (§2.2): as if absent
        rules.append("redacted_and_amended")


def _critical(body: dict, rules: list[str]) -> tuple[str, ...]:
    names: list[str] = []
    for member in ("critical", "must_support"):
        value = body.get(member)
        if value is None:
            continue
        if member == "must_support":
            rules.append("must_support")
        if type(value) is not list or any(type(n) is not str for n in value):
            # Which extensions it requires cannot be told, so none of them is supported.
            raise InvalidVcon("unsupported_critical",
                              f"{member} is {_type_name(value)}, not an array of extension names (§4.1.4)")
        names.extend(value)
    return tuple(dict.fromkeys(names))


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

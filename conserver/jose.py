"""The signed (JWS) and encrypted (JWE) forms of a vCon: which form, and what can be read
without a key (draft-ietf-vcon-vcon-core-03 §5.2-§5.4).

Nothing here verifies a signature or decrypts: conserver stores envelopes as received.
:func:`open_envelope` says which form a vCon object is in (§5.4), takes the uuids the
headers claim (the protected header, base64url JSON, and the unprotected ones: §5.2.2 puts
the uuid in a signature's ``header``, §5.3.1 in the JWE's ``unprotected``) and, for a JWS,
decodes the payload (§5.2: base64url of the unsigned vCon, or of its gzip).

Departures from §5.2-§5.3 that do not stop conserver from storing the envelope are returned
as rule names (``conserver.vcon.RULES`` describes them); what makes the envelope unreadable
raises :class:`EnvelopeError` with a reason of ``conserver.vcon.REASONS``.

Depends on nothing else in the project.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

_GZIP_MAGIC = b"\x1f\x8b"


class EnvelopeError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(slots=True)
class Envelope:
    form: str  # "unsigned", "signed" or "encrypted"
    claimed_uuids: list[tuple[str, Any]] = field(default_factory=list)  # (where, value) from the headers
    payload: bytes | None = None  # a JWS's payload, decoded (and gunzipped): the unsigned vCon's JSON
    rules: list[str] = field(default_factory=list)  # departures from §5.2-§5.3, see conserver.vcon.RULES


def form_of(doc: dict) -> str:
    """§5.4: ``ciphertext`` and ``recipients`` mark the encrypted form, ``payload`` and
    ``signatures`` the signed one; anything else is unsigned. The flattened serializations
    (RFC 7515 and RFC 7516 §7.2.2: one signature or recipient merged into the top level)
    are recognised too, so their uuid is found; the draft asks for the general one."""
    if "ciphertext" in doc and ("recipients" in doc or "iv" in doc):
        return "encrypted"
    if "payload" in doc and ("signatures" in doc or "signature" in doc):
        return "signed"
    return "unsigned"


def open_envelope(doc: dict, max_bytes: int) -> Envelope:
    """What can be read of ``doc`` without a key. ``max_bytes`` (<= 0: none) bounds a
    gzipped JWS payload once inflated."""
    env = Envelope(form_of(doc))
    if env.form == "unsigned":
        return env
    if "uuid" in doc:  # not a JOSE member, but a producer may leave the vCon's own there
        env.claimed_uuids.append(("the envelope's uuid", doc["uuid"]))
    if env.form == "signed":
        _read_jws(doc, env, max_bytes)
    else:
        _read_jwe(doc, env)
    return env


def _read_jws(doc: dict, env: Envelope, max_bytes: int) -> None:
    for i, sig in enumerate(_entries(doc, "signatures", "jws_signature", env)):
        if type(sig) is not dict:
            env.rules.append("jws_signature")
            continue
        # §5.2.1: each Signature Object MUST contain header, protected and signature.
        if type(sig.get("header")) is not dict or type(sig.get("signature")) is not str or "protected" not in sig:
            env.rules.append("jws_signature")
        headers = [(where, h) for where, h in (("protected header", _protected(sig, env)), ("header", sig.get("header")))
                   if type(h) is dict]
        for where, h in headers:
            if "uuid" in h:
                env.claimed_uuids.append((f"signature {i}'s {where}", h["uuid"]))
        # §5.2, §5.2.2: the headers carry alg, and x5c or x5u (the certificate chain).
        if not (any(type(h.get("alg")) is str for _, h in headers) and any("x5c" in h or "x5u" in h for _, h in headers)):
            env.rules.append("jws_certificate")
    env.payload = _payload(doc["payload"], max_bytes)
    env.rules[:] = dict.fromkeys(env.rules)


def _read_jwe(doc: dict, env: Envelope) -> None:
    # §5.3: unprotected, recipients, iv, ciphertext and tag, the last three strings.
    if any(type(doc.get(name)) is not str for name in ("iv", "ciphertext", "tag")):
        env.rules.append("jwe_members")
    protected = _protected(doc, env)
    if type(protected) is dict and "uuid" in protected:
        env.claimed_uuids.append(("protected header", protected["uuid"]))
    unprotected = doc.get("unprotected")  # §5.3.1: cty, enc and the uuid
    if type(unprotected) is not dict:
        env.rules.append("jwe_members")
    elif "uuid" in unprotected:
        env.claimed_uuids.append(("unprotected header", unprotected["uuid"]))
    for i, recipient in enumerate(_entries(doc, "recipients", "jwe_members", env)):
        # §5.3.2: a Recipient Object has a header and an encrypted_key.
        if type(recipient) is not dict or type(recipient.get("encrypted_key")) is not str:
            env.rules.append("jwe_members")
            continue
        header = recipient.get("header")
        if type(header) is dict and "uuid" in header:
            env.claimed_uuids.append((f"recipient {i}'s header", header["uuid"]))
    env.rules[:] = dict.fromkeys(env.rules)


def _entries(doc: dict, member: str, rule: str, env: Envelope) -> list:
    """The signatures or recipients: the general serialization's array, or the top level
    itself in the flattened one (RFC 7515 and RFC 7516 §7.2.2)."""
    if member not in doc:
        env.rules.append("jose_flattened")
        return [doc]
    entries = doc[member]
    if type(entries) is not list or not entries:
        env.rules.append(rule)
        return []
    return entries


def _protected(holder: dict, env: Envelope) -> Any:
    """The protected header decoded (RFC 7515 §7.2.1: base64url of a JSON object), or None."""
    value = holder.get("protected")
    if value is None:
        return None
    try:
        header = orjson.loads(b64url(value))
    except (ValueError, orjson.JSONDecodeError):
        header = None
    if type(header) is not dict:
        env.rules.append("jose_protected_header")
        return None
    return header


def _payload(value: Any, max_bytes: int) -> bytes:
    try:
        data = b64url(value)
    except ValueError as exc:
        raise EnvelopeError("bad_payload", f"the JWS payload is not base64url: {exc}") from None
    if data[:2] != _GZIP_MAGIC:
        return data
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, max_bytes + 1 if max_bytes > 0 else 0)
    except zlib.error as exc:
        raise EnvelopeError("bad_payload", f"the JWS payload is not valid gzip: {exc}") from None
    if max_bytes > 0 and (len(out) > max_bytes or inflate.unconsumed_tail):
        raise EnvelopeError("too_large", f"the JWS payload inflates past {max_bytes} bytes")
    if not inflate.eof:
        raise EnvelopeError("bad_payload", "the JWS payload is truncated gzip")
    return out


def b64url(value: Any) -> bytes:
    """RFC 7515 §2 base64url, padding optional; ValueError for anything else."""
    if type(value) is not str:
        raise ValueError(f"a {type(value).__name__}, not a string")
    try:
        return base64.b64decode(value.encode("ascii") + b"=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from None

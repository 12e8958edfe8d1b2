"""The signed (JWS) and encrypted (JWE) forms of draft-ietf-vcon-vcon-core-03 §5.2-§5.4, and
a property test: every spec-valid vCon, in any of the three forms, parses with its uuid."""

from __future__ import annotations

import base64
import calendar
import gzip
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conserver.vcon import REASONS, InvalidVcon, parse_vcon

UUID = "019f15a6-a752-826f-b9a2-279e0d16bc46"
OTHER = "11111111-2222-4333-8444-555555555555"
LIMIT = 1 << 20
UNSIGNED = {"uuid": UUID, "created_at": "2026-06-29T23:03:01.095Z", "subject": "Refund",
            "parties": [{"tel": "+12345678901", "name": "Alice"}],
            "attachments": [{"purpose": "tenant", "encoding": "json", "body": {"id": "acme"}}]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(payload: dict | bytes, protected: dict | None = None, header: dict | None = None, **top) -> dict:
    """§5.2: the general JWS JSON serialization (the signature is not verified: any bytes do)."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    sig = {"protected": b64(orjson.dumps(protected or {"alg": "RS256"})),
           "header": header if header is not None else {"x5u": "https://certs.example.com/a.pem", "uuid": UUID},
           "signature": b64(b"\x01" * 64)}
    return {"payload": b64(body), "signatures": [sig], **top}


def jwe(unprotected: dict | None = None, protected: dict | None = None, recipients: list | None = None) -> dict:
    """§5.3: the general JWE JSON serialization."""
    return {"protected": b64(orjson.dumps(protected or {"alg": "RSA-OAEP", "enc": "A256CBC-HS512"})),
            "unprotected": unprotected if unprotected is not None else {"cty": "application/vcon+json", "uuid": UUID},
            "recipients": recipients or [{"header": {"alg": "RSA-OAEP"}, "encrypted_key": b64(b"k" * 256)}],
            "iv": b64(b"i" * 16), "ciphertext": b64(b"c" * 300), "tag": b64(b"t" * 32)}


def parse(doc: dict | bytes, item: str | None = UUID, **kw):
    return parse_vcon(doc if isinstance(doc, bytes) else orjson.dumps(doc), item, kw.pop("limit", LIMIT),
                      supported_extensions=kw.pop("supported", ()))


def reason(doc: dict | bytes, item: str | None = UUID, **kw) -> str:
    with pytest.raises(InvalidVcon) as info:
        parse(doc, item, **kw)
    assert info.value.reason in REASONS
    return info.value.reason


# --- signed ---------------------------------------------------------------------------------

def test_signed_vcon_keeps_its_envelope_and_reads_its_payload():
    raw = orjson.dumps(jws(UNSIGNED))
    v = parse(raw)
    assert (v.form, v.uuid, v.raw, v.data) == ("signed", UUID, raw, UNSIGNED)
    assert v.created_at == datetime(2026, 6, 29, 23, 3, 1, 95000, tzinfo=timezone.utc)
    assert (v.tenant, v.subject, v.nonconforming) == ("acme", "Refund", ())


def test_signed_payload_may_be_gzip_and_the_uuid_may_be_in_the_protected_header():
    doc = jws(gzip.compress(orjson.dumps(UNSIGNED)), protected={"alg": "RS256", "uuid": UUID},
              header={"x5c": ["MIIB"]})
    assert parse(doc).data == UNSIGNED and parse(doc).nonconforming == ()
    assert parse(jws(UNSIGNED, header={"x5c": ["MIIB"]})).uuid == UUID  # the header uuid is a SHOULD


def test_resigned_vcon_is_read_through_to_the_inner_payload():
    # §5.2.3: long-term archiving signs the JWS again, as the payload of a new one
    outer = jws(orjson.dumps(jws(UNSIGNED)))
    v = parse(outer)
    assert v.form == "signed" and v.data == UNSIGNED and v.raw == orjson.dumps(outer)


@pytest.mark.parametrize("doc, expected", [
    (jws(UNSIGNED, header={"x5u": "https://c.example.com", "uuid": OTHER}), "uuid_mismatch"),
    (jws(UNSIGNED, protected={"alg": "RS256", "uuid": OTHER}), "uuid_mismatch"),
    (jws(UNSIGNED, uuid=OTHER), "uuid_mismatch"),  # vcon's sign() keeps the vCon's members beside the JWS
    (jws({**UNSIGNED, "uuid": OTHER}, header={"x5c": ["MIIB"]}), "uuid_mismatch"),  # not the list item's
    (jws(UNSIGNED, header={"x5c": ["MIIB"], "uuid": "../etc"}), "unsafe_uuid"),
    (jws({k: v for k, v in UNSIGNED.items() if k != "uuid"}, header={"x5c": ["MIIB"]}), "missing_uuid"),
    (jws({k: v for k, v in UNSIGNED.items() if k != "created_at"}), "bad_created_at"),
    (jws({**UNSIGNED, "parties": {}}), "wrong_type"),
    (jws({**UNSIGNED, "critical": ["x-unknown"]}), "unsupported_critical"),
    ({**jws(UNSIGNED), "payload": "not base64url!"}, "bad_payload"),
    ({**jws(UNSIGNED), "payload": 5}, "bad_payload"),
    (jws(b"not json"), "bad_payload"),
    (jws(b"[1, 2]"), "bad_payload"),
    (jws(gzip.compress(orjson.dumps(UNSIGNED))[:-9]), "bad_payload"),  # truncated gzip
    (jws(orjson.dumps(jwe())), "bad_payload"),  # §5.3 encrypts the signed form, not the reverse
])
def test_signed_refusals(doc, expected):
    assert reason(doc) == expected


def test_gzip_payload_is_bounded_by_the_size_limit():
    big = {**UNSIGNED, "subject": "x" * 100_000}
    doc = jws(gzip.compress(orjson.dumps(big)))
    assert len(orjson.dumps(doc)) < 4096
    assert reason(doc, limit=50_000) == "too_large"
    assert parse(doc, limit=200_000).subject == "x" * 100_000


@pytest.mark.parametrize("doc, rules", [
    (jws(UNSIGNED, header={"uuid": UUID}), ("jws_certificate",)),  # §5.2.2: x5c or x5u
    (jws(UNSIGNED, protected={"x5c": ["MIIB"]}, header={"uuid": UUID}), ("jws_certificate",)),  # no alg
    ({"payload": b64(orjson.dumps(UNSIGNED)), "signatures": [{"protected": b64(b'{"alg":"RS256"}'), "signature": "AA"}]},
     ("jws_signature", "jws_certificate")),  # what vcon 0.10.0's sign() writes: no header
    ({**jws(UNSIGNED), "signatures": []}, ("jws_signature",)),
    ({**jws(UNSIGNED), "signatures": [{**jws(UNSIGNED)["signatures"][0], "protected": "e30"}, "x"]},
     ("jws_certificate", "jws_signature")),  # "e30" is {}: no alg anywhere; and "x" is no object
    ({**jws(UNSIGNED), "signatures": [{**jws(UNSIGNED)["signatures"][0], "protected": "%%%"}]},
     ("jose_protected_header", "jws_certificate")),
    ({"payload": b64(orjson.dumps(UNSIGNED)), "protected": b64(b'{"alg":"RS256"}'), "header": {"x5c": ["MIIB"]},
      "signature": "AA"}, ("jose_flattened",)),  # RFC 7515 §7.2.2
    (jws({**UNSIGNED, "vcon": "0.0.1", "created_at": "2026-06-29 23:03:01"}),
     ("created_at_space_separator", "created_at_no_offset", "vcon_version")),  # the payload's rules too
])
def test_signed_departures_are_stored_and_named(doc, rules):
    v = parse(doc)
    assert v.form == "signed" and v.uuid == UUID and v.nonconforming == rules


# --- encrypted -------------------------------------------------------------------------------

def test_encrypted_vcon_is_stored_by_the_uuid_its_headers_reveal():
    raw = orjson.dumps(jwe())
    v = parse(raw)
    assert (v.form, v.uuid, v.raw, v.data, v.created_at) == ("encrypted", UUID, raw, {"uuid": UUID}, None)
    assert (v.tenant, v.subject, v.critical, v.nonconforming) == (None, None, (), ())
    assert parse(raw, None).uuid == UUID  # inline: no list item
    # the uuid in the protected header, or a recipient's, is as good as the unprotected one
    assert parse(jwe(unprotected={}, protected={"alg": "RSA-OAEP", "enc": "A256CBC-HS512", "uuid": UUID})).uuid == UUID
    recipient = {"header": {"alg": "RSA-OAEP", "uuid": UUID.upper()}, "encrypted_key": "AA"}
    assert parse(jwe(unprotected={}, recipients=[recipient])).uuid == UUID


@pytest.mark.parametrize("doc, expected", [
    (jwe(unprotected={"cty": "application/vcon+json"}), "missing_uuid"),  # nothing to file it under
    (jwe(unprotected={"uuid": OTHER}), "uuid_mismatch"),  # not the list item's
    (jwe(protected={"alg": "RSA-OAEP", "uuid": OTHER}), "uuid_mismatch"),  # the headers disagree
    (jwe(unprotected={"uuid": "a/b"}), "unsafe_uuid"),
    (jwe(unprotected={"uuid": "nope"}), "bad_uuid"),
    (jwe(unprotected={"uuid": 7}), "wrong_type"),
    # §5.4: "cyphertext" (sic, the container-00 example) is no JWE; as an unsigned vCon it has no uuid
    ({k if k != "ciphertext" else "cyphertext": v for k, v in jwe().items() if k != "unprotected"}, "missing_uuid"),
])
def test_encrypted_refusals(doc, expected):
    assert reason(doc) == expected


@pytest.mark.parametrize("doc, rules", [
    ({**jwe(), "iv": 3}, ("jwe_members",)),
    ({**jwe(), "recipients": [{"header": {}}]}, ("jwe_members",)),  # no encrypted_key
    ({**jwe(), "unprotected": "x", "protected": b64(b'{"uuid": "%s"}' % UUID.encode())}, ("jwe_members",)),
    ({**jwe(), "protected": "!!"}, ("jose_protected_header",)),
    ({**{k: v for k, v in jwe().items() if k != "unprotected"},
      "protected": b64(b'{"alg": "RSA-OAEP", "uuid": "%s"}' % UUID.encode())}, ("jwe_members",)),
    ({k: v for k, v in {**jwe(), "encrypted_key": "AA"}.items() if k != "recipients"}, ("jose_flattened",)),
])
def test_encrypted_departures_are_stored_and_named(doc, rules):
    v = parse(doc)
    assert v.form == "encrypted" and v.uuid == UUID and v.nonconforming == rules


# --- property: every spec-valid vCon parses, with its uuid ----------------------------------

@st.composite
def rfc3339(draw) -> tuple[str, datetime]:
    """An RFC 3339 §5.6 date-time in RFC 8620 §1.4 normal form, and the instant it reads as."""
    offset = timedelta(minutes=draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59)))
    minutes = abs(int(offset.total_seconds())) // 60
    zone = "Z" if not minutes and draw(st.booleans()) else \
        f"{'-' if offset < timedelta(0) else '+'}{minutes // 60:02d}:{minutes % 60:02d}"
    if draw(st.booleans()):  # a leap second: 23:59:60 UTC on a month's last day, in any offset (§5.7)
        year, month = draw(st.integers(1901, 2199)), draw(st.integers(1, 12))
        instant = datetime(year, month, calendar.monthrange(year, month)[1], 23, 59, 59, 999999, tzinfo=timezone.utc)
        local = instant.astimezone(timezone(offset))
        return f"{local:%Y-%m-%dT%H:%M}:60{draw(st.sampled_from(['', '.5', '.25']))}{zone}", instant
    instant = draw(st.datetimes(datetime(1901, 1, 1), datetime(2199, 12, 31), timezones=st.just(timezone.utc)))
    local = instant.astimezone(timezone(offset))
    fraction = f".{local.microsecond:06d}".rstrip("0") if local.microsecond else ""
    return f"{local:%Y-%m-%dT%H:%M:%S}{fraction}{zone}", instant


json_leaf = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=12)
parts = st.lists(st.dictionaries(st.sampled_from(["type", "name", "role", "body", "start", "tel"]), json_leaf,
                                 max_size=4), max_size=3)
SUPPORTED = ("x-redact", "x-lawful")


@st.composite
def unsigned_vcons(draw) -> tuple[dict, datetime]:
    created_at, instant = draw(rfc3339())
    doc = {"uuid": str(draw(st.uuids())), "created_at": created_at}
    for name in ("parties", "dialog", "analysis", "attachments"):
        if draw(st.booleans()):
            doc[name] = draw(parts)
    if draw(st.booleans()):
        doc["vcon"] = "0.4.0"  # deprecated (§4.1.1), but still allowed with this value
    if draw(st.booleans()):
        doc["subject"] = draw(st.text(max_size=30))
    if draw(st.booleans()):
        doc["updated_at"] = draw(rfc3339())[0]
    if draw(st.booleans()):
        doc["extensions"] = draw(st.lists(st.sampled_from(("CC",) + SUPPORTED), max_size=3))
    if draw(st.booleans()):
        doc["critical"] = draw(st.lists(st.sampled_from(SUPPORTED), max_size=2))
    which = draw(st.sampled_from(["", "redacted", "amended"]))  # mutually exclusive (§4.1.8, §4.1.9)
    if which:
        doc[which] = {"uuid": str(draw(st.uuids())), "type": "PII"} if which == "redacted" else {"uuid": str(draw(st.uuids()))}
    return doc, instant


@st.composite
def any_form(draw) -> tuple[bytes, str, str, datetime | None]:
    doc, instant = draw(unsigned_vcons())
    uuid = doc["uuid"]
    form = draw(st.sampled_from(["unsigned", "signed", "encrypted"]))
    if form == "unsigned":
        return orjson.dumps(doc), uuid, form, instant
    payload = orjson.dumps(doc)
    if draw(st.booleans()):
        payload = gzip.compress(payload)
    cert = draw(st.sampled_from([{"x5c": ["MIIB"]}, {"x5u": "https://certs.example.com/c.pem"}]))
    in_header = draw(st.sampled_from(["header", "protected", "both", "neither"]))
    protected = {"alg": "RS256", **({"uuid": uuid} if in_header in ("protected", "both") else {})}
    header = {**cert, **({"uuid": uuid.upper()} if in_header in ("header", "both") else {})}
    signed = jws(payload, protected=protected, header=header)
    if form == "signed":
        return orjson.dumps(signed), uuid, form, instant
    where = draw(st.sampled_from(["unprotected", "protected"]))
    return (orjson.dumps(jwe(unprotected={"cty": "application/vcon+json", **({"uuid": uuid} if where == "unprotected" else {})},
                             protected={"alg": "RSA-OAEP", "enc": "A256CBC-HS512",
                                        **({"uuid": uuid} if where == "protected" else {})})),
            uuid, form, None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_form(), st.booleans())
def test_every_spec_valid_vcon_parses_with_its_uuid(case, from_list):
    raw, uuid, form, instant = case
    v = parse_vcon(raw, uuid if from_list else None, LIMIT, supported_extensions=SUPPORTED)
    assert (v.uuid, v.form, v.raw, v.created_at, v.nonconforming) == (uuid, form, raw, instant, ())

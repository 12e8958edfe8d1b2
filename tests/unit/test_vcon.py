"""vCon parsing and validation (conserver/vcon.py): every reason, samples, tenants, fuzzing."""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conserver.dev.samples import sample_vcon
from conserver.vcon import REASONS, RULES, InvalidVcon, Vcon, check_uuid, parse_vcon, tenant_of

UUID = "0b4b3c3e-6f0a-4d7e-9f00-1a2b3c4d5e6f"
LIMIT = 1 << 20


def minimal(**changes) -> dict:
    doc = {"vcon": "0.4.0", "uuid": UUID, "created_at": "2024-05-01T10:00:00Z"}  # the draft-03 version
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def reason_of(raw, item_uuid=UUID, max_bytes=LIMIT) -> str:
    with pytest.raises(InvalidVcon) as info:
        parse_vcon(raw, item_uuid, max_bytes, supported_extensions=())  # no extension supported
    assert info.value.reason in REASONS
    return info.value.reason


def test_minimal_vcon_parses():
    v = parse_vcon(orjson.dumps(minimal()), UUID, LIMIT)
    assert isinstance(v, Vcon)
    assert v.uuid == UUID
    assert v.created_at == datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
    assert v.raw == orjson.dumps(minimal())
    assert v.tenant is None and v.subject is None


def test_samples_parse_and_are_about_1_5_kb():
    rng = random.Random(7)
    sizes = []
    for _ in range(200):
        doc = sample_vcon(rng)
        raw = orjson.dumps(doc)
        sizes.append(len(raw))
        v = parse_vcon(raw, doc["uuid"], LIMIT)
        assert v.uuid == doc["uuid"] and v.data == doc
        assert v.tenant and v.tenant.startswith("tenant-")
        assert v.subject == doc["subject"]
        assert 2 <= len(doc["parties"]) <= 3
        assert {d["type"] for d in doc["dialog"]} == {"text", "recording"}
        assert {a["type"] for a in doc["analysis"]} == {"summary", "sentiment", "transcript"}
    assert 1100 <= sum(sizes) / len(sizes) <= 1900
    assert sample_vcon(random.Random(1), tenant="acme")["attachments"][0]["body"] == {"id": "acme"}
    assert sample_vcon(random.Random(1)) == sample_vcon(random.Random(1))  # deterministic


def test_str_input_and_uppercase_uuid_are_canonicalised():
    upper = UUID.upper()
    v = parse_vcon(orjson.dumps(minimal(uuid=upper)).decode(), upper, LIMIT)
    assert v.uuid == UUID and isinstance(v.raw, bytes)
    # the list item may be spelled differently from the body: same UUID is not a mismatch
    assert parse_vcon(orjson.dumps(minimal(uuid=upper)), UUID, LIMIT).uuid == UUID
    assert parse_vcon(orjson.dumps(minimal()), None, LIMIT).uuid == UUID  # inline: no item uuid


@pytest.mark.parametrize("value, expected, rules", [
    ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ()),
    ("2024-05-01T10:00:00z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_not_normalised",)),
    ("2024-05-01T10:00:00.123456+00:00", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone.utc), ()),
    ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ()),
    ("2024-05-01T10:00:00-00:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ()),  # RFC 3339 §4.3
    ("2024-05-01T10:00:00.000Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_not_normalised",)),
    # RFC 3339 §5.6/§5.7: a leap second, read as the last microsecond before it (same day)
    ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), ()),
    ("2016-12-31T18:59:60.5-05:00", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), ()),
    ("2015-06-30T23:59:60Z", datetime(2015, 6, 30, 23, 59, 59, 999999, tzinfo=timezone.utc), ()),
    # not RFC 3339, but readable: stored, and named
    ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_no_offset",)),  # taken as UTC
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=timezone.utc), ("created_at_date_only",)),
    ("2024-05-01 10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_space_separator",)),
    ("2024-05-01 10:00:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc),
     ("created_at_space_separator", "created_at_no_offset")),
    ("2024-05-01T10:00:00+0000", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_offset_format",)),
    ("2024-05-01T12:00:00+02", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_offset_format",)),
    ("20240501T100000Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_basic_format",)),
    ("2024-05-01T10:00Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc), ("created_at_not_rfc3339",)),
])
def test_created_at_forms(value, expected, rules):
    v = parse_vcon(orjson.dumps(minimal(created_at=value)), UUID, LIMIT)
    assert v.created_at == expected and v.created_at.utcoffset().total_seconds() == 0
    assert v.nonconforming == rules and set(rules) <= set(RULES)


# --- every reason, with a crafted input ---------------------------------------------------

def test_too_large():
    raw = orjson.dumps(minimal(subject="x" * 2000))
    assert reason_of(raw, max_bytes=1024) == "too_large"
    assert parse_vcon(raw, UUID, 0).uuid == UUID  # 0: no limit


def test_invalid_utf8():
    assert reason_of(b'{"vcon": "0.0.1", "uuid": "\xff\xfe"}') == "invalid_utf8"
    assert reason_of('{"uuid": "\ud800"}') == "invalid_utf8"  # a lone surrogate in a str


@pytest.mark.parametrize("raw", [b"", b"{", b'{"uuid": }', b"nope", b'{"a": 1} trailing', b"\x00"])
def test_broken_json(raw):
    assert reason_of(raw) == "broken_json"


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"text"', b"null", b"true", b'[{"uuid": "x"}]'])
def test_not_object(raw):
    assert reason_of(raw) == "not_object"


def test_missing_uuid():
    assert reason_of(orjson.dumps(minimal(uuid=_DROP))) == "missing_uuid"
    assert reason_of(orjson.dumps(minimal(uuid=None))) == "missing_uuid"


@pytest.mark.parametrize("value", ["", "not-a-uuid", "0b4b3c3e6f0a4d7e9f001a2b3c4d5e6f", UUID + "0",
                                   "0b4b3c3e-6f0a-4d7e-9f00-1a2b3c4d5e6g", "g" * 36])
def test_bad_uuid(value):
    assert reason_of(orjson.dumps(minimal(uuid=value)), item_uuid=None) == "bad_uuid"


UNSAFE = ["../etc/passwd", "a/b", "a\\b", "..", ".", "vcon:x", "*", "a*b", "a b", " " + UUID, UUID + "\n",
          "a\tb", "x\x00y", "x\x7fy", "a?b", "a[b]", "\u2215etc", "\uff0fetc", "caf\u00e9", "a\u200bb",
          UUID.replace("-", "/"), UUID[:8] + ".." + UUID[10:]]


@pytest.mark.parametrize("value", UNSAFE)
def test_unsafe_uuid_in_body_and_in_list_item(value):
    assert reason_of(orjson.dumps(minimal(uuid=value)), item_uuid=None) == "unsafe_uuid"
    assert reason_of(orjson.dumps(minimal()), item_uuid=value) == "unsafe_uuid"
    with pytest.raises(InvalidVcon) as info:
        check_uuid(value)
    assert info.value.reason == "unsafe_uuid"


def test_uuid_mismatch():
    other = "11111111-2222-4333-8444-555555555555"
    assert reason_of(orjson.dumps(minimal(uuid=other))) == "uuid_mismatch"


def test_vcon_member_is_optional():
    # draft §4.1.1: "vcon" is deprecated; the JSON schema requires only uuid and created_at.
    for changes in ({"vcon": _DROP}, {"vcon": None}, {"vcon": "0.4.0"}):
        v = parse_vcon(orjson.dumps(minimal(**changes)), UUID, LIMIT)
        assert v.uuid == UUID and v.nonconforming == () and v.form == "unsigned"
    # an older draft's version (and "", no version at all) is stored, and named
    for version in ("0.0.1", "0.3.0", ""):
        assert parse_vcon(orjson.dumps(minimal(vcon=version)), UUID, LIMIT).nonconforming == ("vcon_version",)


@pytest.mark.parametrize("value", [_DROP, None, "", "yesterday", "2024-13-01T00:00:00Z", 1714557600,
                                   "2024-05-01T10:00:00+25:00", ["2024-05-01"], {"t": 1},
                                   "2024-05-01T10:00:60Z", "2016-12-30T23:59:60Z", "2024-02-30T00:00:00Z"])
def test_bad_created_at(value):
    assert reason_of(orjson.dumps(minimal(created_at=value))) == "bad_created_at"


@pytest.mark.parametrize("changes", [
    {"parties": {}}, {"dialog": "none"}, {"analysis": 1}, {"attachments": None},
    {"parties": [1]}, {"dialog": [{}, "x"]}, {"attachments": [[]]},
    {"vcon": 1}, {"vcon": ["0.0.1"]}, {"uuid": 5}, {"subject": 3},
])
def test_wrong_type(changes):
    assert reason_of(orjson.dumps(minimal(**changes)), item_uuid=None) == "wrong_type"


def test_missing_body_is_a_known_reason_and_errors_pickle():
    err = InvalidVcon("missing_body", "vcon:x is missing")
    assert "missing_body" in REASONS and str(err) == "missing_body: vcon:x is missing"
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.detail) == ("missing_body", "vcon:x is missing")


def test_check_uuid_wrong_type_and_canonical():
    assert check_uuid(UUID.upper()) == UUID
    with pytest.raises(InvalidVcon) as info:
        check_uuid(12)
    assert info.value.reason == "wrong_type"


# --- the order of the checks, critical, the other members ---------------------------------

@pytest.mark.parametrize("changes, reason", [
    ({"uuid": _DROP, "created_at": _DROP}, "missing_uuid"),  # the uuid problem first
    ({"vcon": _DROP, "created_at": _DROP}, "bad_created_at"),  # no version is no problem at all
    ({"vcon": 1, "created_at": _DROP}, "bad_created_at"),
    ({"uuid": "../x", "created_at": "yesterday", "parties": {}}, "unsafe_uuid"),
    ({"created_at": "yesterday", "parties": {}}, "bad_created_at"),
    ({"parties": {}, "critical": ["x-unknown"]}, "wrong_type"),
    ({"created_at": "2024-05-01", "critical": ["x-unknown"]}, "unsupported_critical"),
])
def test_the_most_basic_failure_is_reported(changes, reason):
    assert reason_of(orjson.dumps(minimal(**changes)), item_uuid=None) == reason


def critical_reason(doc: dict, supported=()) -> str | None:
    try:
        parse_vcon(orjson.dumps(doc), UUID, LIMIT, supported_extensions=supported)
    except InvalidVcon as exc:
        return exc.reason
    return None


def test_critical_names_only_supported_extensions():
    # draft §4.1.4: a vCon whose critical lists an extension the implementation does not
    # support MUST NOT be processed except to reject it.
    assert critical_reason(minimal(critical=["x-redact"])) == "unsupported_critical"
    assert critical_reason(minimal(critical=["x-redact"]), {"x-redact"}) is None
    assert critical_reason(minimal(critical=["x-redact", "x-other"]), {"x-redact"}) == "unsupported_critical"
    assert critical_reason(minimal(critical=["X-Redact"]), {"x-redact"}) == "unsupported_critical"  # names are exact
    assert critical_reason(minimal(critical=[])) is None and critical_reason(minimal(critical=None)) is None
    # a critical that is no list of names: what it requires cannot be told
    for bad in ("x-redact", {"x": 1}, [1], 3):
        assert critical_reason(minimal(critical=bad), {"x-redact"}) == "unsupported_critical"
    # §7.1: must_support was critical's name before 0.4.0; its names are honoured
    assert critical_reason(minimal(must_support=["x-redact"])) == "unsupported_critical"
    v = parse_vcon(orjson.dumps(minimal(must_support=["x-redact"])), UUID, LIMIT, supported_extensions={"x-redact"})
    assert v.critical == ("x-redact",) and v.nonconforming == ("must_support",)
    # without a supported set the check is the caller's (the pipeline's); the names are on the Vcon
    v = parse_vcon(orjson.dumps(minimal(critical=["b", "a", "b"])), UUID, LIMIT)
    assert v.critical == ("b", "a")


@pytest.mark.parametrize("changes, rules", [
    ({"updated_at": "2024-05-02T00:00:00Z"}, ()),
    ({"updated_at": "2024-05-02 00:00:00"}, ("updated_at_space_separator", "updated_at_no_offset")),
    ({"updated_at": "soon"}, ("updated_at_not_a_date",)),
    ({"updated_at": 5}, ("updated_at_not_a_date",)),
    ({"extensions": ["CC", "lawful_basis"]}, ()),
    ({"extensions": "CC"}, ("extensions_type",)),
    ({"extensions": [1]}, ("extensions_type",)),
    ({"redacted": {"uuid": UUID, "type": "PII"}, "amended": {"uuid": UUID}}, ("redacted_and_amended",)),
    ({"redacted": {}, "amended": {"uuid": UUID}}, ()),  # {}: an object with no values (§2.2)
    ({"vcon": "0.0.1", "created_at": "2024-05-01"}, ("created_at_date_only", "vcon_version")),
    ({"group": [], "appended": {}, "x-custom": 1}, ()),  # members the core does not define are kept
])
def test_other_members_are_stored_and_named(changes, rules):
    v = parse_vcon(orjson.dumps(minimal(**changes)), UUID, LIMIT)
    assert v.nonconforming == rules and v.data == minimal(**changes)


def test_rules_and_reasons_cite_the_draft():
    for text in list(RULES.values()) + [REASONS[r] for r in REASONS if r not in ("too_large", "unsafe_uuid",
                                                                                 "missing_body")]:
        assert "§" in text, text
    assert not set(RULES) & set(REASONS)  # a dead-letter reason says which vocabulary it is from


# --- tenant -------------------------------------------------------------------------------

@pytest.mark.parametrize("attachments, tenant", [
    ([{"purpose": "tenant", "body": {"id": "acme"}}], "acme"),
    ([{"type": "tenant", "encoding": "json", "body": '{"id": "acme"}'}], "acme"),
    ([{"type": "other", "body": {"id": "x"}}, {"purpose": "tenant", "body": {"id": 42}}], "42"),
    ([{"purpose": "tenant", "body": "not json"}], None),
    ([{"purpose": "tenant", "body": {"name": "no id"}}], None),
    ([{"purpose": "tenant", "body": {"id": ""}}, {"type": "tenant", "body": {"id": "second"}}], "second"),
    ([{"purpose": "tenant", "body": {"id": True}}], None),
    ([], None),
])
def test_tenant(attachments, tenant):
    v = parse_vcon(orjson.dumps(minimal(attachments=attachments)), UUID, LIMIT)
    assert v.tenant == tenant


def test_tenant_of_tolerates_anything():
    assert tenant_of({"attachments": "x"}) is None
    assert tenant_of({"attachments": [1, None, {"purpose": "tenant"}]}) is None


# --- fuzzing: InvalidVcon or a valid Vcon, never anything else --------------------------------

def _check(raw, item_uuid=None):
    try:
        v = parse_vcon(raw, item_uuid, 4096, supported_extensions=("x",))
    except InvalidVcon as exc:
        assert exc.reason in REASONS
        return
    assert isinstance(v, Vcon) and isinstance(v.data, dict)
    assert v.uuid == v.uuid.lower() and len(v.uuid) == 36
    if v.form == "encrypted":
        assert v.created_at is None and v.data == {"uuid": v.uuid}
    else:
        assert v.created_at.utcoffset().total_seconds() == 0
    assert set(v.nonconforming) <= set(RULES)
    v.tenant, v.subject  # never raise


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.just(UUID), st.just("0.0.1"), st.just("2024-05-01T10:00:00Z"),
                         st.text(alphabet="0123456789-:TZ+.", max_size=30),
                         st.lists(st.dictionaries(st.sampled_from(["purpose", "type", "body"]), json_values),
                                  max_size=3))
vcon_like = st.dictionaries(
    st.sampled_from(["vcon", "uuid", "created_at", "parties", "dialog", "analysis", "attachments", "subject",
                     "other", "updated_at", "critical", "must_support", "extensions", "redacted", "amended",
                     "payload", "signatures", "signature", "protected", "header", "ciphertext", "recipients",
                     "unprotected", "iv", "tag"]),
    field_values, max_size=12)

fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(raw):
    _check(raw)
    _check(raw, UUID)


@fuzz
@given(json_values)
def test_fuzz_random_json(value):
    _check(orjson.dumps(value))


@fuzz
@given(vcon_like, st.sampled_from([None, UUID, UUID.upper(), "../x", "nope"]))
def test_fuzz_random_fields(doc, item_uuid):
    _check(orjson.dumps(doc), item_uuid)


@fuzz
@given(st.text(max_size=80))
def test_fuzz_random_uuid_strings(value):
    try:
        canonical = check_uuid(value)
    except InvalidVcon as exc:
        assert exc.reason in ("unsafe_uuid", "bad_uuid")
    else:
        assert len(canonical) == 36 and canonical == value.lower()

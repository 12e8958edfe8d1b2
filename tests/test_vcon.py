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
from conserver.vcon import REASONS, InvalidVcon, Vcon, check_uuid, parse_vcon, tenant_of

UUID = "0b4b3c3e-6f0a-4d7e-9f00-1a2b3c4d5e6f"
LIMIT = 1 << 20


def minimal(**changes) -> dict:
    doc = {"vcon": "0.0.1", "uuid": UUID, "created_at": "2024-05-01T10:00:00Z"}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def reason_of(raw, item_uuid=UUID, max_bytes=LIMIT) -> str:
    with pytest.raises(InvalidVcon) as info:
        parse_vcon(raw, item_uuid, max_bytes)
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


@pytest.mark.parametrize("value, expected", [
    ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
    ("2024-05-01T10:00:00z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
    ("2024-05-01T10:00:00.123456+00:00", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)),
    ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
    ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),  # naive: taken as UTC
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=timezone.utc)),
])
def test_created_at_forms(value, expected):
    v = parse_vcon(orjson.dumps(minimal(created_at=value)), UUID, LIMIT)
    assert v.created_at == expected and v.created_at.utcoffset().total_seconds() == 0


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


def test_missing_version():
    assert reason_of(orjson.dumps(minimal(vcon=_DROP))) == "missing_version"
    assert reason_of(orjson.dumps(minimal(vcon=""))) == "missing_version"
    assert reason_of(orjson.dumps(minimal(vcon=None))) == "missing_version"


@pytest.mark.parametrize("value", [_DROP, None, "", "yesterday", "2024-13-01T00:00:00Z", 1714557600,
                                   "2024-05-01T10:00:00+25:00", ["2024-05-01"], {"t": 1}])
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
        v = parse_vcon(raw, item_uuid, 4096)
    except InvalidVcon as exc:
        assert exc.reason in REASONS
        return
    assert isinstance(v, Vcon) and isinstance(v.data, dict)
    assert v.uuid == v.uuid.lower() and len(v.uuid) == 36
    assert v.created_at.utcoffset().total_seconds() == 0
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
                     "other"]),
    field_values, max_size=9)

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

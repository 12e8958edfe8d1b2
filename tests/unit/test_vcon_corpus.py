"""Published vCons (tests/data/vcons/, MANIFEST.json): each gets the verdict its manifest
entry gives, judged against draft-ietf-vcon-vcon-core-03 (see tests/data/vcons/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conserver.conformance import Conformance
from conserver.vcon import REASONS, RULES, InvalidVcon, parse_vcon

DATA = Path(__file__).resolve().parents[1] / "data" / "vcons"
MANIFEST = json.loads((DATA / "MANIFEST.json").read_text())
LIMIT = 16 * 1024 * 1024
ANY_ITEM = "00000000-0000-4000-8000-000000000000"  # the list item of a vCon that has no uuid


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_published_vcon_gets_its_verdict(entry):
    raw = (DATA / entry["file"]).read_bytes()
    item = entry.get("uuid") or ANY_ITEM
    if entry["verdict"] == "refused":
        with pytest.raises(InvalidVcon) as info:
            parse_vcon(raw, item, LIMIT, supported_extensions=())
        assert info.value.reason == entry["reason"], info.value.detail
        if "stored_when_supported" in entry:
            assert parse_vcon(raw, item, LIMIT, supported_extensions=entry["stored_when_supported"]).uuid == item
        return
    v = parse_vcon(raw, item, LIMIT, supported_extensions=())
    assert (v.uuid, v.form, v.raw) == (entry["uuid"].lower(), entry["form"], raw)
    assert v.nonconforming == tuple(entry.get("rules", ())), entry["section"]
    # stored as received by default; under CONSERVER_STRICT_VCON refused with its first rule
    assert Conformance().admit(v) is v
    if entry["verdict"] == "nonconforming":
        with pytest.raises(InvalidVcon) as info:
            Conformance(strict=True).admit(v)
        assert info.value.reason == entry["rules"][0]
    else:
        assert Conformance(strict=True).admit(v) is v


def test_the_corpus_covers_what_the_issue_names():
    files = {p.relative_to(DATA).as_posix() for p in DATA.glob("*/*.json")}
    assert files == {e["file"] for e in MANIFEST}  # every file judged, every judged file there
    sources = [s for e in MANIFEST for s in e["sources"]]
    core = {s["revision"] for s in sources if s["repo"] == "ietf-wg-vcon/draft-ietf-vcon-vcon-core"}
    assert len(core) >= 5 and "draft-ietf-vcon-vcon-core-03" in core
    assert {s["revision"] for s in sources if s["repo"] == "ietf-wg-vcon/draft-ietf-vcon-cc-extension"}
    assert sum(s["repo"] == "vcon-dev/ietf-meeting-vcons" for s in sources) >= 10
    assert any(s["repo"] == "pypi:vcon" and s["version"] == "0.10.0" for s in sources)
    assert all(len(s.get("commit", "")) == 40 for s in sources if s["repo"] != "pypi:vcon")
    verdicts = {(e["verdict"], e.get("form")) for e in MANIFEST}
    assert {("valid", "unsigned"), ("valid", "signed"), ("valid", "encrypted"), ("nonconforming", "unsigned"),
            ("nonconforming", "signed"), ("refused", "unsigned")} <= verdicts
    for e in MANIFEST:
        assert "§" in e["section"]
        assert e.get("reason", "valid") in {**REASONS, "valid": ""} and set(e.get("rules", ())) <= set(RULES)
    assert sum(p.stat().st_size for p in DATA.rglob("*")) < 400_000  # tests/data stays small

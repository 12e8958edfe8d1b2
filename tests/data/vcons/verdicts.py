"""The expected verdict of every corpus file, judged against draft-ietf-vcon-vcon-core-03.

A person's reading of the draft, one line per kind of file, written without conserver's
code (collect.py and build_vcon_lib.py store it in MANIFEST.json). The verdicts:

- ``valid``: the draft allows it; stored with no rule broken.
- ``nonconforming``: the draft forbids something in it that conserver can still store:
  stored and counted under ``rules`` (dead-lettered with the first under CONSERVER_STRICT_VCON).
- ``refused``: dead-lettered with ``reason``.

``uuid`` and ``form`` are read here from the JSON (for a JWS from its payload), so the
test also checks that conserver finds the same uuid.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent

_NO_CREATED_AT = ("refused", "bad_created_at", "§4.1.5: created_at MUST be present; the example has none")
_OLD_VERSION = ("nonconforming", ["vcon_version"], '§4.1.1: vcon is "0.0.1" or "0.0.2", not "0.4.0" (an older '
                                                  "draft's syntax); uuid and created_at (RFC 3339) are fine")
_VALID_EMAIL = ("valid", None, "§4.1: uuid and an RFC 3339 created_at; no vcon (deprecated, §4.1.1); "
                               "redacted is {}, an object with no values (§2.2)")

# (file name pattern, (verdict, reason or rules, section and why)); the first match counts.
JUDGED: list[tuple[str, tuple]] = [
    (r"draft-examples/(vcon-vcon|ietf-vcon-vcon)-container-.*_simple-vcon",
     ("refused", "broken_json", "§3: a hand-written sketch with a missing comma, not JSON (RFC 8259)")),
    (r"draft-examples/.*_simple-vcon",
     ("refused", "missing_uuid", "§4.1.2: no uuid (nor created_at, §4.1.5: the uuid is the more basic failure)")),
    (r"draft-examples/.*_ab\.json",
     ("refused", "missing_uuid", "§4.1.2: the template of the examples has no uuid (nor created_at)")),
    (r"draft-examples/.*_ab_call_(ext_rec|ext_rec_redacted|ext_rec_amended|int_rec)\.json", _NO_CREATED_AT),
    (r"draft-examples/.*_ab_call_ext_rec_decrypted\.json",
     ("refused", "bad_created_at", "§5.2: the JWS payload is the unsigned vCon, and it has no created_at (§4.1.5)")),
    (r"draft-examples/vcon-vcon-container-00_ab_call_ext_rec_encrypted",
     ("refused", "missing_uuid", "§5.4: 'cyphertext' (sic), so not the encrypted form; as an unsigned vCon it has "
                                 "no uuid (§4.1.2)")),
    (r"draft-examples/.*_ab_call_ext_rec_encrypted",
     ("valid", None, "§5.3, §5.3.1: a general JWE whose unprotected header carries the uuid")),
    (r"draft-examples/ietf-vcon-vcon-core-03_.*email", _VALID_EMAIL),
    (r"draft-examples/.*email", _OLD_VERSION),
    (r"ietf-meeting-vcons/", ("valid", None, "§4.1: uuid and an RFC 3339 created_at, no vcon (ietf2vcon never writes "
                                             "the deprecated member, §4.1.1); redacted is {} (no values, §2.2)")),
    (r"vcon-lib/call\.json", ("valid", None, '§4.1: what vcon 0.10.0 builds (vcon "0.4.0", RFC 3339 created_at)')),
    (r"vcon-lib/call_created_at_without_offset",
     ("nonconforming", ["created_at_space_separator", "created_at_no_offset"],
      "§4.1.5, §2.2 (RFC 3339 §5.6): vcon keeps created_at '2025-11-03 14:05:00' as given: a space and no offset")),
    (r"vcon-lib/call_critical",
     ("refused", "unsupported_critical", "§4.1.4: critical names x-corpus-incompatible, which an implementation "
                                         "that does not support it MUST NOT process (stored once it is supported)")),
    (r"vcon-lib/call_signed_by_vcon",
     ("nonconforming", ["jws_signature", "jws_certificate"],
      "§5.2.1: vcon's sign() writes a Signature Object without header; §5.2, §5.2.2: no x5c or x5u")),
    (r"vcon-lib/call_jws_flattened",
     ("nonconforming", ["jose_flattened"], "§5.2: the general JWS JSON serialization is required, this is the "
                                           "flattened one (RFC 7515 §7.2.2)")),
    (r"vcon-lib/call_jws_(general|gzip_payload)",
     ("valid", None, "§5.2, §5.2.1, §5.2.2: a general JWS with x5c and the uuid in the header (the payload may be gzip)")),
    (r"vcon-lib/call_jwe_general",
     ("valid", None, "§5.3, §5.3.1: a general JWE of the signed form, the uuid in the unprotected header")),
]


def verdict_for(name: str, raw: bytes) -> dict:
    for pattern, (verdict, detail, section) in JUDGED:
        if re.match(pattern, name):
            break
    else:
        raise LookupError(f"{name}: no verdict; judge it in verdicts.py")
    out: dict = {"verdict": verdict, "section": section, **_identity(raw)}
    if verdict == "refused":
        out["reason"] = detail
    elif verdict == "nonconforming":
        out["rules"] = detail
    if name.startswith("vcon-lib/call_critical"):
        out["stored_when_supported"] = ["x-corpus-incompatible"]
    return out


def write_manifest(entries: list[dict]) -> None:
    """MANIFEST.json: each entry's file and sources, and the verdict judged afresh."""
    judged = [{"file": e["file"], "sources": e["sources"], **verdict_for(e["file"], (HERE / e["file"]).read_bytes())}
              for e in sorted(entries, key=lambda e: e["file"])]
    (HERE / "MANIFEST.json").write_text("[\n" + ",\n".join(map(_entry_json, judged)) + "\n]\n")


def _entry_json(entry: dict) -> str:
    """One entry: its verdict on the first line, one line per source."""
    head = json.dumps({k: v for k, v in entry.items() if k != "sources"}, ensure_ascii=False)
    sources = ",\n  ".join(json.dumps(s) for s in entry["sources"])
    return f'{head[:-1]},\n "sources": [\n  {sources}]}}'


def read_manifest() -> list[dict]:
    path = HERE / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else []


def _identity(raw: bytes) -> dict:
    """The form (§5.4) and the uuid, where they can be read."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    if "ciphertext" in doc and "recipients" in doc:
        return {"form": "encrypted", "uuid": (doc.get("unprotected") or {}).get("uuid")}
    if "payload" in doc and ("signatures" in doc or "signature" in doc):
        payload = base64.urlsafe_b64decode(doc["payload"] + "=" * (-len(doc["payload"]) % 4))
        if payload[:2] == b"\x1f\x8b":
            payload = gzip.decompress(payload)
        return {"form": "signed", "uuid": json.loads(payload).get("uuid")}
    return {"form": "unsigned", "uuid": doc.get("uuid")}

"""Build the vcon-lib/ part of the corpus with the PyPI `vcon` library (see README.md here).

    python3.12 -m venv /tmp/v && /tmp/v/bin/pip install vcon==0.10.0
    /tmp/v/bin/python tests/data/vcons/build_vcon_lib.py

vcon 0.10.0 needs Python >= 3.12, which conserver does not, so the files are built once
and kept. vcon's own sign() leaves the unsigned members beside `payload` and `signatures`
and writes no certificate; the general JWS and JWE of §5.2-§5.3 are built with Authlib
(vcon's dependency) from a vCon that vcon built. Keys and certificate are made here and
thrown away: nothing verifies them. Rewrites vcon-lib/*.json and their MANIFEST.json entries.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
from importlib.metadata import version
from pathlib import Path

from authlib.jose import JsonWebEncryption, JsonWebSignature
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from vcon import Vcon
from vcon.dialog import Dialog
from vcon.party import Party

HERE = Path(__file__).resolve().parent
SOURCE = {"repo": "pypi:vcon", "version": version("vcon"), "path": "tests/data/vcons/build_vcon_lib.py"}


def call(created_at: str | None = None) -> Vcon:
    v = Vcon.build_new(created_at=created_at) if created_at else Vcon.build_new()
    v.add_party(Party(tel="+15551230001", name="Ana Silva", role="customer"))
    v.add_party(Party(mailto="ben@support.example.com", name="Ben Okafor", role="agent"))
    start = "2025-11-03T14:05:00+00:00"
    v.add_dialog(Dialog(type="text", start=start, parties=[0, 1], originator=0, mediatype="text/plain",
                        body="I was charged twice on my last invoice.", encoding="none"))
    v.add_dialog(Dialog(type="text", start="2025-11-03T14:05:20+00:00", parties=[0, 1], originator=1,
                        mediatype="text/plain", body="I have issued a refund for the duplicate.", encoding="none"))
    v.add_analysis(type="summary", dialog=[0, 1], vendor="example", body="Duplicate charge refunded.", encoding="none")
    v.add_attachment(purpose="tenant", body={"id": "acme"}, encoding="json")
    v.add_tag("topic", "billing")
    return v


def keys() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corpus.example.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def jws(unsigned: bytes, uuid: str, key: rsa.RSAPrivateKey, x5c: str, general: bool = True) -> dict:
    """§5.2: the general JWS JSON serialization, the uuid and x5c in the unprotected header
    (Authlib writes the flattened one for a header that is not in a list)."""
    header = {"protected": {"alg": "RS256", "typ": "JWS"}, "header": {"x5c": [x5c], "uuid": uuid}}
    return JsonWebSignature().serialize_json([header] if general else header, unsigned, pem(key))


def general_jwe(signed: bytes, uuid: str, key: rsa.RSAPrivateKey) -> dict:
    """§5.3: the general JWE JSON serialization of the signed form, the uuid unprotected."""
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # Authlib wants alg in a shared header; the draft's own example also has it in the protected one.
    header = {"protected": {"alg": "RSA-OAEP", "enc": "A256CBC-HS512"},
              "unprotected": {"cty": "application/vcon+json", "uuid": uuid}, "recipients": [{"header": {"kid": "corpus"}}]}
    return JsonWebEncryption().serialize_json(header, signed, public)


def main() -> None:
    key, x5c = keys()
    built: dict[str, bytes] = {}
    plain = call()
    built["call.json"] = plain.to_json().encode()
    built["call_created_at_without_offset.json"] = call(created_at="2025-11-03 14:05:00").to_json().encode()
    critical = call()
    critical.add_extension("x-corpus-incompatible")
    critical.add_critical("x-corpus-incompatible")
    built["call_critical.json"] = critical.to_json().encode()
    hybrid = call()
    hybrid.sign(key)  # vcon's own signing
    built["call_signed_by_vcon.json"] = hybrid.to_json().encode()
    unsigned = plain.to_json().encode()
    signed = json.dumps(jws(unsigned, plain.uuid, key, x5c)).encode()
    built["call_jws_general.json"] = signed
    built["call_jws_flattened.json"] = json.dumps(jws(unsigned, plain.uuid, key, x5c, general=False)).encode()
    built["call_jws_gzip_payload.json"] = json.dumps(jws(gzip.compress(unsigned, mtime=0), plain.uuid, key, x5c)).encode()
    built["call_jwe_general.json"] = json.dumps(general_jwe(signed, plain.uuid, key)).encode()
    from verdicts import read_manifest, write_manifest  # beside this file

    manifest = [e for e in read_manifest() if not e["file"].startswith("vcon-lib/")]
    (HERE / "vcon-lib").mkdir(exist_ok=True)
    for old in (HERE / "vcon-lib").glob("*.json"):
        old.unlink()
    for name, raw in built.items():
        (HERE / "vcon-lib" / name).write_bytes(raw)
        manifest.append({"file": f"vcon-lib/{name}", "sources": [SOURCE]})
    write_manifest(manifest)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()

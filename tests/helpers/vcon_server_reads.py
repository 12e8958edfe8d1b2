"""vcon-server's own logic, written again for the read-back tests (vcon-server is never imported).

Every function follows the vcon-server file it names, at commit b9b038185f6f2c9abc37850dbf0b299e3304b74f
(2026-08-16, github vcon-dev/vcon-server), with the libraries of its uv.lock (peewee 4.0.1, psycopg2
2.9.11) played by psycopg 3, boto3 and opensearch-py. What a store here writes is right when these
read it back as vcon-server would and find what vcon-server itself would have stored.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

VCON_SERVER_COMMIT = "b9b038185f6f2c9abc37850dbf0b299e3304b74f"


# ---------------------------------------------------------------- common/lib/vcon_compat.py


def _rename(d: dict, old: str, new: str) -> None:
    if old not in d:
        return
    if new in d:
        d.pop(old, None)
        return
    d[new] = d.pop(old)


def _normalize_entry(entry: Any) -> None:
    if not isinstance(entry, dict):
        return
    _rename(entry, "schema_version", "schema")
    _rename(entry, "mimetype", "mediatype")
    _rename(entry, "must_support", "critical")


def vcon_server_view(vcon_dict: dict) -> dict:
    """What a storage module's ``save()`` gets: ``VconRedis.get_vcon`` (JSON.GET, then
    ``normalize_legacy_fields`` in place, then ``vcon.Vcon(...)``, a json round trip), ``to_dict()``."""
    d = json.loads(json.dumps(copy.deepcopy(vcon_dict)))
    for old, new in {"appended": "amended", "must_support": "critical"}.items():
        _rename(d, old, new)
    for entry in d.get("dialog", []) or []:
        _normalize_entry(entry)
    for entry in d.get("analysis", []) or []:
        _normalize_entry(entry)
    for att in d.get("attachments", []) or []:
        if isinstance(att, dict):
            _normalize_entry(att)
            if "purpose" not in att and "type" in att:
                att["purpose"] = att.pop("type")
    return d


# ------------------------------------------------------------ common/storage/postgres/__init__.py

# peewee 4.0.1 DateTimeField.formats; DateTimeField.adapt -> format_date_time tries them with strptime
_PEEWEE_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S%z",
                   "%Y-%m-%d")


def peewee_created_at(value: str) -> Any:
    """The parameter peewee hands the driver for ``"created_at": vcon.created_at``: a datetime when a
    format matches (aware with %z, which the driver sends as timestamptz), else the string itself."""
    for fmt in _PEEWEE_FORMATS:
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            pass
    return value


def pg_expected_created_at(conn, value: str) -> datetime:
    """What PostgreSQL stores in vcon-server's TIMESTAMP column for that parameter."""
    return conn.execute("SELECT %s::timestamp", [peewee_created_at(value)]).fetchone()[0]


def pg_get(conn, table: str, uuid: str) -> dict | None:
    """``get()``: ``VconsModel.get(VconsModel.id == vcon_uuid).vcon_json``, None when not found."""
    row = conn.execute(f'SELECT "vcon_json" FROM "{table}" WHERE "id" = %s', [uuid]).fetchone()
    return row[0] if row else None


def pg_delete(conn, table: str, uuid: str) -> bool:
    """``delete()``: ``VconsModel.delete().where(VconsModel.id == vcon_uuid).execute() > 0``."""
    return conn.execute(f'DELETE FROM "{table}" WHERE "id" = %s', [uuid]).rowcount > 0


# ------------------------------------------------------------------ common/storage/s3/__init__.py


def _date_prefix(created_at: str) -> str:
    return datetime.fromisoformat(created_at).strftime("%Y/%m/%d")


def _build_lookup_key(vcon_uuid: str, s3_path: str | None) -> str:
    key = f"lookup/{vcon_uuid}.txt"
    return f"{s3_path.rstrip('/')}/{key}" if s3_path else key


def _build_s3_key(vcon_uuid: str, date_path: str | None, s3_path: str | None) -> str:
    key = f"{date_path}/{vcon_uuid}.vcon" if date_path else f"{vcon_uuid}.vcon"
    return f"{s3_path.rstrip('/')}/{key}" if s3_path else key


def s3_key(vcon_uuid: str, created_at: str, s3_path: str | None) -> str:
    """The key ``save()`` writes: ``_build_s3_key(vcon_uuid, _date_prefix(vcon.created_at), s3_path)``."""
    return _build_s3_key(vcon_uuid, _date_prefix(created_at), s3_path)


def s3_lookup_key(vcon_uuid: str, s3_path: str | None) -> str:
    return _build_lookup_key(vcon_uuid, s3_path)


def s3_get(s3, bucket: str, vcon_uuid: str, s3_path: str | None) -> dict | None:
    """``get()``: the date path from the lookup pointer, then the object it names (None on any error)."""
    try:
        lookup = s3.get_object(Bucket=bucket, Key=_build_lookup_key(vcon_uuid, s3_path))
        date_path = lookup["Body"].read().decode("utf-8").strip()
        key = _build_s3_key(vcon_uuid, date_path, s3_path)
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8"))
    except Exception:
        return None


def s3_delete(s3, bucket: str, vcon_uuid: str, s3_path: str | None) -> bool:
    """``delete()``: the pointer names the object; both are deleted (False on any error)."""
    try:
        lookup_key = _build_lookup_key(vcon_uuid, s3_path)
        date_path = s3.get_object(Bucket=bucket, Key=lookup_key)["Body"].read().decode("utf-8").strip()
        s3.delete_object(Bucket=bucket, Key=_build_s3_key(vcon_uuid, date_path, s3_path))
        s3.delete_object(Bucket=bucket, Key=lookup_key)
        return True
    except Exception:
        return False


# -------------------------------------------------------- common/storage/elasticsearch/__init__.py


def _tenant_attachment(vcon_dict: dict) -> dict | None:
    """common/vcon.py ``find_attachment_by_purpose("tenant")``."""
    return next((a for a in vcon_dict["attachments"] if a.get("purpose") == "tenant" or a.get("type") == "tenant"),
                None)


def es_documents(vcon_dict: dict, vcon_uuid: str, index_prefix: str = "") -> list[tuple[str, str, dict]]:
    """(index, _id, document) of every ``es.index()`` call ``save()`` makes, in its order."""
    vcon_dict = copy.deepcopy(vcon_dict)
    if not vcon_dict["dialog"]:
        return []
    common_attributes = {"vcon_id": vcon_uuid, "started_at": vcon_dict["dialog"][0]["start"]}
    tenant_attachment = _tenant_attachment(vcon_dict)
    if tenant_attachment:
        if tenant_attachment["encoding"] == "json" and isinstance(tenant_attachment["body"], str):
            tenant = json.loads(tenant_attachment["body"])
        else:
            tenant = tenant_attachment["body"]
        common_attributes["tenant_id"] = tenant["id"]
    index_prefix = index_prefix.strip()
    out = []
    for ind, party in enumerate(vcon_dict["parties"]):
        role = party.get("role")
        index = f"{index_prefix}vcon_parties_{role}" if role else f"{index_prefix}vcon_parties"
        out.append((index, f"{vcon_uuid}_{ind}", {**party, **common_attributes}))
    for ind, attachment in enumerate(vcon_dict["attachments"]):
        attachment_type = (attachment.get("type") or attachment.get("purpose") or "unknown").lower()
        if attachment.get("encoding", "none") == "json" and isinstance(attachment["body"], str):
            attachment["body"] = json.loads(attachment["body"])
        out.append((f"{index_prefix}vcon_attachments_{attachment_type}", f"{vcon_dict['uuid']}_{ind}",
                    {**attachment, **common_attributes}))
    for ind, analysis in enumerate(vcon_dict["analysis"]):
        if analysis["encoding"] == "json" and isinstance(analysis["body"], str):
            analysis["body"] = json.loads(analysis["body"])
        out.append((f"{index_prefix}vcon_analysis_{analysis.get('type')}", f"{vcon_dict['uuid']}_{ind}",
                    {**analysis, **common_attributes}))
    for ind, dialog in enumerate(vcon_dict["dialog"]):
        out.append((f"{index_prefix}vcon_dialog", f"{vcon_dict['uuid']}_{ind}", {**dialog, **common_attributes}))
    return out


def es_delete(es, vcon_uuid: str, index_prefix: str = "") -> int:
    """``delete()``: a delete-by-query matching ``vcon_id`` over every ``{prefix}vcon*`` index;
    the number of documents deleted (vcon-server returns ``total_deleted > 0``)."""
    index_prefix = index_prefix.strip()
    try:
        all_indices = list(es.indices.get_alias(index=f"{index_prefix}vcon*").keys())
    except Exception:
        all_indices = []
    if not all_indices:
        return 0
    response = es.delete_by_query(index=",".join(all_indices), body={"query": {"match": {"vcon_id": vcon_uuid}}},
                                  params={"refresh": "true"})
    return response.get("deleted", 0)

"""Elasticsearch / OpenSearch store: one document per vCon, one ``_bulk`` request per batch.

Index ``{ELASTICSEARCH_INDEX_PREFIX}vcons``, ``_id`` = uuid, the document is the whole vCon
plus ``vcon_id``, ``tenant_id`` and ``started_at`` (earliest dialog start, else created_at).
With ELASTICSEARCH_PART_INDICES=true the same request also indexes vcon-server's part
documents (``_id`` = ``{uuid}_{i}``, each with ``tenant_id`` and ``vcon_id``)::

    {prefix}vcon_parties_{role}   (or {prefix}vcon_parties without a role)
    {prefix}vcon_dialog
    {prefix}vcon_analysis_{type}
    {prefix}vcon_attachments_{type}   (a JSON-encoded body is indexed parsed, as vcon-server does)

``index`` actions overwrite, so a vCon written again leaves one document of each.

One code path for Elasticsearch 8/9 and OpenSearch 2/3: opensearch-py's transport sends
plain ``application/json`` and ``application/x-ndjson`` requests, which both accept for
``_bulk``, ``GET /{index}/_doc/{id}``, index creation and ``_index_template``. The
elasticsearch-py 8/9 client is not used: it refuses servers that are not Elastic's and
sends compatibility headers OpenSearch does not know. The main index maps only the
fields worth searching (``dynamic: false``): the rest stays in ``_source``, and vCons
whose analysis bodies differ in type (a string in one, an object in another) cannot
break each other's indexing.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

import orjson
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as TransportConnectionError
from opensearchpy.exceptions import NotFoundError, RequestError, TransportError

from conserver.storage.base import BatchResult, Sink, StoreError, http_status_is_transient

if TYPE_CHECKING:
    from conserver.config import Config
    from conserver.vcon import Vcon

# Only what the result needs: the status of every item (keeps positions) and its error.
_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason"
_NDJSON = {"content-type": "application/x-ndjson"}
# A batch's body is split above this size (servers refuse bodies over http.max_content_length, 100 MB).
MAX_BULK_BYTES = 32 * 1024 * 1024
_INDEX_UNSAFE = re.compile(r"[^a-z0-9_\-]+")
_ADDED_FIELDS = ("vcon_id", "tenant_id", "started_at")

_KEYWORD = {"type": "keyword"}
_DATE = {"type": "date", "ignore_malformed": True}
MAIN_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "vcon_id": _KEYWORD,
        "uuid": _KEYWORD,
        "vcon": _KEYWORD,
        "tenant_id": _KEYWORD,
        "subject": {"type": "text"},
        "created_at": _DATE,
        "updated_at": _DATE,
        "started_at": {"type": "date"},
        "parties": {"properties": {"tel": _KEYWORD, "mailto": _KEYWORD, "name": {"type": "text"}, "role": _KEYWORD}},
        "dialog": {"properties": {"type": _KEYWORD, "start": _DATE, "mimetype": _KEYWORD}},
        "analysis": {"properties": {"type": _KEYWORD, "vendor": _KEYWORD}},
        "attachments": {"properties": {"type": _KEYWORD, "purpose": _KEYWORD}},
    },
}


class ElasticsearchSink(Sink):
    name = "elasticsearch"

    def __init__(self, config: "Config") -> None:
        super().__init__(config)
        self.prefix = config.elasticsearch_index_prefix
        self.index = f"{self.prefix}vcons"
        self.part_indices = config.elasticsearch_part_indices
        self._client: OpenSearch | None = None
        self._schema_ready = False

    # -- lifecycle

    def open(self) -> None:
        if self._client is None:
            self._client = self._make_client()

    def _make_client(self) -> OpenSearch:
        c = self.config
        # "accept" set here keeps ELASTIC_CLIENT_APIVERSIONING=1 from adding a
        # compatibility header that OpenSearch rejects.
        headers = {"accept": "application/json"}
        if c.elasticsearch_api_key:
            headers["authorization"] = f"ApiKey {c.elasticsearch_api_key}"
        auth = (c.elasticsearch_user, c.elasticsearch_password) if c.elasticsearch_user else None
        return OpenSearch(
            hosts=[c.elasticsearch_url],
            http_auth=auth,
            headers=headers,
            timeout=c.store_timeout,
            max_retries=0,  # the fan-out retries
            retry_on_timeout=False,
            retry_on_status=(),
            pool_maxsize=4,
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- documents

    def part_index(self, kind: str, value: Any = None) -> str:
        """``{prefix}vcon_{kind}`` or ``{prefix}vcon_{kind}_{value}``; index names must be
        lowercase without spaces or most punctuation, so the value is folded to that."""
        if value is None or value == "":
            return f"{self.prefix}vcon_{kind}"
        suffix = _INDEX_UNSAFE.sub("_", str(value).lower()).strip("_")[:100] or "other"
        return f"{self.prefix}vcon_{kind}_{suffix}"

    def actions(self, vcon: "Vcon") -> list[tuple[str, str, dict]]:
        """(index, _id, document) for every document of one vCon, the main one first."""
        data, uuid, tenant = vcon.data, vcon.uuid, vcon.tenant
        main = dict(data)
        main["vcon_id"] = uuid
        main["tenant_id"] = tenant
        main["started_at"] = started_at(vcon)
        out = [(self.index, uuid, main)]
        if not self.part_indices:
            return out
        extra = {"vcon_id": uuid, "tenant_id": tenant} if tenant else {"vcon_id": uuid}
        for i, party in enumerate(_objects(data.get("parties"))):
            meta = party.get("meta")
            role = party.get("role") or (meta.get("role") if isinstance(meta, dict) else None)
            out.append((self.part_index("parties", role), f"{uuid}_{i}", {**party, **extra}))
        for i, dialog in enumerate(_objects(data.get("dialog"))):
            out.append((self.part_index("dialog"), f"{uuid}_{i}", {**dialog, **extra}))
        for i, analysis in enumerate(_objects(data.get("analysis"))):
            out.append((self.part_index("analysis", analysis.get("type") or "none"), f"{uuid}_{i}", {**_parsed(analysis), **extra}))
        for i, attachment in enumerate(_objects(data.get("attachments"))):
            kind = attachment.get("type") or attachment.get("purpose") or "none"
            out.append((self.part_index("attachments", kind), f"{uuid}_{i}", {**_parsed(attachment), **extra}))
        return out

    # -- writing

    def write_batch(self, vcons: Sequence["Vcon"]) -> BatchResult:
        if self._client is None:
            raise RuntimeError("ElasticsearchSink used before open()")
        if not self._schema_ready:
            # After an outage the server may have come back empty (an in-memory server, a
            # restored cluster): _bulk would create the index with dynamic mappings that
            # break on the next vCon, so put ours back first.
            self.ensure_schema()
        try:
            return self._write(vcons)
        except TransportConnectionError:
            self._schema_ready = False
            raise

    def _write(self, vcons: Sequence["Vcon"]) -> BatchResult:
        result: BatchResult = dict.fromkeys((v.uuid for v in vcons), None)
        lines: list[bytes] = []
        owners: list[str] = []  # the uuid of every action, in order
        size = 0
        dumps = orjson.dumps
        for v in vcons:
            mine: list[bytes] = []
            for index, doc_id, doc in self.actions(v):
                mine.append(dumps({"index": {"_index": index, "_id": doc_id}}))
                mine.append(dumps(doc))
            added = sum(map(len, mine)) + len(mine)
            if lines and size + added > MAX_BULK_BYTES:  # rare: only batches of very large vCons
                self._bulk(lines, owners, result)
                lines, owners, size = [], [], 0
            lines += mine
            owners += [v.uuid] * (len(mine) // 2)
            size += added
        if lines:
            self._bulk(lines, owners, result)
        return result

    def _bulk(self, lines: list[bytes], owners: list[str], result: BatchResult) -> None:
        lines.append(b"")
        response = self._client.transport.perform_request(
            "POST", "/_bulk", params={"filter_path": _FILTER}, body=b"\n".join(lines), headers=_NDJSON
        )
        if not response.get("errors"):
            return
        items = response.get("items") or []
        if len(items) != len(owners):
            raise StoreError(f"_bulk answered {len(items)} items for {len(owners)} actions", transient=True)
        for uuid, item in zip(owners, items):
            (outcome,) = item.values()
            status = int(outcome.get("status") or 0)
            error = outcome.get("error")
            if error is None and status < 300:
                continue
            if isinstance(error, dict):
                text = f"{status} {error.get('type')}: {error.get('reason')}"
            else:
                text = f"{status} {error}"
            transient = http_status_is_transient(status)
            previous = result[uuid]
            # one vCon has several actions with part indices: a permanent error wins
            if previous is None or (isinstance(previous, StoreError) and previous.transient and not transient):
                result[uuid] = StoreError(text, transient=transient, status=status)

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, TransportConnectionError):  # refused, reset, timed out (status "N/A")
            return True
        if isinstance(exc, TransportError):
            status = exc.status_code
            return http_status_is_transient(status) if isinstance(status, int) else True
        return super().is_transient(exc)

    # -- schema and reading

    def ensure_schema(self) -> None:
        """The main index with its mappings and, with part indices, an index template that
        maps ``vcon_id`` and ``tenant_id`` as keywords in every part index."""
        client = self._client or self._make_client()
        try:
            if self.part_indices:
                patterns = [f"{self.prefix}vcon_{kind}*" for kind in ("parties", "dialog", "analysis", "attachments")]
                template = {
                    "index_patterns": patterns,
                    # templates whose patterns overlap need distinct priorities; two prefixes
                    # of the same length never overlap
                    "priority": 100 + len(self.prefix),
                    "template": {"mappings": {"properties": {"vcon_id": _KEYWORD, "tenant_id": _KEYWORD}}},
                }
                client.transport.perform_request("PUT", f"/_index_template/{self.prefix}vcon-parts", body=template)
            # A template too, so an index the server lost (a restart of an in-memory server, a
            # deleted index) comes back with these mappings when _bulk creates it again.
            main_template = {"index_patterns": [self.index], "priority": 200 + len(self.prefix),
                             "template": {"mappings": MAIN_MAPPINGS}}
            client.transport.perform_request("PUT", f"/_index_template/{self.prefix}vcons-main", body=main_template)
            if not client.transport.perform_request("HEAD", f"/{self.index}"):  # False on 404
                try:
                    client.transport.perform_request("PUT", f"/{self.index}", body={"mappings": MAIN_MAPPINGS})
                except RequestError as exc:
                    if exc.error != "resource_already_exists_exception":  # another worker was first
                        raise
            self._schema_ready = True  # the first write need not do it again
        finally:
            if client is not self._client:
                client.close()

    def fetch(self, uuid: str) -> dict | None:
        """The vCon as indexed, without the fields this store adds."""
        client = self._client or self._make_client()
        try:
            doc = client.transport.perform_request("GET", f"/{self.index}/_doc/{uuid}")
        except NotFoundError:
            return None
        finally:
            if client is not self._client:
                client.close()
        source = doc.get("_source") or {}
        for name in _ADDED_FIELDS:
            source.pop(name, None)
        return source


def started_at(vcon: "Vcon") -> str:
    """The earliest dialog start (ISO 8601, UTC), else created_at."""
    earliest: datetime | None = None
    for dialog in _objects(vcon.data.get("dialog")):
        start = dialog.get("start")
        if not isinstance(start, str) or not start:
            continue
        try:
            when = datetime.fromisoformat(start[:-1] + "+00:00" if start[-1] in "Zz" else start)
        except ValueError:
            continue
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
        if earliest is None or when < earliest:
            earliest = when
    return (earliest or vcon.created_at).isoformat()


def _objects(items: Any) -> list[dict]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _parsed(part: dict) -> dict:
    """A part whose ``encoding`` is json and whose body is a JSON string, with the body parsed."""
    body = part.get("body")
    if part.get("encoding") == "json" and isinstance(body, str):
        try:
            return {**part, "body": orjson.loads(body)}
        except orjson.JSONDecodeError:
            return part
    return part

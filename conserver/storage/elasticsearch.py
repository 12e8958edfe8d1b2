"""Elasticsearch / OpenSearch store: vcon-server's part documents, one ``_bulk`` request per batch.

By default (ELASTICSEARCH_PART_INDICES=true) every vCon becomes the documents vcon-server
indexes, in its indices, with its ``_id`` and added fields (elasticsearch_parts.py has the
layout): ``{prefix}vcon_parties_{role}``, ``{prefix}vcon_attachments_{type}``,
``{prefix}vcon_analysis_{type}``, ``{prefix}vcon_dialog``, ``_id`` = ``{uuid}_{i}``, each
document with ``vcon_id``, ``started_at`` and ``tenant_id``; nothing for a vCon without
dialog. vcon-server's ``delete()`` (a delete-by-query on ``vcon_id`` over ``{prefix}vcon*``)
finds them. An index template maps ``vcon_id`` and ``tenant_id`` as keywords (with a
``.keyword`` sub-field, as dynamic mapping has): a ``match`` on a uuid mapped as text also
hits other vCons that share one of its hyphen-separated pieces, so vcon-server's delete
would remove their documents too.

ELASTICSEARCH_VCON_INDEX=true adds conserver's own layout, off by default: one document per
vCon in ``{prefix}vcons``, ``_id`` = uuid, the whole vCon plus ``vcon_id``, ``tenant_id`` and
``started_at`` (earliest dialog start, else created_at), with the mappings below. Both
layouts index the vCon with legacy field names normalized (compat.py), as vcon-server does.
``index`` actions overwrite, so a vCon written again leaves one document of each.

One code path for Elasticsearch 8/9 and OpenSearch 2/3: opensearch-py's transport sends
plain ``application/json`` and ``application/x-ndjson`` requests, which both accept for
``_bulk``, ``_search``, index creation and ``_index_template``. The elasticsearch-py 8/9
client is not used: it refuses servers that are not Elastic's and sends compatibility
headers OpenSearch does not know. TLS is verified (certifi's CA bundle, or
ELASTICSEARCH_CA_CERTS); vcon-server turns verification off when it has no ``ca_certs``,
conserver only when told to (ELASTICSEARCH_VERIFY_CERTS=false), and says so in its log.
ELASTICSEARCH_CLOUD_ID (config.py turns it into the URL), ELASTICSEARCH_API_KEY and
ELASTICSEARCH_USER/ELASTICSEARCH_PASSWORD authenticate as vcon-server's options do.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

import orjson
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as TransportConnectionError
from opensearchpy.exceptions import NotFoundError, RequestError, TransportError

from conserver.storage.base import BatchResult, Sink, StoreError, http_status_is_transient
from conserver.storage.compat import normalize_legacy_fields
from conserver.storage.elasticsearch_parts import ADDED_FIELDS, index_patterns, part_documents, parts_of
from conserver.storage.index_cap import IndexCap, overflow_counter

if TYPE_CHECKING:
    from conserver.config import Config
    from conserver.vcon import Vcon

log = logging.getLogger("conserver.storage.elasticsearch")

# Only what the result needs: the status of every item (keeps positions) and its error.
_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason"
_NDJSON = {"content-type": "application/x-ndjson"}
# A batch's body is split above this size (servers refuse bodies over http.max_content_length, 100 MB).
MAX_BULK_BYTES = 32 * 1024 * 1024
_KEYWORD = {"type": "keyword"}
# a keyword with the sub-field dynamic mapping gives a string, so `vcon_id.keyword` queries work too
_KEYWORD_TOO = {"type": "keyword", "fields": {"keyword": {"type": "keyword"}}}
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
        "dialog": {"properties": {"type": _KEYWORD, "start": _DATE, "mediatype": _KEYWORD, "mimetype": _KEYWORD}},
        "analysis": {"properties": {"type": _KEYWORD, "vendor": _KEYWORD}},
        "attachments": {"properties": {"type": _KEYWORD, "purpose": _KEYWORD}},
    },
}


class ElasticsearchSink(Sink):
    name = "elasticsearch"

    def __init__(self, config: "Config") -> None:
        super().__init__(config)
        self.prefix = config.elasticsearch_index_prefix.strip()  # vcon-server strips it too
        self.index = f"{self.prefix}vcons"
        self.part_indices = config.elasticsearch_part_indices
        self.vcon_index = config.elasticsearch_vcon_index
        self._client: OpenSearch | None = None
        self._schema_ready = False
        self.index_cap = IndexCap(self.prefix, config.es_max_derived_indices, self._part_index_names,
                                  overflow_counter())

    # -- lifecycle

    def open(self) -> None:
        if self._client is None:
            self._client = self._make_client()
            if self.config.elasticsearch_url.startswith("https:") and not self.config.elasticsearch_verify_certs:
                log.warning("elasticsearch: TLS certificates of %s are NOT verified (ELASTICSEARCH_VERIFY_CERTS=false)",
                            self.config.elasticsearch_url)

    def _make_client(self) -> OpenSearch:
        c = self.config
        # "accept" set here keeps ELASTIC_CLIENT_APIVERSIONING=1 from adding a
        # compatibility header that OpenSearch rejects.
        headers = {"accept": "application/json"}
        auth = None
        if c.elasticsearch_api_key:  # as vcon-server: an API key, and no basic auth with it
            headers["authorization"] = f"ApiKey {c.elasticsearch_api_key}"
        elif c.elasticsearch_user:
            auth = (c.elasticsearch_user, c.elasticsearch_password)
        tls: dict[str, Any] = {}
        if c.elasticsearch_url.startswith("https:"):
            tls = {"verify_certs": c.elasticsearch_verify_certs, "ssl_show_warn": False}  # open() warns once
            if c.elasticsearch_ca_certs and c.elasticsearch_verify_certs:
                tls["ca_certs"] = c.elasticsearch_ca_certs
        return OpenSearch(
            hosts=[c.elasticsearch_url],
            http_auth=auth,
            headers=headers,
            timeout=c.store_timeout,
            max_retries=0,  # the fan-out retries
            retry_on_timeout=False,
            retry_on_status=(),
            pool_maxsize=4,
            **tls,
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- documents

    def actions(self, vcon: "Vcon") -> list[tuple[str, str, dict]]:
        """(index, _id, document) for every document of one vCon."""
        out: list[tuple[str, str, dict]] = []
        if vcon.form == "encrypted":
            # only what the protected header reveals (the uuid); nothing of the content
            if self.vcon_index:
                out.append((self.index, vcon.uuid, {"uuid": vcon.uuid, "vcon_id": vcon.uuid, "form": vcon.form}))
            return out
        # a signed vCon: its payload's parts (the envelope is kept by PostgreSQL and S3)
        data = normalize_legacy_fields(vcon.data)
        if self.vcon_index:
            out.append((self.index, vcon.uuid, {**data, "vcon_id": vcon.uuid, "tenant_id": vcon.tenant,
                                                "started_at": started_at(vcon)}))
        if self.part_indices:
            admit = self.index_cap.admit
            out += [(admit(index), doc_id, doc) for index, doc_id, doc in part_documents(data, vcon.uuid, self.prefix)]
        return out

    def _part_index_names(self) -> list[str]:
        params = {"ignore_unavailable": "true", "allow_no_indices": "true"}
        return list(self._request("GET", f"/{self.prefix}vcon_*", params=params) or {})

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
            try:
                for index, doc_id, doc in self.actions(v):
                    mine.append(dumps({"index": {"_index": index, "_id": doc_id}}))
                    mine.append(dumps(doc))
            except Exception as exc:  # orjson's 254 levels, a date that overflows: this vCon's alone
                result[v.uuid] = exc
                continue
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

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request on the open client, or on a client of its own (migrate, check-config)."""
        client = self._client or self._make_client()
        try:
            return client.transport.perform_request(method, path, **kwargs)
        finally:
            if client is not self._client:
                client.close()

    def ensure_schema(self) -> None:
        """With part indices, an index template that maps ``vcon_id`` and ``tenant_id`` as
        keywords in every part index; with the vCon index, that index and its mappings."""
        if self.part_indices:
            template = {
                "index_patterns": list(index_patterns(self.prefix)),
                # templates whose patterns overlap need distinct priorities; two prefixes
                # of the same length never overlap
                "priority": 100 + len(self.prefix),
                # ignore_malformed: the part indices map dynamically, so after one dialog whose
                # start is RFC 3339 `start` is a date, and a later vCon with "2025-11-03 14:05"
                # (which the draft only counts as nonconforming) would be refused; it is kept
                # unindexed in that field instead
                "template": {"settings": {"index.mapping.ignore_malformed": True},
                             "mappings": {"properties": {"vcon_id": _KEYWORD_TOO, "tenant_id": _KEYWORD_TOO}}},
            }
            self._request("PUT", f"/_index_template/{self.prefix}vcon-parts", body=template)
        if self.vcon_index:
            # A template too, so an index the server lost (a restart of an in-memory server, a
            # deleted index) comes back with these mappings when _bulk creates it again.
            main_template = {"index_patterns": [self.index], "priority": 200 + len(self.prefix),
                             "template": {"mappings": MAIN_MAPPINGS}}
            self._request("PUT", f"/_index_template/{self.prefix}vcons-main", body=main_template)
            if not self._request("HEAD", f"/{self.index}"):  # False on 404
                try:
                    self._request("PUT", f"/{self.index}", body={"mappings": MAIN_MAPPINGS})
                except RequestError as exc:
                    if exc.error != "resource_already_exists_exception":  # another worker was first
                        raise
        self._schema_ready = True  # the first write need not do it again

    def migrate(self, apply: bool = True) -> list[str]:
        """An earlier conserver indexed only ``{prefix}vcons``: index the part documents of
        every vCon there (the index itself is kept)."""
        if apply:
            self.ensure_schema()
        if not self.part_indices or not self._request("HEAD", f"/{self.index}"):
            return []
        total = self._request("GET", f"/{self.index}/_count")["count"]
        if not total:
            return []
        if not apply:
            return [f"part documents of the {total} vCons in {self.index}: to be indexed"]
        indexed, refused = 0, 0
        after: list | None = None
        while True:
            query: dict[str, Any] = {"size": 500, "sort": [{"vcon_id": "asc"}], "query": {"match_all": {}}}
            if after is not None:
                query["search_after"] = after
            hits = self._request("POST", f"/{self.index}/_search", body=query)["hits"]["hits"]
            if not hits:
                break
            after = hits[-1]["sort"]
            lines = []
            for hit in hits:
                data = normalize_legacy_fields(_vcon_of(hit["_source"]))
                for index, doc_id, doc in part_documents(data, hit["_id"], self.prefix):
                    lines += [orjson.dumps({"index": {"_index": index, "_id": doc_id}}), orjson.dumps(doc)]
            if lines:
                response = self._request("POST", "/_bulk", params={"filter_path": _FILTER},
                                         body=b"\n".join(lines) + b"\n", headers=_NDJSON)
                refused += sum(1 for item in response.get("items") or () if "error" in next(iter(item.values())))
            indexed += len(hits)
        kept = "" if self.vcon_index else " (it is no longer written: ELASTICSEARCH_VCON_INDEX=false)"
        changes = [f"part documents of the {indexed} vCons in {self.index}: indexed{kept}"]
        return changes + ([f"{refused} part documents refused by the server"] if refused else [])

    def fetch(self, uuid: str) -> dict | None:
        """The vCon's document in ``{prefix}vcons`` without the fields this store adds; without
        that index, its part documents put back in place (parts_of), as indexed."""
        if self.vcon_index:
            try:
                doc = self._request("GET", f"/{self.index}/_doc/{uuid}")
            except NotFoundError:
                return None
            return _vcon_of(doc.get("_source") or {})
        indices = ",".join(index_patterns(self.prefix))
        params = {"ignore_unavailable": "true", "allow_no_indices": "true"}
        self._request("POST", f"/{indices}/_refresh", params=params)  # a search sees only refreshed documents
        query = {"size": 10000, "query": {"match": {"vcon_id": {"query": uuid, "operator": "and"}}}}
        hits = self._request("POST", f"/{indices}/_search", params=params, body=query)["hits"]["hits"]
        return parts_of(uuid, hits, self.prefix)


def _vcon_of(source: dict) -> dict:
    """A document of ``{prefix}vcons`` without the fields this store adds."""
    return {k: v for k, v in source.items() if k not in ADDED_FIELDS}


def started_at(vcon: "Vcon") -> str:
    """The earliest dialog start (ISO 8601, UTC), else created_at (the vCon index's field)."""
    earliest: datetime | None = None
    for dialog in vcon.data.get("dialog") or ():
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

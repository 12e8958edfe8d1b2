"""S3 store: one object per vCon plus its lookup pointer, in vcon-server's layout, PUT concurrently.

Objects, for a vCon whose ``created_at`` is ``2024-05-17T23:30:00-05:00`` (the date as
written, not the UTC one), with S3_PREFIX ``archive`` (vcon-server's ``s3_path``)::

    archive/2024/05/17/{uuid}.vcon     body: the vCon JSON, legacy fields normalized, application/json
    archive/lookup/{uuid}.txt          body: 2024/05/17 (the date path only)

exactly what vcon-server's storage module writes (common/storage/s3/__init__.py, commit
b9b0381: the prefix as ``s3_path.rstrip('/') + '/'``, the date from
``datetime.fromisoformat(created_at)``), so its ``get()`` and ``delete()``, which read the
pointer and rebuild the key from it, find every vCon. ``conserver migrate`` rewrites the
pointers of an earlier conserver, which held the whole key (and put a vCon whose created_at
has an offset under its UTC date).

A PUT overwrites, so writing a vCon again leaves one object of each (its created_at, hence
its key, does not change). The PUTs of a batch run on a long-lived pool of
CONSERVER_STORE_THREADS threads; a vCon is committed when both of its PUTs are.

The client is obstore (Rust, object_store crate): measured on this machine for 1,000 PUTs
of 1.5 KB with 8 threads against SeaweedFS it costs 0.26 ms of CPU per PUT against 2.3 ms
for boto3 (2.5 ms with a tuned botocore Config), and does 3.4 times the PUTs per second.
Retries are the fan-out's (obstore's own are off); the timeout is CONSERVER_STORE_TIMEOUT.
boto3 is used only to create a missing bucket (S3_CREATE_BUCKET) and to migrate, which
obstore cannot do.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Sequence

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

from conserver.storage.base import BatchResult, Sink, StoreError, http_status_is_transient
from conserver.storage.compat import stored_form, wall_clock_date
from conserver.vcon import InvalidVcon, parse_vcon

if TYPE_CHECKING:
    from conserver.config import Config
    from conserver.vcon import Vcon

_ATTRIBUTES = {"Content-Type": "application/json"}
_LOOKUP_ATTRIBUTES = {"Content-Type": "text/plain"}
# obstore's errors carry the HTTP status only in their message ("... non-2xx status code: 503 ...").
_STATUS = re.compile(r"status code: (\d{3})")


class S3Sink(Sink):
    name = "s3"

    def __init__(self, config: "Config", *, lookup_objects: bool | None = None) -> None:
        super().__init__(config)
        self.bucket = config.s3_bucket
        self.prefix = config.s3_prefix.rstrip("/") + "/" if config.s3_prefix else ""
        self.lookup_objects = config.s3_lookup_objects if lookup_objects is None else lookup_objects
        self._store: S3Store | None = None
        self._threads: ThreadPoolExecutor | None = None

    def key_for(self, uuid: str, date_path: str) -> str:
        return f"{self.prefix}{date_path}/{uuid}.vcon"

    def lookup_key(self, uuid: str) -> str:
        return f"{self.prefix}lookup/{uuid}.txt"

    @staticmethod
    def date_path(v: "Vcon") -> str:
        """The key's date: created_at as written (a signed vCon's, from its payload). An
        encrypted vCon does not reveal its created_at: it is filed under the UTC date it was
        stored on, which its lookup pointer records, so vcon-server's ``get()`` finds it."""
        if v.created_at is None:
            return datetime.now(timezone.utc).strftime("%Y/%m/%d")
        return wall_clock_date(v.data["created_at"])

    # -- lifecycle

    def open(self) -> None:
        if self._store is not None:
            return
        self._store = self._make_store()
        self._threads = ThreadPoolExecutor(self.config.store_threads, thread_name_prefix="s3-put")

    def _make_store(self) -> S3Store:
        c = self.config
        timeout = timedelta(seconds=c.store_timeout)
        kwargs: dict = {"region": c.aws_region}
        if c.s3_endpoint_url:
            kwargs["endpoint"] = c.s3_endpoint_url
        if c.aws_access_key_id:
            kwargs["access_key_id"] = c.aws_access_key_id
            kwargs["secret_access_key"] = c.aws_secret_access_key
        elif os.environ.get("AWS_PROFILE") or os.path.exists(os.path.expanduser("~/.aws/credentials")):
            # obstore reads keys from the environment, web identity, ECS and EC2 metadata,
            # but not ~/.aws profiles: borrow boto3's credential chain for those.
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider

            kwargs["credential_provider"] = Boto3CredentialProvider(boto3.session.Session(region_name=c.aws_region))
        return S3Store(
            self.bucket,
            client_options={
                "allow_http": c.s3_endpoint_url.startswith("http://"),
                "timeout": timeout,
                "connect_timeout": timedelta(seconds=min(c.store_timeout, 5.0)),
                "pool_max_idle_per_host": str(c.store_threads),
            },
            retry_config={"max_retries": 0, "retry_timeout": timeout},
            **kwargs,
        )

    def close(self) -> None:
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)
        self._store = None

    # -- writing

    def _put(self, key: str, body: bytes, attributes: dict) -> None:
        obstore.put(self._store, key, body, attributes=attributes, use_multipart=False)

    def write_batch(self, vcons: Sequence["Vcon"]) -> BatchResult:
        if self._threads is None:
            raise RuntimeError("S3Sink used before open()")
        submit = self._threads.submit
        jobs = []
        result: BatchResult = dict.fromkeys((v.uuid for v in vcons), None)
        for v in vcons:
            try:
                date_path, body = self.date_path(v), stored_form(v)[1]
            except Exception as exc:  # its body cannot be encoded: this vCon's fault alone
                result[v.uuid] = exc
                continue
            jobs.append((v.uuid, submit(self._put, self.key_for(v.uuid, date_path), body, _ATTRIBUTES)))
            if self.lookup_objects:
                jobs.append((v.uuid, submit(self._put, self.lookup_key(v.uuid), date_path.encode(), _LOOKUP_ATTRIBUTES)))
        # obstore's own timeout bounds each PUT; this bounds the wait for a free thread too,
        # a little inside the fan-out's deadline for the whole call (CONSERVER_STORE_TIMEOUT)
        # so that the PUTs that did finish are reported as committed.
        wait([f for _, f in jobs], timeout=self.config.store_timeout * 0.9)
        for uuid, future in jobs:
            if not future.done():
                future.cancel()
                error: BaseException | None = TimeoutError(f"S3 PUT for {uuid} did not finish in time")
            else:
                error = future.exception()
            if error is not None and result[uuid] is None:
                result[uuid] = error
        return result

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, ObstoreError):
            # Refused credentials and missing buckets hit every vCon alike: transient.
            match = _STATUS.search(str(exc))
            return http_status_is_transient(int(match.group(1))) if match else True
        if isinstance(exc, StoreError):
            return exc.transient
        if isinstance(exc, FileNotFoundError):  # obstore's NotFoundError: a PUT into a missing bucket
            return True
        return super().is_transient(exc)

    # -- schema and reading

    def _boto3(self):
        import boto3
        from botocore.config import Config as BotoConfig

        c = self.config
        return boto3.session.Session().client(
            "s3",
            endpoint_url=c.s3_endpoint_url or None,
            aws_access_key_id=c.aws_access_key_id or None,
            aws_secret_access_key=c.aws_secret_access_key or None,
            region_name=c.aws_region,
            config=BotoConfig(connect_timeout=c.store_timeout, read_timeout=c.store_timeout, retries={"total_max_attempts": 2}),
        )

    def ensure_schema(self) -> None:
        """Create the bucket (S3_CREATE_BUCKET=true) or check that it exists."""
        self._ensure_bucket(self._boto3())

    def _ensure_bucket(self, client, create: bool = True) -> bool:
        """True if the bucket was missing (and, with ``create``, has been created)."""
        from botocore.exceptions import ClientError

        c = self.config
        try:
            client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status != 404 or not c.s3_create_bucket:
                raise StoreError(f"S3 bucket {self.bucket}: {exc}", transient=True, status=status) from exc
        if not create:
            return True
        args: dict = {"Bucket": self.bucket}
        if c.aws_region and c.aws_region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": c.aws_region}
        try:
            client.create_bucket(**args)
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            return False
        return True

    def migrate(self, apply: bool = True) -> list[str]:
        """Rewrite the pointers an earlier conserver wrote (the whole key instead of the date
        path), moving each vCon to the key vcon-server derives from its created_at as written
        and normalizing its body on the way. That conserver put S3_PREFIX in front of keys as
        it was, so with a prefix lacking its trailing '/' its pointers are looked for there too."""
        client = self._boto3()
        if self._ensure_bucket(client, create=apply):
            return [f"bucket {self.bucket}: created"]  # a new bucket holds nothing to rewrite
        moved = rewritten = 0
        skipped: list[str] = []
        for prefix in dict.fromkeys((self.prefix, self.config.s3_prefix)):
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{prefix}lookup/")
            for obj in (o for page in pages for o in page.get("Contents", [])):
                if not obj["Key"].endswith(".txt") or obj["Size"] == len("YYYY/MM/DD"):
                    continue
                old_key = client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read().decode().strip()
                if not old_key.endswith(".vcon"):
                    continue
                rewritten += 1
                if apply:
                    try:
                        moved += self._move_to_vcon_server_key(client, obj["Key"], old_key)
                    except (InvalidVcon, client.exceptions.NoSuchKey) as exc:
                        skipped.append(f"{old_key} ({exc})")
        if not rewritten:
            return []
        changes = [f"{rewritten - len(skipped)} lookup pointers holding a whole key: the date path instead"
                   + (f"; {moved} vCons moved to the key vcon-server reads" if apply else "")]
        return changes + [f"left as it was: {s}" for s in skipped]

    def _move_to_vcon_server_key(self, client, old_pointer: str, old_key: str) -> int:
        vcon = parse_vcon(client.get_object(Bucket=self.bucket, Key=old_key)["Body"].read(), None, 0)
        date_path = self.date_path(vcon)
        key, pointer = self.key_for(vcon.uuid, date_path), self.lookup_key(vcon.uuid)
        client.put_object(Bucket=self.bucket, Key=key, Body=stored_form(vcon)[1], ContentType="application/json")
        client.put_object(Bucket=self.bucket, Key=pointer, Body=date_path.encode(), ContentType="text/plain")
        if pointer != old_pointer:
            client.delete_object(Bucket=self.bucket, Key=old_pointer)
        if key != old_key:
            client.delete_object(Bucket=self.bucket, Key=old_key)
            return 1
        return 0

    def fetch(self, uuid: str) -> dict | None:
        """vcon-server's ``get()``: the date path from the pointer, then the vCon (an earlier
        conserver's pointer, which holds the whole key, is read too)."""
        import orjson

        store = self._store or self._make_store()
        try:
            pointer = bytes(obstore.get(store, self.lookup_key(uuid)).bytes()).decode().strip()
            key = pointer if pointer.endswith(".vcon") else self.key_for(uuid, pointer)
            return orjson.loads(bytes(obstore.get(store, key).bytes()))
        except FileNotFoundError:
            return None

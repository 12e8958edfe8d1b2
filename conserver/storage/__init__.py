"""Stores: one :class:`Sink` per backend, each in its own module, loaded by name.

    sinks = load_sinks(("postgres", "s3", "elasticsearch"), config)   # or "pkg.module:Class"

Built-in: ``postgres`` (postgres.py), ``s3`` (s3.py), ``elasticsearch`` (elasticsearch.py,
Elasticsearch 8/9 or OpenSearch 2/3) and ``null`` (null.py, drops everything). Importing
this package imports no store client; :func:`load_sinks` imports the stores it names.
"""

from conserver.storage.base import (
    BUILTIN_SINKS,
    BatchResult,
    Sink,
    StoreError,
    dedupe,
    http_status_is_transient,
    load_sinks,
    sink_class,
    store_modules,
)

__all__ = [
    "BUILTIN_SINKS",
    "BatchResult",
    "Sink",
    "StoreError",
    "dedupe",
    "http_status_is_transient",
    "load_sinks",
    "sink_class",
    "store_modules",
]

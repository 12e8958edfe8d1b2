"""The one interface every store implements, and the loader that picks stores by name.

A store (a :class:`Sink`) writes batches of vCons and says, per vCon, whether it committed.
It knows nothing of Redis queues, workers or processes: the worker's fan-out (fanout.py)
decides about retries, circuit breakers and acknowledgements.

Lifecycle, in the worker process only (nothing is built at import or construction, so
nothing exists before a fork)::

    sink = SomeSink(config)        # cheap: reads settings, opens nothing
    sink.open()                    # clients, pools, threads
    sink.ensure_schema()           # table / bucket / index if missing
    sink.migrate(apply)            # `conserver migrate`: an earlier layout brought to this one
    sink.write_batch(vcons)        # {uuid: None (committed) | the error for that vCon}
    sink.abort()                   # another thread: the fan-out gave up on a call (deadline)
    sink.close()

``write_batch`` catches what one vCon causes (its JSON cannot be encoded, a date overflows)
and returns it as that vCon's error; a call that still fails as a whole with a permanent
error is split by the fan-out until the vCon at fault is found.

Errors are *transient* (the store is unreachable, slow, overloaded or misconfigured as a
whole: retrying later may succeed) or *permanent* (this vCon's content is refused: retrying
it never helps, while other vCons go through). A missing table, bucket or index and refused
credentials are transient on purpose: they hit every vCon alike, so the fan-out defers and
the circuit breaker opens instead of dead-lettering the whole stream.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Iterable, Sequence

from conserver.config import BUILTIN_STORES, ConfigError

if TYPE_CHECKING:
    from conserver.config import Config
    from conserver.vcon import Vcon

__all__ = [
    "BUILTIN_SINKS", "BatchResult", "Sink", "StoreError", "dedupe", "default_is_transient", "http_status_is_transient",
    "load_sinks", "sink_class", "store_modules",
]

# uuid -> None (committed) or the error for that vCon
BatchResult = dict[str, "BaseException | None"]

BUILTIN_SINKS = {
    "postgres": "conserver.storage.postgres:PostgresSink",
    "s3": "conserver.storage.s3:S3Sink",
    "elasticsearch": "conserver.storage.elasticsearch:ElasticsearchSink",
    "null": "conserver.storage.null:NullSink",
}
assert set(BUILTIN_SINKS) == set(BUILTIN_STORES)

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class StoreError(Exception):
    """An error a store has already classified: one vCon's (bulk item) or a whole batch's."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


def http_status_is_transient(status: int) -> bool:
    """HTTP stores: 5xx, 429, 408 and 409 may pass later; so may 401, 403 and 404, which
    mean bad credentials, a read-only (full) cluster or a missing bucket/index: a fault of
    the store's setup that hits every vCon. Other 4xx refuse this vCon's content."""
    return status >= 500 or status in (401, 403, 404, 408, 409, 429)


def dedupe(vcons: Sequence["Vcon"]) -> list["Vcon"]:
    """One vCon per uuid, the last one given winning (a batch may carry a uuid twice)."""
    by_uuid = {v.uuid: v for v in vcons}
    return list(vcons) if len(by_uuid) == len(vcons) else list(by_uuid.values())


class Sink(ABC):
    """One store. Subclasses set ``name`` and implement ``write_batch``.

    ``name`` is the store's name as configured in CONSERVER_STORAGES (``postgres``, or
    ``package.module:Class`` for a custom store): :func:`load_sinks` sets it, and the worker
    keys its per-vCon record of finished stores by it, so it must not change between runs.
    """

    name: str = ""

    def __init__(self, config: "Config") -> None:
        self.config = config
        if not self.name:
            self.name = f"{type(self).__module__}:{type(self).__qualname__}"

    def open(self) -> None:
        """Build clients, pools and threads. Called in the worker process, once."""

    @abstractmethod
    def write_batch(self, vcons: Sequence["Vcon"]) -> BatchResult:
        """Write every vCon, idempotently by uuid. Return {uuid: None or the vCon's error}
        for every uuid given; raise for a failure of the whole batch."""

    def close(self) -> None:
        """Release what open() built. Safe to call twice, or without open()."""

    def abort(self) -> None:
        """Called from another thread when the fan-out abandons a call of this store that ran
        past CONSERVER_STORE_TIMEOUT: break what that call waits on (a connection), so it ends
        soon and what it held is not used again. By default nothing: the client's own timeout
        ends the call."""

    def ensure_schema(self) -> None:
        """Create the table, bucket or index (template) if missing. Idempotent."""

    def migrate(self, apply: bool = True) -> list[str]:
        """``conserver migrate``: bring what the store holds to this store's layout and return
        what was changed (with ``apply=False``, what would be). By default: ensure_schema()."""
        if apply:
            self.ensure_schema()
        return []

    def is_transient(self, exc: BaseException) -> bool:
        """True if ``exc`` (raised by write_batch or returned for one vCon) may pass on a retry."""
        return default_is_transient(exc)

    def fetch(self, uuid: str) -> dict | None:
        """The stored vCon, or None if this store does not hold it (tests and the CLI)."""
        raise NotImplementedError(f"store {self.name} cannot fetch")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def default_is_transient(exc: BaseException) -> bool:
    if isinstance(exc, StoreError):
        return exc.transient
    # refused or reset connections, DNS failures, timeouts: all OSError (socket.timeout too)
    return isinstance(exc, OSError)


def sink_class(name: str) -> type[Sink]:
    """The Sink class for a built-in name or a ``package.module:Class`` import path."""
    path = BUILTIN_SINKS.get(name, name)
    if not _IMPORT_PATH.match(path):
        raise ConfigError("CONSERVER_STORAGES", name, "one of " + ", ".join(BUILTIN_SINKS) + " or package.module:Class")
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("CONSERVER_STORAGES", name, f"an importable module ({exc})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise ConfigError("CONSERVER_STORAGES", name, f"a subclass of conserver.storage.Sink in {module_name}")
    return cls


def load_sinks(names: Iterable[str], config: "Config") -> list[Sink]:
    """One Sink per name, constructed (not opened), each with ``name`` set to the name given.

    Built-in stores are imported only here, so a process that never loads a store (the
    supervisor) never imports psycopg, obstore or opensearch-py.
    """
    sinks = []
    for name in names:
        sink = sink_class(name)(config)
        sink.name = name
        sinks.append(sink)
    return sinks


def store_modules(config: "Config") -> list[str]:
    """The modules of every store the pools of ``config`` name, as import paths (nothing is
    imported here): what the supervisor preloads before it forks."""
    names = dict.fromkeys(s for p in config.pools for s in p.storages)
    return [BUILTIN_SINKS.get(name, name).partition(":")[0] for name in names]

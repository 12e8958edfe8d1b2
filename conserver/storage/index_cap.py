"""A bound on the Elasticsearch index names that content chooses (issue 12).

vcon-server names part indices after values in the vCon: ``vcon_parties_{role}``,
``vcon_attachments_{purpose}``, ``vcon_analysis_{type}``. A producer that writes a new
analysis type per vCon would make a new index per vCon, and a cluster with thousands of
indices (shards, mappings, cluster state) falls over. :class:`IndexCap` admits at most
CONSERVER_ES_MAX_DERIVED_INDICES such names; past it the documents of a new name go to the
kind's fallback index ``{prefix}vcon_{kind}_overflow`` (``vcon_analysis_overflow``...), where
they are still found by ``vcon_id`` and by vcon-server's ``delete()`` (``{prefix}vcon*``): nothing is lost,
only the index name no longer tells the type (the document's own ``type`` field does).

The names the cluster already has count: they are read at start and again, at most once
a :data:`LOG_EVERY`, when the cap is reached (workers admit names independently, so
together they may pass the cap by what each admitted since its last look). A WARNING is
logged at most once per :data:`LOG_EVERY` and ``conserver_es_overflow_documents_total`` counts
the documents sent to a fallback index.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

log = logging.getLogger("conserver.storage.elasticsearch")
LOG_EVERY = 60.0
DERIVED_KINDS = ("vcon_parties", "vcon_attachments", "vcon_analysis")


class IndexCap:
    def __init__(self, prefix: str, limit: int, existing: Callable[[], Iterable[str]],
                 counter: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.limit = limit
        self._existing = existing  # the derived index names the cluster has now
        self.counter = counter
        self.clock = clock
        self._known: set[str] | None = None
        self._lock = threading.Lock()
        self._next_look = 0.0
        self._next_log = 0.0
        self._unlogged = 0

    def derived_kind(self, index: str) -> str | None:
        """The kind whose name ``index`` derives from content, or None for a fixed name."""
        for kind in DERIVED_KINDS:
            base = self.prefix + kind
            if index.startswith(base + "_") and index != self.fallback(kind):
                return kind
        return None

    def fallback(self, kind: str) -> str:
        return f"{self.prefix}{kind}_overflow"

    def admit(self, index: str) -> str:
        """``index``, or its kind's fallback index when it would be one derived name too many."""
        kind = self.derived_kind(index)
        if kind is None:
            return index
        with self._lock:
            if self._known is None:
                self._look()
            assert self._known is not None
            if index in self._known:
                return index
            if len(self._known) >= self.limit and self.clock() >= self._next_look:
                self._look()  # other workers may have made it meanwhile
                if index in self._known:
                    return index
            if len(self._known) < self.limit:
                self._known.add(index)
                return index
            self._overflowed(index, kind)
        return self.fallback(kind)

    def _look(self) -> None:
        try:
            found = {name for name in self._existing() if self.derived_kind(name)}
        except Exception as exc:  # the cluster cannot say: count what this process saw
            log.warning("elasticsearch: cannot list the part indices (%s)", exc)
            found = set()
        self._known = found | (self._known or set())
        self._next_look = self.clock() + LOG_EVERY

    def _overflowed(self, index: str, kind: str) -> None:
        if self.counter is not None:
            self.counter.labels(kind).inc()
        self._unlogged += 1
        now = self.clock()
        if now >= self._next_log:
            log.warning("elasticsearch: %d part indices named after content already (CONSERVER_ES_MAX_DERIVED_INDICES); "
                        "documents for %s and %d more go to %s", len(self._known or ()), index[:120],
                        self._unlogged - 1, self.fallback(kind))
            self._next_log = now + LOG_EVERY
            self._unlogged = 0


_counter: Any = None


def overflow_counter(registry: Any = None) -> Any:
    """The counter, once per process (or in ``registry``, for a test); None without metrics."""
    global _counter
    if registry is None:
        if _counter is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import Counter

            _counter = Counter("conserver_es_overflow_documents", "Elasticsearch part documents sent to a fallback "
                               "index (CONSERVER_ES_MAX_DERIVED_INDICES)", ["kind"])
        return _counter
    from prometheus_client import Counter

    return Counter("conserver_es_overflow_documents", "Elasticsearch part documents sent to a fallback index",
                   ["kind"], registry=registry)

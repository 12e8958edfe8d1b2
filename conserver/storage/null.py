"""The ``null`` store: accepts every vCon and keeps nothing (benchmarks of everything else)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from conserver.storage.base import BatchResult, Sink

if TYPE_CHECKING:
    from conserver.vcon import Vcon


class NullSink(Sink):
    name = "null"

    def write_batch(self, vcons: Sequence["Vcon"]) -> BatchResult:
        return dict.fromkeys((v.uuid for v in vcons), None)

    def fetch(self, uuid: str) -> dict | None:
        return None

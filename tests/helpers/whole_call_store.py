"""An Elasticsearch store that fails as a whole, as the sink did before it caught errors per
vCon: it encodes every document of the batch before it sends any, so one vCon orjson cannot
encode fails the call. The fan-out's splitting (fanout.py) is tested with it."""

from __future__ import annotations

from typing import Sequence

import orjson

from conserver.storage.base import BatchResult
from conserver.storage.elasticsearch import ElasticsearchSink


class WholeCallElasticsearch(ElasticsearchSink):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.calls: list[int] = []  # the size of every call

    def write_batch(self, vcons: Sequence) -> BatchResult:
        self.calls.append(len(vcons))
        for v in vcons:  # raises for the whole call, like orjson on one vCon of 300 levels
            for _, _, doc in self.actions(v):
                orjson.dumps(doc)
        return super().write_batch(vcons)

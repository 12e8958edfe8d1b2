"""Sample data and small readers shared by the queue tests."""

from __future__ import annotations

import random

import orjson

from conserver.config import Config
from conserver.dev.samples import sample_vcon
from conserver.queue.protocol import Claim, QueueSettings


def settings(lists=("default",), **overrides) -> QueueSettings:
    """The shipped defaults (Config()), with the test's lists and the overrides it names."""
    return QueueSettings.from_config(Config(ingress_lists=tuple(lists)), **overrides)


def vcons(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(d["uuid"], orjson.dumps(d)) for d in (sample_vcon(rng) for _ in range(n))]


def uuids_of(claims: list[Claim]) -> list[str]:
    return [c.uuid for c in claims]


def items(r, key) -> list[str]:
    return [i.decode() for i in r.lrange(key, 0, -1)]

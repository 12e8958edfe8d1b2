"""``links.sampler``: let a share of the vCons through; the others halt the chain.

vcon-server: conserver/links/sampler/__init__.py (b9b0381), the same four methods and
tests. ``seed`` there re-seeds the process-wide ``random`` on every call; here a
``random.Random(seed)`` of its own gives the same numbers without touching the global one.

- ``percentage``: kept when ``uniform(0, 100) <= value``
- ``rate``: kept when ``expovariate(1 / value) <= 1`` (value: mean seconds between samples)
- ``modulo``: kept when the first 8 hex digits of SHA-256(uuid) are divisible by ``value``
- ``time_based``: kept when ``int(time.time()) % value == 0``
"""

from __future__ import annotations

import hashlib
import random
import time

default_options = {"method": "percentage", "value": 50, "seed": None}


def _keep(method: str, value, uuid: str, rng) -> bool:
    if method == "percentage":
        return rng.uniform(0, 100) <= value
    if method == "rate":
        return rng.expovariate(1.0 / value) <= 1
    if method == "modulo":
        return int(hashlib.sha256(uuid.encode()).hexdigest()[:8], 16) % value == 0
    if method == "time_based":
        return int(time.time()) % value == 0
    raise ValueError(f"Unknown sampling method: {method}")


def run(vcon: dict, ctx, options: dict) -> dict | None:
    rng = random if options.get("seed") is None else random.Random(options["seed"])
    return vcon if _keep(options["method"], options["value"], vcon["uuid"], rng) else None

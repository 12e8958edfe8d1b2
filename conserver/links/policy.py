"""Per-link policy: deadline, retries, shared rate limit and circuit breaker, read from the
``conserver:`` mapping inside a link's options in config.yml.

vcon-server's own option names stay untouched (a user link of the example config has an
option called ``timeout`` already), so conserver's are kept apart in one mapping that
vcon-server's links would ignore::

    links:
      analyze:
        module: links.analyze
        options:
          analysis_type: summary         # the link's own options, as in vcon-server
          conserver:                     # conserver's policy; taken out before the link runs
            timeout: 60
            retries: 3
            rate_limit: 2/s
            rate_limit_burst: 5
            circuit_breaker_failures: 5
            circuit_breaker_reset: 30

Precedence, lowest first: the defaults of :class:`LinkPolicy`, the module's
``default_policy``, deployment-wide defaults handed in by the config layer, the link's
``conserver:`` mapping. An unknown key or a bad value is a ValueError naming it.

This module depends on nothing else in the project.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["POLICY_KEY", "LinkPolicy", "parse_policy", "parse_rate", "split_options"]

POLICY_KEY = "conserver"

_RATE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*\Z")
_PER = {None: 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
        "h": 3600.0, "hour": 3600.0}


@dataclass(frozen=True)
class LinkPolicy:
    """How the runner calls one link. Times are seconds."""

    timeout: float = 120.0            # one call's deadline; 0: none (the call runs in the caller's thread)
    retries: int = 2                  # extra attempts after a transient failure; 0: none
    retry_backoff: float = 1.0        # exponential backoff base (full jitter), doubling per attempt
    retry_backoff_max: float = 30.0   # cap of one backoff wait
    rate_limit: float = 0.0           # per second, shared by every worker through Redis; 0: none
    rate_limit_burst: float = 0.0     # tokens saved up; 0: the rate rounded up, at least 1
    rate_limit_key: str = ""          # the bucket's name; links naming one key share it; "": the link name
    rate_limit_per: str = "call"      # "call": a token per attempt; "request": per ctx.http() request
    circuit_breaker_failures: int = 5  # consecutive transient failures that open it; 0: no breaker
    circuit_breaker_reset: float = 30.0  # seconds open before one probe call may pass

    @property
    def burst(self) -> float:
        if self.rate_limit_burst > 0:
            return self.rate_limit_burst
        return float(max(1, math.ceil(self.rate_limit)))

    def bucket_name(self, link_name: str) -> str:
        return f"link.{self.rate_limit_key or link_name}"  # a key_part-safe name: readable in Redis


_FIELDS = {f.name: f for f in dataclasses.fields(LinkPolicy)}
_INTS = ("retries", "circuit_breaker_failures")


def parse_rate(value: Any) -> float:
    """``2/s``, ``120/min``, ``100/h``, ``2`` or a number -> requests per second (0: none)."""
    if isinstance(value, bool):
        raise ValueError(f"a rate is N/s, N/min, N/h or a number, not {value!r}")
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        match = _RATE.match(str(value))
        if not match:
            raise ValueError(f"a rate is N/s, N/min, N/h or a number, not {value!r}")
        rate = float(match.group(1)) / _PER[match.group(2)]
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"a rate must be a finite number >= 0, not {value!r}")
    return rate


def _number(name: str, value: Any) -> float | int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    if name in _INTS:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, not {value!r}")
        return int(number)
    return number


def _value(name: str, value: Any) -> Any:
    if name == "rate_limit":
        return parse_rate(value)
    if name == "rate_limit_key":
        if not isinstance(value, str):
            raise ValueError(f"rate_limit_key must be a string, not {value!r}")
        return value
    if name == "rate_limit_per":
        if value not in ("call", "request"):
            raise ValueError(f"rate_limit_per must be 'call' or 'request', not {value!r}")
        return value
    return _number(name, value)


def parse_policy(*layers: Mapping[str, Any] | None) -> LinkPolicy:
    """A :class:`LinkPolicy` from mappings of policy options, later ones winning."""
    values: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ValueError(f"the {POLICY_KEY!r} options must be a mapping, not {type(layer).__name__}")
        for name, value in layer.items():
            if name not in _FIELDS:
                raise ValueError(f"unknown {POLICY_KEY} option {name!r} (known: {', '.join(_FIELDS)})")
            values[name] = _value(name, value)
    return LinkPolicy(**values)


def split_options(options: Mapping[str, Any] | None) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
    """config.yml's options of a link -> (the link's own options, the ``conserver:`` mapping)."""
    if options is None:
        return {}, None
    if not isinstance(options, Mapping):
        raise ValueError(f"a link's options must be a mapping, not {type(options).__name__}")
    own = {k: v for k, v in options.items() if k != POLICY_KEY}
    return own, options.get(POLICY_KEY)

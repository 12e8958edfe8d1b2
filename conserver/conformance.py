"""What a worker does with a valid vCon that departs from the draft (conserver/vcon.py).

:meth:`Conformance.admit` runs on every parsed vCon, before the stores see it:

- ``critical`` naming an extension outside CONSERVER_SUPPORTED_EXTENSIONS: refused as
  ``unsupported_critical`` (draft §4.1.4: such a vCon MUST NOT be processed);
- each rule of ``Vcon.nonconforming`` is counted in ``conserver_vcon_nonconforming_total{rule}``
  and logged at most once per rule every :data:`LOG_EVERY` seconds (with how many more
  there were), so a producer that gets one thing wrong does not flood the log;
- with CONSERVER_STRICT_VCON the vCon is refused instead, the first rule as the reason.

Every form is stored: signed and encrypted vCons as received (the envelope), see
conserver/storage/compat.py ``stored_form``.

One per worker, created after the fork (the counter lives in the worker's metric files).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Collection

from conserver.vcon import REVISION, RULES, InvalidVcon, Vcon, check_critical

log = logging.getLogger("conserver.conformance")
LOG_EVERY = 60.0  # seconds between two log lines about the same rule


class Conformance:
    def __init__(self, supported_extensions: Collection[str] = (), strict: bool = False,
                 counter: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.supported = frozenset(supported_extensions)
        self.strict = strict
        self.counter = counter  # a prometheus Counter labelled by rule, or None (metrics off)
        self.clock = clock
        self._next_log: dict[str, float] = {}  # rule -> when it may be logged again
        self._unlogged: dict[str, int] = {}  # rule -> vCons since its last log line

    @classmethod
    def from_config(cls, cfg: Any) -> "Conformance":
        counter = nonconforming_counter() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else None
        return cls(cfg.supported_extensions, cfg.strict_vcon, counter)

    def admit(self, vcon: Vcon) -> Vcon:
        """``vcon`` if it may be stored, else :class:`InvalidVcon`."""
        check_critical(vcon, self.supported)
        if not vcon.nonconforming:
            return vcon
        for rule in vcon.nonconforming:
            if self.counter is not None:
                self.counter.labels(rule).inc()
        if self.strict:
            rule = vcon.nonconforming[0]
            raise InvalidVcon(rule, f"{RULES[rule]} (CONSERVER_STRICT_VCON)")
        now = self.clock()
        for rule in vcon.nonconforming:
            self._unlogged[rule] = self._unlogged.get(rule, 0) + 1
            if now >= self._next_log.get(rule, now):
                more = self._unlogged[rule] - 1
                log.warning("vCon %s stored as received although it breaks %s rule %s: %s%s", vcon.uuid, REVISION,
                            rule, RULES[rule], f" ({more} more since the last report)" if more else "")
                self._next_log[rule] = now + LOG_EVERY
                self._unlogged[rule] = 0
        return vcon


_counter: Any = None


def nonconforming_counter(registry: Any = None) -> Any:
    """The counter, created once per process (or in ``registry``, for a test)."""
    global _counter
    if registry is None and _counter is not None:
        return _counter
    from prometheus_client import REGISTRY, Counter

    counter = Counter("conserver_vcon_nonconforming", "vCons stored or refused for a rule of the draft they break",
                      ["rule"], registry=REGISTRY if registry is None else registry)
    if registry is None:
        _counter = counter
    return counter

"""Links of a user's own, for the chain tests: loaded by module path from config.yml
(``module: tests.helpers.links:Stamp``) or by entry point.

- ``Stamp``: appends its ``name`` option to the vCon's ``stamps`` list (order of links);
  with ``sleep`` it waits first and records the most vCons it ran at once (``Stamp.peak``).
- ``Flaky``: raises a transient failure for the uuids listed in ``fail`` (or every vCon),
  ``permanent: true`` makes it a permanent one.
"""

from __future__ import annotations

import threading
import time

from conserver.links import TransientError


class Stamp:
    default_options = {"name": "stamp", "sleep": 0.0}
    lock = threading.Lock()
    running = 0
    peak = 0

    def run(self, vcon: dict, ctx, options: dict) -> dict:
        cls = type(self)
        with cls.lock:
            cls.running += 1
            cls.peak = max(cls.peak, cls.running)
        try:
            if options["sleep"]:
                time.sleep(options["sleep"])
            vcon.setdefault("stamps", []).append(options["name"])
            return vcon
        finally:
            with cls.lock:
                cls.running -= 1


class Flaky:
    default_options = {"fail": [], "permanent": False}

    def run(self, vcon: dict, ctx, options: dict) -> dict:
        if not options["fail"] or vcon["uuid"] in options["fail"]:
            if options["permanent"]:
                raise ValueError(f"flaky refuses {vcon['uuid']}")
            raise TransientError(f"flaky is down for {vcon['uuid']}")
        return vcon

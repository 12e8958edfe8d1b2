"""kill -9 a random ready queue worker of a running conserver every so often, until told to stop.

Only ready workers (idle or busy) are picked, as the OOM killer picks a big process, not one
still booting: a worker killed before it reported ready is a boot failure by design."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator

from tests.helpers.proc import Conserver, title


@contextlib.contextmanager
def killing_workers(c: Conserver, seed: int, every: float = 0.25) -> Iterator[list[int]]:
    """While the block runs, SIGKILL one of ``c``'s ready queue workers every ``every``
    seconds; yields the list of the pids killed so far."""
    stop, victims = threading.Event(), []

    def killer():
        rng = random.Random(seed)
        while not stop.wait(every):
            ready = [w for w in c.workers() if title(w.pid).startswith("conserver: worker")
                     and (" idle" in title(w.pid) or " busy" in title(w.pid))]
            if ready:
                victim = rng.choice(ready)
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                    victims.append(victim.pid)
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=killer)
    t.start()
    try:
        yield victims
    finally:
        stop.set()
        t.join()

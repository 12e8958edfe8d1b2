"""kill -9 a random queue worker of a running conserver every so often, until told to stop."""
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
    """While the block runs, SIGKILL one of ``c``'s queue workers every ``every`` seconds;
    yields a one-item list holding the number of kills so far."""
    stop, kills = threading.Event(), [0]

    def killer():
        rng = random.Random(seed)
        while not stop.wait(every):
            victims = [w for w in c.workers() if title(w.pid).startswith("conserver: worker")]
            if victims:
                try:
                    os.kill(rng.choice(victims).pid, signal.SIGKILL)
                    kills[0] += 1
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=killer)
    t.start()
    try:
        yield kills
    finally:
        stop.set()
        t.join()

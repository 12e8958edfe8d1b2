"""RQ: the job function (imported by `rq worker` by its dotted path)."""

import os

from rq import get_current_job

from benchmarks.peers import COUNTER, count_one


def noop(i: int) -> None:
    if os.environ.get("BENCH_RQ_DIRECT") == "1":
        # The default Worker runs each job in a forked work horse that exits right after
        # it: a buffered count would die with it, so count with the job's own connection.
        get_current_job().connection.incr(COUNTER)
    else:
        count_one()

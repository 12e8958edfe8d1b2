"""Huey: RedisHuey without a result store (the consumer pops a task, then runs it)."""

import os

from huey import RedisHuey

from benchmarks.peers import count_one

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"], results=False)


@huey.task()
def noop(i: int) -> None:
    count_one()

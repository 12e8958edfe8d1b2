"""Dramatiq: RedisBroker (at-least-once: messages are acked after the job), no retries."""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peers import count_one

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(i: int) -> None:
    count_one()

"""Celery: Redis broker, no result backend, acks_late (at-least-once), prefork pool."""

import os

from celery import Celery

from benchmarks.peers import count_one

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_acks_late=True,  # acknowledge after the job ran, as conserver does
    # A no-op job takes microseconds: prefetch a few per process (the default is 4; 1 is
    # for long jobs). BENCH_CELERY_PREFETCH overrides.
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "16")),
    task_ignore_result=True,
    result_backend=None,
    task_default_queue="bench",
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_disable_rate_limits=True,
)


@app.task(name="bench.noop")
def noop(i: int) -> None:
    count_one()

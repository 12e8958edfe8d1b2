"""Benchmarks of conserver (not unit tests). One command each, from the repository root::

    .venv/bin/python -m benchmarks queue        # conserver vs RQ, Celery, Dramatiq, Huey, a bare redis-py loop
    .venv/bin/python -m benchmarks lifecycle    # kill -9 -> replacement, requeue, SIGTERM drain
    .venv/bin/python -m benchmarks memory       # PSS of the process tree per start method
    .venv/bin/python -m benchmarks scaling      # null-store throughput vs workers (--workers 1,2,4,8,16)
    .venv/bin/python -m benchmarks plot         # PNGs next to RESULTS.md

Each prints a table, writes ``benchmarks/out/NAME.json`` and replaces its own section of
``benchmarks/RESULTS.md``. Each starts its own private redis-server (conserver.dev.devstack)
and never touches a system Redis.
"""

"""conserver: a prefork supervisor that stores vCons from Redis into PostgreSQL, S3 and Elasticsearch.

Data flow of one vCon::

    producer ──SET vcon:{uuid}, RPUSH list──▶ Redis ingress lists (priority order)
                                                  │ claim_batch (Lua, atomic)
                                                  ▼
    supervisor ──starts/watches──▶ worker N ── processing list conserver:processing:{host}:{pid}:{t}
                                                  │ fetch body, validate (vcon.py)
                                 bad input ◀──────┤ ──▶ DLQ:{list} + DLQ meta hash
                                                  ▼
                                  fan-out (one thread pool per store, storage/)
                               PostgreSQL     S3      Elasticsearch
                                                  │ all committed?
                             no: delayed set ◀────┤ yes: ack (LREM from processing list)
                          (scheduler moves back)

The supervisor (process/supervisor.py) owns the process table and the signal loop and
never holds a store client; workers (process/worker.py running tasks/pipeline.py) build
their own clients after they start. Rooms: process/, tasks/, queue/, storage/ + fanout.py,
links/, config/, observability/, dev/ (tooling, never imported by `conserver run`).
"""

__version__ = "0.1.0"

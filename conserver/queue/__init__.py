"""The Redis queue protocol: claim, ack, defer, dead-letter, requeue. Knows nothing of stores.

One room per audience::

    keys.py       every Redis key name (KeyLayout), the one place they are spelled
    scripts/      the Lua, one .lua file per state change, and the loader that runs them
    client.py     make_redis, REDIS_DOWN, make_worker_id, item_id
    protocol.py   Claim, QueueSettings, what both implementations share
    claims.py     the worker's hot path: claim_batch, ack, defer, dead_letter, beat, retire
    recovery.py   the scheduler's and supervisor's: move_due, sweep_orphans, requeue_worker,
                  LeaderLock, requeue_dead_worker
    admin.py      operator commands: enqueue, depths, workers, dead letters, recent errors
    error_log.py  the status page's recent errors
    outage.py     one WARNING per interval while Redis is away or refuses writes
    memory.py     the same protocol in memory, for unit tests without Redis

Key layout (``KeyLayout`` defaults; vcon-server compatible where vcon-server defines it)::

    {list}                                ingress list of uuid strings (RPUSH by producers); an item
                                          starting with '{' is a whole vCon inline (no body key)
    vcon:{uuid}                           the body: a JSON string (SET), or a RedisJSON value (JSON.SET,
                                          as vcon-server's API writes; JSON.GET inside the claim script).
                                          Dead-lettered: TTL VCON_DLQ_EXPIRY, as vcon-server
    DLQ:{list}                            dead letters: the original items (RPUSH, as vcon-server)
    DLQ:{list}:meta:{id}                  hash: reason, error, attempts, deliveries, worker, time,
                                          list, uuid (bounded), item_id, excerpt (64 bytes, escaped)
    vcons                                 zset (VCON_SORTED_SET_NAME): `conserver enqueue` into RedisJSON
                                          adds vcon:{uuid} scored by created_at, as vcon-server's API
    conserver:processing:{worker}:{list}  what one worker claimed from one list, in claim order
    conserver:inflight                    hash: processing list key -> "{worker}\\n{list}"
    conserver:deliveries                  hash: item id -> claims not yet resolved (poison counter;
                                          copies of an item pushed again do not count: claim.lua)
    conserver:attempts                    hash: item id -> counted retries (defer)
    conserver:delayed                     zset: "{list}\\n{item}" scored by due time (epoch seconds)
    conserver:delayed:unreadable          list: delayed members move_due could not parse
    conserver:stored:{uuid}               hash: store name -> time stored (TTL; retries skip these)
    conserver:worker:{worker}             heartbeat: small JSON, expires after heartbeat_ttl
    conserver:workers                     set of registered worker ids
    conserver:claim:{worker}              the last claim's token, to make a retried claim idempotent
    conserver:fence                       counter: fencing tokens, INCRBY once per claimed batch
    conserver:leader:{name}               LeaderLock
    conserver:errors                      list: the last 100 errors, for the status page
    conserver:tenant:{tenant}             conserver.limits: per-tenant concurrency slots
    conserver:bucket:{name}               conserver.limits: shared token buckets

An item's *id* is the item itself when it is 1-64 characters of [A-Za-z0-9_-] (every uuid),
otherwise ``sha1:`` + its SHA-1 (inline vCons, garbage).

Lifecycle of one item::

    {list} ──claim_batch──▶ processing ──ack──────────▶ (gone; body kept unless body_expiry_s)
                               │  ├──defer──▶ conserver:delayed ──move_due──▶ head of {list}
                               │  └──dead_letter / poison / retries_exhausted──▶ DLQ:{list}
                               └──requeue_unstarted / retire / requeue_worker / sweep_orphans──▶ head of {list}

Every state change is one Lua script (or MULTI/EXEC), so a crash or a dropped connection at
any point leaves each item in exactly one place. redis-py retries a command whose reply was
lost, so every script is safe to run twice: ack/defer/dead-letter act only on items they
could still remove from the processing list, and a claim carries a token that makes its
re-run return the same batch instead of claiming a second one.

Fencing: every Claim carries ``fence``, a token larger than that of every claim made before
it (one counter for the deployment); with copies of an item in flight held back, the newest
claim of a uuid has its largest token, so a store that writes only over a smaller token never
lets a stale writer (a worker paused past its heartbeat) overwrite a newer copy.
``WorkerClaims.still_holds`` is the lease check right before writing. The guarantee and its
limits are spelled out in claims.py.

The scripts receive every key name and prefix from ``keys.py``, but they build per-item
names (body, dead-letter meta, store marks) from those prefixes inside Lua, so this
protocol runs on a single Redis (with Sentinel for failover), not on Redis Cluster.
"""

"""Limits shared by every worker on every host, kept in Redis: a per-tenant concurrency cap
and a token bucket per store that slows down when the store pushes back.

Key layout::

    conserver:tenant:{tenant}   zset: one member per slot held, ``{holder}:{k}``, scored by
                                its expiry (epoch ms, Redis clock); expires when idle
    conserver:bucket:{name}     hash: tokens, ts (last refill), rate (current, adaptive),
                                throttled (last throttled() time); expires when idle

``{tenant}`` and ``{name}`` go through :func:`key_part`: a name of 1-64 characters of
[A-Za-z0-9._-] is used as is, anything else becomes ``{readable}~{sha256 prefix}`` (a raw
name never holds ``~``, so the two forms cannot collide).

Tenant slots, one batch of a worker::

    claim_batch ──▶ acquire_many({tenant: n}) ──▶ granted: process ──▶ release_many({tenant: n})
                            │                                  ▲
                            └─▶ not granted: defer / requeue   └── renew_many() while a batch runs long

A holder's slots in one tenant are the members ``holder:1 .. holder:h``, all with one
score: acquire and renew rewrite the expiry of every slot of the holder, release removes the
highest ones. So one ZREMRANGEBYSCORE drops all the slots of a dead holder at once, and
finding a holder's slots costs h ZSCOREs, never a scan. A holder that stalls past ``ttl``
loses its slots (others may take them); :meth:`TenantSlots.renew` returns how many it
still holds so it can tell.

Times come from Redis ``TIME``, never from the client: hosts' clocks differ. Every script
touches only the keys it is given, but one call may span many keys, so this runs on a single
Redis (with Sentinel), like the queue protocol, not on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from conserver.queue.keys import DEFAULT_KEYS

__all__ = ["BUCKET", "TENANT", "SharedTokenBucket", "TenantSlots", "key_part"]

TENANT = DEFAULT_KEYS.tenant_prefix  # key names: conserver/queue/keys.py
BUCKET = DEFAULT_KEYS.bucket_prefix

_SAFE_NAME = re.compile(r"[A-Za-z0-9._\-]{1,64}\Z")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._\-]")
_READABLE = 24  # characters of an escaped name kept readable in front of its hash
_MAX_SLEEP = 0.5  # SharedTokenBucket.acquire sleeps at most this long, so a draining worker notices


def key_part(name: str) -> str:
    """``name`` when it is 1-64 characters of [A-Za-z0-9._-], else ``{readable}~{hash}``: at
    most 24 safe characters, ``~``, 32 hex digits of SHA-256. Distinct names give distinct
    parts (up to a 128-bit hash collision)."""
    if not isinstance(name, str):
        raise TypeError(f"a name must be a str, not {type(name).__name__}")
    if _SAFE_NAME.match(name):
        return name
    readable = _UNSAFE_CHAR.sub("_", name[:_READABLE])
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{readable}~{digest}"


def tenant_key(tenant: str) -> str:
    return DEFAULT_KEYS.tenant(key_part(tenant))


def bucket_key(name: str) -> str:
    return DEFAULT_KEYS.bucket(key_part(name))


def _count(n: Any, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be a non-negative int, not {n!r}")
    return n


# ----------------------------------------------------------------------------------------
# Tenant slots
# ----------------------------------------------------------------------------------------

# KEYS: one zset per tenant. ARGV: op (acquire|release|renew), holder, limit, ttl ms, then one
# count per key (release: -1 = all of the holder's slots). -> one count per key: granted,
# released, or still held (renew).
_SLOTS = r"""
local op, holder, limit, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + ttl
local prefix = holder .. ':'

-- ZADD score member... in chunks of 500 pairs (unpack has a stack limit)
local function zadd(key, flag, lo, hi)
  while lo <= hi do
    local args = {}
    if flag then args[1] = flag end
    for k = lo, math.min(hi, lo + 499) do
      args[#args + 1] = expiry
      args[#args + 1] = prefix .. k
    end
    redis.call('ZADD', key, unpack(args))
    lo = lo + 500
  end
end

local out = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[4 + i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)  -- slots of holders that died or stalled
  local h = 0  -- this holder's slots are prefix..1 .. prefix..h
  while redis.call('ZSCORE', key, prefix .. (h + 1)) do h = h + 1 end
  local res = 0
  if op == 'acquire' then
    res = math.max(0, math.min(n, limit - redis.call('ZCARD', key)))
    zadd(key, nil, 1, h + res)  -- the new slots, and a renewal of those held
  elseif op == 'release' then
    if n < 0 or n > h then n = h end
    for k = h - n + 1, h do redis.call('ZREM', key, prefix .. k) end
    res = n
  else
    zadd(key, 'XX', 1, h)
    res = h
  end
  out[i] = res
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', key)
  elseif op ~= 'release' and redis.call('PTTL', key) < ttl + 1000 then
    redis.call('PEXPIRE', key, ttl + 1000)  -- outlives its latest slot, goes when idle
  end
end
return out
"""


class TenantSlots:
    """At most ``limit`` vCons of one tenant in flight, over all workers and hosts.

    A *holder* is one worker (its worker id); it may hold several slots of a tenant and
    several tenants at once, and any of its threads may call. Slots expire ``ttl`` seconds
    after the holder's last acquire or renew, so a worker that died gives them back by
    itself; a worker whose batch may run longer than ``ttl`` calls :meth:`renew_many` (its
    heartbeat is a good place). ``limit`` 0 means no cap: everything is granted and Redis is
    never called. Each method is one script call, however many tenants it names.
    """

    def __init__(self, redis_client: redis.Redis, limit: int, ttl: float = 300.0):
        self.redis = redis_client
        self.limit = _count(limit, "limit")
        if not ttl > 0 or math.isinf(ttl):
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        self.ttl = float(ttl)
        self._ttl_ms = max(1, int(ttl * 1000))
        self._script = redis_client.register_script(_SLOTS)

    def acquire(self, tenant: str, holder: str, n: int = 1) -> int:
        """Take up to ``n`` slots of ``tenant``; returns how many were granted (0..n). Also
        renews the slots ``holder`` already has in this tenant."""
        return self.acquire_many({tenant: n}, holder)[tenant]

    def release(self, tenant: str, holder: str, n: int | None = 1) -> int:
        """Give back ``n`` slots (None: all that ``holder`` holds here); returns how many were
        still held (fewer when they had expired)."""
        return self.release_many({tenant: n}, holder)[tenant]

    def renew(self, tenant: str, holder: str) -> int:
        """Push the expiry of ``holder``'s slots in ``tenant`` to now + ttl; returns how many
        it still holds (fewer than it thinks: some expired and may be someone else's now)."""
        return self.renew_many([tenant], holder)[tenant]

    def acquire_many(self, wants: Mapping[str, int], holder: str) -> dict[str, int]:
        """:meth:`acquire` for each ``{tenant: n}`` in one round trip; ``{tenant: granted}``.
        Grants are partial per tenant (``min(n, free)``), independent across tenants."""
        counts = {t: _count(n) for t, n in wants.items()}
        if self.limit == 0:
            return counts
        return self._run("acquire", counts, holder)

    def release_many(self, held: Mapping[str, int | None], holder: str) -> dict[str, int]:
        """:meth:`release` for each ``{tenant: n}`` (n None: all) in one round trip."""
        counts = {t: -1 if n is None else _count(n) for t, n in held.items()}
        if self.limit == 0:
            return {t: max(n, 0) for t, n in counts.items()}
        return self._run("release", counts, holder)

    def renew_many(self, tenants: Iterable[str], holder: str) -> dict[str, int]:
        """:meth:`renew` for each tenant in one round trip; ``{tenant: still held}``."""
        counts = dict.fromkeys(tenants, 0)
        if self.limit == 0:
            return counts
        return self._run("renew", counts, holder)

    def held(self, tenant: str) -> int:
        """Slots of ``tenant`` held now by anyone, expired ones excluded (for metrics, tests)."""
        if self.limit == 0:
            return 0
        now_s, now_us = self.redis.time()
        return self.redis.zcount(tenant_key(tenant), f"({now_s * 1000 + now_us // 1000}", "+inf")

    def _run(self, op: str, counts: dict[str, int], holder: str) -> dict[str, int]:
        if not isinstance(holder, str) or not holder:
            raise ValueError(f"holder must be a non-empty str, not {holder!r}")
        if not counts:
            return {}
        tenants = list(counts)
        keys = [tenant_key(t) for t in tenants]
        res = self._script(keys=keys, args=[op, holder, self.limit, self._ttl_ms, *counts.values()])
        return {t: int(r) for t, r in zip(tenants, res)}


# ----------------------------------------------------------------------------------------
# Shared token bucket
# ----------------------------------------------------------------------------------------

# KEYS[1] the bucket hash. ARGV: op (take|peek|throttle), n, configured rate, burst,
# recover_after s, min_throttle_interval s.
# -> {wait s (0: granted), tokens, current rate, last throttled time or ''}, numbers as strings
#    (a Lua number would come back truncated to an integer)
_BUCKET = r"""
local op, n, cfg, burst = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local recover_after, min_interval = tonumber(ARGV[5]), tonumber(ARGV[6])
local floor, growth = cfg / 32, cfg * 0.1
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate', 'throttled')
local tokens, ts, rate, thr = tonumber(h[1]), tonumber(h[2]), tonumber(h[3]), tonumber(h[4])
if not tokens or not ts then tokens, ts = burst, now end
if not rate then rate = cfg end
rate = math.min(cfg, math.max(floor, rate))  -- also follows a changed configured rate
if ts > now then ts = now end  -- a failover to a server with another clock

-- refill from ts to now: flat at `rate` until the ramp may start (recover_after seconds
-- after the last throttle), then growing by `growth` per second up to cfg; exact integral
local added, a = 0, ts
if rate < cfg then
  local start = thr and (thr + recover_after) or a
  local s = math.min(now, math.max(a, start))
  added = rate * (s - a)
  a = s
  if now > a then
    local full = a + (cfg - rate) / growth
    if full >= now then
      local r2 = rate + growth * (now - a)
      added = added + (rate + r2) / 2 * (now - a)
      rate = r2
    else
      added = added + (rate + cfg) / 2 * (full - a) + cfg * (now - full)
      rate = cfg
    end
  end
else
  added = rate * (now - a)
end
tokens = math.min(burst, tokens + added)

local wait = 0
if op == 'throttle' then
  if not thr or now - thr >= min_interval then rate = math.max(floor, rate * 0.5) end
  thr = now
else
  local need = math.min(n, burst)  -- more than burst: granted when the bucket is full
  if tokens + 1e-9 >= need then
    if op == 'take' then tokens = tokens - n end  -- may go below 0: a debt later callers wait out
  else
    wait = (need - tokens) / rate
  end
end

local f = function(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[1], 'tokens', f(tokens), 'ts', f(now), 'rate', f(rate))
if thr then redis.call('HSET', KEYS[1], 'throttled', f(thr)) end
-- idle long enough to be full and recovered: the hash can go, a new one starts that way
local idle = (burst - tokens) / floor + recover_after + 10 + 60
redis.call('PEXPIRE', KEYS[1], math.ceil(idle * 1000))
return {f(wait), f(tokens), f(rate), thr and f(thr) or ''}
"""


class SharedTokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up, one bucket for every worker and
    host (state in Redis, refilled and taken by one script on the Redis clock).

    Adaptive: :meth:`throttled` (the store answered 429/503) halves the current rate, not
    below rate/32; another throttled() within ``min_throttle_interval`` seconds only
    postpones recovery, so a volley of 429s from one overload halves once, not once per
    worker. After ``recover_after`` seconds without a throttle the rate grows back by 10 %
    of ``rate`` per second up to ``rate``. ``rate`` 0 means unlimited: no Redis calls (the
    rule of CONSERVER_RATE_LIMITS too, see ``config.parse.RateLimits``).

    A request for more than ``burst`` tokens is granted once the bucket is full and leaves
    it in debt (negative tokens) that later requests wait out, so the long-run rate holds
    and a large batch is never refused for good.
    """

    def __init__(self, redis_client: redis.Redis, name: str, rate: float, burst: float, *,
                 recover_after: float = 10.0, min_throttle_interval: float = 1.0):
        for what, value in (("rate", rate), ("burst", burst), ("recover_after", recover_after),
                            ("min_throttle_interval", min_throttle_interval)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{what} must be a finite number >= 0, not {value!r}")
        if rate > 0 and not burst > 0:
            raise ValueError(f"burst must be positive, not {burst!r}")
        self.redis = redis_client
        self.name = name
        self.key = bucket_key(name)
        self.rate = float(rate)
        self.burst = float(burst)
        self.recover_after = float(recover_after)
        self.min_throttle_interval = float(min_throttle_interval)
        self._script = redis_client.register_script(_BUCKET)

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def try_acquire(self, n: float = 1.0) -> float:
        """Take ``n`` tokens if there are that many now and return 0.0; else take nothing and
        return the seconds until there will be (at the current rate)."""
        if self.unlimited:
            return 0.0
        return self._call("take", n)[0]

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there (0.0: now), taking nothing."""
        if self.unlimited:
            return 0.0
        return self._call("peek", n)[0]

    def acquire(self, n: float = 1.0, timeout: float | None = None, *, sleep: Callable[[float], None] = time.sleep,
                should_stop: Callable[[], bool] = lambda: False, clock: Callable[[], float] = time.monotonic) -> bool:
        """Wait for ``n`` tokens and take them: True. False when ``timeout`` seconds (None:
        no limit) passed or ``should_stop()`` said so first; it is asked after every sleep,
        and no sleep is longer than 0.5 s."""
        deadline = None if timeout is None else clock() + timeout
        while True:
            wait = self.try_acquire(n)
            if wait <= 0:
                return True
            if should_stop():
                return False
            step = min(wait * (1.0 + 0.05 * random.random()), _MAX_SLEEP)  # jitter: waiters out of step
            if deadline is not None:
                left = deadline - clock()
                if left <= 0:
                    return False
                step = min(step, left)
            sleep(step)

    def throttled(self) -> None:
        """The store pushed back (429, 503): every worker's share of the rate halves."""
        if not self.unlimited:
            self._call("throttle", 0.0)

    def state(self) -> dict[str, float | None]:
        """``tokens``, current ``rate``, ``throttled`` (Redis time of the last throttle, or
        None), brought up to date now (for metrics, tests)."""
        if self.unlimited:
            return {"tokens": math.inf, "rate": math.inf, "throttled": None}
        _, tokens, rate, thr = self._call("peek", 0.0)
        return {"tokens": tokens, "rate": rate, "throttled": thr}

    def _call(self, op: str, n: float) -> tuple[float, float, float, float | None]:
        if not (isinstance(n, (int, float)) and math.isfinite(n) and n >= 0):
            raise ValueError(f"n must be a finite number >= 0, not {n!r}")
        res = self._script(keys=[self.key], args=[op, repr(float(n)), repr(self.rate), repr(self.burst),
                                                  repr(self.recover_after), repr(self.min_throttle_interval)])
        wait, tokens, rate, thr = (v.decode() if isinstance(v, bytes) else v for v in res)
        return float(wait), float(tokens), float(rate), (float(thr) if thr else None)

"""The Redis queue protocol: claim, ack, defer, dead-letter, requeue. Knows nothing of stores.

Key layout (vcon-server compatible where vcon-server defines it)::

    {list}                                ingress list of uuid strings (RPUSH by producers); an item
                                          starting with '{' is a whole vCon inline (no body key)
    vcon:{uuid}                           the body, a JSON string (or a RedisJSON value: slow path)
    DLQ:{list}                            dead letters: the original items (RPUSH, as vcon-server)
    DLQ:{list}:meta:{id}                  hash: reason, error, attempts, deliveries, worker, time,
                                          list, uuid, item_id
    conserver:processing:{worker}:{list}  what one worker claimed from one list, in claim order
    conserver:inflight                    hash: processing list key -> "{worker}\\n{list}"
    conserver:deliveries                  hash: item id -> claims not yet resolved (poison counter)
    conserver:attempts                    hash: item id -> counted retries (defer)
    conserver:delayed                     zset: "{list}\\n{item}" scored by due time (epoch seconds)
    conserver:stored:{uuid}               hash: store name -> time stored (TTL; retries skip these)
    conserver:worker:{worker}             heartbeat: small JSON, expires after heartbeat_ttl
    conserver:workers                     set of registered worker ids
    conserver:claim:{worker}              the last claim's token, to make a retried claim idempotent
    conserver:leader:{name}               LeaderLock

An item's *id* is the item itself when it is 1-64 characters of [A-Za-z0-9_-] (every uuid),
otherwise ``sha1:`` + its SHA-1 (inline vCons, garbage).

Lifecycle of one item::

    {list} ──claim_batch──▶ processing ──ack──────────▶ (gone; body kept unless body_expiry_s)
                               │  ├──defer──▶ conserver:delayed ──move_due──▶ head of {list}
                               │  └──dead_letter / poison / retries_exhausted──▶ DLQ:{list}
                               └──requeue_processing / requeue_unstarted / sweep_orphans──▶ head of {list}

Every state change is one Lua script (or MULTI/EXEC), so a crash or a dropped connection at
any point leaves each item in exactly one place. redis-py retries a command whose reply was
lost, so every script is safe to run twice: ack/defer/dead-letter act only on items they
could still remove from the processing list, and a claim carries a token that makes its
re-run return the same batch instead of claiming a second one.

The scripts build some key names inside Lua (``vcon:{uuid}``, DLQ keys), so this protocol
runs on a single Redis (with Sentinel for failover), not on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from conserver.vcon import InvalidVcon, Vcon, check_uuid, parse_vcon

log = logging.getLogger("conserver.queue")

PREFIX = "conserver:"
DELIVERIES = PREFIX + "deliveries"
ATTEMPTS = PREFIX + "attempts"
DELAYED = PREFIX + "delayed"
INFLIGHT = PREFIX + "inflight"
WORKERS = PREFIX + "workers"
STORED = PREFIX + "stored:"
PROCESSING = PREFIX + "processing:"
HEARTBEAT = PREFIX + "worker:"
CLAIM_TOKEN = PREFIX + "claim:"
LEADER = PREFIX + "leader:"
BODY = "vcon:"
DLQ = "DLQ:"

_SAFE_ID = re.compile(rb"[0-9A-Za-z_\-]{1,64}\Z")
_MAX_ERROR = 2000
_STATUS = ("ok", "missing", "too_large", "wrongtype", "inline")
_NONE: frozenset[str] = frozenset()
_POLL_FIRST = 0.002  # idle polling with several lists: 2 ms, doubling up to poll_max


def item_id(item: bytes) -> str:
    """The item itself when it is a short safe token (every uuid), else ``sha1:<hex>``."""
    if _SAFE_ID.match(item):
        return item.decode()
    return "sha1:" + hashlib.sha1(item).hexdigest()


def processing_key(worker_id: str, source: str) -> str:
    return f"{PROCESSING}{worker_id}:{source}"


def dlq_key(source: str) -> str:
    return DLQ + source


def dlq_meta_key(source: str, id_: str) -> str:
    return f"{DLQ}{source}:meta:{id_}"


def make_worker_id(pid: int | None = None, started: float | None = None) -> str:
    """``host:pid:start-ms``: unique across hosts, restarts and pid reuse."""
    host = re.sub(r"[^A-Za-z0-9._\-]", "_", socket.gethostname()) or "host"
    started = time.time() if started is None else started
    return f"{host}:{os.getpid() if pid is None else pid}:{int(started * 1000)}"


def make_redis(config: Any, *, client_name: str | None = None, socket_timeout: float = 10.0,
               retries: int = 6) -> redis.Redis:
    """A client from REDIS_URL, or from Sentinel when ``config.redis_sentinels`` is set (the URL
    then still gives password, username and db). It retries a command up to ``retries`` times
    with exponential backoff and jitter (up to ~2 s apart) on connection errors and timeouts,
    so a Redis restart costs a pause, not an error; after that the caller sees the exception."""
    common: dict[str, Any] = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries),
        decode_responses=False,
        client_name=client_name,
    )
    if not config.redis_sentinels:
        return redis.Redis.from_url(config.redis_url, **common)
    from redis.sentinel import Sentinel

    url = urlsplit(config.redis_url) if config.redis_url else None
    if url is not None and url.scheme in ("redis", "rediss"):
        if url.password:
            common["password"] = unquote(url.password)
        if url.username:
            common["username"] = unquote(url.username)
        db = url.path.strip("/")
        if db.isdigit():
            common["db"] = int(db)
        if url.scheme == "rediss":
            common["ssl"] = True
    sentinel = Sentinel(list(config.redis_sentinels), socket_timeout=socket_timeout,
                        socket_connect_timeout=5.0,
                        sentinel_kwargs={"socket_timeout": 2.0, "socket_connect_timeout": 2.0})
    return sentinel.master_for(config.redis_sentinel_master, **common)


@dataclass(slots=True)
class Claim:
    """One claimed list item, with its body fetched in the same round trip."""

    item: bytes  # the raw list element
    source: str  # the ingress list it came from
    uuid: str  # the item decoded, the uuid of an inline vCon, or '' when unknowable
    body: bytes | None  # vcon:{uuid}; None when missing, too large, or inline (the item is the body)
    deliveries: int  # times claimed without being resolved, this claim included
    item_id: str = ""
    attempts: int = 0  # counted retries so far (defer)
    done: frozenset[str] = field(default_factory=frozenset)  # stores that already hold this vCon
    status: str = "ok"  # ok, missing, too_large, wrongtype (not a string value), inline
    size: int = 0  # the body's length in Redis

    @property
    def inline(self) -> bool:
        return self.status == "inline"


# ----------------------------------------------------------------------------------------
# Lua. Shared helpers first; every script is prefixed with them.
# ----------------------------------------------------------------------------------------

_LUA_COMMON = r"""
local DELIVERIES, ATTEMPTS, STORED, INFLIGHT = '@DELIVERIES@', '@ATTEMPTS@', '@STORED@', '@INFLIGHT@'
local HEARTBEAT, WORKERS, CLAIM_TOKEN = '@HEARTBEAT@', '@WORKERS@', '@CLAIM_TOKEN@'

local function item_id(item)
  if #item >= 1 and #item <= 64 and not string.find(item, '[^%w_%-]') then return item end
  return 'sha1:' .. redis.sha1hex(item)
end

-- RPUSH in chunks (unpack has a stack limit)
local function push_back(dst, items)
  for lo = 1, #items, 1000 do
    redis.call('RPUSH', dst, unpack(items, lo, math.min(#items, lo + 999)))
  end
end

-- put items at the head of dst so that items[1] is first again
local function push_front(dst, items)
  local hi = #items
  while hi >= 1 do
    local lo = math.max(1, hi - 999)
    local chunk = {}
    for i = hi, lo, -1 do chunk[#chunk + 1] = items[i] end
    redis.call('LPUSH', dst, unpack(chunk))
    hi = lo - 1
  end
end

-- cmd [key] args..., in chunks, results concatenated (HMGET, MGET)
local function mcall(cmd, key, args)
  local out = {}
  for lo = 1, #args, 1000 do
    local hi = math.min(#args, lo + 999)
    local part
    if key then part = redis.call(cmd, key, unpack(args, lo, hi)) else part = redis.call(cmd, unpack(args, lo, hi)) end
    for j = 1, #part do out[lo + j - 1] = part[j] end
  end
  return out
end

local function uuid_of(item)
  if string.byte(item, 1) ~= 123 then return item end
  local ok, obj = pcall(cjson.decode, item)
  if ok and type(obj) == 'table' and type(obj.uuid) == 'string' then return obj.uuid end
  return ''
end

-- the dead-letter itself: DLQ:{src} gets the original item, a meta hash sits beside it
local function bury(src, item, id, reason, err, attempts, deliveries, worker, now)
  redis.call('RPUSH', 'DLQ:' .. src, item)
  local meta = 'DLQ:' .. src .. ':meta:' .. id
  redis.call('DEL', meta)
  redis.call('HSET', meta, 'reason', reason, 'error', err, 'attempts', attempts,
             'deliveries', deliveries, 'worker', worker, 'time', now, 'list', src,
             'uuid', uuid_of(item), 'item_id', id)
  redis.call('HDEL', DELIVERIES, id)
  redis.call('HDEL', ATTEMPTS, id)
end

-- move a whole processing list back to the head of its source, in claim order
local function move_all(proc, src)
  local items = redis.call('LRANGE', proc, 0, -1)
  push_front(src, items)
  redis.call('DEL', proc)
  return #items
end
"""

# KEYS[1] claim-token key, KEYS[1+i] ingress list i, KEYS[1+n+i] its processing list (i = 1..n)
# ARGV: n, batch, max_deliveries, max_bytes, worker, now (ISO), token, preference "2,1,3",
#       '1' to report which lists are non-empty (weighted choice), max bytes of bodies per batch
# -> {moved, list index, non-empty flags, {claim rows, flat}, {poisoned {item, deliveries}}}
#    claim row (7 values): item, body|nil, deliveries, status code, size, attempts, "store,store" done
# Hot path: a handful of calls per batch (HMGET, MGET, HSET), none per item in the common case.
_CLAIM = r"""
local n, batch, maxd, maxb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local worker, now, token, maxbatch = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[10])

-- counters, attempts and bodies of a list of items, in as few calls as possible
local function lookup(items)
  local ids, keys = {}, {}
  for i, item in ipairs(items) do
    ids[i] = item_id(item)
    keys[i] = string.byte(item, 1) == 123 and '' or 'vcon:' .. item
  end
  return ids, mcall('HMGET', DELIVERIES, ids), mcall('HMGET', ATTEMPTS, ids), mcall('MGET', nil, keys)
end

-- append one claim row (7 values) to out; returns the body's size
local function row(out, item, id, d, att, body)
  local k, code, size = #out, 0, 0
  local done = ''
  if string.byte(item, 1) == 123 then
    code, size, body = 4, #item, false
  else
    -- store marks can only exist after an earlier delivery (a crash, or a defer that left att)
    if id == item and (d > 1 or att) then
      done = table.concat(redis.call('HKEYS', STORED .. string.lower(item)), ',')
    end
    if not body then  -- MGET gives nil for a missing key and for a non-string value alike
      code = redis.call('EXISTS', 'vcon:' .. item) == 1 and 3 or 1
    elseif maxb > 0 and #body > maxb then
      code, size, body = 2, #body, false
    else
      size = #body
    end
  end
  out[k + 1], out[k + 2], out[k + 3], out[k + 4] = item, body, d, code
  out[k + 5], out[k + 6], out[k + 7] = size, tonumber(att or '0'), done
  return size
end

-- a re-run of a claim whose reply was lost: hand back the same batch
local prev = redis.call('GET', KEYS[1])
if prev then
  local tok, idx, cnt = string.match(prev, '^(.-)|(%d+)|(%d+)$')
  if tok == token then
    idx, cnt = tonumber(idx), tonumber(cnt)
    local items = redis.call('LRANGE', KEYS[1 + n + idx], -cnt, -1)
    local ids, dl, at, bodies = lookup(items)
    local out = {}
    for i, item in ipairs(items) do row(out, item, ids[i], tonumber(dl[i] or '1'), at[i], bodies[i]) end
    return {#items, idx, '', out, {}}
  end
end

local flags = ''
if ARGV[9] == '1' then
  for i = 1, n do flags = flags .. (redis.call('LLEN', KEYS[1 + i]) > 0 and '1' or '0') end
end
for idx in string.gmatch(ARGV[8], '%d+') do
  idx = tonumber(idx)
  local src, proc = KEYS[1 + idx], KEYS[1 + n + idx]
  local items = redis.call('LRANGE', src, 0, batch - 1)
  if #items > 0 then
    local ids, dl, at, bodies = lookup(items)
    local kept, out, poisoned, counts, sets, taken, bytes = {}, {}, {}, {}, {}, 0, 0
    for i, item in ipairs(items) do
      taken = i
      local id = ids[i]
      local d = (counts[id] or tonumber(dl[i] or '0')) + 1
      counts[id] = d
      if d > maxd then
        bury(src, item, id, 'poison', 'claimed ' .. d .. ' times and never acked, deferred or dead-lettered',
             at[i] or '0', d, worker, now)
        poisoned[#poisoned + 1] = {item, d}
      else
        kept[#kept + 1] = item
        sets[#sets + 1] = id
        sets[#sets + 1] = d
        bytes = bytes + row(out, item, id, d, at[i], bodies[i])
        if bytes >= maxbatch then break end  -- a reply of bounded size, however big the bodies
      end
    end
    redis.call('LTRIM', src, taken, -1)
    if #kept > 0 then
      for lo = 1, #sets, 1000 do redis.call('HSET', DELIVERIES, unpack(sets, lo, math.min(#sets, lo + 999))) end
      push_back(proc, kept)
      redis.call('HSET', INFLIGHT, proc, worker .. '\n' .. src)
      redis.call('SET', KEYS[1], token .. '|' .. idx .. '|' .. #kept, 'EX', 86400)
    end
    return {taken, idx, flags, out, poisoned}
  end
end
return {0, 0, flags, {}, {}}
"""

# KEYS: processing lists, one per group. ARGV: body expiry (s), then per group:
# count, then count x (item, id, uuid for conserver:stored or '')
_ACK = r"""
local expiry, pos, acked, ids, marks = tonumber(ARGV[1]), 2, 0, {}, {}
for g = 1, #KEYS do
  local proc = KEYS[g]
  local cnt = tonumber(ARGV[pos])
  pos = pos + 1
  local whole = false
  if cnt > 0 and redis.call('LLEN', proc) == cnt then
    whole = true
    local cur = redis.call('LRANGE', proc, 0, -1)
    for i = 1, cnt do
      if cur[i] ~= ARGV[pos + (i - 1) * 3] then whole = false break end
    end
    if whole then redis.call('DEL', proc) end
  end
  for i = 1, cnt do
    local item, id, su = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
    pos = pos + 3
    if whole or redis.call('LREM', proc, 1, item) > 0 then
      acked = acked + 1
      ids[#ids + 1] = id
      if su ~= '' then
        marks[#marks + 1] = STORED .. su
        if expiry > 0 and id == item then redis.call('EXPIRE', 'vcon:' .. item, expiry) end
      end
    end
  end
end
for lo = 1, #ids, 1000 do
  local hi = math.min(#ids, lo + 999)
  redis.call('HDEL', DELIVERIES, unpack(ids, lo, hi))
  redis.call('HDEL', ATTEMPTS, unpack(ids, lo, hi))
end
for lo = 1, #marks, 1000 do redis.call('DEL', unpack(marks, lo, math.min(#marks, lo + 999))) end
return acked
"""

# KEYS: (processing list, source list) per group. ARGV per group: count, then count x (item, id)
_REQUEUE_CLAIMS = r"""
local pos, moved = 1, 0
for g = 1, #KEYS / 2 do
  local proc, src = KEYS[2 * g - 1], KEYS[2 * g]
  local cnt = tonumber(ARGV[pos])
  pos = pos + 1
  local back = {}
  for i = 1, cnt do
    local item, id = ARGV[pos], ARGV[pos + 1]
    pos = pos + 2
    if redis.call('LREM', proc, 1, item) > 0 then
      back[#back + 1] = item
      -- never started: this claim does not count as a delivery
      if redis.call('HINCRBY', DELIVERIES, id, -1) <= 0 then redis.call('HDEL', DELIVERIES, id) end
    end
  end
  push_front(src, back)
  moved = moved + #back
end
return moved
"""

# ARGV: worker id, '1' = only when its heartbeat is gone (the orphan sweep)
# Moves every processing list of that worker back and forgets the worker.
_REQUEUE_WORKER = r"""
local worker = ARGV[1]
if ARGV[2] == '1' and redis.call('EXISTS', HEARTBEAT .. worker) == 1 then return -1 end
local reg = redis.call('HGETALL', INFLIGHT)
local moved = 0
for i = 1, #reg, 2 do
  local v = reg[i + 1]
  local nl = string.find(v, '\n', 1, true)
  if nl and string.sub(v, 1, nl - 1) == worker then
    moved = moved + move_all(reg[i], string.sub(v, nl + 1))
    redis.call('HDEL', INFLIGHT, reg[i])
  end
end
redis.call('SREM', WORKERS, worker)
redis.call('DEL', HEARTBEAT .. worker, CLAIM_TOKEN .. worker)
return moved
"""

# KEYS[1] processing list, KEYS[2] source list. ARGV[1] worker id (found by SCAN, not registered;
# registered by now means a claim made it since: the registry path owns it)
_REQUEUE_LIST = r"""
if redis.call('HEXISTS', INFLIGHT, KEYS[1]) == 1 then return -1 end
if redis.call('EXISTS', HEARTBEAT .. ARGV[1]) == 1 then return -1 end
local moved = move_all(KEYS[1], KEYS[2])
redis.call('HDEL', INFLIGHT, KEYS[1])
return moved
"""

# KEYS[1] processing list. ARGV: item, id, source, reason, error, attempts ('' = the counter), worker, now
_DEAD_LETTER = r"""
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local attempts = ARGV[6]
if attempts == '' then attempts = redis.call('HGET', ATTEMPTS, ARGV[2]) or '0' end
local d = redis.call('HGET', DELIVERIES, ARGV[2]) or '0'
bury(ARGV[3], ARGV[1], ARGV[2], ARGV[4], ARGV[5], attempts, d, ARGV[7], ARGV[8])
return 1
"""

# KEYS[1] processing list, KEYS[2] delayed zset.
# ARGV: item, id, source, count ('1'/'0'), max_retries, backoff, backoff_max, jitter (0..1),
#       fixed delay (<0: computed), error, worker, now (ISO)
# -> {1, attempts, due} deferred; {0, attempts} dead-lettered (retries_exhausted); {-1, 0} not ours
_DEFER = r"""
local item, id, src = ARGV[1], ARGV[2], ARGV[3]
if redis.call('LREM', KEYS[1], 1, item) == 0 then return {-1, 0} end
local n
if ARGV[4] == '1' then
  n = redis.call('HINCRBY', ATTEMPTS, id, 1)
  if n > tonumber(ARGV[5]) then
    bury(src, item, id, 'retries_exhausted', ARGV[10], n, redis.call('HGET', DELIVERIES, id) or '0', ARGV[11], ARGV[12])
    return {0, n}
  end
else
  -- not counted, but the field says "deferred before": the next claim then looks up store marks
  redis.call('HSETNX', ATTEMPTS, id, 0)
  n = tonumber(redis.call('HGET', ATTEMPTS, id))
end
local delay = tonumber(ARGV[9])
if delay < 0 then
  delay = math.min(tonumber(ARGV[7]), tonumber(ARGV[6]) * 2 ^ math.max(n - 1, 0)) * (0.5 + 0.5 * tonumber(ARGV[8]))
end
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1e6 + delay
redis.call('ZADD', KEYS[2], due, src .. '\n' .. item)
-- resolved for now: the next claim is a new delivery, not a sign of a crash
redis.call('HDEL', DELIVERIES, id)
return {1, n, tostring(due)}
"""

# KEYS[1] delayed zset. ARGV: now ('' = Redis time), limit. Due items go to the head of their list.
_MOVE_DUE = r"""
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for i = #due, 1, -1 do
  local m = due[i]
  local nl = string.find(m, '\n', 1, true)
  if nl then
    redis.call('LPUSH', string.sub(m, 1, nl - 1), string.sub(m, nl + 1))
  else
    redis.call('RPUSH', KEYS[1] .. ':unreadable', m)
  end
  redis.call('ZREM', KEYS[1], m)
end
return #due
"""

# KEYS[1] DLQ list, KEYS[2] target list ('' = purge). ARGV[1] how many. Oldest first.
_DLQ_DRAIN = r"""
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return 0 end
redis.call('LTRIM', KEYS[1], #items, -1)
if KEYS[2] ~= '' then push_back(KEYS[2], items) end
for _, item in ipairs(items) do
  local id = item_id(item)
  redis.call('DEL', KEYS[1] .. ':meta:' .. id)
  redis.call('HDEL', DELIVERIES, id)
  redis.call('HDEL', ATTEMPTS, id)
end
return #items
"""

# KEYS[1] DLQ list, KEYS[2] target list. ARGV[1] item. Every copy leaves the DLQ, one goes back.
_DLQ_REQUEUE_ONE = r"""
local r = redis.call('LREM', KEYS[1], 0, ARGV[1])
if r == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
local id = item_id(ARGV[1])
redis.call('DEL', KEYS[1] .. ':meta:' .. id)
redis.call('HDEL', DELIVERIES, id)
redis.call('HDEL', ATTEMPTS, id)
return 1
"""

_LOCK_ACQUIRE = r"""
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_LOCK_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _lua(body: str, common: bool = True) -> str:
    text = (_LUA_COMMON + body) if common else body
    for name, value in (("DELIVERIES", DELIVERIES), ("ATTEMPTS", ATTEMPTS), ("STORED", STORED),
                        ("INFLIGHT", INFLIGHT), ("HEARTBEAT", HEARTBEAT), ("WORKERS", WORKERS),
                        ("CLAIM_TOKEN", CLAIM_TOKEN)):
        text = text.replace(f"@{name}@", value)
    return text


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _error_text(error: BaseException | str | None) -> str:
    if error is None:
        return ""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."


def _mark_uuid(uuid: str) -> str:
    """The uuid as used in conserver:stored:{uuid} (lowercase), or '' when it is not a safe token."""
    return uuid.lower() if uuid and _SAFE_ID.match(uuid.encode(errors="replace")) else ""


def _label(text: str) -> str:
    """A uuid for a log line: control characters and non-ASCII escaped, at most 100 characters."""
    return ascii(text)[1:-1][:100]


def _claim_label(claim: Claim) -> str:
    return _label(claim.uuid or claim.item_id)


def _log_error(error: BaseException | str | None) -> str:
    return _error_text(error)[:300].replace("\n", " ")


def _s(value: bytes | str | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


class WorkQueue:
    """One worker's view of the queue (also used by the supervisor, the scheduler and the CLI).

    ``ingress_lists`` are in priority order; with ``weights`` (list -> weight) the source of
    each batch is chosen by smooth weighted round robin over the non-empty lists instead.
    """

    def __init__(self, redis_client: redis.Redis, ingress_lists: Iterable[str], worker_id: str | None = None, *,
                 batch_size: int = 50, max_deliveries: int = 5, max_vcon_bytes: int = 16 * 1024 * 1024,
                 max_retries: int = 3, retry_backoff: float = 2.0, retry_backoff_max: float = 300.0,
                 heartbeat_ttl: float = 30.0, weights: Mapping[str, int] | None = None,
                 body_expiry_s: int = 0, stored_ttl: int = 7 * 86400, poll_max: float = 0.05,
                 max_batch_bytes: int = 32 * 1024 * 1024):
        self.redis = redis_client
        self.ingress_lists = tuple(ingress_lists)
        if not self.ingress_lists:
            raise ValueError("at least one ingress list is needed")
        self.worker_id = worker_id or make_worker_id()
        self.batch_size = batch_size
        self.max_deliveries = max_deliveries
        self.max_vcon_bytes = max_vcon_bytes
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.heartbeat_ttl = heartbeat_ttl
        self.body_expiry_s = int(body_expiry_s)
        self.stored_ttl = int(stored_ttl)
        self.poll_max = poll_max
        self.max_batch_bytes = max_batch_bytes
        self.weights = [int((weights or {}).get(name, 1)) for name in self.ingress_lists] if weights else None
        self._current = [0] * len(self.ingress_lists)  # smooth weighted round robin state
        self._rng = random.Random()
        self._token_base = f"{os.getpid()}.{self._rng.getrandbits(48):x}."
        self._seq = 0
        self._beaten = False
        timeout = redis_client.connection_pool.connection_kwargs.get("socket_timeout")
        self._block_max = min(5.0, timeout / 2) if timeout else 5.0

        n = len(self.ingress_lists)
        self._claim_keys = [CLAIM_TOKEN + self.worker_id, *self.ingress_lists,
                            *(processing_key(self.worker_id, s) for s in self.ingress_lists)]
        self._claim_args = [n, batch_size, max_deliveries, max_vcon_bytes, self.worker_id]
        self._default_order = ",".join(str(i + 1) for i in range(n))
        reg = redis_client.register_script
        self._claim = reg(_lua(_CLAIM))
        self._ack = reg(_lua(_ACK))
        self._requeue_claims = reg(_lua(_REQUEUE_CLAIMS))
        self._requeue_worker = reg(_lua(_REQUEUE_WORKER))
        self._requeue_list = reg(_lua(_REQUEUE_LIST))
        self._dead_letter = reg(_lua(_DEAD_LETTER))
        self._defer = reg(_lua(_DEFER))
        self._move_due = reg(_lua(_MOVE_DUE))
        self._dlq_drain = reg(_lua(_DLQ_DRAIN))
        self._dlq_requeue_one = reg(_lua(_DLQ_REQUEUE_ONE))

    @classmethod
    def from_config(cls, redis_client: redis.Redis, config: Any, pool: Any = None,
                    worker_id: str | None = None, **overrides: Any) -> "WorkQueue":
        """The queue for ``pool`` (a PoolConfig; None = the top-level ingress lists)."""
        kwargs: dict[str, Any] = dict(
            batch_size=config.batch_size, max_deliveries=config.max_deliveries,
            max_vcon_bytes=config.max_vcon_bytes, max_retries=config.max_retries,
            retry_backoff=config.retry_backoff, retry_backoff_max=config.retry_backoff_max,
            heartbeat_ttl=config.worker_heartbeat_ttl,
            weights=dict(pool.weights) if pool is not None and pool.weights else None,
        )
        kwargs.update(overrides)
        lists = pool.ingress_lists if pool is not None else config.ingress_lists
        return cls(redis_client, lists, worker_id, **kwargs)

    # ------------------------------------------------------------------ claiming

    def claim_batch(self, timeout: float = 0.0, max_items: int | None = None) -> list[Claim]:
        """Move up to ``batch_size`` (or ``max_items``) items from one ingress list into this
        worker's processing list and return them with their bodies. Blocks at most
        ``timeout`` seconds when every list is empty, then returns []. Items claimed more
        than ``max_deliveries`` times are dead-lettered (reason ``poison``), not returned.
        Beats once first if this queue has never beaten (a claim needs a live heartbeat)."""
        if not self._beaten:
            self.beat()
        limit = self.batch_size if max_items is None else max(0, min(max_items, self.batch_size))
        if limit == 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        pause = _POLL_FIRST
        while True:
            claims, moved = self._claim_once(limit)
            if claims:
                return claims
            if moved:  # all of them were poison: there may be more right behind
                continue
            left = deadline - time.monotonic()
            if left <= 0.001:
                return []
            if len(self.ingress_lists) == 1:
                self._wait(min(left, self._block_max))
            else:
                self._wait(min(left, pause))
                pause = min(pause * 2, self.poll_max)

    def _wait(self, seconds: float) -> None:
        """Block until the first list is non-empty or ``seconds`` passed, without taking
        anything: BLMOVE of a list onto itself, right to right, leaves it as it was."""
        if seconds < 0.002:
            time.sleep(max(seconds, 0.0))
            return
        first = self.ingress_lists[0]
        self.redis.blmove(first, first, round(seconds, 3), "RIGHT", "RIGHT")

    def _claim_once(self, limit: int) -> tuple[list[Claim], int]:
        self._seq += 1
        weighted = self.weights is not None
        args = [*self._claim_args, _now_iso(), f"{self._token_base}{self._seq}",
                self._preference() if weighted else self._default_order, "1" if weighted else "0",
                self.max_batch_bytes]
        args[1] = limit
        moved, idx, flags, rows, poisoned = self._claim(keys=self._claim_keys, args=args)
        if not moved:
            return [], 0
        source = self.ingress_lists[idx - 1]
        if weighted and flags:
            self._advance(flags, idx - 1)
        for item, deliveries in poisoned:
            log.warning("dead-lettered %s from %s: reason=poison (claimed %d times, never resolved)",
                        item_id(item) if item.startswith(b"{") else _label(_s(item)), source, deliveries)
        make = self._make_claim
        claims = [make(rows, i, source) for i in range(0, len(rows), 7)]
        slow = [c for c in claims if c.status == "wrongtype" or (c.inline and c.uuid)]
        if slow:
            self._slow_path(slow)
        return claims, moved

    def _make_claim(self, rows: list, i: int, source: str) -> Claim:
        item, body, deliveries, code, size, attempts, done = rows[i:i + 7]
        if code == 4:  # inline: the item is the vCon
            uuid = ""
            try:
                data = orjson.loads(item)
                if type(data) is dict and type(data.get("uuid")) is str:
                    uuid = data["uuid"]
            except orjson.JSONDecodeError:
                pass
            return Claim(item, source, uuid, None, deliveries, item_id(item), attempts, frozenset(), "inline", size)
        iid = item_id(item)
        uuid = iid if iid[0:5] != "sha1:" else item.decode(errors="replace")
        return Claim(item, source, uuid, body, deliveries, iid, attempts,
                     frozenset(done.decode().split(",")) if done else _NONE, _STATUS[code], size)

    def _slow_path(self, claims: list[Claim]) -> None:
        """Bodies stored as RedisJSON values (JSON.GET), and the store marks of inline vCons."""
        for c in claims:
            if c.status == "wrongtype":
                try:
                    body = self.redis.execute_command("JSON.GET", BODY.encode() + c.item)
                except redis.ResponseError as exc:  # no RedisJSON module, or a hash/list/... there
                    log.debug("vcon:%s is not a string and JSON.GET failed: %s", c.uuid, exc)
                    continue
                if body is None:
                    c.status = "missing"
                    continue
                if isinstance(body, str):
                    body = body.encode()
                c.size = len(body)
                if 0 < self.max_vcon_bytes < len(body):
                    c.status = "too_large"
                else:
                    c.body, c.status = body, "ok"
            elif c.inline:
                c.done = frozenset(self.stores_done([c.uuid]).get(c.uuid, ()))

    def parse(self, claim: Claim) -> Vcon:
        """The claim's vCon, validated, or :class:`InvalidVcon` (``missing_body`` when the
        vcon:{uuid} key is gone or holds something other than JSON)."""
        if claim.inline:
            return parse_vcon(claim.item, None, self.max_vcon_bytes)
        check_uuid(claim.uuid, "list item")  # unsafe or bad before anything is derived from it
        if claim.status == "too_large":
            raise InvalidVcon("too_large",
                              f"vcon:{claim.uuid} is {claim.size} bytes, the limit is {self.max_vcon_bytes}")
        if claim.body is None:
            what = "is not a JSON string" if claim.status == "wrongtype" else "is missing or expired"
            raise InvalidVcon("missing_body", f"vcon:{claim.uuid} {what}")
        return parse_vcon(claim.body, claim.uuid, self.max_vcon_bytes)

    # smooth weighted round robin (nginx): among the non-empty lists, add each weight to its
    # counter, take the largest, subtract the total from it. The script gets the lists in
    # order of counter + weight and takes the first non-empty one, which is that largest.
    def _preference(self) -> str:
        w, cur = self.weights, self._current
        order = sorted(range(len(w)), key=lambda i: (-(cur[i] + w[i]), i))
        return ",".join(str(i + 1) for i in order)

    def _advance(self, flags: bytes, chosen: int) -> None:
        w, cur = self.weights, self._current
        total = 0
        for i, flag in enumerate(flags):
            if flag == 49 or i == chosen:  # b"1"
                cur[i] += w[i]
                total += w[i]
        cur[chosen] -= total

    # ------------------------------------------------------------------ resolving

    def ack(self, claims: Iterable[Claim]) -> int:
        """Done: remove from the processing list(s) and clear the counters and store marks.
        One round trip. Returns how many were still ours to ack."""
        groups: dict[str, list[Claim]] = {}
        for c in claims:
            groups.setdefault(c.source, []).append(c)
        if not groups:
            return 0
        args: list[Any] = [self.body_expiry_s]
        for group in groups.values():
            args.append(len(group))
            for c in group:
                args += (c.item, c.item_id, _mark_uuid(c.uuid))
        keys = [processing_key(self.worker_id, src) for src in groups]
        acked = self._ack(keys=keys, args=args)
        expected = sum(map(len, groups.values()))
        if acked != expected:
            log.warning("acked %d of %d claims; the rest had left the processing list (requeued by a sweep?)",
                        acked, expected)
        return acked

    def requeue_unstarted(self, claims: Iterable[Claim]) -> int:
        """Give back claims that were never started (a draining worker): to the head of their
        lists in claim order, and not counted as deliveries. Returns how many moved."""
        groups: dict[str, list[Claim]] = {}
        for c in claims:
            groups.setdefault(c.source, []).append(c)
        if not groups:
            return 0
        keys: list[str] = []
        args: list[Any] = []
        for src, group in groups.items():
            keys += (processing_key(self.worker_id, src), src)
            args.append(len(group))
            for c in group:
                args += (c.item, c.item_id)
        return self._requeue_claims(keys=keys, args=args)

    def dead_letter(self, claim: Claim, reason: str, error: BaseException | str | None = None, *,
                    attempts: int | None = None) -> bool:
        """Move the claim to DLQ:{list} with a meta hash. False if it was no longer ours."""
        ok = self._dead_letter(
            keys=[processing_key(self.worker_id, claim.source)],
            args=[claim.item, claim.item_id, claim.source, reason, _error_text(error),
                  "" if attempts is None else attempts, self.worker_id, _now_iso()])
        if ok:
            log.warning("dead-lettered %s from %s: reason=%s %s", _claim_label(claim), claim.source, reason,
                        _log_error(error))
        else:
            log.info("not dead-lettering %s: no longer in this worker's processing list", _claim_label(claim))
        return bool(ok)

    def defer(self, claim: Claim, error: BaseException | str | None = None, *, count_attempt: bool = True,
              delay: float | None = None) -> bool:
        """Retry later with exponential backoff and jitter (or after ``delay`` seconds). After
        ``max_retries`` counted attempts the claim is dead-lettered (``retries_exhausted``) and
        False is returned. ``count_attempt=False`` (a store's circuit breaker is open) defers
        without using up a retry."""
        res = self._defer(
            keys=[processing_key(self.worker_id, claim.source), DELAYED],
            args=[claim.item, claim.item_id, claim.source, "1" if count_attempt else "0", self.max_retries,
                  self.retry_backoff, self.retry_backoff_max, self._rng.random(),
                  -1 if delay is None else max(0.0, delay), _error_text(error), self.worker_id, _now_iso()])
        status, attempts = res[0], res[1]
        if status == 0:
            log.warning("dead-lettered %s from %s: reason=retries_exhausted after %d attempts: %s",
                        _claim_label(claim), claim.source, attempts, _log_error(error))
            return False
        if status < 0:
            log.info("not deferring %s: no longer in this worker's processing list", _claim_label(claim))
        return True

    # ------------------------------------------------------------------ recovery and scheduling

    def requeue_processing(self, worker_id: str | None = None) -> int:
        """Everything ``worker_id`` (default: this one) had claimed goes back to the head of its
        lists in claim order, and the worker is forgotten (heartbeat, registry). For the
        supervisor after reaping a dead worker, and for a clean exit."""
        worker_id = worker_id or self.worker_id
        if worker_id == self.worker_id:
            self._beaten = False  # the heartbeat is gone too: the next claim beats first
        return self._requeue_worker(args=[worker_id, "0"])

    def sweep_orphans(self, *, scan: bool = False) -> int:
        """Requeue the claims of every worker whose heartbeat expired. With ``scan`` also look
        for processing lists missing from the registry (SCAN: costly on a big keyspace, so
        run it rarely). Safe to run concurrently with itself. Returns how many items moved."""
        inflight = self.redis.hgetall(INFLIGHT)
        owners = {_s(v).partition("\n")[0] for v in inflight.values()}
        candidates = sorted(owners | {_s(w) for w in self.redis.smembers(WORKERS)})
        moved = 0
        if candidates:
            pipe = self.redis.pipeline(transaction=False)
            for wid in candidates:
                pipe.exists(HEARTBEAT + wid)
            for wid, alive in zip(candidates, pipe.execute()):
                if not alive:
                    n = self._requeue_worker(args=[wid, "1"])
                    if n > 0:
                        log.warning("requeued %d vCons of worker %s (heartbeat expired)", n, wid)
                        moved += n
        if scan:
            known = set(inflight)
            for key in self.redis.scan_iter(match=_glob_escape(PROCESSING) + "*", count=1000):
                if key in known:
                    continue
                parsed = self._parse_processing_key(_s(key))
                if parsed is None:
                    continue
                wid, src = parsed
                n = self._requeue_list(keys=[key, src], args=[wid])
                if n > 0:
                    log.warning("requeued %d vCons from unregistered %s", n, _s(key))
                    moved += n
        return moved

    def _parse_processing_key(self, key: str) -> tuple[str, str] | None:
        """(worker id, list) of a processing key. Both may hold ':'; prefer a split whose list
        is one of ours, else the host:pid:ms worker id shape."""
        rest = key[len(PROCESSING):]
        parts = rest.split(":")
        splits = [(":".join(parts[:i]), ":".join(parts[i:])) for i in range(1, len(parts))]
        for wid, src in splits:
            if src in self.ingress_lists:
                return wid, src
        if len(parts) > 3:
            return ":".join(parts[:3]), ":".join(parts[3:])
        return splits[-1] if splits else None

    def move_due(self, now: float | None = None, limit: int = 500) -> int:
        """Move delayed items that are due to the head of their lists (leader only)."""
        return self._move_due(keys=[DELAYED], args=["" if now is None else repr(float(now)), limit])

    # ------------------------------------------------------------------ heartbeats

    def beat(self, info: Mapping[str, Any] | None = None) -> None:
        """Refresh this worker's heartbeat (TTL ``heartbeat_ttl``) and registration. Beat at
        least every ttl/3: a worker without a heartbeat has its claims swept back."""
        payload = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), **(info or {})}
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(HEARTBEAT + self.worker_id, orjson.dumps(payload, default=str), px=int(self.heartbeat_ttl * 1000))
        pipe.sadd(WORKERS, self.worker_id)
        pipe.execute()
        self._beaten = True

    def retire(self) -> int:
        """A clean exit: whatever is still claimed goes back, the heartbeat and registration go."""
        return self.requeue_processing(self.worker_id)

    def workers(self) -> dict[str, dict | None]:
        """Registered workers and their heartbeat info (None: expired)."""
        ids = sorted(_s(w) for w in self.redis.smembers(WORKERS))
        if not ids:
            return {}
        values = self.redis.mget([HEARTBEAT + w for w in ids])
        return {w: (orjson.loads(v) if v else None) for w, v in zip(ids, values)}

    # ------------------------------------------------------------------ per-store completion

    def stores_done(self, uuids: Iterable[str]) -> dict[str, set[str]]:
        uuids = list(uuids)
        pipe = self.redis.pipeline(transaction=False)
        for u in uuids:
            pipe.hkeys(STORED + u.lower())
        return {u: {_s(s) for s in stores} for u, stores in zip(uuids, pipe.execute())}

    def mark_stored(self, uuid_to_stores: Mapping[str, Iterable[str]]) -> None:
        now = repr(time.time())
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for u, stores in uuid_to_stores.items():
            stores = list(stores)
            if not stores:
                continue
            key = STORED + u.lower()
            pipe.hset(key, mapping={s: now for s in stores})
            pipe.expire(key, self.stored_ttl)
            n += 1
        if n:
            pipe.execute()

    # ------------------------------------------------------------------ inspection and admin

    def depths(self) -> dict[str, Any]:
        """Lengths: each ingress list, all processing lists, the delayed set, each DLQ."""
        pipe = self.redis.pipeline(transaction=False)
        for name in self.ingress_lists:
            pipe.llen(name)
        for name in self.ingress_lists:
            pipe.llen(dlq_key(name))
        pipe.zcard(DELAYED)
        pipe.hkeys(INFLIGHT)
        pipe.scard(WORKERS)
        res = pipe.execute()
        n = len(self.ingress_lists)
        proc_keys = res[2 * n + 1]
        processing = 0
        if proc_keys:
            pipe = self.redis.pipeline(transaction=False)
            for key in proc_keys:
                pipe.llen(key)
            processing = sum(pipe.execute())
        return {
            "lists": dict(zip(self.ingress_lists, res[:n])),
            "processing": processing,
            "delayed": res[2 * n],
            "dlq": dict(zip(self.ingress_lists, res[n:2 * n])),
            "workers": res[2 * n + 2],
        }

    def enqueue(self, list_name: str, vcons: Iterable[tuple[str, bytes | str | dict]]) -> int:
        """Store bodies at vcon:{uuid} and RPUSH the uuids, all in one MULTI/EXEC (as a
        vcon-server producer would, but atomically). Returns how many were pushed."""
        bodies: dict[str, bytes] = {}
        uuids: list[str] = []
        for uuid, body in vcons:
            if not _SAFE_ID.match(uuid.encode(errors="replace")):
                check_uuid(uuid)  # names the problem
                raise InvalidVcon("unsafe_uuid", f"{uuid!r} cannot be a key")
            if isinstance(body, dict):
                body = orjson.dumps(body)
            elif isinstance(body, str):
                body = body.encode()
            bodies[BODY + uuid] = body
            uuids.append(uuid)
        if not uuids:
            return 0
        pipe = self.redis.pipeline(transaction=True)
        items = list(bodies.items())
        for lo in range(0, len(items), 1000):
            pipe.mset(dict(items[lo:lo + 1000]))
        for lo in range(0, len(uuids), 1000):
            pipe.rpush(list_name, *uuids[lo:lo + 1000])
        pipe.execute()
        return len(uuids)

    def dlq_list(self, list_name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters, oldest first, with their metadata."""
        out: list[dict[str, Any]] = []
        for name in self._lists(list_name):
            if len(out) >= limit:
                break
            items = self.redis.lrange(dlq_key(name), 0, limit - len(out) - 1)
            if not items:
                continue
            ids = [item_id(i) for i in items]
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(dlq_meta_key(name, i))
            for item, iid, meta in zip(items, ids, pipe.execute()):
                out.append(self._dlq_entry(name, item, iid, meta))
        return out

    def dlq_show(self, uuid: str, list_name: str | None = None) -> dict[str, Any] | None:
        """One dead letter by uuid (or item id), with its metadata and body; None if absent."""
        found = self._dlq_find(uuid, list_name)
        if found is None:
            return None
        name, item = found
        iid = item_id(item)
        entry = self._dlq_entry(name, item, iid, self.redis.hgetall(dlq_meta_key(name, iid)))
        if item.startswith(b"{"):
            entry["body"] = _s(item)
        else:
            try:
                body = self.redis.get(BODY + _s(item))
            except redis.ResponseError:
                body = self.redis.execute_command("JSON.GET", BODY + _s(item))
            entry["body"] = _s(body) if body is not None else None
        return entry

    def dlq_requeue(self, uuid: str | None = None, *, all: bool = False, list_name: str | None = None) -> int:
        """Put dead letters back at the tail of their lists with fresh counters: one by uuid
        (or item id), or ``all`` of them (of ``list_name``, or of every list)."""
        if all:
            return sum(self._drain(name, name) for name in self._lists(list_name))
        if not uuid:
            raise ValueError("give a uuid or all=True")
        found = self._dlq_find(uuid, list_name)
        if found is None:
            return 0
        name, item = found
        return self._dlq_requeue_one(keys=[dlq_key(name), name], args=[item])

    def dlq_purge(self, list_name: str | None = None) -> int:
        """Drop dead letters and their metadata (the vcon:{uuid} bodies are kept)."""
        total = 0
        for name in self._lists(list_name):
            total += self._drain(name, "")
            for key in self.redis.scan_iter(match=_glob_escape(dlq_key(name) + ":meta:") + "*", count=1000):
                self.redis.delete(key)
        return total

    def _drain(self, name: str, target: str) -> int:
        total = 0
        while True:
            n = self._dlq_drain(keys=[dlq_key(name), target], args=[500])
            total += n
            if n == 0:
                return total

    def _lists(self, list_name: str | None) -> tuple[str, ...]:
        return (list_name,) if list_name else self.ingress_lists

    def _dlq_find(self, uuid: str, list_name: str | None) -> tuple[str, bytes] | None:
        wanted = uuid.lower()
        for name in self._lists(list_name):
            key = dlq_key(name)
            if self.redis.lpos(key, uuid) is not None:
                return name, uuid.encode()
            start = 0
            while True:  # inline vCons, other spellings of the uuid
                chunk = self.redis.lrange(key, start, start + 499)
                for item in chunk:
                    if item_id(item) == uuid or _s(item).lower() == wanted:
                        return name, item
                    if item.startswith(b"{"):
                        try:
                            data = orjson.loads(item)
                        except orjson.JSONDecodeError:
                            continue
                        if type(data) is dict and str(data.get("uuid", "")).lower() == wanted:
                            return name, item
                if len(chunk) < 500:
                    break
                start += 500
        return None

    @staticmethod
    def _dlq_entry(name: str, item: bytes, iid: str, meta: Mapping[bytes, bytes]) -> dict[str, Any]:
        entry: dict[str, Any] = {_s(k): _s(v) for k, v in meta.items()}
        entry.setdefault("list", name)
        entry.setdefault("item_id", iid)
        if "uuid" not in entry:
            entry["uuid"] = "" if item.startswith(b"{") else _s(item)
        for k in ("attempts", "deliveries"):
            if entry.get(k, "").isdigit():
                entry[k] = int(entry[k])
        entry["inline"] = item.startswith(b"{")
        return entry


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class LeaderLock:
    """A lease in Redis: ``acquire`` takes it or renews it when already ours (call it at least
    every ttl/2), ``release`` drops it only if it is still ours."""

    def __init__(self, redis_client: redis.Redis, name: str = "scheduler", owner: str | None = None,
                 ttl: float = 10.0):
        self.redis = redis_client
        self.key = LEADER + name
        self.owner = owner or make_worker_id()
        self.ttl_ms = max(1, int(ttl * 1000))
        self.held = False
        self._acquire = redis_client.register_script(_LOCK_ACQUIRE)
        self._release = redis_client.register_script(_LOCK_RELEASE)

    def acquire(self) -> bool:
        self.held = False  # stays False if Redis cannot be reached
        self.held = bool(self._acquire(keys=[self.key], args=[self.owner, self.ttl_ms]))
        return self.held

    def release(self) -> bool:
        self.held = False
        return bool(self._release(keys=[self.key], args=[self.owner]))

    def holder(self) -> str | None:
        value = self.redis.get(self.key)
        return _s(value) if value is not None else None

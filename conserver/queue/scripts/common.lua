-- The prelude of every queue script (the loader, scripts/__init__.py, puts it in front).
-- No key name is spelled in Lua: the caller passes conserver/queue/keys.py's layout first,
--   KEYS[1..4]  deliveries, attempts, inflight, workers              (KeyLayout.script_keys)
--   ARGV[1..6]  prefixes: bodies, dead letters, the dead-letter meta infix, store marks,
--               heartbeats, claim tokens                             (KeyLayout.script_args)
-- and the prelude takes them off: below, KEYS[1] and ARGV[1] are the script's own.
local DELIVERIES, ATTEMPTS, INFLIGHT, WORKERS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local BODY, DLQ, DLQ_META, STORED, HEARTBEAT, CLAIM_TOKEN = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local function drop(t, n)
  local out = {}
  for i = n + 1, #t do out[i - n] = t[i] end
  return out
end
local KEYS, ARGV = drop(KEYS, 4), drop(ARGV, 6)

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

-- an untrusted string as metadata keeps it: at most 64 bytes, '\' and every byte that is not
-- printable ASCII escaped (\xNN), then how long it was (protocol.escaped_excerpt says the same)
local EXCERPT = 64
local function escape_byte(c)
  local b = string.byte(c)
  if b == 92 then return '\\\\' end
  if b < 32 or b > 126 then return string.format('\\x%02x', b) end
  return c
end
local function excerpt(text)
  local head = string.gsub(string.sub(text, 1, EXCERPT), '.', escape_byte)
  if #text > EXCERPT then head = head .. '... (' .. #text .. ' bytes)' end
  return head
end

-- the dead-letter itself: the DLQ list of src gets the original item, a meta hash sits beside
-- it. What the meta keeps of the item is bounded, however big the item: its id, its uuid
-- only when short (escaped), and an excerpt.
-- The body gets ``expiry`` seconds to live (VCON_DLQ_EXPIRY, as vcon-server does; 0: as it was).
local function bury(src, item, id, reason, err, attempts, deliveries, worker, now, expiry)
  redis.call('RPUSH', DLQ .. src, item)
  if expiry > 0 and id == item then redis.call('EXPIRE', BODY .. item, expiry) end
  local meta = DLQ .. src .. DLQ_META .. id
  local uuid = uuid_of(item)
  redis.call('DEL', meta)
  redis.call('HSET', meta, 'reason', reason, 'error', err, 'attempts', attempts,
             'deliveries', deliveries, 'worker', worker, 'time', now, 'list', src,
             'uuid', #uuid <= EXCERPT and excerpt(uuid) or '', 'item_id', id, 'excerpt', excerpt(item))
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

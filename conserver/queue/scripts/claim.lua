-- Claim one batch from the first non-empty list of a preference order.
-- KEYS[1] claim-token key, KEYS[1+i] ingress list i, KEYS[1+n+i] its processing list (i = 1..n),
--   KEYS[2+2n] the delayed zset, KEYS[3+2n] the fencing counter
-- ARGV: n, batch, max_deliveries, max_bytes, worker, now (ISO), token, preference "2,1,3",
--       '1' to report which lists are non-empty (weighted choice), max bytes of bodies per batch,
--       seconds a copy of an item in flight waits, the TTL a dead-lettered body gets (0: keep it)
-- -> {moved, list index, non-empty flags, {claim rows, flat}, {poisoned {item, deliveries}}, copies, fence}
--    fence: the claims' fencing tokens are fence+1, fence+2, ... in row order (one INCRBY per batch)
--    claim row (8 values): item, body|nil, deliveries, status code, size, attempts, "store,store" done,
--    body type (string, json, inline)
-- Hot path: a handful of calls per batch (HMGET, MGET, HSET), none per item in the common case.
-- A body stored as RedisJSON (vcon-server's API writes them so) is a nil of MGET: TYPE, then
-- JSON.GET here, two calls for that vCon and no round trip.
--
-- Copies of one item (a producer pushing a uuid again) are one delivery: copies within the
-- batch are taken as one claim (the same item, its body read once), and a copy of an item
-- that a processing list holds right now waits in the delayed zset (merged with any copy
-- waiting there) until that claim is resolved, so it reads the newest body then. Neither
-- raises the delivery counter: only a claim that comes back unresolved does.
local n, batch, maxd, maxb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local worker, now, token, maxbatch = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[10])
local copy_delay, delayed, dlq_expiry = tonumber(ARGV[11]), KEYS[2 + 2 * n], tonumber(ARGV[12])
local fence_key = KEYS[3 + 2 * n]

-- is an item in a processing list now? Asked only of an item with a delivery counter: one
-- back from a dead worker (not held) or a copy of one in flight (held)
local held_lists
local function held(item)
  held_lists = held_lists or redis.call('HKEYS', INFLIGHT)
  for _, proc in ipairs(held_lists) do
    if redis.call('LPOS', proc, item) then return true end
  end
  return false
end

-- counters, attempts and bodies of a list of items, in as few calls as possible
local function lookup(items)
  local ids, keys = {}, {}
  for i, item in ipairs(items) do
    ids[i] = item_id(item)
    keys[i] = string.byte(item, 1) == 123 and '' or BODY .. item
  end
  return ids, mcall('HMGET', DELIVERIES, ids), mcall('HMGET', ATTEMPTS, ids), mcall('MGET', nil, keys)
end

-- append one claim row (8 values) to out; returns the body's size
local function row(out, item, id, d, att, body)
  local k, code, size, btype = #out, 0, 0, 'string'
  local done = ''
  if string.byte(item, 1) == 123 then
    code, size, body, btype = 4, #item, false, 'inline'
  else
    -- store marks can only exist after an earlier delivery (a crash, or a defer that left att)
    if id == item and (d > 1 or att) then
      done = table.concat(redis.call('HKEYS', STORED .. string.lower(item)), ',')
    end
    if not body then  -- MGET gives nil for a missing key and for a non-string value alike
      local kind = redis.call('TYPE', BODY .. item).ok
      if kind == 'ReJSON-RL' then
        body, btype = redis.call('JSON.GET', BODY .. item), 'json'
      else
        code = kind == 'none' and 1 or 3
      end
    end
    if not body then
      body = false
    elseif maxb > 0 and #body > maxb then
      code, size, body = 2, #body, false
    else
      size = #body
    end
  end
  out[k + 1], out[k + 2], out[k + 3], out[k + 4] = item, body, d, code
  out[k + 5], out[k + 6], out[k + 7], out[k + 8] = size, tonumber(att or '0'), done, btype
  return size
end

-- a re-run of a claim whose reply was lost: hand back the same batch
local prev = redis.call('GET', KEYS[1])
if prev then
  local tok, idx, cnt, fence = string.match(prev, '^(.-)|(%d+)|(%d+)|(%d+)$')
  if tok == token then
    idx, cnt = tonumber(idx), tonumber(cnt)
    local items = redis.call('LRANGE', KEYS[1 + n + idx], -cnt, -1)
    local ids, dl, at, bodies = lookup(items)
    local out = {}
    for i, item in ipairs(items) do row(out, item, ids[i], tonumber(dl[i] or '1'), at[i], bodies[i]) end
    return {#items, idx, '', out, {}, 0, tonumber(fence)}
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
    local kept, out, poisoned, seen, sets, taken, bytes, copies = {}, {}, {}, {}, {}, 0, 0, 0
    local due
    for i, item in ipairs(items) do
      taken = i
      local id = ids[i]
      if seen[id] then
        copies = copies + 1  -- the claim of its first copy in this batch stands for it
      elseif dl[i] and held(item) then
        if not due then
          local t = redis.call('TIME')
          due = tonumber(t[1]) + tonumber(t[2]) / 1e6 + copy_delay
        end
        redis.call('ZADD', delayed, 'NX', due, src .. '\n' .. item)
        copies = copies + 1
      else
        seen[id] = true
        local d = tonumber(dl[i] or '0') + 1
        if d > maxd then
          bury(src, item, id, 'poison', 'claimed ' .. d .. ' times and never acked, deferred or dead-lettered',
               at[i] or '0', d, worker, now, dlq_expiry)
          poisoned[#poisoned + 1] = {item, d}
        else
          kept[#kept + 1] = item
          sets[#sets + 1] = id
          sets[#sets + 1] = d
          -- a reply of bounded size, however big the bodies (or the items: garbage can be big)
          bytes = bytes + row(out, item, id, d, at[i], bodies[i]) + (string.byte(item, 1) == 123 and 0 or #item)
          if bytes >= maxbatch then break end
        end
      end
    end
    redis.call('LTRIM', src, taken, -1)
    local fence = 0
    if #kept > 0 then
      fence = redis.call('INCRBY', fence_key, #kept) - #kept
      for lo = 1, #sets, 1000 do redis.call('HSET', DELIVERIES, unpack(sets, lo, math.min(#sets, lo + 999))) end
      push_back(proc, kept)
      redis.call('HSET', INFLIGHT, proc, worker .. '\n' .. src)
      redis.call('SET', KEYS[1], token .. '|' .. idx .. '|' .. #kept .. '|' .. fence, 'EX', 86400)
    end
    return {taken, idx, flags, out, poisoned, copies, fence}
  end
end
return {0, 0, flags, {}, {}, 0, 0}

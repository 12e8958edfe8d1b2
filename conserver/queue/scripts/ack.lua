-- Done: remove from the processing lists, clear counters and store marks, maybe expire bodies;
-- and, for each claim that was still ours, its chain's effects in the same atomic step:
-- the body rewritten, its TTL set, its uuid pushed on the egress lists. A claim no longer in
-- the processing list (acked already: this is redis-py retrying the call) gets none of
-- them, so a retried ack never pushes twice.
-- KEYS: processing lists, one per group. ARGV: body expiry (s), then per group:
-- count, then count x (item, id, uuid for the store marks or '', n effects, n x (op, key, value))
-- ops: P = RPUSH key value, S = SET key value KEEPTTL, J = JSON.SET key $ value, E = EXPIRE key value
-- A script that fails half-way keeps what it did, so every effect's key is checked first:
-- a key of the wrong type fails the whole call before anything changed.
local expiry, pos, acked, ids, marks = tonumber(ARGV[1]), 2, 0, {}, {}
local fits = {P = {none = true, list = true}, S = {none = true, string = true},
              J = {none = true, ['ReJSON-RL'] = true}, E = false}
local groups = {}
for g = 1, #KEYS do
  local cnt = tonumber(ARGV[pos])
  pos = pos + 1
  local rows = {}
  for i = 1, cnt do
    local n = tonumber(ARGV[pos + 3])
    rows[i] = {pos, n}
    for e = 0, n - 1 do
      local q = pos + 4 + 3 * e
      local allowed = fits[ARGV[q]]
      if allowed == nil then return redis.error_reply('ERR ack: unknown effect ' .. ARGV[q]) end
      if allowed then
        local t = redis.call('TYPE', ARGV[q + 1])['ok']
        if not allowed[t] then
          return redis.error_reply('WRONGTYPE ack: ' .. ARGV[q + 1] .. ' holds a ' .. t .. ', the chain writes it with ' .. ARGV[q])
        end
      end
    end
    pos = pos + 4 + 3 * n
  end
  groups[g] = rows
end
for g = 1, #KEYS do
  local proc, rows = KEYS[g], groups[g]
  local cnt = #rows
  local whole = false
  if cnt > 0 and redis.call('LLEN', proc) == cnt then
    whole = true
    local cur = redis.call('LRANGE', proc, 0, -1)
    for i = 1, cnt do
      if cur[i] ~= ARGV[rows[i][1]] then whole = false break end
    end
    if whole then redis.call('DEL', proc) end
  end
  for i = 1, cnt do
    local p, n = rows[i][1], rows[i][2]
    local item, id, su = ARGV[p], ARGV[p + 1], ARGV[p + 2]
    if whole or redis.call('LREM', proc, 1, item) > 0 then
      acked = acked + 1
      ids[#ids + 1] = id
      for e = 0, n - 1 do
        local q = p + 4 + 3 * e
        local op, key, value = ARGV[q], ARGV[q + 1], ARGV[q + 2]
        if op == 'P' then redis.call('RPUSH', key, value)
        elseif op == 'S' then redis.call('SET', key, value, 'KEEPTTL')
        elseif op == 'J' then redis.call('JSON.SET', key, '$', value)
        else redis.call('EXPIRE', key, value) end
      end
      if su ~= '' then
        marks[#marks + 1] = STORED .. su
        if expiry > 0 and id == item then redis.call('EXPIRE', BODY .. item, expiry) end
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

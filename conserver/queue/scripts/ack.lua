-- Done: remove from the processing lists, clear counters and store marks, maybe expire bodies.
-- KEYS: processing lists, one per group. ARGV: body expiry (s), then per group:
-- count, then count x (item, id, uuid for the store marks or '')
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

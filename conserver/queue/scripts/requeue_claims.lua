-- Give back claims that were never started: to the head of their lists, not counted as deliveries.
-- KEYS: (processing list, source list) per group. ARGV per group: count, then count x (item, id)
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

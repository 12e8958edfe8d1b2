-- Due retries go to the head of their lists.
-- KEYS[1] delayed zset, KEYS[2] where unreadable members go. ARGV: now ('' = Redis time), limit.
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
    redis.call('RPUSH', KEYS[2], m)
  end
  redis.call('ZREM', KEYS[1], m)
end
return #due

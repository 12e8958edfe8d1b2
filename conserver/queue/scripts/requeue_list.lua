-- Move back a processing list found by SCAN, not in the registry.
-- KEYS[1] processing list, KEYS[2] source list. ARGV[1] its worker id (registered by now
-- means a claim made it since: the registry path owns it)
if redis.call('HEXISTS', INFLIGHT, KEYS[1]) == 1 then return -1 end
if redis.call('EXISTS', HEARTBEAT .. ARGV[1]) == 1 then return -1 end
local moved = move_all(KEYS[1], KEYS[2])
redis.call('HDEL', INFLIGHT, KEYS[1])
return moved

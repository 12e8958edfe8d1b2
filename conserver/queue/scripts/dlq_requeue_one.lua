-- KEYS[1] DLQ list, KEYS[2] target list. ARGV[1] item. Every copy leaves the DLQ, one goes back.
local r = redis.call('LREM', KEYS[1], 0, ARGV[1])
if r == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
local id = item_id(ARGV[1])
redis.call('DEL', KEYS[1] .. DLQ_META .. id)
redis.call('HDEL', DELIVERIES, id)
redis.call('HDEL', ATTEMPTS, id)
return 1

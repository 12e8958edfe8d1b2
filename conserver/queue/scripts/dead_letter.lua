-- KEYS[1] processing list. ARGV: item, id, source, reason, error, attempts ('' = the counter), worker, now,
--   the TTL the body gets (0: keep it)
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local attempts = ARGV[6]
if attempts == '' then attempts = redis.call('HGET', ATTEMPTS, ARGV[2]) or '0' end
local d = redis.call('HGET', DELIVERIES, ARGV[2]) or '0'
bury(ARGV[3], ARGV[1], ARGV[2], ARGV[4], ARGV[5], attempts, d, ARGV[7], ARGV[8], tonumber(ARGV[9]))
return 1

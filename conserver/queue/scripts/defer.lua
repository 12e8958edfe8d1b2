-- Retry later, or dead-letter when the retries are used up.
-- KEYS[1] processing list, KEYS[2] delayed zset.
-- ARGV: item, id, source, count ('1'/'0'), max_retries, backoff, backoff_max, jitter (0..1),
--       fixed delay (<0: computed), error, worker, now (ISO), the TTL a dead-lettered body gets
-- -> {1, attempts, due} deferred; {0, attempts} dead-lettered (retries_exhausted); {-1, 0} not ours
local item, id, src = ARGV[1], ARGV[2], ARGV[3]
if redis.call('LREM', KEYS[1], 1, item) == 0 then return {-1, 0} end
local n
if ARGV[4] == '1' then
  n = redis.call('HINCRBY', ATTEMPTS, id, 1)
  if n > tonumber(ARGV[5]) then
    bury(src, item, id, 'retries_exhausted', ARGV[10], n, redis.call('HGET', DELIVERIES, id) or '0', ARGV[11], ARGV[12],
         tonumber(ARGV[13]))
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

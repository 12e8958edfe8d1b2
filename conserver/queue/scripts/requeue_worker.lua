-- Move every processing list of one worker back to its source and forget the worker.
-- ARGV: worker id, '1' = only when its heartbeat is gone (the orphan sweep)
local worker = ARGV[1]
if ARGV[2] == '1' and redis.call('EXISTS', HEARTBEAT .. worker) == 1 then return -1 end
local reg = redis.call('HGETALL', INFLIGHT)
local moved = 0
for i = 1, #reg, 2 do
  local v = reg[i + 1]
  local nl = string.find(v, '\n', 1, true)
  if nl and string.sub(v, 1, nl - 1) == worker then
    moved = moved + move_all(reg[i], string.sub(v, nl + 1))
    redis.call('HDEL', INFLIGHT, reg[i])
  end
end
redis.call('SREM', WORKERS, worker)
redis.call('DEL', HEARTBEAT .. worker, CLAIM_TOKEN .. worker)
return moved

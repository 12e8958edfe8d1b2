-- Dead letters out, oldest first: back to a list, or dropped.
-- KEYS[1] DLQ list, KEYS[2] target list ('' = purge). ARGV[1] how many.
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return 0 end
redis.call('LTRIM', KEYS[1], #items, -1)
if KEYS[2] ~= '' then push_back(KEYS[2], items) end
for _, item in ipairs(items) do
  local id = item_id(item)
  redis.call('DEL', KEYS[1] .. DLQ_META .. id)
  redis.call('HDEL', DELIVERIES, id)
  redis.call('HDEL', ATTEMPTS, id)
end
return #items

-- ARGV: id, entry JSON, task, stored at, min score (now - max age), max entries.
-- Stores (or replaces: a redelivered message, a replay that failed again) one entry,
-- clears any replay claim on it, then applies retention. Returns {new, dropped tasks...}.
local id, task = ARGV[1], ARGV[3]
local old = redis.call('HGET', KEYS[1], id)
if old then
  local old_task = task_of(old)
  if redis.call('HINCRBY', KEYS[4], old_task, -1) <= 0 then redis.call('HDEL', KEYS[4], old_task) end
end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), id)
redis.call('HDEL', KEYS[3], id)
redis.call('HINCRBY', KEYS[4], task, 1)
local result = {old and 0 or 1}
trim(tonumber(ARGV[5]), tonumber(ARGV[6]), result)
return result

-- Worker side, before the task body: hold the lock for one lease.
-- Succeeds when the lock is free or already ours (same task id and token: our own
-- publish, a retry, or a redelivery after the worker was lost).
-- KEYS[1] lock key; ARGV[1] owner value; ARGV[2] lease in ms.
-- Returns nil when held, else the other holder's value.
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false

-- Caller side, before publish: take a free lock for the whole wait in the queue.
-- KEYS[1] lock key; ARGV[1] owner value "<task id>|<token>"; ARGV[2] ttl in ms.
-- Returns nil when taken, else the current holder's value (who to name in the error).
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('get', KEYS[1])

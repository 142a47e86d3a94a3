-- Renewal while running (ARGV[2] = the lease) and keeping the lock for a retry
-- (ARGV[2] = the ttl): only the owner may extend. KEYS[1] lock key; ARGV[1] owner value.
-- Returns 1 when extended, 0 when the lock is gone or someone else's.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0

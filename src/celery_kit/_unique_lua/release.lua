-- Check-and-delete: a late release never frees a newer holder's lock.
-- KEYS[1] lock key; ARGV[1] owner value. Returns 1 when deleted, else 0.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0

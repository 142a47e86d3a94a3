-- ARGV: id, token, now, action ("release", "keep" with ARGV[5] = new entry JSON, "remove").
-- Acts only while token holds the claim: a newer failure of the same message (put) or a
-- purge in between wins. Returns 1 when it acted, 0 when the claim was gone.
local id, action = ARGV[1], ARGV[4]
if claim_of(id, -math.huge) ~= ARGV[2] then return 0 end
if action == 'remove' then
  forget(id, false)
elseif action == 'keep' then
  redis.call('HSET', KEYS[1], id, ARGV[5])
  redis.call('HDEL', KEYS[3], id)
else
  redis.call('HDEL', KEYS[3], id)
end
return 1

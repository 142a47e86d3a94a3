-- ARGV: id, token, now, claim expires at. Returns {0} (no such entry), {1, holder} (another
-- replay holds it) or {2, entry JSON} (claimed for token).
local id = ARGV[1]
local raw = redis.call('HGET', KEYS[1], id)
if not raw then return {0} end
local holder = claim_of(id, tonumber(ARGV[3]))
if holder then return {1, holder} end
redis.call('HSET', KEYS[3], id, ARGV[2] .. '|' .. ARGV[4])
return {2, raw}

-- ARGV: mode ("ids" then ids..., "before" then a max score, "all"). Returns how many went.
local ids
if ARGV[1] == 'before' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
elseif ARGV[1] == 'all' then
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
else
  ids = {}
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local removed = 0
for _, id in ipairs(ids) do
  if forget(id, false) then removed = removed + 1 end
end
return removed

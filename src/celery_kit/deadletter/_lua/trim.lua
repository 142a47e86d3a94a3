-- ARGV: min score (now - max age), max entries. Returns the dropped entries' tasks.
local dropped = {}
trim(tonumber(ARGV[1]), tonumber(ARGV[2]), dropped)
return dropped

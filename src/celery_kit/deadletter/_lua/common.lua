-- Shared by the store scripts. KEYS: entries (hash id -> JSON), by_time (zset id -> stored
-- at), claims (hash id -> "token|expires"), counts (hash task -> n), dropped (hash task -> n).
local function task_of(raw)
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' and type(decoded['task_name']) == 'string' then
    return decoded['task_name']
  end
  return 'unknown'
end

local function forget(id, count_as_dropped)
  local raw = redis.call('HGET', KEYS[1], id)
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  if not raw then return nil end
  local task = task_of(raw)
  if redis.call('HINCRBY', KEYS[4], task, -1) <= 0 then redis.call('HDEL', KEYS[4], task) end
  if count_as_dropped then redis.call('HINCRBY', KEYS[5], task, 1) end
  return task
end

-- Retention: entries older than min_score, then the oldest above max_entries.
local function trim(min_score, max_entries, dropped)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. min_score)) do
    local task = forget(id, true)
    if task then table.insert(dropped, task) end
  end
  local over = redis.call('ZCARD', KEYS[2]) - max_entries
  if over > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
      local task = forget(id, true)
      if task then table.insert(dropped, task) end
    end
  end
end

-- The claim on id, if it is still valid at now: its token, else nil.
local function claim_of(id, now)
  local claim = redis.call('HGET', KEYS[3], id)
  if not claim then return nil end
  local sep = string.find(claim, '|', 1, true)
  if not sep or tonumber(string.sub(claim, sep + 1)) <= now then return nil end
  return string.sub(claim, 1, sep - 1)
end

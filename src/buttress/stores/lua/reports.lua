-- The live reports of a breaker (runs after now.lua); expired fields are deleted.
-- KEYS[1]: the breaker. ARGV: now. Returns {instance, state, age, ...}.
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local a = string.find(v, ' ', 1, true)
  local b = string.find(v, ' ', a + 1, true)
  local at = tonumber(string.sub(v, 1, a - 1))
  if tonumber(string.sub(v, a + 1, b - 1)) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = string.sub(v, b + 1)
    out[#out + 1] = fmt(now - at)
  end
end
return out

-- Publish one instance's breaker state (runs after now.lua). KEYS[1]: the breaker, a hash
-- with a field per instance ("published expires state"). ARGV: now, instance, state, ttl,
-- ttl in ms. The key lives as long as its latest report.
local value = fmt(now) .. ' ' .. fmt(now + tonumber(ARGV[4])) .. ' ' .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[2], value)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 0

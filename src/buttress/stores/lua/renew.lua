-- Extend the lease of the holder (runs after now.lua). KEYS[1]: the record. ARGV: now,
-- token, lease, lease in ms. Returns 1, or 0 when the token no longer holds the key.
local h = redis.call('HMGET', KEYS[1], 't', 'r', 'u')
if h[1] ~= ARGV[2] or h[2] or tonumber(h[3]) <= now then return 0 end
redis.call('HSET', KEYS[1], 'u', fmt(now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1

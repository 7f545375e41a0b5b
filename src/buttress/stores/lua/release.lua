-- Free an idempotency key when the token still holds it (not completed). KEYS[1]: the
-- record. ARGV[1]: token.
local h = redis.call('HMGET', KEYS[1], 't', 'r')
if h[1] == ARGV[1] and not h[2] then redis.call('DEL', KEYS[1]) end
return 0

-- Take an idempotency key (runs after now.lua). KEYS[1]: the record, a hash (fingerprint
-- f, token t, lease end or expiry u, response r). ARGV: now, fingerprint, token, lease,
-- lease in ms. Returns {'a'} taken, {'m'} another payload, {'r', response} stored, or
-- {'i', seconds} in flight.
local h = redis.call('HMGET', KEYS[1], 'u', 'f', 'r')
if h[1] and tonumber(h[1]) > now then
  if h[2] ~= ARGV[2] then return {'m'} end
  if h[3] then return {'r', h[3]} end
  return {'i', fmt(tonumber(h[1]) - now)}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'f', ARGV[2], 't', ARGV[3], 'u', fmt(now + tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'a'}

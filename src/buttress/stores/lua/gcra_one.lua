-- GCRA for one key: the admission test of buttress._gcra, on the server's doubles.
-- KEYS[1]: the key (its TAT, a number). ARGV[1]: now ('-': the server's TIME), ARGV[2]:
-- tau + EPSILON, ARGV[3]: interval * cost (exact reprs of the Python doubles).
-- Writes the new TAT when admitted, expiring when it passes (the key is then back to a
-- full burst). Returns the TAT it read ('-' when absent), followed by TIME's seconds and
-- microseconds when it read the server's clock: the caller computes now exactly as here
-- and replays buttress._gcra.decide for the numbers.
local now, t = ARGV[1], nil
if now == '-' then
  t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(now)
end
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  local s = tonumber(stored)
  if s >= now then tat = s end
end
local new_tat = tat + tonumber(ARGV[3])
-- admitted iff new_tat <= now * SCALE + (tau + EPSILON), SCALE = 1 + 8 * 2^-52
if new_tat <= now * 1.0000000000000018 + tonumber(ARGV[2]) then
  local ms = math.ceil((new_tat - now) * 1000)
  if ms < 1 then ms = 1 end
  redis.call('SET', KEYS[1], new_tat, 'PX', ms)  -- Redis writes numbers exactly (%.17g)
end
stored = stored or '-'
if t then return stored .. ' ' .. t[1] .. ' ' .. t[2] end
return stored

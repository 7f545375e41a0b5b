-- GCRA for N keys, all or nothing: the admission test of buttress._gcra.gcra.
-- KEYS: the N keys. ARGV[1]: "now interval burst cost [interval burst cost ...]" (one
-- argument is cheaper to pack than 3N+1; now is '-' for the server's TIME).
-- Writes every new TAT when every key admits, else nothing. Returns "now tat ..." ('-'
-- for an absent key): the caller replays buttress._gcra.gcra on exactly these numbers.
local next_word = string.gmatch(ARGV[1], '%S+')
local now = next_word()
if now == '-' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(now)
end
local olds, news, ok = {string.format('%.17g', now)}, {}, true
for i = 1, #KEYS do
  local interval = tonumber(next_word())
  local tau = interval * tonumber(next_word())
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then
    olds[i + 1] = stored
    local s = tonumber(stored)
    if s >= now then tat = s end
  else
    olds[i + 1] = '-'
  end
  local new_tat = tat + interval * tonumber(next_word())
  news[i] = new_tat
  -- admitted iff new_tat <= now * SCALE + (tau + EPSILON), SCALE = 1 + 8 * 2^-52
  if new_tat > now * 1.0000000000000018 + (tau + 1e-09) then ok = false end
end
if ok then
  for i = 1, #KEYS do
    local ms = math.ceil((news[i] - now) * 1000)
    if ms < 1 then ms = 1 end
    redis.call('SET', KEYS[i], news[i], 'PX', ms)  -- Redis writes numbers exactly (%.17g)
  end
end
return table.concat(olds, ' ')

-- The prelude of the scripts that take the time as ARGV[1] ('-': the server's TIME, else
-- seconds on the caller's clock): defines now, and fmt (a number as exact text).
local now
if ARGV[1] == '-' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local function fmt(x) return string.format('%.17g', x) end

-- Allocate a block of booking ids. Ids stay unique across Redis restarts and Redis being
-- emptied because the counter never falls below the clock (milliseconds x 2048, below 2^53
-- until the year 2109) nor below the largest id PostgreSQL already has.
-- KEYS: 1 the id counter. ARGV: 1 now (ms), 2 block size, 3 lowest allowed id (PostgreSQL's max).
-- Returns {first, last} as decimal strings (Lua numbers are doubles: exact below 2^53).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1]) * 2048
local known = tonumber(ARGV[3])
if current < floor then current = floor end
if current < known then current = known end
local last = current + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.0f', last))
return {string.format('%.0f', current + 1), string.format('%.0f', last)}

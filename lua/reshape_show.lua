-- Apply an admin change to a loaded show atomically with respect to claims: new start time,
-- new display data and new seats, refused if a held seat would no longer exist.
-- KEYS: 1 meta, 2 seats, 3 held. ARGV: 1 starts_us, 2 show json, 3 seat labels joined by ",".
-- Returns {"ok"}, {"unloaded"} (nothing to change in Redis) or {"conflict", seat}.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'starts_us') == 0 then
  return {'unloaded'}
end
local wanted = {}
local labels = {}
for seat in string.gmatch(ARGV[3], '[^,]+') do
  wanted[seat] = true
  labels[#labels + 1] = seat
end
local held = redis.call('HKEYS', KEYS[3])
for _, seat in ipairs(held) do
  if not wanted[seat] then
    return {'conflict', seat}
  end
end
redis.call('DEL', KEYS[2])
for i = 1, #labels, 500 do
  redis.call('SADD', KEYS[2], unpack(labels, i, math.min(i + 499, #labels)))
end
redis.call('HSET', KEYS[1], 'starts_us', ARGV[1], 'json', ARGV[2])
return {'ok'}

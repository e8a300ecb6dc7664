-- Forget a show that started long ago, so that Redis does not grow with every show ever sold;
-- only when PostgreSQL has everything (nothing pending). It is rebuilt from PostgreSQL if it is
-- ever used again (an admin cancelling a booking of it, say).
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag).
-- ARGV: 1 cutoff (microseconds): only a show that started before it is forgotten.
-- Returns "ok", or "missing" / "closed" / "pending" / "current" (nothing written).
local cutoff = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[1], 'starts_us', 'closed')
if not meta[1] then
  return 'missing'
end
if meta[2] then
  return 'closed'
end
if redis.call('HLEN', KEYS[5]) > 0 then
  return 'pending'
end
if tonumber(meta[1]) >= cutoff then
  return 'current'
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return 'ok'

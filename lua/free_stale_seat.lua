-- Reconciler: a seat held by a booking whose record is missing or cancelled (the held map and
-- the bookings hash disagree): free the seat, unless it changed meanwhile.
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag).
-- ARGV: 1 seat, 2 the booking id that held it when the difference was found.
-- Returns "ok", or "unloaded" / "changed" (nothing written).
local seat, booking = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'closed') == 1 then
  return 'unloaded'
end
if redis.call('HGET', KEYS[3], seat) ~= booking then
  return 'changed'
end
local record = redis.call('HGET', KEYS[4], booking)
if record and string.sub(record, -1) == 'b' then
  return 'changed'
end
redis.call('HDEL', KEYS[3], seat)
return 'ok'

-- Reconciler: PostgreSQL has a booking cancelled that Redis still has booked, with nothing
-- pending: follow PostgreSQL, as if the cancellation had been persisted and acknowledged
-- (forget the record, free the seat if this booking holds it).
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag).
-- ARGV: 1 booking id, 2 the record Redis had when the difference was found.
-- Returns "ok", or "unloaded" / "pending" / "changed" (nothing written).
local booking, expected = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'closed') == 1 then
  return 'unloaded'
end
if redis.call('HEXISTS', KEYS[5], booking) == 1 then
  return 'pending'
end
if redis.call('HGET', KEYS[4], booking) ~= expected then
  return 'changed'
end
local seat = string.match(expected, '^[^|]*|([^|]*)|')
redis.call('HDEL', KEYS[4], booking)
if redis.call('HGET', KEYS[3], seat) == booking then
  redis.call('HDEL', KEYS[3], seat)
end
return 'ok'

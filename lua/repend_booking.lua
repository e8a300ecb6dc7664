-- Reconciler: a record Redis has, PostgreSQL does not, and no pending record carries (its
-- persistence was lost): pend it again so the worker writes it.
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
redis.call('HSET', KEYS[5], booking, expected)
return 'ok'

-- Reconciler: PostgreSQL has a booked seat the show has (by its definition in PostgreSQL) but
-- Redis' seat set lacks: add it, so the booking that holds it counts against the show.
-- KEYS: 1 meta, 2 seats (one show's hash tag). ARGV: 1 seat.
-- Returns "ok", "present" or "unloaded".
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'closed') == 1 then
  return 'unloaded'
end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 'present'
end
return 'ok'

-- Reconciler: make a loaded show hold a booking PostgreSQL has as booked but Redis does not
-- (unknown to Redis, or cancelled in Redis with nothing pending). PostgreSQL is the source of
-- truth: if another booked booking holds the seat (a double sale left by Redis losing data),
-- that one is cancelled through its pending record so the worker persists the cancellation.
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag).
-- ARGV: 1 booking id, 2 PostgreSQL's record (status "b"), 3 the record Redis had when the
--       difference was found ("" for none): anything else means it changed meanwhile.
-- Returns {"adopted"}, {"adopted", holder, holder's cancelled record} (a double sale undone),
-- {"unseated"} (recorded, but the seat is not in the show's seat set), or {"unloaded"} /
-- {"pending"} / {"changed"} (nothing written).
local booking, record, expected = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'closed') == 1 then
  return {'unloaded'}
end
if redis.call('HEXISTS', KEYS[5], booking) == 1 then
  return {'pending'}
end
if (redis.call('HGET', KEYS[4], booking) or '') ~= expected then
  return {'changed'}
end
local seat = string.match(record, '^[^|]*|([^|]*)|')
redis.call('HSET', KEYS[4], booking, record)
if redis.call('SISMEMBER', KEYS[2], seat) == 0 then
  return {'unseated'}
end
local holder = redis.call('HGET', KEYS[3], seat)
redis.call('HSET', KEYS[3], seat, booking)
if holder and holder ~= booking then
  local held = redis.call('HGET', KEYS[4], holder)
  if held and string.sub(held, -1) == 'b' then
    local cancelled = string.sub(held, 1, -2) .. 'c'
    redis.call('HSET', KEYS[4], holder, cancelled)
    redis.call('HSET', KEYS[5], holder, cancelled)
    return {'adopted', holder, cancelled}
  end
end
return {'adopted'}

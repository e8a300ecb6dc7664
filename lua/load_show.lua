-- Load a show from PostgreSQL into Redis, exactly once: if another request loaded it first,
-- nothing is written. Pending records (not yet persisted) are kept and take precedence.
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag).
-- ARGV: 1 starts_us, 2 show json (without available_seats), 3 seat labels joined by ",",
--       then triples for the show's booked bookings: booking id, record, seat.
-- Returns 1 when this call loaded the show, 0 when it was already loaded.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2])
local batch = {}
for seat in string.gmatch(ARGV[3], '[^,]+') do
  batch[#batch + 1] = seat
  if #batch == 500 then
    redis.call('SADD', KEYS[2], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('SADD', KEYS[2], unpack(batch))
end
for i = 4, #ARGV, 3 do
  local booking, record, seat = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pending = redis.call('HGET', KEYS[5], booking)
  if pending then
    record = pending
  end
  redis.call('HSET', KEYS[4], booking, record)
  if string.sub(record, -1) == 'b' and redis.call('HEXISTS', KEYS[3], seat) == 0 then
    redis.call('HSET', KEYS[3], seat, booking)
  end
end
redis.call('HSET', KEYS[1], 'starts_us', ARGV[1], 'json', ARGV[2])
return 1

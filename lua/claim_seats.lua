-- Claim one or more seats of a show, all or nothing, and record what must be persisted.
-- KEYS: 1 meta (hash), 2 seats (set: the seats the show has), 3 held (hash seat -> booking id),
--       4 bookings (hash booking id -> record), 5 pending (hash booking id -> record not yet in
--       PostgreSQL). All five share the show's hash tag.
-- ARGV: 1 now (microseconds since the epoch: the claim's time), 2 user id, 3 seat count n,
--       then n pairs: seat label, booking id.
-- Record: "user|seat|created_us|status" with status "b" (booked) or "c" (cancelled).
-- Returns {"ok", available, show_json} or {"unloaded"} / {"gone"} / {"invalid", seat} /
-- {"started"} / {"full"} / {"taken", seat}. Room for expiring holds: a hold would be a held
-- entry whose record carries an expiry, freed by the same claim when it has passed.
local now = tonumber(ARGV[1])
local user = ARGV[2]
local n = tonumber(ARGV[3])

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'unloaded'}
end
local meta = redis.call('HMGET', KEYS[1], 'closed', 'starts_us', 'json')
if meta[1] then
  return {'gone'}
end
for i = 1, n do
  local seat = ARGV[2 + 2 * i]
  if redis.call('SISMEMBER', KEYS[2], seat) == 0 then
    return {'invalid', seat}
  end
end
if now >= tonumber(meta[2]) then
  return {'started'}
end
local capacity = redis.call('SCARD', KEYS[2])
local held = redis.call('HLEN', KEYS[3])
if held >= capacity then
  return {'full'}
end
for i = 1, n do
  local seat = ARGV[2 + 2 * i]
  if redis.call('HEXISTS', KEYS[3], seat) == 1 then
    return {'taken', seat}
  end
end
for i = 1, n do
  local seat = ARGV[2 + 2 * i]
  local booking = ARGV[3 + 2 * i]
  local record = user .. '|' .. seat .. '|' .. ARGV[1] .. '|b'
  redis.call('HSET', KEYS[3], seat, booking)
  redis.call('HSET', KEYS[4], booking, record)
  redis.call('HSET', KEYS[5], booking, record)
end
return {'ok', capacity - held - n, meta[3]}

-- Claim one or more seats of a show, all or nothing, and record what must be persisted.
-- KEYS: 1 meta (hash), 2 seats (set: the seats the show has), 3 held (hash seat -> booking id),
--       4 bookings (hash booking id -> record), 5 pending (hash booking id -> record not yet in
--       PostgreSQL), all five under the show's hash tag; then the global bookkeeping a claim
--       writes in the same atomic step (one round trip per booking): 6 the user's recent index
--       (sorted set), 7 the dirty-shows set, 8 .. 7+n where each booking lives (string).
-- ARGV: 1 now (microseconds since the epoch: the claim's time), 2 user id, 3 seat count n,
--       then n pairs: seat label, booking id; then show id, TTL of the bookkeeping (seconds).
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
local show = ARGV[4 + 2 * n]
local ttl = ARGV[5 + 2 * n]
for i = 1, n do
  local seat = ARGV[2 + 2 * i]
  local booking = ARGV[3 + 2 * i]
  local record = user .. '|' .. seat .. '|' .. ARGV[1] .. '|b'
  redis.call('HSET', KEYS[3], seat, booking)
  redis.call('HSET', KEYS[4], booking, record)
  redis.call('HSET', KEYS[5], booking, record)
  -- The user's index entry is keys.recent_member(): "<booking>:<show>:b".
  redis.call('ZADD', KEYS[6], ARGV[1], booking .. ':' .. show .. ':b')
  redis.call('SET', KEYS[7 + i], show, 'EX', ttl)
end
redis.call('EXPIRE', KEYS[6], ttl)
redis.call('SADD', KEYS[7], show)
return {'ok', capacity - held - n, meta[3]}

-- Cancel a booking: free its seat only if that booking still holds it, and record the
-- cancellation for the worker. Idempotent: cancelling a cancelled booking changes nothing.
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag); then the global
--       bookkeeping written in the same atomic step, as by claim_seats: 6 the booking owner's
--       recent index, 7 the dirty-shows set, 8 where the booking lives.
-- ARGV: 1 booking id, 2 acting user id ("0" for an admin, who may cancel anyone's),
--       3 now (microseconds), 4 "1" when a started show refuses the cancel, 5 show id,
--       6 TTL of the bookkeeping (seconds), 7 the owner whose index KEYS[6] is.
-- Returns {"ok", record, available, show_json} or {"unloaded"} / {"missing"} /
-- {"forbidden"} / {"started"} / {"owner", user} (KEYS[6] is not the owner's: call again).
local booking = ARGV[1]
local actor = ARGV[2]
local now = tonumber(ARGV[3])

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'unloaded'}
end
local record = redis.call('HGET', KEYS[4], booking)
if not record then
  return {'missing'}
end
local user, seat, created, status = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
if actor ~= '0' and actor ~= user then
  return {'forbidden'}
end
local meta = redis.call('HMGET', KEYS[1], 'starts_us', 'json')
local function available()
  return redis.call('SCARD', KEYS[2]) - redis.call('HLEN', KEYS[3])
end
if status == 'c' then
  return {'ok', record, available(), meta[2]}
end
if ARGV[4] == '1' and now >= tonumber(meta[1]) then
  return {'started'}
end
if ARGV[7] ~= user then
  return {'owner', user}
end
if redis.call('HGET', KEYS[3], seat) == booking then
  redis.call('HDEL', KEYS[3], seat)
end
local cancelled = user .. '|' .. seat .. '|' .. created .. '|c'
redis.call('HSET', KEYS[4], booking, cancelled)
redis.call('HSET', KEYS[5], booking, cancelled)
-- The owner's index entry is keys.recent_member(): "<booking>:<show>:c".
local ttl = ARGV[6]
redis.call('ZADD', KEYS[6], created, booking .. ':' .. ARGV[5] .. ':c')
redis.call('EXPIRE', KEYS[6], ttl)
redis.call('SET', KEYS[8], ARGV[5], 'EX', ttl)
redis.call('SADD', KEYS[7], ARGV[5])
return {'ok', cancelled, available(), meta[2]}

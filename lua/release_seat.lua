-- Cancel a booking: free its seat only if that booking still holds it, and record the
-- cancellation for the worker. Idempotent: cancelling a cancelled booking changes nothing.
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag).
-- ARGV: 1 booking id, 2 acting user id ("0" for an admin, who may cancel anyone's),
--       3 now (microseconds), 4 "1" when a started show refuses the cancel.
-- Returns {"ok", record, available, show_json} or {"unloaded"} / {"missing"} /
-- {"forbidden"} / {"started"}.
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
if redis.call('HGET', KEYS[3], seat) == booking then
  redis.call('HDEL', KEYS[3], seat)
end
local cancelled = user .. '|' .. seat .. '|' .. created .. '|c'
redis.call('HSET', KEYS[4], booking, cancelled)
redis.call('HSET', KEYS[5], booking, cancelled)
return {'ok', cancelled, available(), meta[2]}

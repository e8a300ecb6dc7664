-- Close a show before it is deleted, so that no claim can slip in between the check and the
-- delete; reopen it if the delete did not happen; purge its keys once it did.
-- KEYS: 1 meta, 2 seats, 3 held, 4 bookings, 5 pending (one show's hash tag).
-- ARGV: 1 "close" | "reopen" | "purge".
-- Returns {"ok"} or {"conflict"} (close: the show has bookings in Redis).
local action = ARGV[1]
if action == 'close' then
  if redis.call('HLEN', KEYS[4]) > 0 or redis.call('HLEN', KEYS[5]) > 0 then
    return {'conflict'}
  end
  -- A show that was not loaded gets a tombstone meta: claims see "gone", loads see "exists".
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('HSET', KEYS[1], 'tombstone', '1')
  end
  redis.call('HSET', KEYS[1], 'closed', '1')
elseif action == 'reopen' then
  if redis.call('HGET', KEYS[1], 'tombstone') == '1' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('HDEL', KEYS[1], 'closed')
  end
elseif action == 'purge' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
end
return {'ok'}

-- After the worker committed records to PostgreSQL: forget each pending record that has not
-- changed since it was read, and drop cancelled bookings (PostgreSQL now answers for them).
-- The user's index loses the entry of the state just written (a newer state, a cancel made
-- meanwhile, keeps its own entry; a cancel written takes the booked entry with it), and where
-- the booking lives is forgotten (PostgreSQL knows).
-- KEYS: 1 bookings, 2 pending (one show's hash tag), then per record i: 1 + 2i the user's
--       recent index, 2 + 2i where the booking lives.
-- ARGV: 1 show id, then pairs booking id, record ("user|seat|created_us|b or c").
-- Returns how many pending records were acknowledged.
local show = ARGV[1]
local acked = 0
for i = 1, (#ARGV - 1) / 2 do
  local booking, record = ARGV[2 * i], ARGV[2 * i + 1]
  local state = string.sub(record, -1)
  if redis.call('HGET', KEYS[2], booking) == record then
    redis.call('HDEL', KEYS[2], booking)
    acked = acked + 1
    if state == 'c' and redis.call('HGET', KEYS[1], booking) == record then
      redis.call('HDEL', KEYS[1], booking)
    end
  end
  if state == 'c' then
    -- A cancel supersedes the booked state, whether or not that was persisted on its own.
    redis.call('ZREM', KEYS[1 + 2 * i], booking .. ':' .. show .. ':c', booking .. ':' .. show .. ':b')
  else
    redis.call('ZREM', KEYS[1 + 2 * i], booking .. ':' .. show .. ':b')
  end
  redis.call('DEL', KEYS[2 + 2 * i])
end
return acked

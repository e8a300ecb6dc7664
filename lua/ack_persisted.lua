-- After the worker committed records to PostgreSQL: forget each pending record that has not
-- changed since it was read, and drop cancelled bookings (PostgreSQL now answers for them).
-- KEYS: 1 bookings, 2 pending (one show's hash tag). ARGV: pairs booking id, record.
-- Returns how many pending records were acknowledged.
local acked = 0
for i = 1, #ARGV, 2 do
  local booking, record = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[2], booking) == record then
    redis.call('HDEL', KEYS[2], booking)
    acked = acked + 1
    if string.sub(record, -1) == 'c' and redis.call('HGET', KEYS[1], booking) == record then
      redis.call('HDEL', KEYS[1], booking)
    end
  end
end
return acked

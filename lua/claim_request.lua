-- Claim an Idempotency-Key for one request, or tell what already holds it (one round trip,
-- atomic: of concurrent requests with one key, exactly one claims it).
-- KEYS: 1 the key (keys.idempotency).
-- ARGV: 1 this request's in-progress marker, 2 the marker's lifetime (seconds), so that a
--       crashed API process frees the key by itself.
-- Returns nil when claimed (the caller runs the request), else the key's value: the marker of a
-- request still running, or a stored answer.
local marker = ARGV[1]
local ttl = tonumber(ARGV[2])

local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], marker, 'EX', ttl)
return false

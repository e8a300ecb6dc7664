-- Settle a claimed Idempotency-Key: keep the request's answer, or release the key (after a
-- server error, so a retry runs for real). Only while the key still holds this request's own
-- marker: a request that outlived its marker must not overwrite or free a later claim.
-- KEYS: 1 the key (keys.idempotency).
-- ARGV: 1 the marker this request claimed with, 2 the answer to keep ("" releases the key),
--       3 how long the answer is kept (seconds).
-- Returns 1 when settled, 0 when the marker was no longer there.
local marker = ARGV[1]
local answer = ARGV[2]
local ttl = tonumber(ARGV[3])

if redis.call('GET', KEYS[1]) ~= marker then
  return 0
end
if answer == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], answer, 'EX', ttl)
end
return 1

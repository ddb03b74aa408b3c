-- Records a delivery attempt and moves the delivery on.
--
-- KEYS[1]   the delivery schedule (sorted set)
-- KEYS[2]   attempts per delivery (hash)
-- KEYS[3]   failed deliveries in a row per endpoint (hash)
-- KEYS[4]   the endpoint's attempt log (sorted set, scores 0, members "<attemptId>:<json>")
-- KEYS[5]   per delivery, the attempt log member its retry follows (hash)
-- ARGV[1]   delivery member ("<messageId> <endpointId>")
-- ARGV[2]   endpoint ID
-- ARGV[3]   attempt log member
-- ARGV[4]   how it ended: 'succeeded' | 'retry' | 'gave_up'
-- ARGV[5]   retry: next attempt (unix ms)
-- ARGV[6]   "attempts:first_attempt_ms" after this attempt
-- ARGV[7]   how many attempts the log keeps
-- ARGV[8]   '1' when this is the delivery's first attempt: a failed delivery counts once
--           toward the endpoint's failures in a row, however often it is retried
-- Returns the endpoint's failed deliveries in a row after this attempt.

-- The attempt this one retries was logged pending while this one was due: it failed.
local retried = redis.call('HGET', KEYS[5], ARGV[1])
if retried then
  redis.call('HDEL', KEYS[5], ARGV[1])
  if redis.call('ZREM', KEYS[4], retried) == 1 then
    local failed = string.gsub(retried, '"status":"pending"', '"status":"failed"', 1)
    redis.call('ZADD', KEYS[4], 0, failed)
  end
end
redis.call('ZADD', KEYS[4], 0, ARGV[3])
local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[7])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1)
end
if ARGV[4] == 'succeeded' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 0
end
if ARGV[4] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[6])
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if ARGV[8] == '1' then
  return redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
end
return tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')

-- Records a delivery attempt and moves the delivery on.
--
-- KEYS[1]   the delivery schedule (sorted set)
-- KEYS[2]   attempts per delivery (hash)
-- KEYS[3]   consecutive failures per endpoint (hash)
-- KEYS[4]   the endpoint's attempt log (sorted set, scores 0, members "<attemptId>:<json>")
-- ARGV[1]   delivery member ("<messageId> <endpointId>")
-- ARGV[2]   endpoint ID
-- ARGV[3]   attempt log member
-- ARGV[4]   how it ended: 'succeeded' | 'retry' | 'gave_up'
-- ARGV[5]   retry: next attempt (unix ms)
-- ARGV[6]   "attempts:first_attempt_ms" after this attempt
-- ARGV[7]   how many attempts the log keeps
-- Returns the endpoint's consecutive failures after this attempt.

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
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return redis.call('HINCRBY', KEYS[3], ARGV[2], 1)

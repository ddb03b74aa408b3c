-- Leases deliveries that are due: each claimed delivery is pushed ARGV[2] ms into the future,
-- so it comes back to any worker if this one does not finish it by then.
--
-- KEYS[1]   the delivery schedule (sorted set)
-- KEYS[2]   attempts per delivery (hash: member -> "attempts:first_attempt_ms")
-- ARGV[1]   now (unix ms)
-- ARGV[2]   lease in ms
-- ARGV[3]   most deliveries to claim
-- Returns {member1, tries1, member2, tries2, ...} ('' tries for a first attempt).

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
  out[#out + 1] = member
  out[#out + 1] = redis.call('HGET', KEYS[2], member) or ''
end
return out

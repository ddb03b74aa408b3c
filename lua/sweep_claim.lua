-- Claims the next outbox sweep for the calling node, so that the nodes between them sweep at
-- most once per interval (a sweep reads every customer's outbox length).
--
-- KEYS[1]  the claim: unix ms of the last claimed sweep
-- ARGV[1]  now, unix ms (the node's calibrated clock)
-- ARGV[2]  the sweep interval, ms
-- Returns 1 when the caller should sweep now, 0 when a node swept less than an interval ago.

local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[1]))
if last and now < last + interval then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', 2 * interval)
return 1

-- Schedules a queued alert message for its endpoints, once per message ID.
--
-- KEYS[1]   the message record (string, kept ARGV[2] ms)
-- KEYS[2]   the delivery schedule (sorted set: "<messageId> <endpointId>" -> next attempt ms)
-- ARGV[1]   message ID
-- ARGV[2]   message TTL in ms
-- ARGV[3]   now (unix ms)
-- ARGV[4]   the message (JSON)
-- ARGV[5..] endpoint IDs
-- Returns 1 if scheduled now, 0 if the message was handed over before (nothing changes).

if not redis.call('SET', KEYS[1], ARGV[4], 'NX', 'PX', ARGV[2]) then
  return 0
end
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1] .. ' ' .. ARGV[i])
end
return 1

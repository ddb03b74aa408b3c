-- Moves a held reservation's expiry: its record and each of its holds.
--
-- KEYS[1]   reservation record (hash: doc, status, eventId)
-- KEYS[2]   the customer's holds hash ("<counter key>|<reservation id>" -> "amount:expires_at_ms")
-- ARGV[1]   reservation ID
-- ARGV[2]   the new reservation document (JSON)
-- ARGV[3]   TTL in ms of the record from now on
-- ARGV[4..] pairs: a counter key the reservation holds on, and that hold's new expiry (unix ms)
-- Returns 1 when extended, 0 when the reservation is not held (or gone), 2 when it already
-- lasts longer (its record outlives ARGV[3]: a concurrent extend went further), unchanged.

if redis.call('HGET', KEYS[1], 'status') ~= 'held' then
  return 0
end
if redis.call('PTTL', KEYS[1]) >= tonumber(ARGV[3]) then
  return 2
end
for i = 4, #ARGV, 2 do
  local field = ARGV[i] .. '|' .. ARGV[1]
  local entry = redis.call('HGET', KEYS[2], field)
  if entry then
    local amount = string.match(entry, '^(.+):%d+$')
    redis.call('HSET', KEYS[2], field, amount .. ':' .. ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[2], 3660000)
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1

-- Moves a held reservation's expiry: its record and each of its holds.
--
-- KEYS[1]   reservation record (hash: doc, status, eventId)
-- KEYS[2..] the holds hashes the reservation added to
-- ARGV[1]   reservation ID
-- ARGV[2]   the new reservation document (JSON)
-- ARGV[3]   TTL in ms of the record from now on
-- ARGV[4..] for each holds hash, in order, the hold's new expiry (unix ms)
-- Returns 1 when extended, 0 when the reservation is not held (or gone).

if redis.call('HGET', KEYS[1], 'status') ~= 'held' then
  return 0
end
for i = 2, #KEYS do
  local entry = redis.call('HGET', KEYS[i], ARGV[1])
  if entry then
    local amount = string.match(entry, '^(.+):%d+$')
    redis.call('HSET', KEYS[i], ARGV[1], amount .. ':' .. ARGV[2 + i])
  end
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1

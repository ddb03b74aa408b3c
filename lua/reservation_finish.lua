-- Ends a reservation: drops its holds and records its final status, once.
--
-- KEYS[1]   reservation record (hash: doc, status, eventId, values)
-- KEYS[2]   the customer's holds hash ("<counter key>|<reservation id>" -> "amount:expires_at_ms")
-- ARGV[1]   reservation ID
-- ARGV[2]   new status: 'committing' (a commit starts), 'committed' or 'released'
-- ARGV[3]   event ID of the commit ('' for release)
-- ARGV[4]   TTL in ms of the record from now on (kept for reads after the end)
-- ARGV[5]   the values the commit recorded (JSON; '' for release)
-- ARGV[6]   '1' when this commit's event was the one counted: its values replace any that
--           another commit of the same reservation stored; '0': stored only if none are
-- ARGV[7..] the keys of the counters the reservation holds on
-- Returns {status, eventId}: the status after the call ('missing' if there is no record).
-- A second commit or release answers the status already set; the caller decides whether
-- that is a replay (same outcome) or a conflict (committed vs released). While a commit runs
-- (committing: its event is being counted), a release or another start changes nothing and
-- answers that status with the first commit's event ID; only the commit's end follows it.

local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'missing', ''}
end
if ARGV[5] ~= '' and status ~= 'released' then
  if ARGV[6] == '1' then
    redis.call('HSET', KEYS[1], 'values', ARGV[5])
  else
    redis.call('HSETNX', KEYS[1], 'values', ARGV[5])
  end
end
if status == 'committed' or status == 'released'
    or (status == 'committing' and ARGV[2] ~= 'committed') then
  return {status, redis.call('HGET', KEYS[1], 'eventId') or ''}
end
if ARGV[2] == 'committing' then
  redis.call('HSET', KEYS[1], 'status', 'committing', 'eventId', ARGV[3])
  return {'committing', ARGV[3]}
end
for i = 7, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i] .. '|' .. ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'eventId', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {ARGV[2], ARGV[3]}

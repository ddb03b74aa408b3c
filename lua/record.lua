-- Records one usage event atomically: de-duplication, every counter and roll-up, the log.
--
-- KEYS[1]   idempotency record (any key of the customer's slot when ARGV[1] is 0)
-- KEYS[2]   the customer's event log (sorted set, all scores 0, ordered by member)
-- KEYS[3..] one key per op below, in order
-- ARGV[1]   idempotency TTL in ms; 0: no de-duplication
-- ARGV[2]   event ID
-- ARGV[3]   event log member
-- ARGV[4]   exclusive lexical bound below which log members are trimmed
-- ARGV[5]   event log TTL in ms
-- ARGV[6..] ops, 5 values each: kind, field, value, at_ms, expire_at_ms (0: no expiry)
--   kinds: add | max | latest (string keys; latest holds "value@at_ms")
--          hadd | hmax | hlatest | hsetnx (hash fields; hlatest keeps at_ms in "<field>@")
-- Returns {1, first_event_id} for a duplicate, else {0, before1, after1, before2, after2, ...}
-- with one pair per op ("" for a value that did not exist).

if tonumber(ARGV[1]) > 0 then
  local first = redis.call('GET', KEYS[1])
  if first then
    return {1, first}
  end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end

local out = {0}
local op_count = (#ARGV - 5) / 5
for i = 1, op_count do
  local b = 5 + (i - 1) * 5
  local kind, field, value, at, expire = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local key = KEYS[2 + i]
  local before, after
  if kind == 'add' then
    before = redis.call('GET', key)
    after = redis.call('INCRBYFLOAT', key, value)
  elseif kind == 'max' then
    before = redis.call('GET', key)
    if not before or tonumber(value) > tonumber(before) then
      redis.call('SET', key, value, 'KEEPTTL')
      after = value
    else
      after = before
    end
  elseif kind == 'latest' then
    before = redis.call('GET', key)
    local before_at = before and tonumber(string.match(before, '@(.+)$'))
    if not before_at or tonumber(at) >= before_at then
      after = value .. '@' .. at
      redis.call('SET', key, after, 'KEEPTTL')
    else
      after = before
    end
  elseif kind == 'hadd' then
    before = redis.call('HGET', key, field)
    after = redis.call('HINCRBYFLOAT', key, field, value)
  elseif kind == 'hmax' then
    before = redis.call('HGET', key, field)
    if not before or tonumber(value) > tonumber(before) then
      redis.call('HSET', key, field, value)
      after = value
    else
      after = before
    end
  elseif kind == 'hlatest' then
    before = redis.call('HGET', key, field)
    local before_at = tonumber(redis.call('HGET', key, field .. '@'))
    if not before_at or tonumber(at) >= before_at then
      redis.call('HSET', key, field, value, field .. '@', at)
      after = value
    else
      after = before
    end
  elseif kind == 'hsetnx' then
    redis.call('HSETNX', key, field, value)
    after = value
  else
    return redis.error_reply('unknown op ' .. kind)
  end
  if expire ~= '0' and redis.call('PTTL', key) == -1 then
    redis.call('PEXPIREAT', key, expire)
  end
  out[#out + 1] = before or ''
  out[#out + 1] = after
end

redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('ZREMRANGEBYLEX', KEYS[2], '-', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])

return out

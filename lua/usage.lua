-- One usage decision or write for one event, atomically: de-duplication, optional limit
-- checks against caps, then every counter, roll-up and the event log (or, for a reservation,
-- holds on the counters instead of usage).
--
-- KEYS[1]   idempotency record (any key of the customer's slot when ARGV[3] is 0)
-- KEYS[2]   the customer's event log (list, oldest first)
-- KEYS[3]   reservation record (hash; any key of the slot unless ARGV[1] is 'reserve')
-- KEYS[4..] two keys per op below, in order: the key itself, then the customer's holds hash
--           ("<counter key>|<reservation id>" -> "amount:expires_at_ms"; repeat the key for ops
--           that hold nothing)
-- ARGV[1]   mode: 'record' (always writes), 'consume' (writes only if every cap holds),
--           'reserve' (if every cap holds, adds holds instead of usage)
-- ARGV[2]   now, unix ms (the node's calibrated clock: holds expire against it)
-- ARGV[3]   idempotency TTL in ms; 0: no de-duplication
-- ARGV[4]   event ID (record/consume) or reservation ID (reserve)
-- ARGV[5]   event log member ('' for none)
-- ARGV[6]   how many events the log keeps at most (the oldest go first)
-- ARGV[7]   event log TTL in ms (refreshed on about one write in 64)
-- ARGV[8]   reservation record: JSON document ('' unless reserving)
-- ARGV[9]   reservation record TTL in ms
-- ARGV[10]  number of ops n
-- ARGV[11..] ops, 7 values each: kind, field, value, at_ms, expire_at_ms (0: none),
--           cap ('' for none), hold_expires_at_ms (reserve: when this op's hold ends)
-- then      number of alert rules m, and 8 values per rule: index of the op (counter) it
--           watches, limit value, thresholds ("80,100,x": percents, x = exceeded), fired-set
--           expiry (unix ms, 0: none), message ID base, limit ID, window start and end (unix ms,
--           0 for all-time)
-- KEYS after the op keys: the customer's alert outbox (list), then one fired-set per rule.
-- Alerts (record and consume only): when a counter moves from below a threshold to at least
-- it, and the rule's fired-set had not seen that threshold in this window, a message is
-- appended to the outbox, so the crossing survives whatever happens to the node after.
--   kinds: add | max | latest (string keys; latest holds "value@at_ms")
--          hadd | hmax | hlatest | hsetnx (hash fields; hlatest keeps at_ms in "<field>@")
-- Returns {1, first_id} for a duplicate;
--         {2, used1, reserved1, used2, reserved2, ...} when a cap does not hold (nothing written);
--         {0, alerts, before1, after1, reserved1, ...} otherwise (alerts: messages queued);
--         values are strings, '' when absent.

local mode, now = ARGV[1], tonumber(ARGV[2])
local first_op = 11
local op_count = tonumber(ARGV[10])
local first_rule = first_op + op_count * 7
local rule_count = tonumber(ARGV[first_rule] or '0')
local outbox_key = KEYS[4 + 2 * op_count]

local function op_args(i)
  local b = first_op + (i - 1) * 7
  return ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
end

-- Live holds per counter key, read once for all counters; expired holds are dropped.
local held_by_counter = nil
local function held_on(key, holds_key)
  if holds_key == key then
    return 0
  end
  if held_by_counter == nil then
    held_by_counter = {}
    local entries = redis.call('HGETALL', holds_key)
    for j = 1, #entries, 2 do
      local counter = string.match(entries[j], '^(.*)|[^|]*$')
      local amount, expires = string.match(entries[j + 1], '^(.+):(%d+)$')
      if tonumber(expires) > now then
        held_by_counter[counter] = (held_by_counter[counter] or 0) + tonumber(amount)
      else
        redis.call('HDEL', holds_key, entries[j])
      end
    end
  end
  return held_by_counter[key] or 0
end

-- Recording never refuses, so it claims the idempotency key at once (one call); decisions
-- claim it only once they know they write.
local dedupe = tonumber(ARGV[3]) > 0
if dedupe then
  local first
  if mode == 'record' then
    first = redis.call('SET', KEYS[1], ARGV[4], 'NX', 'PX', ARGV[3], 'GET')
  else
    first = redis.call('GET', KEYS[1])
  end
  if first then
    return {1, first}
  end
end

local reserved = {}
local refused = false
local state = {2}
for i = 1, op_count do
  local kind, _, value, _, _, cap = op_args(i)
  local key, holds_key = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local held = held_on(key, holds_key)
  reserved[i] = held
  if mode ~= 'record' and cap ~= '' then
    local used = redis.call('GET', key) or ''
    local current = tonumber((string.gsub(used, '@.*', ''))) or 0
    local v, limit = tonumber(value), tonumber(cap)
    if kind == 'add' then
      if current + held + v > limit then refused = true end
    elseif kind == 'max' then
      if math.max(current, v) > limit then refused = true end
    elseif v > limit then
      refused = true
    end
    state[#state + 1] = used
  else
    state[#state + 1] = ''
  end
  state[#state + 1] = tostring(held)
end
if refused then
  return state
end

if dedupe and mode ~= 'record' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
end

local out = {0, '0'}

if mode == 'reserve' then
  for i = 1, op_count do
    local kind, _, value, _, _, _, hold_expires = op_args(i)
    local key, holds_key = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
    local held = reserved[i]
    if kind == 'add' and holds_key ~= key then
      redis.call('HSET', holds_key, key .. '|' .. ARGV[4], value .. ':' .. hold_expires)
      -- No hold lives longer than the longest reservation (an hour) from its last change.
      redis.call('PEXPIRE', holds_key, 3660000)
      held = held + tonumber(value)
    end
    local used = redis.call('GET', key) or ''
    out[#out + 1] = used
    out[#out + 1] = used
    out[#out + 1] = tostring(held)
  end
  redis.call('HSET', KEYS[3], 'doc', ARGV[8], 'status', 'held')
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  return out
end

-- Numeric values before and after each op, for the alert rules below.
local number_before, number_after = {}, {}
for i = 1, op_count do
  local kind, field, value, at, expire = op_args(i)
  local key = KEYS[2 + 2 * i]
  local before, after
  -- Sums learn whether they created the key from their result, which saves a read; the
  -- others check the TTL.
  local created = nil
  if kind == 'add' then
    after = redis.call('INCRBYFLOAT', key, value)
    local a, v = tonumber(after), tonumber(value)
    number_before[i], number_after[i] = a - v, a
    before = tostring(a - v)
    created = a == v
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
    after = redis.call('HINCRBYFLOAT', key, field, value)
    before = tostring(tonumber(after) - tonumber(value))
    created = tonumber(after) == tonumber(value)
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
    created = redis.call('HSETNX', key, field, value) == 1
    after = value
  else
    return redis.error_reply('unknown op ' .. kind)
  end
  if expire ~= '0' then
    if created == nil then
      created = redis.call('PTTL', key) == -1
    end
    if created then
      redis.call('PEXPIREAT', key, expire)
    end
  end
  out[#out + 1] = before or ''
  out[#out + 1] = after
  out[#out + 1] = tostring(reserved[i] or 0)
  if number_after[i] == nil then
    number_before[i] = tonumber((string.gsub(before or '', '@.*', ''))) or 0
    number_after[i] = tonumber((string.gsub(after or '', '@.*', ''))) or 0
  end
end

-- Threshold crossings, once per (limit, window, threshold).
local alerts = 0
for r = 1, rule_count do
  local b = first_rule + 1 + (r - 1) * 8
  local op_index, limit, thresholds, fired_expire = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3]
  local before, after = number_before[op_index], number_after[op_index]
  local fired_key = KEYS[4 + 2 * op_count + r]
  -- Most limits watch only "exceeded"; nothing can cross unless usage grew past a level.
  for threshold in string.gmatch(after > before and thresholds or '', '[^,]+') do
    local percent = threshold == 'x' and 100 or tonumber(threshold)
    local level = limit * percent / 100
    if before < level and after >= level and redis.call('SADD', fired_key, threshold) == 1 then
      if fired_expire ~= '0' then
        redis.call('PEXPIREAT', fired_key, fired_expire)
      end
      redis.call('RPUSH', outbox_key, cjson.encode({
        id = 'msg_' .. ARGV[b + 4] .. threshold,
        exceeded = threshold == 'x',
        threshold = percent,
        limitId = ARGV[b + 5],
        windowStartMs = tonumber(ARGV[b + 6]),
        windowEndMs = tonumber(ARGV[b + 7]),
        limit = limit,
        usage = after,
        atMs = now,
      }))
      alerts = alerts + 1
    end
  end
end
out[2] = tostring(alerts)

-- The log is trimmed when it outgrows its cap, and its TTL refreshed now and then: an active
-- customer's log never expires, an idle one's goes ARGV[7] ms after its last refresh.
if ARGV[5] ~= '' then
  local length = redis.call('RPUSH', KEYS[2], ARGV[5])
  if length > tonumber(ARGV[6]) then
    redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
  end
  -- About one write in 64 (by the clock's last digits), and always for a new log.
  if length == 1 or now % 64 == 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[7])
  end
end

return out

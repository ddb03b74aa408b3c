-- Usage decisions or writes for one or more events, each atomically: de-duplication, optional
-- limit checks against caps, then every counter, roll-up and the event log (or, for a
-- reservation, holds on the counters instead of usage). It runs on every hot request, so it
-- stays lean: one MGET for the capped counters, one call per write, PEXPIREAT only on a key it
-- created. Several events in one call share its fixed cost (the node sends a batch's events
-- together); they run one after the other, as separate calls would.
--
-- ARGV[1] is the number of events; ARGV[2] the call's deadline, unix ms on the Redis server's
-- clock (0: none); then, per event, how many keys and how many arguments it has, then its
-- arguments. KEYS holds the events' keys one event after the other. Every
-- argument costs Redis and Lua an object per call, so the layout passes only what the event
-- needs and packs what is read rarely (an alert rule's details) into one string.
-- Within one event's keys and arguments (numbered from 1 below):
--
-- KEYS[1]   the customer's event log (list, oldest first)
-- KEYS[2]   the customer's holds hash ("<counter key>|<reservation id>" -> "amount:expires_at_ms")
-- KEYS[3]   the customer's alert outbox (list)
-- KEYS[4 .. 3+n]  one key per op below
-- then      the idempotency record, when ARGV[3] is not 0
-- then      the reservation record (hash), when reserving
-- ARGV[1]   mode: 'record' (always writes), 'consume' (writes only if every cap holds),
--           'reserve' (if every cap holds, adds holds instead of usage)
-- ARGV[2]   now, unix ms (the node's calibrated clock: holds expire against it)
-- ARGV[3]   idempotency TTL in ms; 0: no de-duplication
-- ARGV[4]   event ID (record/consume) or reservation ID (reserve)
-- ARGV[5]   event log member ('' for none)
-- ARGV[6]   how many events the log keeps (it is trimmed back to that when 1/8 over)
-- ARGV[7]   event log TTL in ms (from this write)
-- ARGV[8]   number of ops n; ARGV[9] how many of them (the first) are limit counters, c;
-- ARGV[10]  number of alert rules m
-- ARGV[11..] ops, 4 values each: kind, value ("value@at_ms" for latest kinds), expire_at_ms
--           (set when the op creates the key; 0: none), then the cap ('' for none) for string
--           kinds or the field for hash kinds
-- then      rules, 3 values each: index of the counter op it watches, the lowest threshold's
--           level (absolute), and "limit|thresholds|limit ID|window start|window end|fired
--           set": thresholds as "80,100,x" (percents, x = exceeded), the window in unix ms
--           (0 for all-time), the set of thresholds that fired in this window, which
--           expires with its counter; only read when usage reaches the lowest level
-- then      (reserve only) the reservation record's JSON document and TTL in ms, and c hold
--           expiries, unix ms, one per counter op
-- then      (record only, a commit) the fields of the holds hash to drop once the event is
--           counted: the committed reservation's holds go in the step that counts its cost
--   kinds: add | max | latest (string keys; latest holds "value@at_ms")
--          hadd | hmax | hlatest | hsetnx (hash fields; hlatest keeps at_ms in "<field>@")
-- Only 'add' counters carry holds.
-- Alerts (record and consume only): when a counter moves from below a threshold to at least
-- it, and the rule's fired-set had not seen that threshold in this window, a message is
-- appended to the outbox, so the crossing survives whatever happens to the node after.
-- Returns one answer per event:
--         {1, first_id} for a duplicate;
--         {2, used1, reserved1, ...} when a cap does not hold (nothing written);
--         {0, alerts, used1, reserved1, ...} otherwise (after the write; reserved after a
--         reserve), for the c counter ops. Integers come back as integers, other numbers and
--         stored values as strings.

-- Globals and library functions as locals: a global lookup on every use costs, and this
-- runs for every counted event.
local KEYS, ARGV = KEYS, ARGV
local call, try_call = redis.call, redis.pcall
local tonumber, type, unpack = tonumber, type, unpack
local match, gmatch, format = string.match, string.gmatch, string.format
local floor, ceil, max, abs = math.floor, math.ceil, math.max, math.abs
-- Numeric arguments are read as `text + 0`: Lua 5.1's tonumber on a string runs strtod twice
-- (lua_isnumber, then lua_tonumber), arithmetic coercion once, and this script reads dozens
-- of numbers per event.

-- An exact integer reply when it is one, else its text (a Lua number would be truncated), with
-- every digit a double has: tostring keeps 14, which loses the ninth decimal past 1e5.
local function reply_number(x)
  if x == floor(x) and x > -1e15 and x < 1e15 then
    return x
  end
  return format('%.17g', x)
end

-- A total to nine decimal places, as the gateway rounds it (src/domain/field.rs `total`, the
-- same double operations): 0.2 + 0.1 is 0.3, so a third 0.1 fits under a limit of 0.3.
local function total(x)
  if x > -9e6 and x < 9e6 then
    return floor(x * 1e9 + 0.5) / 1e9
  end
  return x
end

-- Stored counters: plain numbers, or "value@at_ms" for latest.
local function stored_number(raw)
  if not raw then
    return 0
  end
  return tonumber(raw) or tonumber(match(raw, '^[^@]*')) or 0
end

-- Live holds per counter key in a customer's holds hash; expired holds are dropped.
local function live_holds(holds_key, now)
  local held_by_counter = {}
  local entries = call('HGETALL', holds_key)
  for j = 1, #entries, 2 do
    local counter = match(entries[j], '^(.*)|[^|]*$')
    local amount, expires = match(entries[j + 1], '^(.+):(%d+)$')
    if tonumber(expires) > now then
      held_by_counter[counter] = (held_by_counter[counter] or 0) + tonumber(amount)
    else
      call('HDEL', holds_key, entries[j])
    end
  end
  return held_by_counter
end

-- Adds value (its text, and number, the same parsed once: tonumber on a string costs two
-- strtod calls) to a string key (field nil) or a hash field. Integer arithmetic is much
-- cheaper in Redis than float, so whole values try it first; a counter that already holds a
-- fraction (or would overflow) refuses it, and the float command does the work.
local function increment(key, field, value, number)
  if number % 1 == 0 then
    local result
    if field then
      result = try_call('HINCRBY', key, field, value)
    else
      result = try_call('INCRBY', key, value)
    end
    if type(result) == 'number' then
      return result
    end
  end
  if field then
    return tonumber(call('HINCRBYFLOAT', key, field, value))
  end
  return call('INCRBYFLOAT', key, value)
end

-- Whether a sum that reads `after` once `v` was added may have created its key. A wrong yes
-- only sets the key's fixed expiry again; a wrong no would leave a key that never expires. So
-- a fraction (added by the float command, which stores 17 decimals: 1e-18 added to nothing
-- reads back 0) is compared allowing for rounding; a whole value, exactly.
local function just_created(after, v)
  return after == v or (v % 1 ~= 0 and abs(after - v) <= 1e-9 * max(1, abs(v)))
end

-- One event: its keys are KEYS[kb + 1 ..], its arguments ARGV[ab + 1 .. ab + args] (laid out
-- as above).
local function run(kb, ab, args)
  local mode, now = ARGV[ab + 1], ARGV[ab + 2] + 0
  local n, c, m = ARGV[ab + 8] + 0, ARGV[ab + 9] + 0, ARGV[ab + 10] + 0
  local OPS, RULES = ab + 11, ab + 11 + 4 * n
  local log_key, holds_key, outbox_key = KEYS[kb + 1], KEYS[kb + 2], KEYS[kb + 3]
  local OP_KEYS = kb + 3
  local dedupe = ARGV[ab + 3] ~= '0'
  local dedupe_key = dedupe and KEYS[OP_KEYS + n + 1]

  -- Recording never refuses, so it claims the idempotency key at once (one call); decisions
  -- claim it only once they know they write.
  if dedupe then
    local first
    if mode == 'record' then
      first = call('SET', dedupe_key, ARGV[ab + 4], 'NX', 'PX', ARGV[ab + 3], 'GET')
    else
      first = call('GET', dedupe_key)
    end
    if first then
      return {1, first}
    end
  end

  -- A commit's holds go in the step that counts its cost, before the holds are read, so the
  -- answer shows what stays held.
  local released = RULES + 3 * m
  if mode == 'record' and released <= ab + args then
    call('HDEL', holds_key, unpack(ARGV, released, ab + args))
  end

  -- Current values of the counters, and what is held on each.
  local current, held = {}, {}
  if mode ~= 'record' then
    local capped = {}
    for i = 1, c do
      if ARGV[OPS + 4 * i - 1] ~= '' then
        capped[#capped + 1] = KEYS[OP_KEYS + i]
      end
    end
    if #capped > 0 then
      local values = call('MGET', unpack(capped))
      local j = 0
      for i = 1, c do
        if ARGV[OPS + 4 * i - 1] ~= '' then
          j = j + 1
          current[i] = values[j]
        end
      end
    end
  end
  local holds = nil
  for i = 1, c do
    held[i] = 0
    if ARGV[OPS + 4 * (i - 1)] == 'add' then
      holds = holds or live_holds(holds_key, now)
      held[i] = holds[KEYS[OP_KEYS + i]] or 0
    end
  end

  if mode ~= 'record' then
    local refused = false
    for i = 1, c do
      local b = OPS + 4 * (i - 1)
      local cap = ARGV[b + 3]
      if cap ~= '' then
        local kind, limit = ARGV[b], cap + 0
        if kind == 'add' then
          refused = refused or total((current[i] or 0) + held[i] + ARGV[b + 1]) > limit
        elseif kind == 'max' then
          refused = refused or max(stored_number(current[i]), ARGV[b + 1] + 0) > limit
        else
          refused = refused or stored_number(ARGV[b + 1]) > limit
        end
      end
    end
    if refused then
      local state = {2}
      for i = 1, c do
        state[#state + 1] = current[i] or ''
        state[#state + 1] = reply_number(held[i])
      end
      return state
    end
    if dedupe then
      call('SET', dedupe_key, ARGV[ab + 4], 'PX', ARGV[ab + 3])
    end
  end

  local out = {0, 0}

  if mode == 'reserve' then
    local reservation_key = KEYS[OP_KEYS + n + (dedupe and 2 or 1)]
    local doc, ttl, first_expiry = ARGV[RULES + 3 * m], ARGV[RULES + 3 * m + 1], RULES + 3 * m + 2
    local holding = false
    for i = 1, c do
      local b = OPS + 4 * (i - 1)
      local key = KEYS[OP_KEYS + i]
      local h = held[i]
      if ARGV[b] == 'add' then
        local amount = ARGV[b + 1]
        call('HSET', holds_key, key .. '|' .. ARGV[ab + 4], amount .. ':' .. ARGV[first_expiry + i - 1])
        h = h + tonumber(amount)
        holding = true
      end
      out[#out + 1] = current[i] or call('GET', key) or ''
      out[#out + 1] = reply_number(h)
    end
    -- No hold lives longer than the longest reservation (an hour) from its last change.
    if holding then
      call('PEXPIRE', holds_key, 3660000)
    end
    call('HSET', reservation_key, 'doc', doc, 'status', 'held')
    call('PEXPIRE', reservation_key, ttl)
    return out
  end

  -- Numeric values before and after each counter op, for the alert rules.
  local before_of, after_of = {}, {}
  for i = 1, n do
    local b = OPS + 4 * (i - 1)
    local kind, value, expire, field = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    local key = KEYS[OP_KEYS + i]
    local before, after, result
    -- Sums learn whether they created the key from their result, which saves a read.
    local created = nil
    if kind == 'add' then
      local v = value + 0
      result = increment(key, nil, value, v)
      after = tonumber(result)
      before = after - v
      created = just_created(after, v)
    elseif kind == 'hadd' then
      local v = value + 0
      after = increment(key, field, value, v)
      created = just_created(after, v)
    elseif kind == 'max' then
      local old = current[i] or call('GET', key)
      before = stored_number(old)
      if not old or tonumber(value) > before then
        call('SET', key, value, 'KEEPTTL')
        result, after = value, tonumber(value)
      else
        result, after = old, before
      end
      created = not old
    elseif kind == 'latest' then
      local old = current[i] or call('GET', key)
      before = stored_number(old)
      local old_at = old and tonumber(match(old, '@(.+)$'))
      local at = tonumber(match(value, '@(.+)$'))
      if not old_at or at >= old_at then
        call('SET', key, value, 'KEEPTTL')
        result = value
      else
        result = old
      end
      after = stored_number(result)
      created = not old
    elseif kind == 'hmax' then
      local old = call('HGET', key, field)
      if not old or tonumber(value) > tonumber(old) then
        call('HSET', key, field, value)
      end
      created = not old
    elseif kind == 'hlatest' then
      local v, at = match(value, '^(.*)@(.+)$')
      local old_at = tonumber(call('HGET', key, field .. '@'))
      if not old_at or tonumber(at) >= old_at then
        call('HSET', key, field, v, field .. '@', at)
      end
      created = not old_at
    elseif kind == 'hsetnx' then
      created = call('HSETNX', key, field, value) == 1
    else
      return redis.error_reply('unknown op ' .. kind)
    end
    -- Expiries are fixed per key (its window's or hour's end), so setting one again when a
    -- "created" guess is wrong changes nothing.
    if expire ~= '0' and created then
      call('PEXPIREAT', key, expire)
    end
    if i <= c then
      before_of[i], after_of[i] = before, after
      out[#out + 1] = result
      out[#out + 1] = reply_number(held[i])
    end
  end

  -- Threshold crossings, once per (limit, window, threshold).
  local alerts = 0
  for r = 1, m do
    local b = RULES + 3 * (r - 1)
    local op_index = ARGV[b] + 0
    local before, after = before_of[op_index], after_of[op_index]
    -- Nothing can cross unless usage grew to at least the lowest level.
    if after > before and after >= ARGV[b + 1] + 0 then
      local limit, thresholds, limit_id, window_start, window_end, fired_key =
        match(ARGV[b + 2], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
      local limit_text = limit
      limit = tonumber(limit)
      for threshold in gmatch(thresholds, '[^,]+') do
        local percent = threshold == 'x' and 100 or tonumber(threshold)
        local level = limit * percent / 100
        if before < level and after >= level and call('SADD', fired_key, threshold) == 1 then
          local expire = ARGV[OPS + 4 * (op_index - 1) + 2]
          if expire ~= '0' then
            call('PEXPIREAT', fired_key, expire)
          end
          -- The node names the message when it hands the outbox over (the ID is a hash).
          -- cjson writes numbers with 14 digits: the limit and the usage also go as text.
          call('RPUSH', outbox_key, cjson.encode({
            exceeded = threshold == 'x',
            threshold = percent,
            limitId = limit_id,
            windowStartMs = tonumber(window_start),
            windowEndMs = tonumber(window_end),
            limit = limit,
            usage = after,
            limitText = limit_text,
            usageText = format('%.17g', after),
            atMs = now,
          }))
          alerts = alerts + 1
        end
      end
    end
  end
  out[2] = alerts

  -- The log is trimmed once it outgrows its cap by an eighth, and its TTL refreshed by every
  -- write: it goes ARGV[ab + 7] ms after the customer's last event, never with events younger
  -- than that in it. Readers take the newest ARGV[ab + 6] members.
  if ARGV[ab + 5] ~= '' then
    local length = call('RPUSH', log_key, ARGV[ab + 5])
    local cap = ARGV[ab + 6] + 0
    if length > cap + ceil(cap / 8) then
      call('LTRIM', log_key, -cap, -1)
    end
    call('PEXPIRE', log_key, ARGV[ab + 7])
  end

  return out
end

-- A call that reaches Redis after its deadline writes nothing and answers 'late': the node
-- has already answered without it (degraded, or 503), and a refusal or failure it reported
-- must not be counted after all.
local deadline = ARGV[2] + 0
if deadline > 0 then
  local time = call('TIME')
  if time[1] * 1000 + floor(time[2] / 1000) > deadline then
    return redis.error_reply('LATE the call arrived after its deadline')
  end
end

local answers = {}
local kb, ab = 0, 2
for e = 1, ARGV[1] + 0 do
  local keys, args = ARGV[ab + 1] + 0, ARGV[ab + 2] + 0
  answers[e] = run(kb, ab + 2, args)
  kb, ab = kb + keys, ab + 2 + args
end
return answers

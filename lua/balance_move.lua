-- A credit or debit of one balance, with its transaction record, atomically.
--
-- KEYS[1]  what the balance has spent (string counter, shared with lua/usage.lua)
-- KEYS[2]  the balance's transactions (sorted set, scores 0, ordered by member)
-- KEYS[3]  the idempotency record, when ARGV[5] is not 0
-- ARGV[1]  how spent moves (positive: debit, negative: credit)
-- ARGV[2]  refuse when spent + ARGV[1] would exceed this ('' for never)
-- ARGV[3]  transaction ID
-- ARGV[4]  transaction entry (JSON)
-- ARGV[5]  idempotency TTL in ms; 0: no de-duplication
-- Returns {0, member} when applied (member: "<id>|<spent after>|<entry>"); {2, spent} when
-- refused (nothing moved; with a key, "refused|<spent>|<entry>" is kept under it, so a repeat is
-- refused again even after a credit); {1, what the key holds} for a repeat of a key.

local spent_key, log_key = KEYS[1], KEYS[2]
local change, ceiling = ARGV[1], ARGV[2]
local dedupe = ARGV[5] ~= '0'

if dedupe then
  local first = redis.call('GET', KEYS[3])
  if first then
    return {1, first}
  end
end

if ceiling ~= '' then
  local spent = redis.call('GET', spent_key) or '0'
  -- To nine decimal places, as the gateway rounds totals (src/domain/field.rs `total`).
  local would_spend = tonumber(spent) + tonumber(change)
  if would_spend > -9e6 and would_spend < 9e6 then
    would_spend = math.floor(would_spend * 1e9 + 0.5) / 1e9
  end
  if would_spend > tonumber(ceiling) then
    if dedupe then
      redis.call('SET', KEYS[3], 'refused|' .. spent .. '|' .. ARGV[4], 'PX', ARGV[5])
    end
    return {2, spent}
  end
end

-- Whole amounts stay exact integers; a counter holding a fraction takes the float command.
local after
if tonumber(change) % 1 == 0 then
  local result = redis.pcall('INCRBY', spent_key, change)
  if type(result) == 'number' then
    after = string.format('%d', result)
  end
end
if not after then
  after = redis.call('INCRBYFLOAT', spent_key, change)
end

local member = ARGV[3] .. '|' .. after .. '|' .. ARGV[4]
redis.call('ZADD', log_key, 0, member)
if dedupe then
  redis.call('SET', KEYS[3], member, 'PX', ARGV[5])
end
return {0, member}

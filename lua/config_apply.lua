-- Applies a batch of configuration changes atomically and logs each change.
--
-- KEYS[1]          change log stream
-- KEYS[2k], KEYS[2k+1]  document hash and ID index (sorted set) of kind k (1-based, Kind::ALL order)
-- KEYS[#KEYS]      versions hash: '<k>:<id>' -> how often the document was touched
-- ARGV[1]          approximate maximum length of the change log
-- ARGV[2..]        ops, 4 values each: opcode, kind position k, id, doc
--   opcodes: put (always), put_absent (guard: must not exist), put_present (guard: must exist),
--            put_if_absent (write only if absent, never fails), del, del_present (guard: must
--            exist), require (guard: must exist, writes nothing), touch (moves the
--            document's version, never fails), unchanged (guard: the document's version is
--            still doc, writes nothing)
-- Returns {0, ID of the last change logged ('' for none)} when applied, or {the 1-based index
-- of the first op whose guard failed, ''} (nothing is written then). Guards see the state
-- before the batch.

local op_count = (#ARGV - 1) / 4
local versions = KEYS[#KEYS]

for i = 0, op_count - 1 do
  local base = 2 + 4 * i
  local op, k, id = ARGV[base], tonumber(ARGV[base + 1]), ARGV[base + 2]
  if op == 'unchanged' then
    local version = redis.call('HGET', versions, k .. ':' .. id) or '0'
    if version ~= ARGV[base + 3] then
      return {i + 1, ''}
    end
  elseif op ~= 'touch' then
    local exists = redis.call('HEXISTS', KEYS[2 * k], id) == 1
    if (op == 'put_absent' and exists)
      or ((op == 'put_present' or op == 'del_present' or op == 'require') and not exists) then
      return {i + 1, ''}
    end
  end
end

local last_logged = ''
for i = 0, op_count - 1 do
  local base = 2 + 4 * i
  local op, k, id, doc = ARGV[base], tonumber(ARGV[base + 1]), ARGV[base + 2], ARGV[base + 3]
  local docs, index = KEYS[2 * k], KEYS[2 * k + 1]
  local kind_name = ARGV[base + 1]
  if op == 'put' or op == 'put_absent' or op == 'put_present'
    or (op == 'put_if_absent' and redis.call('HEXISTS', docs, id) == 0) then
    redis.call('HSET', docs, id, doc)
    redis.call('ZADD', index, 0, id)
    last_logged = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind_name, 'id', id, 'doc', doc)
  elseif op == 'touch' then
    redis.call('HINCRBY', versions, kind_name .. ':' .. id, 1)
  elseif op == 'del' or op == 'del_present' then
    if redis.call('HDEL', docs, id) == 1 then
      redis.call('ZREM', index, id)
      last_logged = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind_name, 'id', id, 'doc', '')
    end
  end
end

return {0, last_logged}

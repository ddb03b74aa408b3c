-- wrk script for bench/run.sh.
--
--   wrk -t T -c C -d 10s -s bench/quotagate.lua http://127.0.0.1:PORT -- MODE CUSTOMERS BATCH KEY
--
-- MODE: record | check | batch | consume. Every request picks random customers
-- c0..c<CUSTOMERS-1>; batch sends BATCH events per request; consume sends the record body to
-- POST /v1/limits/consume.
-- done() prints one parseable line:
--   BENCH_RESULT requests=.. duration_us=.. p50_us=.. p99_us=.. p999_us=.. ... errors_status=..
-- (errors_status counts answers with a status >= 400.)
--
-- The load generator shares the two CPUs with the gateway and Redis, so it does as little as
-- it can per request: every request is built once in init() (one per customer; a few hundred
-- random batches) and request() only picks one, and no response() is defined (wrk would then
-- buffer every answer and call Lua for it). run.sh classifies consume answers (admitted,
-- refused, degraded) from the gateway's own decision counters instead.

local thread_count = 0
local threads = {}

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
  threads[thread_count] = thread
end

local record_fmt = '{"customerId":"c%d","eventType":"llm","values":{"tokens":1}}'
local check_fmt = '{"customerId":"c%d"}'
local BATCHES = 256 -- distinct random batches per thread
local requests = {}

function init(args)
  local mode = args[1] or "record"
  local customers = tonumber(args[2] or 10000)
  local batch_size = tonumber(args[3] or 100)
  local key = args[4] or "bench-key"
  -- Distinct streams per thread even when threads start within the same second.
  math.randomseed(os.time() * 1000 + (thread_index or 0) * 7919)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
  if mode == "record" or mode == "consume" then
    local path = mode == "record" and "/v1/events/record" or "/v1/limits/consume"
    for c = 0, customers - 1 do
      requests[c + 1] = wrk.format(nil, path, nil, string.format(record_fmt, c))
    end
  elseif mode == "check" then
    for c = 0, customers - 1 do
      requests[c + 1] = wrk.format(nil, "/v1/limits/check", nil, string.format(check_fmt, c))
    end
  elseif mode == "batch" then
    for b = 1, BATCHES do
      local events = {}
      for i = 1, batch_size do
        events[i] = string.format(record_fmt, math.random(0, customers - 1))
      end
      requests[b] = wrk.format(nil, "/v1/events/batch", nil,
        '{"events":[' .. table.concat(events, ",") .. ']}')
    end
  else
    error("unknown mode " .. tostring(mode))
  end
end

function request()
  return requests[math.random(1, #requests)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f"
      .. " mean_us=%.0f max_us=%.0f errors_connect=%d errors_read=%d errors_write=%d"
      .. " errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end

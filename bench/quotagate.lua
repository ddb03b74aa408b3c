-- wrk script for bench/run.sh.
--
--   wrk -t T -c C -d 10s -s bench/quotagate.lua http://127.0.0.1:PORT -- MODE CUSTOMERS BATCH KEY
--
-- MODE: record | check | batch | consume. Every request picks random customers
-- c0..c<CUSTOMERS-1>; batch sends BATCH events per request; consume sends the record body to
-- POST /v1/limits/consume. done() prints one parseable line:
--   BENCH_RESULT requests=.. duration_us=.. p50_us=.. p99_us=.. p999_us=.. ... errors_status=..
-- (errors_status counts answers with a status >= 400.) In consume mode the line also carries
-- answers_admitted (2xx, "allowed":true and "degraded":false), answers_refused (2xx,
-- "allowed":false), answers_degraded (2xx, "degraded":true: storage missed its deadline, so
-- nothing was recorded) and answers_other (anything else, non-2xx included). Only consume mode
-- defines response(): wrk then buffers every answer and calls Lua for it, which costs wrk some
-- CPU, so the other modes stay without it.

local thread_count = 0
local threads = {}

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
  threads[thread_count] = thread
end

local mode, customers, batch_size = "record", 10000, 100
local record_fmt = '{"customerId":"c%d","eventType":"llm","values":{"tokens":1}}'
local check_fmt = '{"customerId":"c%d"}'

-- Per-thread tallies of consume answers (read back by done() through thread:get).
answers_admitted, answers_refused, answers_degraded, answers_other = 0, 0, 0, 0

local function consume_response(status, headers, body)
  if status < 200 or status > 299 then
    answers_other = answers_other + 1
  elseif string.find(body, '"degraded":true', 1, true) then
    answers_degraded = answers_degraded + 1
  elseif string.find(body, '"allowed":true', 1, true) then
    answers_admitted = answers_admitted + 1
  elseif string.find(body, '"allowed":false', 1, true) then
    answers_refused = answers_refused + 1
  else
    answers_other = answers_other + 1
  end
end

function init(args)
  mode = args[1] or mode
  customers = tonumber(args[2] or customers)
  batch_size = tonumber(args[3] or batch_size)
  local key = args[4] or "bench-key"
  if mode ~= "record" and mode ~= "check" and mode ~= "batch" and mode ~= "consume" then
    error("unknown mode " .. tostring(mode))
  end
  bench_mode = mode -- a global, so that done() can read it with thread:get
  if mode == "consume" then
    -- wrk looks for a global response() after init() of the first thread.
    response = consume_response
  end
  -- Distinct streams per thread even when threads start within the same second.
  math.randomseed(os.time() * 1000 + (thread_index or 0) * 7919)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

local function customer()
  return math.random(0, customers - 1)
end

function request()
  if mode == "record" then
    return wrk.format(nil, "/v1/events/record", nil, string.format(record_fmt, customer()))
  elseif mode == "consume" then
    return wrk.format(nil, "/v1/limits/consume", nil, string.format(record_fmt, customer()))
  elseif mode == "check" then
    return wrk.format(nil, "/v1/limits/check", nil, string.format(check_fmt, customer()))
  end
  local events = {}
  for i = 1, batch_size do
    events[i] = string.format(record_fmt, customer())
  end
  return wrk.format(nil, "/v1/events/batch", nil, '{"events":[' .. table.concat(events, ",") .. ']}')
end

function done(summary, latency, requests)
  local e = summary.errors
  local answers = ""
  -- done() runs in the main Lua state, where init() never ran: ask a thread for the mode.
  if threads[1] and threads[1]:get("bench_mode") == "consume" then
    local admitted, refused, degraded, other = 0, 0, 0, 0
    for _, thread in ipairs(threads) do
      admitted = admitted + (thread:get("answers_admitted") or 0)
      refused = refused + (thread:get("answers_refused") or 0)
      degraded = degraded + (thread:get("answers_degraded") or 0)
      other = other + (thread:get("answers_other") or 0)
    end
    answers = string.format(" answers_admitted=%d answers_refused=%d answers_degraded=%d"
      .. " answers_other=%d", admitted, refused, degraded, other)
  end
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f"
      .. " mean_us=%.0f max_us=%.0f errors_connect=%d errors_read=%d errors_write=%d"
      .. " errors_status=%d errors_timeout=%d%s\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, answers))
end

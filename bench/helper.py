#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

  setup   BASE KEY CUSTOMERS          create the meter and 3 default limits, pre-warm customers
  consume-sanity BASE KEY CUSTOMER STATUS ANSWER_FILE BEFORE_FILE
                                      check one consume answer (fetched with curl by run.sh):
                                      200, allowed, not degraded, counted on every limit
  check-state BASE KEY CUSTOMER       print a check's answer for CUSTOMER (JSON)
  limits  BASE KEY N                  replace every limit with N default limits: 5 periods
                                      (minute, hour, day, week, month) per sum meter, on as many
                                      meters as N needs
  capture MONITOR_FILE CUSTOMER KIND  extract the command the gateway sent for one request from
                                      a `redis-cli MONITOR` capture, print it NUL-separated
  scripts SHA LUA_DIR                 print the lua/*.lua file whose SHA-1 is SHA (or nothing)
  scripts-at-head SHA                 the same among the files committed at HEAD
  memory  PORT BASELINE OUT_JSON      memory figures of db 0 after the gateway runs
  spread-total PORT DB SUFFIX         sum of one counter (its key after the customer tag) over
                                      the spread replays' customers (12-digit names, as
                                      redis-benchmark's __rand_int__)
  report  RESULTS_DIR OUT_MD          turn the raw results into the markdown report
  config-scale BASE KEY N OUT_JSON    give N customers a limit of their own (8 clients in
                                      parallel), then time checks: steady, and each right after a
                                      limit was created; figures to OUT_JSON
  drive   BASE KEY MODE N             send N requests (consume, check, record, or batch of 100
                                      events) one after the other on one keep-alive connection,
                                      as wrk does, to customers c0, c1, ...; fails on any answer
                                      but 200
"""

import hashlib
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request

BATCH = 1000


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- HTTP


def api(base, key, method, path, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def must(status_body, what, ok=(200, 201)):
    status, body = status_body
    if status not in ok:
        raise SystemExit(f"bench setup: {what} answered {status}: {json.dumps(body)}")
    return body


def setup(base, key, customers):
    customers = int(customers)
    meter = must(
        api(base, key, "POST", "/v1/meters",
            {"name": "tokens", "aggregation": "sum", "field": "values.tokens"}),
        "create meter",
    )
    for period in ("minute", "day", "month"):
        must(
            api(base, key, "POST", "/v1/limits",
                {"name": f"tokens per {period}", "meterId": meter["id"],
                 "limitValue": 1e12, "period": period}),
            f"create {period} limit",
        )
    # The node applies its own changes at once, but wait for the cache rather than assume it.
    deadline = time.time() + 15
    while True:
        body = must(api(base, key, "POST", "/v1/limits/check", {"customerId": "c0"}), "check")
        if len(body.get("limits", [])) == 3:
            break
        if time.time() > deadline:
            raise SystemExit(f"bench setup: check still lists {len(body.get('limits', []))} limits")
        time.sleep(0.2)
    started = time.time()
    for first in range(0, customers, BATCH):
        events = [
            {"customerId": f"c{i}", "eventType": "llm", "values": {"tokens": 1}}
            for i in range(first, min(first + BATCH, customers))
        ]
        body = must(api(base, key, "POST", "/v1/events/batch", {"events": events}, timeout=120),
                    f"pre-warm batch from c{first}")
        if body.get("count") != len(events):
            raise SystemExit(f"bench setup: pre-warm batch from c{first} answered {body}")
    log(f"meter {meter['id']}, 3 limits (minute/day/month), {customers} customers pre-warmed "
        f"in {time.time() - started:.1f}s")
    # The last customer warmed, a moment ago: c0's minute window may have ended since.
    last = f"c{customers - 1}"
    body = must(api(base, key, "POST", "/v1/limits/check", {"customerId": last}), "check")
    used = sorted(l.get("used") for l in body["limits"])
    if used != [1, 1, 1]:
        raise SystemExit(f"bench setup: {last} should have used 1 on each limit, got {used}")


LIMIT_PERIODS = ("minute", "hour", "day", "week", "month")


def limits(base, key, n):
    n = int(n)
    listed = must(api(base, key, "GET", "/v1/limits?limit=100"), "list limits")
    for limit in listed.get("data", []):
        must(api(base, key, "DELETE", f"/v1/limits/{limit['id']}"), "delete limit", ok=(200, 204))
    for meter in must(api(base, key, "GET", "/v1/meters?limit=100"), "list meters").get("data", []):
        must(api(base, key, "DELETE", f"/v1/meters/{meter['id']}"), "delete meter", ok=(200, 204))
    meters = []
    for index in range(0, n):
        if index % len(LIMIT_PERIODS) == 0:
            meters.append(must(
                api(base, key, "POST", "/v1/meters",
                    {"name": f"tokens {len(meters)}", "aggregation": "sum",
                     "field": "values.tokens"}),
                "create meter")["id"])
        period = LIMIT_PERIODS[index % len(LIMIT_PERIODS)]
        must(api(base, key, "POST", "/v1/limits",
                 {"name": f"limit {index}", "meterId": meters[-1], "limitValue": 1e12,
                  "period": period}),
             f"create limit {index}")
    deadline = time.time() + 15
    while True:
        body = must(api(base, key, "POST", "/v1/limits/check", {"customerId": "c0"}), "check")
        if len(body.get("limits", [])) == n:
            break
        if time.time() > deadline:
            raise SystemExit(f"bench limits: check lists {len(body.get('limits', []))}, not {n}")
        time.sleep(0.2)
    log(f"{n} limits on {len(meters)} meter(s)")


def check_state(base, key, customer):
    body = must(api(base, key, "POST", "/v1/limits/check", {"customerId": customer}), "check")
    print(json.dumps(body))


def consume_sanity(base, key, customer, status, answer_file, before_file):
    """One consume, sent by run.sh with curl, must be admitted, not degraded, and counted: each
    limit's `used` is one more than in the check just before (or 1 if its window rolled over)."""
    del base, key  # the same signature as the other subcommands; nothing more to fetch
    answer_text = read(answer_file)
    if status != "200":
        raise SystemExit(f"bench: consume for {customer} answered HTTP {status}: {answer_text[:300]}")
    answer = json.loads(answer_text)
    before = {l["id"]: l for l in json.loads(read(before_file))["limits"]}
    problems = []
    if answer.get("allowed") is not True:
        problems.append(f"allowed is {answer.get('allowed')!r}")
    if answer.get("degraded") is not False:
        problems.append(f"degraded is {answer.get('degraded')!r}")
    if not answer.get("eventId"):
        problems.append("no eventId")
    limits = answer.get("limits", [])
    if len(limits) != 3:
        problems.append(f"{len(limits)} limits instead of 3")
    for l in limits:
        was = before.get(l.get("id"))
        if was is None:
            problems.append(f"limit {l.get('id')} was not in the check before")
            continue
        expected = was["used"] + 1 if was.get("windowStart") == l.get("windowStart") else 1
        if l.get("used") != expected:
            problems.append(f"{l.get('name')}: used {l.get('used')}, expected {expected}")
    if problems:
        raise SystemExit(f"bench: consume sanity check failed ({'; '.join(problems)}): "
                         f"{answer_text[:300]}")
    used = ", ".join(f"{l['period']} {l['used']:g}" for l in limits)
    print(f"HTTP 200, allowed true, degraded false, eventId {answer['eventId']}, used after: {used}")


# ------------------------------------------------------------------------------- MONITOR capture

MONITOR_LINE = re.compile(r"^\d+\.\d+ \[(\d+) ([^\]]+)\] (.*)$")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", '"': b'"', "\\": b"\\"}


def unrepr(text):
    """Inverse of Redis sdscatrepr (how MONITOR prints arguments)."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x" and i + 3 < len(text):
                out += bytes([int(text[i + 2:i + 4], 16)])
                i += 4
                continue
            out += ESCAPES.get(nxt, nxt.encode())
            i += 2
            continue
        out += ch.encode()
        i += 1
    return bytes(out)


def monitor_commands(path):
    """(db, client, [args]) for every command a client sent (not those run inside scripts)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = MONITOR_LINE.match(line.rstrip("\n"))
            if not match or match.group(2) == "lua":
                continue
            args = [unrepr(m) for m in QUOTED.findall(match.group(3))]
            if args:
                yield int(match.group(1)), match.group(2), args


def capture(path, customer, kind):
    """Prints the command the gateway sent for `customer`, NUL-separated, verbatim.
    kind: 'record' or 'consume' (the EVALSHA, whose mode ARGV[1] must be the kind), 'batch' (a
    record EVALSHA) or 'check' (MGET if there is one, else the first command)."""
    tag = f"{{c:{customer}}}".encode()
    mine = [args for _, _, args in monitor_commands(path) if any(tag in a for a in args)]
    if not mine:
        raise SystemExit(f"bench: no command for {customer} in the MONITOR capture {path}")
    names = [a[0].upper().decode() for a in mine]
    if kind in ("record", "consume", "batch"):
        mode = b"record" if kind == "batch" else kind.encode()
        # ARGV: the number of events, the call's deadline, then per event its key and
        # argument counts and its arguments, the mode first (lua/usage.lua).
        picked = [a for a in mine if a[0].upper() == b"EVALSHA" and len(a) > 3
                  and a[2].isdigit() and len(a) > 7 + int(a[2])
                  and a[7 + int(a[2])] == mode]
    else:
        picked = [a for a in mine if a[0].upper() == b"MGET"] or [mine[0]]
    if not picked:
        raise SystemExit(f"bench: no EVALSHA in {kind} mode for {customer} in the capture "
                         f"(saw {names})")
    args = picked[0]
    if args[0].upper() == b"EVALSHA":
        # Replayed later, the captured deadline would have passed and every call would write
        # nothing: a deadline far ahead keeps the check (and its TIME) without refusing.
        args[4 + int(args[2])] = b"99999999999999"
    sys.stdout.buffer.write(b"\0".join(args) + b"\0")
    desc = {"commands_for_request": names, "argc": len(args)}
    if args[0].upper() == b"EVALSHA":
        nkeys = int(args[2])
        keys = [a.decode(errors="replace") for a in args[3:3 + nkeys]]
        desc.update(sha=args[1].decode(), numkeys=nkeys, keys=keys, argv=len(args) - 3 - nkeys,
                    argv_values=[a.decode(errors="replace")[:60] for a in args[3 + nkeys:]])
    else:
        desc.update(keys=[a.decode(errors="replace") for a in args[1:]])
    with open(os.environ.get("BENCH_CAPTURE_DESC", os.devnull), "w") as out:
        json.dump(desc, out, indent=1)


def scripts(sha, lua_dir):
    for name in sorted(os.listdir(lua_dir)):
        if name.endswith(".lua"):
            with open(os.path.join(lua_dir, name), "rb") as handle:
                if hashlib.sha1(handle.read()).hexdigest() == sha:
                    print(os.path.join(lua_dir, name))
                    return


def scripts_at_head(sha):
    """The lua/ file whose committed (HEAD) content has this SHA-1, labelled as such."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        names = subprocess.run(["git", "ls-tree", "--name-only", "HEAD", "lua/"],
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return
    for name in names:
        blob = subprocess.run(["git", "show", f"HEAD:{name}"], capture_output=True).stdout
        if hashlib.sha1(blob).hexdigest() == sha:
            print(f"{name} as committed at {head} (the working copy has changed since the build)")
            return


# ------------------------------------------------------------------------- minimal RESP client


class Resp:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
        self.buf = self.sock.makefile("rb")

    def pipeline(self, commands):
        out = bytearray()
        for cmd in commands:
            parts = [c if isinstance(c, bytes) else str(c).encode() for c in cmd]
            out += b"*%d\r\n" % len(parts)
            for p in parts:
                out += b"$%d\r\n%s\r\n" % (len(p), p)
        self.sock.sendall(out)
        return [self.read() for _ in commands]

    def call(self, *cmd):
        return self.pipeline([cmd])[0]

    def read(self):
        line = self.buf.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)[:-2]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected RESP line {line!r}")


def info_field(info, name):
    for line in info.decode().splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    return 0


KIND_PATTERNS = [
    ("limit counter (string)", re.compile(r":\{c:[^}]*\}:u:")),
    ("roll-up, hourly (hash)", re.compile(r":\{c:[^}]*\}:h:[^:]+:\d+$")),
    ("roll-up, all-time (hash)", re.compile(r":\{c:[^}]*\}:h:[^:]+:all$")),
    ("dimension registry (hash)", re.compile(r":\{c:[^}]*\}:dims:")),
    ("event log (list)", re.compile(r":\{c:[^}]*\}:events$")),
    ("other customer key", re.compile(r":\{c:[^}]*\}:")),
    ("config ({cfg})", re.compile(r":\{cfg\}")),
]


def kind_of(key):
    for name, pattern in KIND_PATTERNS:
        if pattern.search(key):
            return name
    return "other"


def spread_total(port, db, suffix):
    redis = Resp(port)
    redis.call("SELECT", db)
    pattern = "*{c:[0-9]*}" + re.sub(r"([*?\[\]\\])", r"\\\1", suffix)
    total, cursor = 0, b"0"
    while True:
        cursor, keys = redis.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        if keys:
            total += sum(int(float(v)) for v in redis.call("MGET", *keys) if v is not None)
        if cursor == b"0":
            break
    print(total)


def memory(port, baseline, out_path):
    r = Resp(port)
    r.call("SELECT", 0)
    info = r.call("INFO", "memory")
    keys = []
    cursor = b"0"
    while True:
        cursor, batch = r.call("SCAN", cursor, "COUNT", 1000)
        keys.extend(k.decode() for k in batch)
        if cursor == b"0":
            break
    by_kind = {}
    for key in keys:
        by_kind.setdefault(kind_of(key), []).append(key)
    kinds = {}
    for name, members in by_kind.items():
        sample = members[:500]
        usage = r.pipeline([("MEMORY", "USAGE", k, "SAMPLES", 0) for k in sample])
        usage = [u for u in usage if isinstance(u, int)]
        entry = {"keys": len(members), "sampled": len(usage),
                 "avg_bytes": round(sum(usage) / len(usage)) if usage else 0}
        if name.startswith("event log"):
            cards = []
            for i in range(0, len(members), 1000):
                cards += r.pipeline([("LLEN", k) for k in members[i:i + 1000]])
            entry["events"] = sum(c for c in cards if isinstance(c, int))
        kinds[name] = entry
    result = {
        "used_memory": info_field(info, "used_memory"),
        "used_memory_dataset": info_field(info, "used_memory_dataset"),
        "baseline_used_memory": int(baseline),
        "dbsize": r.call("DBSIZE"),
        "kinds": kinds,
    }
    with open(out_path, "w") as handle:
        json.dump(result, handle, indent=1)


# -------------------------------------------------------------------------------------- report


def read(path, default=""):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return default


def cpu_section(results, env, endpoints, conns):
    """CPU per request of each process during the wrk runs (cpu.txt, written by run.sh)."""
    spent = {}
    for line in read(os.path.join(results, "cpu.txt")).splitlines():
        f = line.split()
        if len(f) != 12:
            continue
        before, after = [float(x) for x in f[2:7]], [float(x) for x in f[7:12]]
        spent[(f[0], f[1])] = [b - a for a, b in zip(before, after)]
    if not spent:
        return []
    lines = [
        "",
        "## Where the CPU goes",
        "",
        "CPU time per request during each run (user + system, from `/proc/PID/stat`; the load "
        "generator, wrk or the open-loop one below saturation, from the shell's `times`), and what "
        "the box has per request: "
        f"{env.get('nproc', '?')} CPUs × the run's duration ÷ its requests. What the three "
        "processes leave of it went to the kernel's network and interrupt work and to idle time.",
        "",
        "| endpoint | conns | req/s | gateway µs (user + sys) | Redis µs (user + sys) | load µs "
        "| sum µs | box µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    nproc = int(env.get("nproc", "0") or 0)
    # (label, conns cell, cpu.txt key, result file) of every measured run, saturated then open.
    runs = [(label, c, (mode, c), f"wrk-{mode}-{c}.txt") for mode, label, _ in endpoints
            for c in conns]
    runs += [(label, f"open loop, {share}%", (mode, f"open-{share}"), f"open-{mode}-{share}.txt")
             for mode, label, _ in endpoints + [("health", "GET /healthz", 0)]
             for share in env.get("open_shares", "").split()]
    for label, c, key, name in runs:
        res = wrk_result(os.path.join(results, name))
        if res is None or key not in spent or not res["requests"]:
            continue
        gu, gs, ru, rs, w = (x * 1e6 / res["requests"] for x in spent[key])
        box = nproc * res["duration_us"] / res["requests"] if nproc else 0
        rps = wrk_rate(res)
        lines.append(
            f"| {label} | {c} | {num(rps)} | {gu + gs:.1f} ({gu:.1f} + {gs:.1f}) "
            f"| {ru + rs:.1f} ({ru:.1f} + {rs:.1f}) | {w:.1f} | {gu + gs + ru + rs + w:.1f} "
            f"| {box:.1f} |"
        )
    return lines


def wrk_result(path):
    text = read(path)
    match = re.search(r"^BENCH_RESULT (.*)$", text, re.M)
    if not match:
        return None
    return {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}


def wrk_rate(res):
    return res["requests"] / (res["duration_us"] / 1e6)


def latency_and_errors(res):
    """p50, p99, p99.9 and max latency (ms) and the error count of one wrk run, as table cells."""
    errors = sum(res[k] for k in res if k.startswith("errors_"))
    return (f"{ms(res['p50_us'])} | {ms(res['p99_us'])} | {ms(res['p999_us'])} "
            f"| {ms(res['max_us'])} | {num(errors)}")


def rate(path):
    """Prints the requests per second of one wrk run (for run.sh)."""
    res = wrk_result(path)
    if res is None or not res["requests"]:
        raise SystemExit(f"no wrk result in {path}")
    print(f"{wrk_rate(res):.0f}")


def rb_result(path):
    """Last CSV row of redis-benchmark --csv: test, rps, avg, min, p50, p95, p99, max (ms)."""
    rows = [l for l in read(path).splitlines() if l.startswith('"') and not l.startswith('"test"')]
    if not rows:
        return None
    fields = [f.strip('"') for f in rows[-1].rsplit(",", 7)[1:]]
    rps, avg, low, p50, p95, p99, high = (float(f) for f in fields)
    return {"rps": rps, "avg": avg, "p50": p50, "p95": p95, "p99": p99, "max": high}


def ms(us):
    return f"{us / 1000:.2f}"


def num(value):
    return f"{value:,.0f}"


def sweep_cells(res):
    """req/s, p50, p99, p99.9 and errors of one consume or check sweep run, as table cells;
    refused, degraded and other consume answers count as errors."""
    if res is None:
        return "(no result) | | | |"
    rps = wrk_rate(res)
    errors = sum(res[k] for k in res if k.startswith("errors_"))
    errors += sum(res.get(k, 0) for k in ("answers_refused", "answers_degraded"))
    return (f"{num(rps)} | {ms(res['p50_us'])} | {ms(res['p99_us'])} | {ms(res['p999_us'])} "
            f"| {num(errors)}")


def report(results, out_md):
    env = dict(
        line.split("=", 1) for line in read(os.path.join(results, "env.txt")).splitlines() if "=" in line
    )
    secs = env.get("seconds", "?")
    lines = [f"# quotagate benchmark ({env.get('date', '?')})", ""]
    lines += [
        f"Command: `{env.get('command', 'bench/run.sh')}`: {secs} s per wrk run (after a "
        f"{env.get('warmup', '?')} s warm-up per endpoint), wrk threads = min(2, connections), "
        f"one gateway node ({env.get('gateway_workers', '?')} worker thread(s), see below), "
        f"Redis {env.get('redis_short', '')} on loopback "
        f"(`--save '' --appendonly no`), {env.get('customers', '?')} customers, 1 sum meter with "
        "3 default limits (minute, day, month), so every event writes 3 counters.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPUs (`nproc`) | {env.get('nproc', '?')} |",
        f"| CPU model | {env.get('cpu', '?')} |",
        f"| memory | {env.get('mem', '?')} |",
        f"| kernel | {env.get('kernel', '?')} |",
        f"| redis-server | {env.get('redis', '?')} |",
        f"| rustc | {env.get('rustc', '?')} |",
        f"| wrk | {env.get('wrk', '?')} |",
        f"| gateway build | {env.get('git', '?')} |",
        f"| load average before / after | {env.get('load_before', '?')} / {env.get('load_after', '?')} |",
        "",
        "Load generator, gateway and Redis share these CPUs.",
        "",
        "## Gateway over HTTP (wrk)",
        "",
        "| endpoint | conns | req/s | events/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    endpoints = [("record", "POST /v1/events/record", 1), ("check", "POST /v1/limits/check", 0),
                 ("consume", "POST /v1/limits/consume", 1),
                 ("batch", "POST /v1/events/batch (100 events)", 100)]
    conns = env.get("conns", "1 16 64").split()
    gateway_rps = {"record": {}, "consume": {}}
    consume_answers = []
    for mode, label, events in endpoints:
        if mode == "consume" and env.get("consume_skipped"):
            lines.append(f"| {label} | | (not run: {env['consume_skipped']}) | | | | | | |")
            continue
        for c in conns:
            res = wrk_result(os.path.join(results, f"wrk-{mode}-{c}.txt"))
            if res is None:
                lines.append(f"| {label} | {c} | (no result) | | | | | | |")
                continue
            rps = wrk_rate(res)
            ev = num(rps * events) if events else ""
            if mode in gateway_rps:
                gateway_rps[mode][c] = rps
            if mode == "consume":
                consume_answers.append((c, res))
            lines.append(f"| {label} | {c} | {num(rps)} | {ev} | {latency_and_errors(res)} |")
    control = [("health", "GET /healthz at consume's rate (control: no storage call)", 0)]
    open_runs = [(mode, label, share, env[f"open_{mode}_{share}"].split())
                 for mode, label, _ in endpoints + control
                 for share in env.get("open_shares", "").split()
                 if f"open_{mode}_{share}" in env]
    if open_runs:
        lines += [
            "",
            "Below saturation, open loop (`examples/open_loop.rs`: requests at random instants "
            "at a share of the rate measured at the highest connection count, over 32 "
            "connections; each latency runs from the request's scheduled time; the generator's "
            "own lateness, p99, is in the last column):",
            "",
            "| endpoint | share of saturated | saturated req/s | req/s | p50 ms | p99 ms | p99.9 ms "
            "| max ms | errors | generator late ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, label, share, (_, saturated) in open_runs:
            res = wrk_result(os.path.join(results, f"open-{mode}-{share}.txt"))
            if res is None:
                lines.append(f"| {label} | {share}% | {num(float(saturated))} | (no result) "
                             "| | | | | | |")
                continue
            if mode == "consume":
                consume_answers.append((f"open loop, {share}%", res))
            lines.append(
                f"| {label} | {share}% | {num(float(saturated))} | {num(wrk_rate(res))} "
                f"| {latency_and_errors(res)} | {ms(res['send_lag_p99_us'])} |"
            )
    record_rps = gateway_rps["record"]
    degraded = [l.split() for l in read(os.path.join(results, "degraded.txt")).splitlines()]
    degraded = [(m, c, int(n)) for m, c, n in (d for d in degraded if len(d) == 3)]
    if degraded:
        logged = [(m, c, n) for m, c, n in degraded if n]
        if not logged:
            summary = "none in any run, warm-ups included."
        else:
            runs = ", ".join(f"{m} {c if c == 'warm-up' else '-c ' + c}: {num(n)}"
                             for m, c, n in logged)
            if all(c == "warm-up" for _, c, _ in logged):
                summary = runs + " (warm-ups only; their answers are not measured)."
            else:
                summary = runs + " (**measured runs affected**)."
        lines += ["", "Gateway log, `check degraded` / `decision degraded` warnings (storage over "
                  "its deadline: answered from the limits' failMode, nothing counted; a lower "
                  "bound, since a degraded customer lookup is not logged): " + summary]
    if env.get("consume_sanity"):
        lines += ["", f"Consume sanity check after setup (curl, customer c0): {env['consume_sanity']}."]
    if consume_answers:
        lines += [
            "",
            "Consume answers: decisions by outcome from the gateway's `quotagate_decisions_total` "
            "(read from `/metrics` before and after each run, warm-up excluded; they include the "
            "answers still in flight when wrk stopped, at most one per connection), non-2xx "
            "answers from wrk. Events/s counts admitted consumes, each of which records one event.",
            "",
            "| conns | answers (wrk) | admitted | refused | degraded | non-2xx (wrk) | verdict |",
            "|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c, res in consume_answers:
            admitted = res.get("answers_admitted")
            if admitted is None:
                lines.append(f"| {c} | {num(res['requests'])} | (not counted) | | | | |")
                continue
            refused, degraded = res["answers_refused"], res["answers_degraded"]
            decided = admitted + refused + degraded
            answered = res["requests"] - res["errors_status"]
            complete = answered <= decided <= answered + res["in_flight_at_end"]
            ok = refused == 0 and degraded == 0 and res["errors_status"] == 0 and complete
            verdict = "all admitted" if ok else "**NOT all admitted**"
            if not complete:
                verdict += f" (the gateway decided {num(decided)}, wrk got {num(answered)} 2xx)"
            lines.append(
                f"| {c} | {num(res['requests'])} | {num(admitted)} | {num(refused)} "
                f"| {num(degraded)} | {num(res['errors_status'])} | {verdict} |"
            )
    lines += cpu_section(results, env, endpoints, conns)
    rb_c = env.get("rb_clients", "50")
    lines += [
        "",
        f"## Raw Redis (redis-benchmark -c {rb_c}, same redis-server, db 1 and 2)",
        "",
        "Each row replays the command the gateway sent for one request (captured with MONITOR; "
        "see below): verbatim, for one customer, or spread over the customers (see below the "
        "table).",
        "",
        "| command | requests | req/s | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cap = {k: json.loads(read(os.path.join(results, f"capture-{k}.json"), "{}") or "{}")
           for k in ("record", "check", "consume")}
    rec, chk, con = cap["record"], cap["check"], cap["consume"]
    record_label = (f"record: EVALSHA `{env.get('script_name', rec.get('sha', '?'))}`, "
                    f"{rec.get('numkeys', '?')} keys, {rec.get('argv', '?')} ARGV")
    consume_label = (f"raw consume script: EVALSHA `{env.get('consume_script_name', con.get('sha', '?'))}` "
                     f"in consume mode, {con.get('numkeys', '?')} keys, {con.get('argv', '?')} ARGV")
    sent = chk.get("commands_for_request", ["?"])
    check_label = f"check: {sent[0]} of {len(chk.get('keys', []))} keys"
    if len(sent) > 1:
        others = {c: sent[1:].count(c) for c in sent[1:]}
        check_label += (" (the gateway also sends "
                        + ", ".join(f"{c} ×{k}" for c, k in others.items()) + "; not replayed)")
    bat = json.loads(read(os.path.join(results, "capture-batch.json"), "{}") or "{}")
    batch_label = (f"batch: the record call pipelined {env.get('batch_events', '100')} deep "
                   f"(`-P`), {bat.get('numkeys', '?')} keys, {bat.get('argv', '?')} ARGV")
    customers = env.get("customers", "?")
    spread = f", spread over {customers} customers"
    raw = {}
    for name, label in (("record", record_label), ("record-spread", record_label + spread),
                        ("check", check_label),
                        ("consume", consume_label), ("consume-spread", consume_label + spread),
                        ("batch", batch_label), ("batch-spread", batch_label + spread)):
        res = rb_result(os.path.join(results, f"rb-{name}.csv"))
        raw[name] = res
        if name.startswith("consume") and env.get("consume_skipped"):
            lines.append(f"| raw consume script | | (not run: {env['consume_skipped']}) | | | |")
        elif res is None:
            lines.append(f"| {label} | | (no result) | | | |")
        else:
            lines.append(
                f"| {label} | {num(int(env.get(f'rb_{name}_n', 0)))} | {num(res['rps'])} "
                f"| {res['p50']:.3f} | {res['p99']:.3f} | {res['max']:.3f} |"
            )
    lines += [
        "",
        f"Rows marked *spread* replay the same call with each key's customer drawn at random among "
        f"{customers} customers (`redis-benchmark -r {customers}`, db 2, after a calibration of "
        f"{env.get('spread_cal_per_customer', '?')} calls per customer), so Redis touches as "
        "many keys, over as many customers, as "
        "under the gateway's load; the verbatim rows keep one customer's keys hot in the CPU "
        "caches. One call's keys belong to different customers there (each `__rand_int__` is "
        "drawn on its own), which one server accepts.",
    ]
    for name in ("record", "record-spread", "consume", "consume-spread", "batch", "batch-spread"):
        if env.get(f"rb_{name}_verified"):
            what = "every call counted" + (", so every call was admitted"
                                           if name.startswith("consume") else "")
            lines += ["", f"{name.capitalize()} replay verified ({what}): "
                      f"`{env[f'rb_{name}_verified']}` (calibration calls included)."]
    lines += ["", "## Gateway ÷ raw script (record, consume)", ""]

    def ratio(mode, c, kind=None):
        kind = kind or mode
        if raw.get(kind) and c in gateway_rps[mode]:
            return f"{gateway_rps[mode][c] / raw[kind]['rps']:.3f}"
        return "–"

    def rate(mode, c):
        return num(gateway_rps[mode][c]) if c in gateway_rps[mode] else "–"

    if raw.get("record") and record_rps:
        lines += [
            "| conns | gateway record req/s | ÷ raw record | ÷ raw record, spread "
            "| gateway consume req/s | ÷ raw consume | ÷ raw consume, spread |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in conns:
            lines.append(f"| {c} | {rate('record', c)} | {ratio('record', c)} "
                         f"| {ratio('record', c, 'record-spread')} | {rate('consume', c)} "
                         f"| {ratio('consume', c)} | {ratio('consume', c, 'consume-spread')} |")
        for mode in ("record", "consume"):
            if not gateway_rps[mode]:
                lines += ["", f"Best gateway {mode} rate: (not run)"]
                continue
            best = max(gateway_rps[mode].values())
            parts = [f"÷ raw {mode} script {num(raw[kind]['rps'])} = **{best / raw[kind]['rps']:.3f}**"
                     + (" (spread)" if kind.endswith("spread") else " (verbatim)")
                     for kind in (mode, f"{mode}-spread") if raw.get(kind)]
            lines += ["", f"Best gateway {mode} rate {num(best)} req/s " + ", ".join(parts)]
    else:
        lines.append("(missing results)")
    batch_rates = []
    for c in conns:
        res = wrk_result(os.path.join(results, f"wrk-batch-{c}.txt"))
        if res:
            batch_rates.append(wrk_rate(res) * 100)
    for kind, what in (("batch", "verbatim"), ("batch-spread", "spread")):
        if batch_rates and raw.get(kind):
            lines += ["", f"Batch ingestion: best {num(max(batch_rates))} events/s ÷ raw pipelined "
                      f"record script ({what}) {num(raw[kind]['rps'])} calls/s = "
                      f"**{max(batch_rates) / raw[kind]['rps']:.3f}**"]
    workers = env.get("worker_counts", "").split()
    if workers:
        top = conns[-1]
        lines += [
            "",
            f"## Worker threads (`QUOTAGATE_WORKER_THREADS`, {top} connections)",
            "",
            f"The rows above ran with {env.get('gateway_workers', '?')} worker thread(s). Here the "
            "gateway was restarted with each count, on the same data.",
            "",
            "| workers | endpoint | req/s | p50 ms | p99 ms | p99.9 ms | errors |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for w in workers:
            for mode in ("consume", "check"):
                res = wrk_result(os.path.join(results, f"wrk-workers-{w}-{mode}.txt"))
                lines.append(f"| {w} | {mode} | {sweep_cells(res)} |")
    counts = env.get("limit_counts", "").split()
    if counts:
        top = conns[-1]
        lines += [
            "",
            f"## Cost vs limits per customer (consume, {top} connections)",
            "",
            "Every limit is a default limit (so every customer has them all); 5 periods per sum "
            "meter (minute, hour, day, week, month), so 20 limits span 4 meters, each with its "
            "own hourly and all-time roll-ups.",
            "",
            "| limits | meters | req/s | p50 ms | p99 ms | p99.9 ms | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in counts:
            res = wrk_result(os.path.join(results, f"wrk-limits-{n}.txt"))
            lines.append(f"| {n} | {-(-int(n) // 5)} | {sweep_cells(res)} |")
    scale = json.loads(read(os.path.join(results, "config-scale.json"), "null") or "null")
    if scale:
        reload_res = wrk_result(os.path.join(results, "wrk-reload.txt"))
        lines += [
            "",
            f"## Configuration at scale ({num(scale['limits'])} customer limits)",
            "",
            f"Every customer c0 … c{scale['limits'] - 1} got a limit of its own (created in "
            f"{scale['created_s']} s by 8 clients), on top of the limits above. A check of one "
            f"customer, one request at a time: median {scale['steady_median_ms']} ms, max "
            f"{scale['steady_max_ms']} ms; right after each of 20 limit creations: median "
            f"{scale['after_change_median_ms']} ms, max {scale['after_change_max_ms']} ms.",
            "",
            f"Check at 4 connections for {env.get('reload_run_secs', '?')} s on a restarted "
            "gateway, across its periodic full reload of the configuration (every 60 s in the benchmark; 10 min by default):",
            "",
            "| req/s | p50 ms | p99 ms | p99.9 ms | errors | max ms |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {sweep_cells(reload_res)} | {ms(reload_res['max_us']) if reload_res else ''} |",
        ]
    mem = json.loads(read(os.path.join(results, "memory.json"), "null") or "null")
    if mem:
        grown = mem["used_memory"] - mem["baseline_used_memory"]
        dbsize = mem["dbsize"] or 1
        lines += [
            "",
            "## Redis memory after the gateway runs (db 0, before redis-benchmark)",
            "",
            f"used_memory {num(mem['used_memory'])} B (empty server: {num(mem['baseline_used_memory'])} B), "
            f"DBSIZE {num(mem['dbsize'])}: **{num(grown / dbsize)} B per key** on average "
            f"((used_memory − empty) ÷ DBSIZE).",
            "",
            "| key kind | keys | avg MEMORY USAGE B (sample) | est. total MB | note |",
            "|---|---:|---:|---:|---|",
        ]
        for name, entry in sorted(mem["kinds"].items(), key=lambda kv: -kv[1]["keys"]):
            note = ""
            if "events" in entry:
                per = entry["events"] / entry["keys"] if entry["keys"] else 0
                note = f"{num(entry['events'])} events logged, {per:.0f} per customer"
                if per:
                    note += f", ≈ {entry['avg_bytes'] / per:.0f} B per logged event"
            if name.startswith("config"):
                note = "meters, limits, customers (created implicitly), their indexes, change log"
            total_mb = entry["keys"] * entry["avg_bytes"] / 1e6
            lines.append(f"| {name} | {num(entry['keys'])} | {num(entry['avg_bytes'])} "
                         f"(n={entry['sampled']}) | {total_mb:.1f} | {note} |")
        counter = mem["kinds"].get("limit counter (string)")
        if counter:
            lines += ["", f"A live limit counter costs about **{num(counter['avg_bytes'])} B** "
                      "(MEMORY USAGE of the string key with its TTL; the minute counters roll over "
                      "every minute, so older windows stay until they expire)."]
    lines += ["", "## What the raw rows replay", ""]
    for kind, desc in (("record", rec), ("check", chk), ("consume", con)):
        if not desc:
            continue
        lines.append(f"Redis commands the gateway sent for one {kind} request (MONITOR): "
                     f"{', '.join(desc.get('commands_for_request', []))}. Keys of the replayed "
                     "command:")
        lines += ["", "```"] + desc.get("keys", []) + ["```", ""]
        if desc.get("argv_values"):
            import textwrap
            lines += ["ARGV (each truncated to 60 characters):", "", "```"]
            lines += textwrap.wrap(json.dumps(desc["argv_values"], ensure_ascii=False), 100,
                                   break_on_hyphens=False)
            lines += ["```", ""]
    lines += [
        "## Caveats",
        "",
        "- wrk (not wrk2) is closed-loop: its latency percentiles do not account for "
        "coordinated omission (the open-loop rows below saturation do), and every load generator "
        "competes with the gateway and Redis for the same CPUs.",
        "- Half of the saturated rate is not half of the box: each request costs more CPU when "
        "requests do not arrive together (compare the open-loop rows of the CPU table with the "
        "saturated ones).",
        "- The verbatim raw rows hit one customer's keys over and over (record and check: c7777, "
        "consume: c7778, batch: c7779), which stay in the CPU caches; the gateway's load and the "
        "spread rows touch keys of all the customers, and Redis spends more per call on them.",
        "- The spread rows start their customers from empty keys in db 2 (the calibration fills "
        "them), so their event logs are shorter than the gateway's; a push only touches a log's "
        "tail.",
        "- The verbatim replay re-adds the same event-log member, so that customer's log stays "
        "at one member, where the gateway's logs grow with every event.",
        "- The consume replay runs against the limits captured with the call (1e12), so it is "
        "always admitted, like the gateway's consumes here: the rows measure the admitting path "
        "(checks, then writes), not refusals.",
        "- wrk builds its requests once (one per customer) and reads no answer in Lua, so it "
        "costs as little CPU per request as the shared cores allow; redis-benchmark also sends "
        "prepared commands.",
        f"- redis-benchmark uses {env.get('rb_clients', '?')} connections with one call in "
        "flight each; the gateway sends one EVALSHA per event over its single multiplexed "
        "connection (ConnectionManager). The ratio is the gateway's throughput relative to "
        "Redis doing the same script work alone; gateway, wrk and Redis share the CPUs, while "
        "redis-benchmark only shares them with Redis.",
    ]
    text = "\n".join(lines) + "\n"
    with open(out_md, "w") as handle:
        handle.write(text)
    sys.stdout.write(text)

def config_scale(base, key, n, out_path):
    import http.client
    import threading
    from urllib.parse import urlsplit

    n = int(n)
    url = urlsplit(base)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def connect():
        return http.client.HTTPConnection(url.hostname, url.port, timeout=120)

    def call(conn, path, body, expect):
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != expect:
            raise SystemExit(f"bench config-scale: {path} answered {resp.status}: {answer[:200]!r}")

    meter = must(api(base, key, "POST", "/v1/meters",
                     {"name": "scale", "aggregation": "sum", "field": "values.tokens"}),
                 "create meter")["id"]

    def limit(customer):
        return {"name": "own", "meterId": meter, "limitValue": 1000, "period": "day",
                "customerId": customer}

    failures = []

    def create(first, last):
        try:
            conn = connect()
            for i in range(first, last):
                call(conn, "/v1/limits", limit(f"c{i}"), 201)
        except BaseException as err:  # reported below; a thread cannot raise to the caller
            failures.append(err)

    started = time.time()
    threads = [threading.Thread(target=create, args=(k * n // 8, (k + 1) * n // 8))
               for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"bench config-scale: {failures[0]}")
    created_s = time.time() - started
    log(f"{n} customer limits created in {created_s:.1f}s")

    conn = connect()

    def timed_check():
        begun = time.perf_counter()
        call(conn, "/v1/limits/check", {"customerId": "c5"}, 200)
        return (time.perf_counter() - begun) * 1000

    steady = sorted(timed_check() for _ in range(50))
    after_change = []
    for i in range(20):
        call(conn, "/v1/limits", limit(f"new{i}"), 201)
        after_change.append(timed_check())
    after_change.sort()
    figures = {
        "limits": n, "created_s": round(created_s, 1),
        "steady_median_ms": round(steady[len(steady) // 2], 2),
        "steady_max_ms": round(steady[-1], 2),
        "after_change_median_ms": round(after_change[len(after_change) // 2], 2),
        "after_change_max_ms": round(after_change[-1], 2),
    }
    with open(out_path, "w") as handle:
        json.dump(figures, handle)
    log(f"config scale: {figures}")


def drive(base, key, mode, n):
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    path = {"consume": "/v1/limits/consume", "check": "/v1/limits/check",
            "record": "/v1/events/record", "batch": "/v1/events/batch"}[mode]

    def event(i):
        return {"customerId": f"c{i % 10000}", "eventType": "llm", "values": {"tokens": 10}}

    for i in range(int(n)):
        if mode == "check":
            body = {"customerId": f"c{i % 10000}"}
        elif mode == "batch":
            body = {"events": [event(i * 100 + j) for j in range(100)]}
        else:
            body = event(i)
        conn.request("POST", path, json.dumps(body), headers)
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200:
            raise SystemExit(f"bench drive: {mode} answered {resp.status}: {answer[:200]!r}")


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    {"setup": setup, "check-state": check_state, "consume-sanity": consume_sanity,
     "capture": capture, "scripts": scripts, "scripts-at-head": scripts_at_head,
     "memory": memory, "spread-total": spread_total, "report": report, "limits": limits, "drive": drive,
     "config-scale": config_scale, "rate": rate}[command](*args)


if __name__ == "__main__":
    main()

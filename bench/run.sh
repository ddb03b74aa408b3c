#!/usr/bin/env bash
# Reproducible benchmark of one quotagate node on its own private redis-server.
#
#   bench/run.sh [seconds-per-run]          (default 10)
#
# Installs what is missing (wrk, redis-server, redis-tools) with apt-get, builds the release
# binary, starts a redis-server on a free loopback port (never the one on 6379) and one gateway
# in front of it, creates a meter with 3 default limits (1e12 each, so consumes are admitted),
# pre-warms 10 000 customers, checks with curl that one consume is admitted and counted, then
# measures with wrk (record, check, consume, batch × 1, 4, 16, 32, 64 connections; the consume
# answers are classified from the gateway's decision counters: admitted, refused, degraded),
# then consume and check at a quarter, half and three quarters of their saturated rate with
# an open-loop generator (examples/open_loop.rs; GET /healthz at half of consume's rate as a
# control), and, on the same redis-server, redis-benchmark replaying verbatim the record script
# call, the check read and the consume script call that the gateway sent for one request
# (captured with MONITOR). Prints a markdown report to stdout and writes it to
# bench/results-latest.md. Everything it starts is stopped on exit. A binary without
# POST /v1/limits/consume (404) is benchmarked without the consume rows.
#
# BENCH_SKIP_BUILD=1 uses the existing target/release/quotagate and examples/open_loop without
# running cargo; BENCH_BIN=/path/to/quotagate benchmarks that binary instead (only the
# generator is built);
# BENCH_KEEP=1 keeps the raw outputs (wrk, redis-benchmark, MONITOR capture) in /tmp;
# BENCH_CONFIG_SCALE=N sets how many customer limits the last phase creates (default 100000,
# 0 skips that phase).
set -euo pipefail

SECS=${1:-10}
if ! [[ $SECS =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds-per-run]   (a positive whole number, default 10)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/bench
BIN=${BENCH_BIN:-$ROOT/target/release/quotagate}
ADMIN_KEY=bench-key
CUSTOMERS=10000
BATCH_EVENTS=100
CONNS=(1 4 16 32 64)
LIMIT_COUNTS=(1 5 20)  # limits per customer for the cost sweep (consume)
WARMUP=1            # seconds of discarded wrk load before each endpoint
RB_CLIENTS=50       # redis-benchmark connections
SPREAD_CAL_PER_CUSTOMER=10  # calibration calls per customer before each spread replay
RB_MAX_SECS=45      # cap on a redis-benchmark run: the captured call's minute counter expires
                    # 60 to 120 s after the capture, and the replay must not outlive it
WRK_TIMEOUT=10s
OPEN_LOOP=$ROOT/target/release/examples/open_loop  # the generator below saturation
OPEN_LOOP_CONNS=32  # its connections (hyper answers a connection's requests one at a time)
OPEN_LOOP_SHARES=(25 50 75)  # its rates, in percent of the saturated rate
# Worker threads of the gateway (QUOTAGATE_WORKER_THREADS). One: wrk and Redis share the two
# CPUs, and a second worker costs more CPU per request than it adds (the workers section of
# the report measures 1 against one per CPU).
GATEWAY_WORKERS=1
WORKER_COUNTS=(1 "$(nproc)")
# Customers given a limit of their own in the last phase (0 skips it): the size of the
# configuration every node caches (and reads in full now and then).
CONFIG_SCALE=${BENCH_CONFIG_SCALE:-100000}
# The node's periodic full read of its configuration: every 10 min by default, every 60 s here
# so that one falls inside the reload run below.
CONFIG_REFRESH_SECS=60
RELOAD_RUN_SECS=65  # a check run that spans the node's periodic full reload

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- tools
# shellcheck source=bench/require.sh
source bench/require.sh
require wrk:wrk redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools \
    curl:curl python3:python3

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    targets=(--example open_loop)
    [ -z "${BENCH_BIN:-}" ] && targets+=(--bin quotagate)
    log "cargo build --release ${targets[*]}"
    cargo build --release "${targets[@]}" >&2 ||
        die "cargo build --release failed (BENCH_SKIP_BUILD=1 benchmarks the existing binaries)"
fi
[ -x "$BIN" ] || die "$BIN not found (build failed?)"
[ -x "$OPEN_LOOP" ] || die "$OPEN_LOOP not found (cargo build --release --example open_loop)"

# ------------------------------------------------------------------ process handling
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/quotagate-bench.XXXXXX")
RESULTS=$RUN_DIR/results
mkdir -p "$RESULTS"
PIDS=()      # long-lived children, stopped in reverse order on exit
GW_PID=""    # the gateway, stopped first
CHILD=""     # the foreground job being waited for (wrk, redis-benchmark, MONITOR)

running() { # pid: alive and not a zombie
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n $state && $state != Z ]]
}

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    for _ in $(seq 100); do
        running "$pid" || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

exec 3>&1 4>&2   # the script's own stdout/stderr, for cleanup when a trap fires inside a redirection
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    exec 1>&3 2>&4
    if [ -n "$CHILD" ]; then stop_pid "$CHILD"; fi
    if [ -n "$GW_PID" ]; then stop_pid "$GW_PID"; fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    if ((rc == 130 || rc == 143)); then
        log "interrupted; everything it started is stopped"
        rm -rf "$RUN_DIR"
    elif ((rc != 0)); then
        log "failed (exit $rc); logs kept in $RUN_DIR"
        for f in "$RUN_DIR/gateway.log" "$RUN_DIR/redis.log"; do
            if [ -s "$f" ]; then
                log "--- last lines of $f"
                tail -n 20 "$f" >&2
            fi
        done
    elif [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "raw results kept in $RUN_DIR"
    else
        rm -rf "$RUN_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command as a background child and waits for it, so that a signal interrupts the wait
# at once (bash defers traps while a foreground child runs).
run_child() {
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_until() { # description timeout-seconds pid command...: polls every 0.1 s
    local what=$1 timeout=$2 pid=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        running "$pid" || die "$what exited"
        ((SECONDS < deadline)) || die "$what not ready after ${timeout}s"
        sleep 0.1
    done
}

# --------------------------------------------------------------------------- redis
REDIS_PORT=$(free_port)
[ "$REDIS_PORT" != 6379 ] || die "refusing port 6379"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$RUN_DIR" --logfile "$RUN_DIR/redis.log" --daemonize no &
PIDS+=($!)
REDIS_PID=$!
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_up() { [ "$(rcli PING 2>/dev/null)" = PONG ]; }
wait_until "redis-server on port $REDIS_PORT" 15 "$REDIS_PID" redis_up
BASELINE_MEMORY=$(rcli INFO memory | tr -d '\r' | sed -n 's/^used_memory://p')
log "redis-server $REDIS_PID on 127.0.0.1:$REDIS_PORT"

# ------------------------------------------------------------------------- gateway
GW_PORT=$(free_port)
BASE=http://127.0.0.1:$GW_PORT
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^QUOTAGATE_' || true)
gateway_up() { curl -fsS --max-time 1 "$BASE/healthz"; }
start_gateway() { # worker-threads: (re)starts the gateway; its log is appended to gateway.log
    if [ -n "$GW_PID" ]; then
        stop_pid "$GW_PID"
        GW_PID=""
    fi
    QUOTAGATE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT \
        QUOTAGATE_ADMIN_KEY=$ADMIN_KEY \
        QUOTAGATE_LISTEN=127.0.0.1:$GW_PORT \
        QUOTAGATE_LOG=warn \
        QUOTAGATE_WORKER_THREADS=$1 \
        QUOTAGATE_CONFIG_REFRESH_SECONDS=$CONFIG_REFRESH_SECS \
        "$BIN" >>"$RUN_DIR/gateway.log" 2>&1 &
    GW_PID=$!
    wait_until "gateway $BIN on $BASE" 30 "$GW_PID" gateway_up
    log "gateway $GW_PID on $BASE, $1 worker thread(s)"
}
start_gateway "$GATEWAY_WORKERS"

# --------------------------------------------------------------------------- setup
python3 "$BENCH/helper.py" setup "$BASE" "$ADMIN_KEY" "$CUSTOMERS"

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "command=bench/run.sh $SECS"
    echo "seconds=$SECS"
    echo "warmup=$WARMUP"
    echo "customers=$CUSTOMERS"
    echo "batch_events=$BATCH_EVENTS"
    echo "conns=${CONNS[*]}"
    echo "gateway_workers=$GATEWAY_WORKERS"
    echo "rb_clients=$RB_CLIENTS"
    echo "spread_cal_per_customer=$SPREAD_CAL_PER_CUSTOMER"
    echo "nproc=$(nproc)"
    cpu=$(grep -m1 -E '^(model name|Model)' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
    echo "cpu=${cpu:-unknown}"
    echo "mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    echo "redis=$(redis-server --version)"
    echo "redis_short=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
    echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
    echo "wrk=$( (wrk --version 2>&1 || true) | head -n1 | sed 's/ Copyright.*//')"
    dirty=$(git status --porcelain -- src lua Cargo.toml Cargo.lock 2>/dev/null | wc -l)
    echo "git=tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$( ((dirty)) && echo " + $dirty uncommitted file(s) in src/ lua/ Cargo.*"); binary ${BIN#"$ROOT"/} built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M:%S UTC')$([ "${BENCH_SKIP_BUILD:-0}" = 1 ] || [ -n "${BENCH_BIN:-}" ] && echo ' (not rebuilt by this run)')"
    echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS/env.txt"

# ------------------------------------------------------------- consume sanity check (curl)
# One consume for c0 must answer 200 with allowed true, degraded false, and count on each of the
# 3 limits (used one more than in the check just before, or 1 in a window that just began).
# consume runs before batch: a batch run at 64 connections leaves about a second of queued work
# in Redis, which pushes the next decisions past their 50 ms deadline (degraded answers).
MODES=(record check consume batch)
python3 "$BENCH/helper.py" check-state "$BASE" "$ADMIN_KEY" c0 >"$RUN_DIR/consume-before.json"
status=$(curl -sS --max-time 5 -o "$RUN_DIR/consume-answer.json" -w '%{http_code}' \
    -H "Authorization: Bearer $ADMIN_KEY" -H 'Content-Type: application/json' \
    -d '{"customerId":"c0","eventType":"llm","values":{"tokens":1}}' \
    "$BASE/v1/limits/consume") || die "curl POST /v1/limits/consume failed"
if [ "$status" = 404 ]; then
    log "warning: $BIN answers 404 to POST /v1/limits/consume; no consume rows in this run"
    echo "consume_skipped=this binary answers 404 to POST /v1/limits/consume" >>"$RESULTS/env.txt"
    MODES=(record check batch)
else
    sanity=$(python3 "$BENCH/helper.py" consume-sanity "$BASE" "$ADMIN_KEY" c0 "$status" \
        "$RUN_DIR/consume-answer.json" "$RUN_DIR/consume-before.json") ||
        die "consume sanity check failed"
    log "consume sanity check: $sanity"
    echo "consume_sanity=$sanity" >>"$RESULTS/env.txt"
fi

# ----------------------------------------------------------------------------- wrk
# Degraded decisions (storage over its deadline: answered from failMode, nothing counted) are
# logged as warnings; their count per run goes to degraded.txt. A lower bound: a degraded
# calendar lookup answers without a warning.
degraded_logged() { grep -c -E '(check|decision) degraded' "$RUN_DIR/gateway.log" || true; }
# Where the box's CPU goes: user and system seconds of a process so far (/proc/PID/stat), and
# of this shell's finished children (wrk is the only child that ends during a wrk run).
CLK_TCK=$(getconf CLK_TCK)
proc_cpu() { # pid -> "user system" seconds
    awk -v hz="$CLK_TCK" '{ sub(/.*\) /, ""); printf "%.2f %.2f", $12 / hz, $13 / hz }' "/proc/$1/stat"
}
children_cpu() { # file: gets the user + system seconds of finished children
    # `times` in this shell, not in $(...): a forked subshell has no finished children.
    times >"$1"
    awk 'END { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] }
        printf "%.3f", s }' "$1" >"$1.seconds"
}
# Consume answers by outcome, from the gateway's own counters: "allowed refused degraded".
consume_decisions() {
    curl -fsS --max-time 5 "$BASE/metrics" | awk '
        /^quotagate_decisions_total\{/ && /kind="consume"/ {
            match($0, /outcome="[a-z]+"/); n[substr($0, RSTART + 9, RLENGTH - 10)] += $NF }
        END { printf "%d %d %d", n["allowed"], n["refused"], n["degraded"] }'
}
load_run() { # mode label output-file in-flight-at-end command...: runs the load generator
    # command, with the CPU, degraded-answer and consume-decision accounting of every run
    local mode=$1 label=$2 out=$3 in_flight=$4 before cpu_before decided_before=""
    shift 4
    before=$(degraded_logged)
    [ "$mode" = consume ] && decided_before=$(consume_decisions)
    children_cpu "$RUN_DIR/children-before"
    cpu_before="$(proc_cpu "$GW_PID") $(proc_cpu "$REDIS_PID") $(cat "$RUN_DIR/children-before.seconds")"
    run_child "$@" >"$out" 2>&1 || die "$1 $mode ($label) failed: $(tail -n 5 "$out")"
    running "$GW_PID" || die "the gateway died during $1 $mode ($label)"
    echo "$mode $label $(($(degraded_logged) - before))" >>"$RESULTS/degraded.txt"
    # mode label, then before and after: gateway user sys, redis user sys, load generator (seconds)
    children_cpu "$RUN_DIR/children-after"
    echo "$mode $label $cpu_before $(proc_cpu "$GW_PID") $(proc_cpu "$REDIS_PID")" \
        "$(cat "$RUN_DIR/children-after.seconds")" >>"$RESULTS/cpu.txt"
    if [ -n "$decided_before" ]; then
        local a0 r0 d0 a1 r1 d1
        read -r a0 r0 d0 <<<"$decided_before"
        read -r a1 r1 d1 <<<"$(consume_decisions)"
        sed -i "s/^BENCH_RESULT .*/& answers_admitted=$((a1 - a0)) answers_refused=$((r1 - r0)) answers_degraded=$((d1 - d0)) in_flight_at_end=$in_flight/" "$out"
    fi
}
wrk_run() { # mode connections seconds output-file [label for degraded.txt and cpu.txt]
    local mode=$1 conns=$2 secs=$3 out=$4 label=${5:-$2}
    # The gateway also counts the answers still in flight when wrk stops (at most one per
    # connection), which wrk does not.
    load_run "$mode" "$label" "$out" "$conns" \
        wrk -t $((conns < 2 ? conns : 2)) -c "$conns" -d "${secs}s" --timeout "$WRK_TIMEOUT" --latency \
        -s "$BENCH/quotagate.lua" "$BASE" -- "$mode" "$CUSTOMERS" "$BATCH_EVENTS" "$ADMIN_KEY"
}
open_loop_run() { # mode rate seconds output-file label
    # Every answer is awaited: none is in flight at the end.
    load_run "$1" "$5" "$4" 0 "$OPEN_LOOP" --addr "${BASE#http://}" --rate "$2" --seconds "$3" \
        --connections "$OPEN_LOOP_CONNS" --mode "$1" --customers "$CUSTOMERS" --key "$ADMIN_KEY"
}

for mode in "${MODES[@]}"; do
    log "wrk $mode: ${WARMUP}s warm-up"
    wrk_run "$mode" 16 "$WARMUP" "$RUN_DIR/warmup-$mode.txt" warm-up
    for conns in "${CONNS[@]}"; do
        out=$RESULTS/wrk-$mode-$conns.txt
        wrk_run "$mode" "$conns" "$SECS" "$out"
        line=$(grep '^BENCH_RESULT' "$out") || die "no BENCH_RESULT in $out: $(tail -n 5 "$out")"
        log "wrk $mode -c $conns: ${line#BENCH_RESULT }"
        if [ "$mode" = consume ] && ! [[ $line =~ errors_status=0\ .*answers_refused=0\ answers_degraded=0 ]]; then
            log "warning: not every consume answer was admitted (see the report)"
        fi
    done
done

# ------------------------------------------------------------------- below saturation
# Latency below saturation, open loop: examples/open_loop.rs sends at shares of the saturated
# rate measured above (at the highest connection count), at random (Poisson) instants, and
# measures every latency from the request's scheduled time, so a stall counts against all the
# requests it holds up. GET /healthz, which calls no storage, at half of consume's rate is the
# control: what the load generator, the kernel and the HTTP layer add by themselves.
echo "open_shares=${OPEN_LOOP_SHARES[*]}" >>"$RESULTS/env.txt"
for mode in consume check health; do
    source_mode=$mode shares=("${OPEN_LOOP_SHARES[@]}")
    [ "$mode" = health ] && source_mode=consume shares=(50)
    [[ " ${MODES[*]} " == *" $source_mode "* ]] || continue
    saturated=$RESULTS/wrk-$source_mode-${CONNS[-1]}.txt
    rate=$(python3 "$BENCH/helper.py" rate "$saturated") || die "no rate in $saturated"
    for share in "${shares[@]}"; do
        out=$RESULTS/open-$mode-$share.txt
        open_loop_run "$mode" $((rate * share / 100)) "$SECS" "$out" "open-$share"
        line=$(grep '^BENCH_RESULT' "$out") || die "no BENCH_RESULT in $out"
        echo "open_${mode}_$share=$((rate * share / 100)) $rate" >>"$RESULTS/env.txt"
        log "open loop $mode at $share% ($((rate * share / 100)) req/s; saturated $source_mode: $rate req/s): ${line#BENCH_RESULT }"
    done
done

# ------------------------------------------------------------------- worker threads
# Consume and check at the highest connection count with each worker count, the gateway
# restarted for each (same data); then back to GATEWAY_WORKERS for the rest of the run.
if [[ " ${MODES[*]} " == *" consume "* ]]; then
    top=${CONNS[-1]}
    for workers in $(printf '%s\n' "${WORKER_COUNTS[@]}" | sort -nu); do
        start_gateway "$workers"
        for mode in consume check; do
            wrk_run "$mode" 16 "$WARMUP" "$RUN_DIR/warmup-workers-$workers-$mode.txt" "workers-$workers-warm-up"
            out=$RESULTS/wrk-workers-$workers-$mode.txt
            wrk_run "$mode" "$top" "$SECS" "$out" "workers-$workers-$mode"
            line=$(grep '^BENCH_RESULT' "$out") || die "no BENCH_RESULT in $out"
            log "wrk $mode -c $top with $workers worker thread(s): ${line#BENCH_RESULT }"
        done
    done
    echo "worker_counts=$(printf '%s\n' "${WORKER_COUNTS[@]}" | sort -nu | tr '\n' ' ')" >>"$RESULTS/env.txt"
    start_gateway "$GATEWAY_WORKERS"
fi

# ---------------------------------------------------------------- memory (db 0 only)
python3 "$BENCH/helper.py" memory "$REDIS_PORT" "$BASELINE_MEMORY" "$RESULTS/memory.json"
log "memory: $(tr -d '\n ' <"$RESULTS/memory.json" | cut -c1-200)..."

# ------------------------------------------- capture what the gateway sends for one request
# One MONITOR window per request kind, for one pre-warmed customer. The replay is verbatim: one
# customer, no __rand_int__. redis-benchmark draws a separate number for every __rand_int__ of
# a command, and the record script compares its keys (an op's key with its holds key, repeated
# for ops without holds), so keys from mixed customers would break it.
# The consume replay uses another customer (its own keys), so that each replay's counters count
# only its own calls.
REPLAY_CUSTOMER=c7777
CONSUME_REPLAY_CUSTOMER=c7778
BATCH_REPLAY_CUSTOMER=c7779
capture() { # kind customer path body -> NUL-separated command in $RUN_DIR/<kind>.args
    local kind=$1 customer=$2 path=$3 body=$4
    # redis-cli itself, not the rcli function: a backgrounded function is a subshell, and
    # stopping it would leave redis-cli attached as a monitor, which slows Redis down a lot.
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" MONITOR >"$RUN_DIR/monitor-$kind.txt" 2>&1 &
    CHILD=$!
    sleep 0.5
    curl -fsS --max-time 5 -H "Authorization: Bearer $ADMIN_KEY" -H 'Content-Type: application/json' \
        -d "$body" "$BASE$path" >/dev/null
    sleep 0.5
    stop_pid "$CHILD"
    CHILD=""
    if rcli CLIENT LIST | grep -q 'cmd=monitor'; then die "a MONITOR client is still attached"; fi
    BENCH_CAPTURE_DESC=$RESULTS/capture-$kind.json python3 "$BENCH/helper.py" capture \
        "$RUN_DIR/monitor-$kind.txt" "$customer" "$kind" >"$RUN_DIR/$kind.args"
}

# Fresh capture right before the replay: the call carries absolute expiry times (the minute
# counter's lies 60 to 120 s ahead), which the replay must not outlive (RB_MAX_SECS).
event_body() { printf '{"customerId":"%s","eventType":"llm","values":{"tokens":1}}' "$1"; }
capture record "$REPLAY_CUSTOMER" /v1/events/record "$(event_body "$REPLAY_CUSTOMER")"
capture check "$REPLAY_CUSTOMER" /v1/limits/check "{\"customerId\":\"$REPLAY_CUSTOMER\"}"
mapfile -d '' -t RB_RECORD <"$RUN_DIR/record.args"
mapfile -d '' -t RB_CHECK <"$RUN_DIR/check.args"
SHA=${RB_RECORD[1]}

# The gateway loads its script from the exact file bytes (include_str!), so find the file with
# that SHA-1 and load it byte for byte (`SCRIPT LOAD "$(cat f)"` would drop the final newline
# and give another SHA).
load_script() { # sha: makes sure redis-server has it; sets SCRIPT_LABEL (not a $(...): it may die)
    local sha=$1 file loaded
    file=$(python3 "$BENCH/helper.py" scripts "$sha" "$ROOT/lua")
    if [ -n "$file" ]; then
        loaded=$(rcli -x SCRIPT LOAD <"$file" | tr -d '\r')
        [ "$loaded" = "$sha" ] || die "SCRIPT LOAD of $file gave $loaded, the gateway uses $sha"
        SCRIPT_LABEL=${file#"$ROOT"/}
    else
        SCRIPT_LABEL=$(cd "$ROOT" && python3 "$BENCH/helper.py" scripts-at-head "$sha")
        [ "$(rcli SCRIPT EXISTS "$sha" | tr -d '\r')" = 1 ] || die "script $sha is not loaded"
        if [ -z "$SCRIPT_LABEL" ]; then
            SCRIPT_LABEL="script ${sha:0:12}… (no lua/ file here or at HEAD has this SHA)"
        fi
    fi
}
load_script "$SHA"
SCRIPT_NAME=$SCRIPT_LABEL
log "record call: EVALSHA of $SCRIPT_NAME, ${RB_RECORD[2]} keys, $((${#RB_RECORD[@]} - 3 - RB_RECORD[2])) ARGV"

# --------------------------------------------------------------------- redis-benchmark
# db 1 (verbatim replays) and db 2 (spread replays), so the replays' writes stay out of the
# gateway's data (db 0) and out of each other's counts.
RB_DB=1
RB_CAL=20000   # calibration calls before each measured replay
rb() { # n output-file command...
    local n=$1 out=$2
    shift 2
    run_child redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$RB_CLIENTS" -n "$n" \
        --dbnum "$RB_DB" --csv "$@" >"$out" 2>"$out.err" || die "redis-benchmark failed: $(tail -n 5 "$out.err")"
    grep -q '^"' "$out" || die "redis-benchmark printed no CSV row: $(cat "$out" "$out.err" | tail -n 5)"
    if grep -q '^Error' "$out" "$out.err"; then die "redis-benchmark: $(grep -h '^Error' "$out" "$out.err" | head -n 3)"; fi
}
rb_rps() { python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import helper; print(int(helper.rb_result(sys.argv[2])["rps"]))' "$BENCH" "$1"; }
rb_n_for() { # calibration-csv -> request count for min(SECS, RB_MAX_SECS) seconds
    local rps secs=$((SECS < RB_MAX_SECS ? SECS : RB_MAX_SECS))
    rps=$(rb_rps "$1")
    echo $((rps * secs > 10000 ? rps * secs : 10000))
}
rb_replay() { # kind label command...
    local kind=$1 label=$2
    shift 2
    log "redis-benchmark $label: calibrating ($RB_CAL calls)"
    rb "$RB_CAL" "$RUN_DIR/rb-$kind-cal.csv" "$@"
    local n
    n=$(rb_n_for "$RUN_DIR/rb-$kind-cal.csv")
    log "redis-benchmark $label: $n calls"
    rb "$n" "$RESULTS/rb-$kind.csv" "$@"
    echo "rb_${kind}_n=$n" >>"$RESULTS/env.txt"
    RB_CALLS=$((RB_CAL + n))
}
counts_calls() { # value slack: a counter that grew by one per call made (RB_CALLS)
    [[ $1 =~ ^[0-9]+$ ]] && (($1 >= RB_CALLS && $1 <= RB_CALLS + $2))
}
# Check the replayed script really did the work: a counter it adds 1 to must equal the number
# of calls (the minute counter may have rolled over, so any one of the counters will do). For
# consume this also shows that every replayed call was admitted (a refusal writes nothing).
verify_replay() { # kind slack command...: slack = extra calls a pipelined run may make
    local kind=$1 slack=$2 verified="" key value i nkeys
    shift 2
    nkeys=$3 # "$@" is EVALSHA sha numkeys key... arg...: the keys are $4 .. $((3 + nkeys))
    for ((i = 4; i <= 3 + nkeys; i++)); do
        key=${!i}
        [[ $key == *:u:* && $key != *:holds ]] || continue
        value=$(rcli -n 1 GET "$key" | tr -d '\r')
        value=${value%%.*}
        if counts_calls "$value" "$slack"; then
            verified="$key = $value"
        fi
    done
    [ -n "$verified" ] || die "$kind replay: no replayed counter in db 1 counts the $RB_CALLS calls made"
    log "$kind replay verified: $verified after $RB_CALLS calls"
    echo "rb_${kind}_verified=$verified after $RB_CALLS calls" >>"$RESULTS/env.txt"
}
# The spread replay: the same call with each key's customer drawn at random among the
# CUSTOMERS customers (`-r`: redis-benchmark draws a 12-digit number for every `__rand_int__`,
# so one call's keys belong to different customers, which one server accepts). Per second it
# touches as many keys, spread over as many customers, as the gateway's load does, where the
# verbatim replay keeps one customer's keys hot in the CPU caches. In db 2, after a
# calibration of SPREAD_CAL_PER_CUSTOMER calls per customer, so that nearly every key exists
# before the measured run. Verified like the verbatim replays, on the sum of one counter over
# the spread customers: a counter named by the call grows by one per call (the minute counter
# may expire during a run, and another replay's counters may too, so any one counter will do).
spread_replay() { # kind label customer pipeline-depth command...
    local kind=$1 label=$2 customer=$3 depth=$4 i key suffix verified=""
    shift 4
    local call=("$@") suffixes=() before=() grown
    for ((i = 3; i < 3 + call[2]; i++)); do
        key=${call[i]}
        if [[ $key == *"{c:$customer}:u:"* ]]; then
            suffixes+=("${key#*"{c:$customer}"}")
        fi
        call[i]=${key//"{c:$customer}"/"{c:__rand_int__}"}
    done
    ((${#suffixes[@]} > 0)) || die "$kind spread replay: the call names no counter"
    for suffix in "${suffixes[@]}"; do
        before+=("$(python3 "$BENCH/helper.py" spread-total "$REDIS_PORT" 2 "$suffix")")
    done
    local options=(-r "$CUSTOMERS")
    ((depth > 1)) && options+=(-P "$depth")
    RB_DB=2 RB_CAL=$((SPREAD_CAL_PER_CUSTOMER * CUSTOMERS)) rb_replay "$kind-spread" "$label, spread" \
        "${options[@]}" "${call[@]}"
    # redis-benchmark finishes the pipelines in flight when it reaches -n: up to one more
    # pipeline per connection, per run (calibration and measurement).
    local slack=$((depth > 1 ? 2 * RB_CLIENTS * depth : 0))
    for i in "${!suffixes[@]}"; do
        grown=$(($(python3 "$BENCH/helper.py" spread-total "$REDIS_PORT" 2 "${suffixes[i]}") - before[i]))
        if counts_calls "$grown" "$slack"; then
            verified="qg:{c:*}${suffixes[i]} summed over the customers grew by $grown"
        fi
    done
    [ -n "$verified" ] || die "$kind spread replay: no counter summed over the customers grew by the $RB_CALLS calls made"
    log "$kind spread replay verified: $verified after $RB_CALLS calls"
    echo "rb_${kind}-spread_verified=$verified after $RB_CALLS calls" >>"$RESULTS/env.txt"
}
rb_replay record "record script" "${RB_RECORD[@]}"
verify_replay record 0 "${RB_RECORD[@]}"
spread_replay record "record script" "$REPLAY_CUSTOMER" 1 "${RB_RECORD[@]}"
rb_replay check "${RB_CHECK[0]}" "${RB_CHECK[@]}"

if [[ " ${MODES[*]} " == *" consume "* ]]; then
    # Its own fresh capture, right before its replay (the minute counter's expiry, as above).
    capture consume "$CONSUME_REPLAY_CUSTOMER" /v1/limits/consume "$(event_body "$CONSUME_REPLAY_CUSTOMER")"
    mapfile -d '' -t RB_CONSUME <"$RUN_DIR/consume.args"
    if [ "${RB_CONSUME[1]}" = "$SHA" ]; then
        CONSUME_SCRIPT_NAME=$SCRIPT_NAME
    else
        load_script "${RB_CONSUME[1]}"
        CONSUME_SCRIPT_NAME=$SCRIPT_LABEL
    fi
    log "consume call: EVALSHA of $CONSUME_SCRIPT_NAME, ${RB_CONSUME[2]} keys, $((${#RB_CONSUME[@]} - 3 - RB_CONSUME[2])) ARGV"
    echo "consume_script_name=$CONSUME_SCRIPT_NAME" >>"$RESULTS/env.txt"
    rb_replay consume "raw consume script" "${RB_CONSUME[@]}"
    verify_replay consume 0 "${RB_CONSUME[@]}"
    spread_replay consume "raw consume script" "$CONSUME_REPLAY_CUSTOMER" 1 "${RB_CONSUME[@]}"
fi

# Batch ingestion's raw counterpart: the record call pipelined BATCH_EVENTS deep, as the
# gateway sends a batch's calls together on its one connection. Its own customer and capture.
capture batch "$BATCH_REPLAY_CUSTOMER" /v1/events/record "$(event_body "$BATCH_REPLAY_CUSTOMER")"
mapfile -d '' -t RB_BATCH <"$RUN_DIR/batch.args"
[ "${RB_BATCH[1]}" = "$SHA" ] || load_script "${RB_BATCH[1]}"
rb_replay batch "record script pipelined $BATCH_EVENTS deep" -P "$BATCH_EVENTS" "${RB_BATCH[@]}"
# redis-benchmark finishes the pipelines in flight when it reaches -n: up to one more
# pipeline per connection, per run (calibration and measurement).
verify_replay batch $((2 * RB_CLIENTS * BATCH_EVENTS)) "${RB_BATCH[@]}"
spread_replay batch "record script pipelined $BATCH_EVENTS deep" "$BATCH_REPLAY_CUSTOMER" \
    "$BATCH_EVENTS" "${RB_BATCH[@]}"

{
    echo "script_name=$SCRIPT_NAME"
    echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$RESULTS/env.txt"

# ------------------------------------------------ cost vs number of limits per customer
# Last, because it replaces the configuration: consume at the highest connection count with
# 1, 5 and 20 default limits (5 periods per meter, so 20 limits span 4 meters).
if [[ " ${MODES[*]} " == *" consume "* ]]; then
    top=${CONNS[-1]}
    for n in "${LIMIT_COUNTS[@]}"; do
        python3 "$BENCH/helper.py" limits "$BASE" "$ADMIN_KEY" "$n"
        wrk_run consume 16 "$WARMUP" "$RUN_DIR/warmup-limits-$n.txt" "limits-$n-warm-up"
        out=$RESULTS/wrk-limits-$n.txt
        wrk_run consume "$top" "$SECS" "$out" "limits-$n"
        line=$(grep '^BENCH_RESULT' "$out") || die "no BENCH_RESULT in $out"
        log "wrk consume -c $top with $n limits: ${line#BENCH_RESULT }"
    done
    echo "limit_counts=${LIMIT_COUNTS[*]}" >>"$RESULTS/env.txt"
fi

# --------------------------------------------------------------- configuration at scale
# After everything else, since it grows the configuration: CONFIG_SCALE customers get a limit
# of their own, checks are timed right after limit changes, and check runs at 4 connections
# for RELOAD_RUN_SECS on a restarted gateway, so the node's periodic full reload of its config
# cache (every CONFIG_REFRESH_SECS) falls inside the run.
if ((CONFIG_SCALE > 0)); then
    python3 "$BENCH/helper.py" config-scale "$BASE" "$ADMIN_KEY" "$CONFIG_SCALE" \
        "$RESULTS/config-scale.json"
    start_gateway "$GATEWAY_WORKERS"
    out=$RESULTS/wrk-reload.txt
    wrk_run check 4 "$RELOAD_RUN_SECS" "$out" reload
    line=$(grep '^BENCH_RESULT' "$out") || die "no BENCH_RESULT in $out"
    log "wrk check -c 4 for ${RELOAD_RUN_SECS}s across a full config reload: ${line#BENCH_RESULT }"
    echo "reload_run_secs=$RELOAD_RUN_SECS" >>"$RESULTS/env.txt"
fi

# -------------------------------------------------------------------------- report
python3 "$BENCH/helper.py" report "$RESULTS" "$BENCH/results-latest.md"
log "report written to bench/results-latest.md"

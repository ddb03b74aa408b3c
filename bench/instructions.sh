#!/usr/bin/env bash
# Instructions per request, counted with callgrind: the noise-free companion of bench/run.sh.
#
#   bench/instructions.sh [requests]        (default 500)
#
# On shared vCPUs, timings move by a third from one run to the next (other tenants' steal
# time); instruction counts do not, so a change's cost is judged here and its speed in run.sh.
# Installs what is missing (valgrind, redis-server, redis-tools) with apt-get and builds the
# release binary, then, with one sum meter, 3 default limits and 10 000 customers:
#
#   - gateway: user-space instructions per consume, check and record request, and per event
#     of a 100-event batch, with one worker thread as in run.sh (BENCH_WORKERS=N for N; the
#     counts before session 11 ran with the default, one per CPU). The release binary runs
#     under `valgrind --tool=callgrind` once
#     per kind with instrumentation off until it has served a warm-up, then on for N requests
#     (N/100 batches; one keep-alive connection, customers in turn), so start-up, the config
#     load and the metrics clock's calibration (which spins for a time, not a count) are not
#     counted. The alert sweep is set to once a day: its cost follows the clock, and under
#     valgrind the clock runs long per request.
#   - Redis: instructions per call of lua/usage.lua, replaying N times the consume call the
#     gateway sent for one request (captured with MONITOR) on a second redis-server under
#     callgrind, counting only the replay.
#
# Kernel work (TCP, system calls) is not counted. BENCH_KEEP=1 keeps the callgrind outputs for
# callgrind_annotate. BENCH_SKIP_BUILD=1 uses the existing binary;
# BENCH_BIN=/path/to/quotagate measures that binary (with this tree's lua/usage.lua, so run it
# from the binary's own tree).
set -euo pipefail

N=${1:-500}
if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [requests]   (a positive whole number, default 500)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${BENCH_BIN:-$ROOT/target/release/quotagate}
ADMIN_KEY=bench-key
CUSTOMERS=10000
WARM=200    # requests before counting starts: caches, connections, script load

log() { printf '[instructions] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=bench/require.sh
source bench/require.sh
require valgrind:valgrind callgrind_annotate:valgrind redis-server:redis-server \
    redis-cli:redis-tools redis-benchmark:redis-tools curl:curl python3:python3
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${BENCH_BIN:-}" ]; then
    log "cargo build --release"
    cargo build --release >&2
fi
[ -x "$BIN" ] || die "$BIN not found"

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/quotagate-instructions.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if ((rc != 0)); then
        log "failed (exit $rc); logs kept in $RUN_DIR"
    elif [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "callgrind outputs kept in $RUN_DIR (callgrind_annotate --inclusive=yes FILE)"
    else
        rm -rf "$RUN_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # description seconds command...
    local what=$1 deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready"
        sleep 0.2
    done
}

# Total instructions in the callgrind outputs matching a glob (one file per thread group).
instructions() {
    local total=0 file count
    for file in $1; do
        count=$(callgrind_annotate "$file" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
        total=$((total + ${count:-0}))
    done
    echo "$total"
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$RUN_DIR" --logfile "$RUN_DIR/redis.log" &
PIDS+=($!)
wait_for "redis-server" 15 redis-cli -p "$REDIS_PORT" ping

gateway_env() { # port command...: replaces the (background) subshell, so $! is the gateway
    exec env -i PATH="$PATH" QUOTAGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        QUOTAGATE_ADMIN_KEY=$ADMIN_KEY QUOTAGATE_LISTEN="127.0.0.1:$1" QUOTAGATE_LOG=warn \
        QUOTAGATE_ALERT_SWEEP_SECONDS=86400 QUOTAGATE_WORKER_THREADS=${BENCH_WORKERS:-1} "${@:2}"
}

# Setup and capture with a gateway at full speed.
GW_PORT=$(free_port)
BASE=http://127.0.0.1:$GW_PORT
gateway_env "$GW_PORT" "$BIN" >"$RUN_DIR/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
wait_for "gateway" 30 curl -fsS "$BASE/healthz"
python3 bench/helper.py setup "$BASE" "$ADMIN_KEY" "$CUSTOMERS"
redis-cli -p "$REDIS_PORT" MONITOR >"$RUN_DIR/monitor.txt" 2>&1 &
MONITOR_PID=$!
sleep 0.5
curl -fsS -o /dev/null -H "Authorization: Bearer $ADMIN_KEY" -H 'Content-Type: application/json' \
    -d '{"customerId":"c42","eventType":"llm","values":{"tokens":10}}' "$BASE/v1/limits/consume"
sleep 0.5
kill "$MONITOR_PID"
wait "$MONITOR_PID" 2>/dev/null || true
python3 bench/helper.py capture "$RUN_DIR/monitor.txt" c42 consume >"$RUN_DIR/consume.args"
kill -TERM "$GW_PID"
wait "$GW_PID" 2>/dev/null || true

# Instructions the gateway spends on `count` requests of `mode` (after a warm-up), under
# callgrind with instrumentation on for those requests only.
gateway_run() { # mode count [warm-up requests]
    local port out
    port=$(free_port)
    out=$RUN_DIR/gw-$1-$2
    gateway_env "$port" valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out.%p" "$BIN" >"$RUN_DIR/gateway-valgrind.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    wait_for "gateway under valgrind" 180 curl -fsS "http://127.0.0.1:$port/healthz"
    python3 bench/helper.py drive "http://127.0.0.1:$port" "$ADMIN_KEY" "$1" "${3:-$WARM}"
    callgrind_control -i on "$pid" >/dev/null 2>&1
    python3 bench/helper.py drive "http://127.0.0.1:$port" "$ADMIN_KEY" "$1" "$2"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    instructions "$out.*"
}

# Instructions of the usage script per call, replayed on a redis-server under callgrind.
script_run() {
    local port out pid sha
    port=$(free_port)
    out=$RUN_DIR/redis-cg
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.%p" \
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$RUN_DIR" >"$RUN_DIR/redis-valgrind.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_for "redis-server under valgrind" 60 redis-cli -p "$port" ping
    sha=$(redis-cli -p "$port" -x SCRIPT LOAD <lua/usage.lua)
    local args=()
    mapfile -d '' -t args <"$RUN_DIR/consume.args"
    args[1]=$sha
    redis-benchmark -p "$port" -c 1 -n "$WARM" -q "${args[@]}" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    redis-benchmark -p "$port" -c 1 -n "$N" -q "${args[@]}" >/dev/null
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo $(($(instructions "$out.*") / N))
}

echo "# Instructions per request ($(date -u '+%Y-%m-%d %H:%M UTC'), tree at $(git rev-parse --short HEAD), bench/instructions.sh $N)"
echo
echo "| what | instructions |"
echo "|---|---:|"
for mode in consume check record; do
    log "gateway, $mode: $N requests under callgrind"
    echo "| gateway, one $mode request (3 limits) | $(($(gateway_run "$mode" "$N") / N)) |"
done
BATCHES=$(((N + 99) / 100))
log "gateway, batch: $BATCHES requests of 100 events under callgrind"
echo "| gateway, one event of a 100-event batch (3 limits) | $(($(gateway_run batch "$BATCHES" 2) / (100 * BATCHES))) |"
log "redis: the captured consume call, $N times under callgrind"
echo "| Redis, one consume call of lua/usage.lua (3 limits, captured and replayed) | $(script_run) |"

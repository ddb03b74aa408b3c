#!/usr/bin/env bash
# One-off comparison behind the choice of redis-rs's multiplexed connection over deadpool-redis.
#
#   bench/experiments/pool-vs-multiplexed.sh [seconds]        (default 8)
#
# Builds, in a throwaway git worktree and its own target directory, the current commit with
# deadpool-pool.patch applied (a deadpool-redis pool used instead of the multiplexed
# ConnectionManager when EXPERIMENT_REDIS_POOL=<size> is set), then measures the same binary
# with the multiplexed connection and with pools of 16 and 64 connections: consume and check
# at 64 wrk connections, 10 000 customers, 3 limits (bench/helper.py setup), each on a fresh
# redis-server on a free loopback port. Needs what bench/run.sh needs (wrk, redis-server).
set -euo pipefail
SECS=${1:-8}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/quotagate-pool.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    git -C "$ROOT" worktree remove --force "$WORK/tree" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

git worktree add -q --detach "$WORK/tree" HEAD
git -C "$WORK/tree" apply "$ROOT/bench/experiments/deadpool-pool.patch"
CARGO_TARGET_DIR=$WORK/target cargo build --release --manifest-path "$WORK/tree/Cargo.toml" >&2
BIN=$WORK/target/release/quotagate

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

measure() { # label pool-size-or-empty mode
    local label=$1 pool=$2 mode=$3 rport gport base
    rport=$(free_port)
    gport=$(free_port)
    base=http://127.0.0.1:$gport
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --logfile /dev/null &
    local redis=$!
    PIDS+=("$redis")
    sleep 0.3
    env ${pool:+EXPERIMENT_REDIS_POOL=$pool} QUOTAGATE_REDIS_URL=redis://127.0.0.1:$rport \
        QUOTAGATE_ADMIN_KEY=bench-key QUOTAGATE_LISTEN=127.0.0.1:$gport QUOTAGATE_LOG=warn "$BIN" &
    local gateway=$!
    PIDS+=("$gateway")
    for _ in $(seq 100); do curl -fsS "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    python3 "$ROOT/bench/helper.py" setup "$base" bench-key 10000 2>/dev/null
    wrk -t2 -c16 -d1s -s "$ROOT/bench/quotagate.lua" "$base" -- "$mode" 10000 100 bench-key >/dev/null
    line=$(wrk -t2 -c64 -d"${SECS}s" -s "$ROOT/bench/quotagate.lua" "$base" -- "$mode" 10000 100 bench-key |
        grep '^BENCH_RESULT')
    python3 - "$label" "$mode" "$line" <<'PY'
import sys
label, mode, line = sys.argv[1:]
f = dict(kv.split("=") for kv in line.split()[1:])
rps = int(f["requests"]) / (int(f["duration_us"]) / 1e6)
print(f"| {label} | {mode} | {rps:,.0f} | {int(f['p50_us'])/1000:.2f} | {int(f['p99_us'])/1000:.2f} |")
PY
    kill "$gateway" "$redis"
    wait "$gateway" "$redis" 2>/dev/null || true
}

echo "| connection | endpoint | req/s | p50 ms | p99 ms |"
echo "|---|---|---:|---:|---:|"
for mode in consume check; do
    measure "multiplexed (ConnectionManager)" "" "$mode"
    measure "deadpool-redis, 16 connections" 16 "$mode"
    measure "deadpool-redis, 64 connections" 64 "$mode"
done

#!/usr/bin/env bash
# A/B comparison of two gateway builds in alternating pairs: the method behind session 11's
# figures for the single-threaded runtime and TCP_NODELAY (BENCHMARKS.md).
#
#   bench/experiments/ab.sh A B [pairs] [seconds]        (defaults: 3 pairs, 5 s per run)
#
# A and B are each a gateway binary, or a git revision that is built in a throwaway worktree
# with its own target directory. Each run of a pair starts a fresh redis-server and gateway
# (QUOTAGATE_WORKER_THREADS=${AB_WORKERS:-1}) on free loopback ports, creates 10 000 customers
# with 3 limits (bench/helper.py setup), then measures with wrk (bench/quotagate.lua) consume
# and check at 16 and 64 connections, then each at half of its 64-connection rate with the
# open-loop generator (examples/open_loop.rs, built from this tree), and prints one line per
# measurement: label, mode, connections (or "half"), req/s, latency percentiles (µs) and the
# gateway's CPU per request (user + system, µs). A and B alternate (A B A B …), so a
# host that speeds up or slows down during the experiment shows in both. Needs what
# bench/run.sh needs (wrk, redis-server, python3).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 A B [pairs] [seconds]   (A, B: a binary or a git revision)" >&2
    exit 2
fi
PAIRS=${3:-3}
SECS=${4:-5}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/quotagate-ab.XXXXXX")
PIDS=()
TREES=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for tree in "${TREES[@]}"; do git -C "$ROOT" worktree remove --force "$tree" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

binary() { # binary-or-revision label -> path of the binary
    if [ -x "$1" ] && [ -f "$1" ]; then
        echo "$1"
        return
    fi
    local tree=$WORK/tree-$2
    git worktree add -q --detach "$tree" "$1"
    TREES+=("$tree")
    CARGO_TARGET_DIR=$WORK/target-$2 cargo build --release --manifest-path "$tree/Cargo.toml" >&2
    echo "$WORK/target-$2/release/quotagate"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
CLK_TCK=$(getconf CLK_TCK)
cpu_seconds() { awk -v hz="$CLK_TCK" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }

measure() { # label binary
    local label=$1 bin=$2 rport gport base redis gateway
    rport=$(free_port)
    gport=$(free_port)
    base=http://127.0.0.1:$gport
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --logfile /dev/null &
    redis=$!
    PIDS+=("$redis")
    env -i PATH="$PATH" QUOTAGATE_REDIS_URL="redis://127.0.0.1:$rport" QUOTAGATE_ADMIN_KEY=bench-key \
        QUOTAGATE_LISTEN="127.0.0.1:$gport" QUOTAGATE_LOG=warn \
        QUOTAGATE_WORKER_THREADS="${AB_WORKERS:-1}" "$bin" >/dev/null 2>&1 &
    gateway=$!
    PIDS+=("$gateway")
    for _ in $(seq 100); do curl -fsS "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    python3 bench/helper.py setup "$base" bench-key 10000 >/dev/null 2>&1
    wrk -t 2 -c 16 -d 1s -s bench/quotagate.lua "$base" -- consume 10000 100 bench-key >/dev/null
    local mode conns before after result requests rps
    for mode in consume check; do
        for conns in 16 64 half; do
            before=$(cpu_seconds "$gateway")
            if [ "$conns" = half ]; then
                result=$("$OPEN_LOOP" --addr "127.0.0.1:$gport" --rate $((rps / 2)) --seconds "$SECS" \
                    --mode "$mode" --key bench-key | grep '^BENCH_RESULT')
            else
                result=$(wrk -t 2 -c "$conns" -d "${SECS}s" -s bench/quotagate.lua "$base" -- \
                    "$mode" 10000 100 bench-key | grep '^BENCH_RESULT')
            fi
            after=$(cpu_seconds "$gateway")
            requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$result")
            rps=$((requests / SECS))
            echo "$label $mode c=$conns rps=$rps" \
                "$(grep -o 'p50_us=[0-9]* p90_us=[0-9]* p99_us=[0-9]* p999_us=[0-9]*' <<<"$result")" \
                "gateway_us=$(awk -v b="$before" -v a="$after" -v n="$requests" 'BEGIN { printf "%.1f", (a - b) * 1e6 / n }')"
        done
    done
    kill "$gateway" "$redis"
    wait "$gateway" "$redis" 2>/dev/null || true
}

cargo build --release --example open_loop >&2
OPEN_LOOP=$ROOT/target/release/examples/open_loop
BIN_A=$(binary "$1" a)
BIN_B=$(binary "$2" b)
for _ in $(seq "$PAIRS"); do
    measure A "$BIN_A"
    measure B "$BIN_B"
done

#!/usr/bin/env bash
# One-off comparison: what Redis spends per consume call of lua/usage.lua sent as EVALSHA (as
# the gateway does) and as FCALL of the same code loaded as a Redis 7 function library, whose
# helper functions are created once at load instead of on every call.
#
#   BENCH_KEEP=1 bench/instructions.sh 300     # captures a consume call: RUN_DIR/consume.args
#   bench/experiments/fcall-vs-evalsha.sh RUN_DIR/consume.args [calls]   (default 300)
#
# Replays the captured call (NUL-separated arguments, dedupe off, so every call counts) on a
# redis-server under callgrind, instrumentation on only for the measured calls, once per form,
# and prints instructions per call. Needs valgrind, redis-server, redis-tools, python3.
set -euo pipefail
ARGS_FILE=${1:?usage: $0 CONSUME_ARGS_FILE [calls]}
N=${2:-300}
cd "$(dirname "$0")/../.."
WORK=$(mktemp -d "${TMPDIR:-/tmp}/quotagate-fcall.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The library form: the script's top level up to its main loop, with the globals it caches
# taken on the first call (a library's load step sees no redis.call, no tonumber), then the
# main loop as the registered function's body.
python3 - "$WORK/usage_fn.lua" <<'EOF'
import sys
src = open("lua/usage.lua").read()
split = src.index("local answers = {}\nlocal kb, ab = 0, 1")
head, main = src[:split], src[split:]
cached = [
    "local call, try_call = redis.call, redis.pcall",
    "local tonumber, tostring, type, unpack = tonumber, tostring, type, unpack",
    "local match, gmatch = string.match, string.gmatch",
    "local floor, ceil, max = math.floor, math.ceil, math.max",
]
for line in cached:
    assert line in head, line
    head = head.replace(line, "")
head = head.replace("local KEYS, ARGV = KEYS, ARGV",
    "local KEYS, ARGV, call, try_call, tonumber, tostring, type, unpack, match, gmatch, floor, ceil, max, cjson")
first_call = """  KEYS, ARGV = keys, args
  if not call then
    call, try_call = redis.call, redis.pcall
    tonumber, tostring, type, unpack = _G.tonumber, _G.tostring, _G.type, _G.unpack
    match, gmatch = string.match, string.gmatch
    floor, ceil, max = math.floor, math.ceil, math.max
    cjson = _G.cjson
  end
"""
library = ("#!lua name=qg_experiment\n" + head
           + "redis.register_function('qg_usage', function(keys, args)\n" + first_call + main + "\nend)\n")
open(sys.argv[1], "w").write(library)
EOF

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

measure() { # evalsha|fcall
    local port pid out args=()
    port=$(free_port)
    out=$WORK/cg-$1
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.%p" \
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" >"$WORK/valgrind-$1.log" 2>&1 &
    pid=$!
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.2; done
    mapfile -d '' -t args <"$ARGS_FILE"
    if [ "$1" = evalsha ]; then
        args[1]=$(redis-cli -p "$port" -x SCRIPT LOAD <lua/usage.lua)
    else
        redis-cli -p "$port" -x FUNCTION LOAD <"$WORK/usage_fn.lua" >/dev/null
        args[0]=FCALL
        args[1]=qg_usage
    fi
    redis-benchmark -p "$port" -c 1 -n 200 -q "${args[@]}" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    redis-benchmark -p "$port" -c 1 -n "$N" -q "${args[@]}" >/dev/null
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local total
    total=$(callgrind_annotate "$out".* 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    echo "$1: $((total / N)) instructions per call"
}

measure evalsha
measure fcall

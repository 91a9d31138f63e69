#!/usr/bin/env bash
# The side-by-side matrix of BENCHMARKS.md section 2: compare.sh over message sizes x connection counts x
# server threads, then one idle run at 10,000 connections for server RSS, then one table per case.
#
#   benches/scripts/compare-matrix.sh [OUT_DIR]          (default target/compare-matrix/<timestamp>)
#
# Environment: BIN_DIR (as compare.sh), DURATION (10s per run), SIZES ("512 16384"), CONNS ("100 1000"),
# THREADS ("1 2"), SERVERS ("tether tungstenite fastwebsockets node-ws"), IDLE_CONNS (10000, 0 = skip),
# RATE_512 (messages/s per connection at 512 B: "100:500 1000:50", i.e. 50,000 messages/s offered),
# RATE_16K (at 16 KiB: "100:50 1000:5", 5,000 messages/s = 80 MiB/s offered), LOAD_ARGS (extra tether-load
# arguments, e.g. "--closed-loop": then the rates do not apply), PIN=1 (see compare.sh).
# 28 runs of DURATION plus ~3 s each, and the idle run: ~7 minutes at 10 s.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out=${1:-$root/target/compare-matrix/$(date +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-10s}
SIZES=${SIZES:-512 16384}
CONNS=${CONNS:-100 1000}
THREADS=${THREADS:-1 2}
SERVERS=${SERVERS:-tether tungstenite fastwebsockets node-ws}
IDLE_CONNS=${IDLE_CONNS:-10000}
RATE_512=${RATE_512:-100:500 1000:50}
RATE_16K=${RATE_16K:-100:50 1000:5}
mkdir -p "$out"

rate_for() { # size conns -> messages/s per connection
    local table=$RATE_16K
    [ "$1" -le 4096 ] && table=$RATE_512
    for pair in $table; do [ "${pair%%:*}" = "$2" ] && { echo "${pair#*:}"; return; }; done
    echo 10
}

for threads in $THREADS; do
    for size in $SIZES; do
        for conns in $CONNS; do
            rate=$(rate_for "$size" "$conns")
            dir="$out/t${threads}-s${size}-c${conns}"
            echo "=== threads $threads, $size B, $conns connections x $rate msg/s ($(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
            "$root/benches/scripts/compare.sh" --no-build --connections "$conns" --message-rate "$rate" \
                --message-size "$size" --duration "$DURATION" --threads "$threads" --servers "$SERVERS" \
                --out "$dir" --load-args "${LOAD_ARGS:-}" > "$dir.log" 2>&1 || echo "compare.sh failed: see $dir.log"
        done
    done
done
if [ "$IDLE_CONNS" -gt 0 ]; then
    dir="$out/idle-${IDLE_CONNS}"
    echo "=== idle: $IDLE_CONNS connections, no messages, 1 thread ($(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$root/benches/scripts/compare.sh" --no-build --connections "$IDLE_CONNS" --message-rate 0 --duration 10s \
        --threads 1 --servers "$SERVERS" --out "$dir" > "$dir.log" 2>&1 || echo "compare.sh failed: see $dir.log"
fi
for f in "$out"/*/summary.md; do
    echo
    echo "#### $(basename "$(dirname "$f")")"
    cat "$f"
done | tee "$out/all.md"
echo "(results in $out)"

#!/usr/bin/env bash
# Keepalive's cost while connections are held: runs benches/scripts/scale.sh (N connections, 90 s hold,
# server pings SERVER_PING, client pings CLIENT_PING) and, over 30 s of the hold, prints the packets the
# machine processed (/proc/net/softnet_stat, every loopback segment), each process's CPU (/proc/PID/stat) and
# tetherd's server pings and client pings per second (/metrics), then scale.sh's own summary.
#   bash benches/scripts/keepalive-sample.sh [N]        (default 100000)
# Environment: as scale.sh (RATE 20000, SERVER_PING 20s, CLIENT_PING 60s here; SERVER_ARGS / LOAD_ARGS, e.g.
# SERVER_ARGS="--ping-mode idle" or LOAD_ARGS="--message-rate 0.2"; BIN_DIR). Loopback only, bounded in time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
N=${1:-100000}
PORT=${PORT:-9601}
OUT=${OUT:-$(mktemp -d)}
export PORT OUT RATE=${RATE:-20000} SERVER_PING=${SERVER_PING:-20s} CLIENT_PING=${CLIENT_PING:-60s}
bash benches/scripts/scale.sh "$N" 90s >"$OUT/scale.txt" 2>&1 &
scale=$!
sleep $(( N / RATE + 35 ))
packets() { local s=0 a; while read -r a _; do s=$((s + 16#$a)); done </proc/net/softnet_stat; echo "$s"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
metric() { { curl -s -m 5 "http://127.0.0.1:$PORT/metrics" || true; } | awk -v k="$1{shard=\"total\"}" '$1 == k {v = $2} END {print v + 0}'; }
td=$(pgrep -x tetherd | head -1); tl=$(pgrep -x tether-load | head -1)
p0=$(packets); a0=$(ticks "$td"); b0=$(ticks "$tl"); s0=$(metric tether_pings_sent_total); r0=$(metric tether_pings_received_total)
sleep 30
p1=$(packets); a1=$(ticks "$td"); b1=$(ticks "$tl"); s1=$(metric tether_pings_sent_total); r1=$(metric tether_pings_received_total)
hz=$(getconf CLK_TCK)
echo "over 30 s of the hold: $(( (p1 - p0) / 30 )) packets/s; tetherd $(( (a1 - a0) * 100 / hz / 30 ))% of a core, tether-load $(( (b1 - b0) * 100 / hz / 30 ))%; server pings $(( (s1 - s0) / 30 ))/s, client pings $(( (r1 - r0) / 30 ))/s"
rc=0; wait "$scale" || rc=$?
cat "$OUT/scale.txt"
exit "$rc"

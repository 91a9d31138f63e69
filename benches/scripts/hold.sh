#!/usr/bin/env bash
# Hold N WebSocket connections between tetherd and tether-load on this machine and report what it costs.
#   bash benches/scripts/hold.sh [N] [HOLD]        (defaults: 200000 connections, 5m hold)
# Environment: SERVER_PING (20s), CLIENT_PING (30s), RATE (20000), OUT (a temp dir).
# Reports: connect rate during the ramp, tetherd user-space memory per idle connection (RSS growth / N),
# kernel memory per connection (Slab + sockets from /proc/meminfo, /proc/net/sockstat), tetherd CPU seconds per
# million keepalive pings (server pings sent + client pings answered during the hold), ping RTT percentiles,
# drops. Everything runs on loopback; both processes are stopped at the end, also on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
N=${1:-200000}
HOLD=${2:-5m}
SERVER_PING=${SERVER_PING:-20s}
CLIENT_PING=${CLIENT_PING:-30s}
RATE=${RATE:-20000}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PORT=${PORT:-9301}

cargo build --release -q -p tetherd -p tether-load
TD=target/release/tetherd
TL=target/release/tether-load

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}' | head -1; }
hz=$(getconf CLK_TCK)

# Source addresses: 25,000 connections per address (28,000 ephemeral ports each towards one server port).
addrs=$(( (N + 24999) / 25000 ))
SRC="127.0.10.1-127.0.10.$addrs"

"$TD" --listen "127.0.0.1:$PORT" --max-connections $((N + 1000)) --ping-interval "$SERVER_PING" --pong-timeout 10s \
    --log warn >"$OUT/tetherd.out" 2>"$OUT/tetherd.err" &
tdpid=$!
trap 'kill $tdpid 2>/dev/null || true; wait $tdpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$OUT/tetherd.out" 2>/dev/null && break; sleep 0.1; done
sleep 1
rss0=$(rss_kib $tdpid); slab0=$(slab_kib); sock0=$(awk '/^TCP:/ {print $3}' /proc/net/sockstat)

"$TL" run --url "ws://127.0.0.1:$PORT/" --connections "$N" --rate "$RATE" --duration "$HOLD" \
    --ping-interval "$CLIENT_PING" --pong-timeout 20s --source-ips "$SRC" --json "$OUT/report.json" \
    --hgrm "$OUT/ping.hgrm" --plot "$OUT/run.svg" --quiet >"$OUT/load.txt" 2>"$OUT/load.err" &
tlpid=$!

# Wait for the ramp to finish (all N open on the server), then measure the hold window.
while kill -0 $tlpid 2>/dev/null; do
    open=$(metric 'tether_websockets_open{shard="total"}'); open=${open:-0}
    [ "$open" -ge "$N" ] && break
    sleep 1
done
sleep 5
rss1=$(rss_kib $tdpid); slab1=$(slab_kib); sock1=$(awk '/^TCP:/ {print $3}' /proc/net/sockstat)
tlrss=$(rss_kib $tlpid 2>/dev/null || echo 0)
cpu_a=$(cpu_ticks $tdpid); t_a=$(date +%s.%N)
pings_a=$(metric tether_pings_sent_total); prx_a=$(metric tether_pings_received_total)
# Measure over most of the hold (stop 15 s before tether-load starts closing).
hold_s=$(awk -v h="$HOLD" 'BEGIN { n = h + 0; u = substr(h, length(h)); if (u == "m") n *= 60; print n }')
sleep $(( hold_s > 40 ? hold_s - 25 : hold_s / 2 ))
cpu_b=$(cpu_ticks $tdpid); t_b=$(date +%s.%N)
pings_b=$(metric tether_pings_sent_total); prx_b=$(metric tether_pings_received_total)
wait $tlpid || true

keepalives=$(( (pings_b - pings_a) + (prx_b - prx_a) ))
python3 - "$OUT/report.json" <<PY
import json, sys
r = json.load(open(sys.argv[1]))
n = $N
c = r["connections"]
print(f"connections        requested {c['requested']}  established {c['established']}  failed {c['failed']}  peak open {c['peak_open']}")
print(f"ramp               {r.get('ramp_s', 0):.1f} s  ->  {r.get('connect_rate_per_s', c['established'] / max(r.get('ramp_s', 1), 1e-9)):.0f} connections/s")
print(f"tetherd RSS        {$rss0} KiB idle -> {$rss1} KiB with {n} open: {($rss1 - $rss0) * 1024 / n:.0f} bytes per connection")
print(f"tether-load RSS    {$tlrss} KiB: {$tlrss * 1024 / n:.0f} bytes per connection")
print(f"kernel slab        +{($slab1 - $slab0)} KiB: {($slab1 - $slab0) * 1024 / n:.0f} bytes per connection (both ends: {($slab1 - $slab0) * 1024 / (2 * n):.0f} per socket)")
print(f"TCP sockets in use +{$sock1 - $sock0}")
secs = ($cpu_b - $cpu_a) / $hz
wall = $t_b - $t_a
k = $keepalives
print(f"tetherd CPU        {secs:.2f} s over {wall:.0f} s of hold ({100 * secs / wall:.1f}% of one core); {k} keepalive pings handled"
      + (f": {secs / k * 1e6:.2f} CPU s per million" if k else ""))
p = r["ping_rtt_us"]
print(f"ping RTT           p50 {p['p50']/1000:.2f} ms  p99 {p['p99']/1000:.2f} ms  p99.9 {p['p999']/1000:.2f} ms  (count {p['count']})")
d = r["drops"]
print(f"drops              {d['total']}  by code {d['by_code']}  pong timeouts {d['pong_timeouts']}")
PY
echo "files: $OUT"

#!/usr/bin/env bash
# Hold N WebSocket connections between tetherd and tether-load on this machine and report what it costs.
#   bash benches/scripts/hold.sh [N] [HOLD]        (defaults: 200000 connections, 5m hold)
# Environment: SERVER_PING (20s), CLIENT_PING (30s), RATE (20000, connections/s during the ramp),
#   OUT (a temp dir), PORT (9301), BIN_DIR (target/release; when set, the binaries there are used as they
#   are and nothing is built), ADDRS_PER (12000: connections per source address; above ~14,000 connect()
#   slows down, see BENCHMARKS.md section 3), SRC_NET (127.0.10: source addresses are SRC_NET.1, .2, ...).
#   tetherd closes first, so each run leaves its connections in TIME_WAIT on the server side for 60 s:
#   back-to-back runs should use another PORT or SRC_NET (or wait a minute). TD_ARGS / TL_ARGS: extra
#   arguments for tetherd / tether-load (word-split), e.g. TD_ARGS="--deflate dedicated:15" TL_ARGS=--deflate.
#   TLS=1: wss:// with the test certificate (tests/certs), /metrics over https.
# tetherd runs with MIMALLOC_SHOW_STATS=1: its allocator statistics (peak committed) land in OUT/tetherd.err.
# Reports: connect rate during the ramp, tetherd and tether-load user-space memory per idle connection
# (RSS growth / N, split by mapping from smaps: heap arena, receive-buffer pools, io_uring rings, other),
# kernel memory per connection (Slab from /proc/meminfo, TCP pages from /proc/net/sockstat), tetherd CPU
# seconds per million keepalive pings (server pings sent + client pings answered during the hold; from 5 s
# after the ramp to 20 s before the end of holds over 40 s) and per connection-hour, ping RTT
# percentiles, drops, and the final echo (every connection still open at the end sends one message and must
# get it back). Everything runs on loopback; both processes are bounded in time (`timeout`) and stopped at
# the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
N=${1:-200000}
HOLD=${2:-5m}
SERVER_PING=${SERVER_PING:-20s}
CLIENT_PING=${CLIENT_PING:-30s}
RATE=${RATE:-20000}
ADDRS_PER=${ADDRS_PER:-12000}
SRC_NET=${SRC_NET:-127.0.10}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PORT=${PORT:-9301}
SCHEME=ws HTTP=http
if [ "${TLS:-0}" = 1 ]; then
    SCHEME=wss HTTP=https
    TD_ARGS="--tls-cert tests/certs/localhost.crt --tls-key tests/certs/localhost.key ${TD_ARGS:-}"
    TL_ARGS="--tls-ca tests/certs/ca.crt ${TL_ARGS:-}"
fi

if [ -n "${BIN_DIR:-}" ]; then
    BIN=$BIN_DIR
else
    cargo build --release -q -p tetherd -p tether-load
    BIN=target/release
fi
TD=$BIN/tetherd
TL=$BIN/tether-load

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
tcp_pages() { awk '/^TCP:/ {print $11}' /proc/net/sockstat; }
tcp_inuse() { awk '/^TCP:/ {print $3}' /proc/net/sockstat; }
# A counter or gauge from /metrics: NAME{shard="total"} (tetherd since 68e2ef5: every counter per shard) or,
# from older tetherd builds, the unlabelled NAME.
metric() {
    # awk reads everything (no early exit: with pipefail, curl's SIGPIPE would fail the caller under set -e).
    { curl -sk -m 5 "$HTTP://127.0.0.1:$PORT/metrics" || true; } |
        awk -v m="$1" -v t="$1{shard=\"total\"}" '$1 == t {tv = $2} $1 == m {v = $2} END {if (tv != "") print tv; else if (v != "") print v}'
}
# Resident KiB by kind of mapping (from smaps): "HEAP POOLS URING OTHER". HEAP: unnamed mappings of 64 MiB or
# more (mimalloc's arena, reserved 1 GiB at a time); POOLS: other unnamed mappings of 4 MiB or more (the
# engine's receive-buffer rings, 8 MiB per shard by default); URING: the io_uring rings the kernel maps;
# OTHER: everything else (binary, libraries, stacks, small mappings).
smaps_split() {
    awk 'function flush() {
             if (uring) u += rss; else if (!named && size >= 65536) h += rss; else if (!named && size >= 4096) p += rss; else o += rss
             rss = 0; size = 0 }
         /^[0-9a-f]+-[0-9a-f]+ / { flush(); named = (NF >= 6); uring = ($0 ~ /io_uring/); next }
         /^Size:/ { size = $2 }
         /^Rss:/ { rss = $2 }
         END { flush(); printf "%d %d %d %d\n", h, p, u, o }' "/proc/$1/smaps" 2>/dev/null || echo "0 0 0 0"
}
hz=$(getconf CLK_TCK)
hold_s=$(awk -v h="$HOLD" 'BEGIN { n = h + 0; u = substr(h, length(h)); if (u == "m") n *= 60; if (u == "h") n *= 3600; print n }')

# Source addresses: ADDRS_PER connections per address (28,000 ephemeral ports each towards one server port).
addrs=$(( (N + ADDRS_PER - 1) / ADDRS_PER ))
SRC="$SRC_NET.1-$SRC_NET.$addrs"

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/loadavg.txt"
# tetherd gets the whole run plus a margin; it is stopped by the trap long before that in a normal run.
MIMALLOC_SHOW_STATS=1 timeout -s KILL $((hold_s + N / 1000 + 300)) "$TD" --listen "127.0.0.1:$PORT" --max-connections $((N + 1000)) \
    --ping-interval "$SERVER_PING" --pong-timeout 10s --log warn ${TD_ARGS:-} >"$OUT/tetherd.out" 2>"$OUT/tetherd.err" &
tdwrap=$!
tlwrap="" tlpid="" tdpid=""
cleanup() {
    # Signal the processes themselves: `timeout` would pass a signal on to its whole process group, and a
    # second SIGTERM makes tetherd skip its drain.
    [ -n "$tlwrap" ] && { kill -INT "${tlpid:-$tlwrap}" 2>/dev/null || true; }
    kill "${tdpid:-$tdwrap}" 2>/dev/null || true
    [ -n "$tlwrap" ] && { wait "$tlwrap" 2>/dev/null || true; }
    wait "$tdwrap" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# `timeout` forks the real process; measure that one.
for _ in $(seq 100); do tdpid=$(pgrep -P "$tdwrap" -x tetherd || true); [ -n "$tdpid" ] && break; sleep 0.1; done
[ -n "$tdpid" ] || { echo "tetherd did not start" >&2; cat "$OUT/tetherd.err" >&2; exit 1; }
for _ in $(seq 100); do metric tether_pings_sent_total | grep -q . && break; sleep 0.1; done
sleep 1
rss0=$(rss_kib $tdpid); read -r heap0 pools0 uring0 other0 < <(smaps_split $tdpid)
cp "/proc/$tdpid/smaps" "$OUT/tetherd.smaps.idle" 2>/dev/null || true
slab0=$(slab_kib); sock0=$(tcp_inuse); tcpmem0=$(tcp_pages)

# tether-load: ramp (N / RATE s) + hold + final echo + close, bounded.
timeout -s INT -k 30 $((hold_s + N / 1000 + 120)) "$TL" run --url "$SCHEME://127.0.0.1:$PORT/" --connections "$N" \
    --rate "$RATE" --duration "$HOLD" --ping-interval "$CLIENT_PING" --pong-timeout 20s --source-ips "$SRC" \
    --final-echo --close-wait 30s --json "$OUT/report.json" --hgrm "$OUT/ping.hgrm" --plot "$OUT/run.svg" \
    --quiet ${TL_ARGS:-} >"$OUT/load.txt" 2>"$OUT/load.err" &
tlwrap=$!
for _ in $(seq 50); do tlpid=$(pgrep -P "$tlwrap" -x tether-load || true); [ -n "$tlpid" ] && break; sleep 0.1; done
t_start=$(date +%s.%N)

# Wait for the ramp to finish: all N open on the server, or the count unchanged for 5 s (connections that
# failed are not coming: tether-load has started its hold), or 120 s past the time the rate needs.
ramp_deadline=$(( $(date +%s) + N / RATE + 120 ))
open=0 last=-1 same=0
while kill -0 "$tlwrap" 2>/dev/null && [ "$(date +%s)" -lt "$ramp_deadline" ]; do
    open=$(metric tether_websockets_open); open=${open:-0}
    [ "$open" -ge "$N" ] && break
    if [ "$open" = "$last" ] && [ "$open" -gt 0 ]; then same=$((same + 1)); else same=0; fi
    [ "$same" -ge 5 ] && break
    last=$open
    sleep 1
done
t_full=$(date +%s.%N)
echo "server open after ramp: $open (t+$(awk -v a="$t_start" -v b="$t_full" 'BEGIN{printf "%.1f", b-a}') s)"
sleep 5
rss1=$(rss_kib $tdpid); read -r heap1 pools1 uring1 other1 < <(smaps_split $tdpid)
slab1=$(slab_kib); sock1=$(tcp_inuse); tcpmem1=$(tcp_pages)
tlrss=$(rss_kib "${tlpid:-0}"); read -r tlheap tlpools tluring tlother < <(smaps_split "${tlpid:-0}")
cp /proc/meminfo "$OUT/meminfo.full"; cp /proc/net/sockstat "$OUT/sockstat.full"
cp "/proc/$tdpid/smaps" "$OUT/tetherd.smaps" 2>/dev/null || true
cpu_a=$(cpu_ticks $tdpid); t_a=$(date +%s.%N)
pings_a=$(metric tether_pings_sent_total); prx_a=$(metric tether_pings_received_total)
# Measure over most of the hold (stop ~20 s before tether-load's hold ends; short holds: their first half).
sleep $(( hold_s > 40 ? hold_s - 25 : (hold_s / 2 > 6 ? hold_s / 2 - 5 : 1) ))
cpu_b=$(cpu_ticks $tdpid); t_b=$(date +%s.%N)
pings_b=$(metric tether_pings_sent_total); prx_b=$(metric tether_pings_received_total)
open_b=$(metric tether_websockets_open)
# Keep the server-side measurements on disk before waiting: the wait can be long when the machine is
# overloaded (tearing down hundreds of thousands of sockets), and a run stopped then still leaves them.
cat > "$OUT/measure.env" <<EOF
rss0=$rss0 rss1=$rss1 heap0=$heap0 heap1=$heap1 pools0=$pools0 pools1=$pools1 uring0=$uring0 uring1=$uring1 tlrss=$tlrss
slab0=$slab0 slab1=$slab1 sock0=$sock0 sock1=$sock1 tcpmem0=$tcpmem0 tcpmem1=$tcpmem1
cpu_a=$cpu_a cpu_b=$cpu_b hz=$hz t_a=$t_a t_b=$t_b pings_a=$pings_a pings_b=$pings_b prx_a=$prx_a prx_b=$prx_b open_b=$open_b
EOF
rc=0; wait "$tlwrap" || rc=$?
tlwrap=""
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.txt"
[ "$rc" = 0 ] || echo "tether-load exited with $rc (124 = killed by the time bound)"
curl -sk -m 5 "$HTTP://127.0.0.1:$PORT/metrics" > "$OUT/metrics.end" || true

keepalives=$(( (pings_b - pings_a) + (prx_b - prx_a) ))
python3 - "$OUT/report.json" <<PY
import json, sys
r = json.load(open(sys.argv[1]))
n = $N
c = r["connections"]
print(f"connections        requested {c['requested']}  established {c['established']}  failed {c['failed']}  peak open {c['peak_open']}  server open late in hold {'$open_b'}")
print(f"ramp               {r.get('ramp_s', 0):.1f} s  ->  {r.get('connect_rate_per_s', 0):.0f} connections/s (asked for $RATE/s)")
print(f"tetherd RSS        {$rss0} KiB idle -> {$rss1} KiB with {n} open: {($rss1 - $rss0) * 1024 / n:.0f} bytes per connection"
      f" (heap {($heap1 - $heap0) * 1024 / n:.0f}, receive-buffer pools {($pools1 - $pools0) * 1024 / n:.0f},"
      f" io_uring mappings {($uring1 - $uring0) * 1024 / n:.0f}, other {($other1 - $other0) * 1024 / n:.0f})")
print(f"tether-load RSS    {$tlrss} KiB: {$tlrss * 1024 / n:.0f} bytes per connection incl. its base"
      f" (heap {$tlheap} KiB, receive-buffer pools {$tlpools} KiB, io_uring mappings {$tluring} KiB, other {$tlother} KiB)")
print(f"kernel slab        +{($slab1 - $slab0)} KiB: {($slab1 - $slab0) * 1024 / n:.0f} bytes per connection (both ends: {($slab1 - $slab0) * 1024 / (2 * n):.0f} per socket)")
print(f"TCP sockets in use +{$sock1 - $sock0}; TCP buffer pages +{$tcpmem1 - $tcpmem0} ({($tcpmem1 - $tcpmem0) * 4096 / n:.0f} bytes per connection)")
secs = ($cpu_b - $cpu_a) / $hz
wall = $t_b - $t_a
k = $keepalives
print(f"tetherd CPU        {secs:.2f} s over {wall:.0f} s of hold ({100 * secs / wall:.1f}% of one core); {k} keepalive pings handled"
      + (f": {secs / k * 1e6:.2f} CPU s per million" if k else "")
      + f"; {secs / wall / n * 3600 * 1e3:.2f} CPU ms per connection-hour")
p = r["ping_rtt_us"]
print(f"ping RTT           p50 {p['p50']/1000:.2f} ms  p99 {p['p99']/1000:.2f} ms  p99.9 {p['p999']/1000:.2f} ms  (count {p['count']})")
pi = r["pings"]
print(f"client pings       sent {pi['sent']}  answered {pi['answered']}  late {pi['late']}  server pings seen {pi['server_pings']}")
d = r["drops"]
print(f"drops              {d['total']}  by code {d['by_code']}  by phase {d['by_phase']}  pong timeouts {d['pong_timeouts']}")
m = r["messages"]
print(f"final echo         sent {m['final_sent']}  echoed {m['final_echoed']}")
cl = r["closes"]
print(f"closes             clean {cl['clean']}  unclean {cl['unclean']}  left open {cl['left_open']}; tether-load peak RSS {r['peak_rss_mib']} MiB")
PY
echo "files: $OUT"

#!/usr/bin/env bash
# tetherd and tether-load at scale on this machine, and the checks of issue 10: every connection
# established, no drops, every final echo answered, every close clean, tether-load exits within EXIT_LIMIT
# of its last close (its final echo and closes wait while answers come: --close-wait 30s without one) and
# tetherd within EXIT_LIMIT of SIGTERM. Prints ping RTT and handshake
# percentiles, ramp rate, memory per connection, CPU and the packets the kernel dropped at a full input
# backlog; exits 1 when a check fails.
#   bash benches/scripts/scale.sh [N] [HOLD]          (defaults: 200000 connections, 30s hold)
# Environment: RATE (40000/s), SERVER_PING (5s), CLIENT_PING (10s), SERVER_ARGS / LOAD_ARGS (extra flags),
#   BIN_DIR (target/release; when set nothing is built), PORT (9601), SRC_NET (127.0.60), ADDRS_PER (12000),
#   EXIT_LIMIT (15 s), OUT (a temp dir), LATENCY_CHECK=1 (also fail past issue 10's latency targets at 200,000:
#   ping RTT p99 20 ms, p99.9 100 ms, handshake p99 100 ms). Loopback only; both processes are bounded in time and stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
N=${1:-200000}
HOLD=${2:-30s}
RATE=${RATE:-40000}
SERVER_PING=${SERVER_PING:-5s}
CLIENT_PING=${CLIENT_PING:-10s}
PORT=${PORT:-9601}
SRC_NET=${SRC_NET:-127.0.60}
ADDRS_PER=${ADDRS_PER:-12000}
EXIT_LIMIT=${EXIT_LIMIT:-15}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if [ -n "${BIN_DIR:-}" ]; then BIN=$BIN_DIR; else cargo build --release -q -p tetherd -p tether-load; BIN=target/release; fi
hold_s=$(awk -v h="$HOLD" 'BEGIN { n = h + 0; u = substr(h, length(h)); if (u == "m") n *= 60; print n }')
addrs=$(( (N + ADDRS_PER - 1) / ADDRS_PER ))
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
tcp_pages() { awk '/^TCP:/ {print $11}' /proc/net/sockstat; }
# Packets the kernel dropped because a CPU's input backlog (net.core.netdev_max_backlog) was full: on
# loopback every segment passes through it. Machine-wide, all namespaces.
backlog_drops() { local d=0 x; while read -r _ x _; do d=$((d + 16#$x)); done </proc/net/softnet_stat; echo "$d"; }
open_now() {   # tetherd's open WebSockets (/metrics; awk reads all of curl's output, no SIGPIPE)
    { curl -s -m 10 "http://127.0.0.1:$PORT/metrics" || true; } |
        awk '$1 == "tether_connections_open{shard=\"total\"}" || $1 == "tether_connections_open" {v = $2} END {print v + 0}'
}
now() { date +%s.%N; }

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
drops0=$(backlog_drops)
timeout -s KILL $((hold_s + N / 1000 + 400)) "$BIN/tetherd" --listen "127.0.0.1:$PORT" --max-connections $((N + 1000)) \
    --ping-interval "$SERVER_PING" --log warn ${SERVER_ARGS:-} >"$OUT/tetherd.out" 2>"$OUT/tetherd.err" &
tdwrap=$!
tdpid="" tlwrap=""
cleanup() {
    [ -n "$tlwrap" ] && { kill -INT "$tlwrap" 2>/dev/null || true; wait "$tlwrap" 2>/dev/null || true; }
    kill -KILL "${tdpid:-$tdwrap}" 2>/dev/null || true
    wait "$tdwrap" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do tdpid=$(pgrep -P "$tdwrap" -x tetherd || true); [ -n "$tdpid" ] && break; sleep 0.1; done
for _ in $(seq 100); do grep -q "listening on" "$OUT/tetherd.out" 2>/dev/null && break; sleep 0.1; done
rss0=$(rss_kib "$tdpid"); slab0=$(slab_kib); tcp0=$(tcp_pages)

t0=$(now)
timeout -s KILL $((hold_s + N / 1000 + 300)) "$BIN/tether-load" run --url "ws://127.0.0.1:$PORT/" --connections "$N" \
    --rate "$RATE" --duration "$HOLD" --ping-interval "$CLIENT_PING" --source-ips "$SRC_NET.1-$SRC_NET.$addrs" \
    --final-echo --close-wait 30s --json "$OUT/report.json" --quiet ${LOAD_ARGS:-} >"$OUT/load.txt" 2>"$OUT/load.err" &
tlwrap=$!
sleep $(( N / RATE + hold_s / 2 + 2 ))
# Mid-hold: memory per open connection (tetherd RSS growth, kernel slab and TCP buffer pages for both
# ends), then 10 s of keepalive CPU (ramp over, only pings) for each process.
tlpid=$(pgrep -P "$tlwrap" -x tether-load || true)
open1=$(open_now); rss1=$(rss_kib "$tdpid"); slab1=$(slab_kib); tcp1=$(tcp_pages)
td_a=$(cpu_ticks "$tdpid"); tl_a=$(cpu_ticks "${tlpid:-0}"); sleep 10
td_b=$(cpu_ticks "$tdpid"); tl_b=$(cpu_ticks "${tlpid:-0}")
tl_rc=0; wait "$tlwrap" || tl_rc=$?
tlwrap=""
t1=$(now)
kill -TERM "$tdpid"
t2=$(now)
td_rc=0; wait "$tdwrap" || td_rc=$?
t3=$(now)
drops1=$(backlog_drops)

python3 - "$OUT" "$N" "$hold_s" "$EXIT_LIMIT" "$t0" "$t1" "$t2" "$t3" "$tl_rc" "$td_rc" "$rss0" "$rss1" \
    "$open1" "$slab0" "$slab1" "$tcp0" "$tcp1" "$((td_b - td_a))" "$((tl_b - tl_a))" "$(getconf CLK_TCK)" \
    "${LATENCY_CHECK:-0}" "$((drops1 - drops0))" "$(cat /proc/sys/net/core/netdev_max_backlog 2>/dev/null)" <<'PY'
import json, sys, re
out, n, hold, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
t0, t1, t2, t3 = map(float, sys.argv[5:9])
tl_rc, td_rc, rss0, rss1 = int(sys.argv[9]), int(sys.argv[10]), int(sys.argv[11]), int(sys.argv[12])
open1, slab0, slab1, tcp0, tcp1, td_ticks, tl_ticks, hz = map(int, sys.argv[13:21])
latency = sys.argv[21] == "1"
# (netdev_max_backlog is the initial namespace's: not visible from a namespace the run may be in)
backlog_dropped, max_backlog = int(sys.argv[22]), sys.argv[23] or "not visible here"
fails = []
try:
    r = json.load(open(f"{out}/report.json"))
except Exception as e:
    print(f"no report from tether-load ({e}); exit code {tl_rc}"); sys.exit(1)
c, d, m, cl = r["connections"], r["drops"], r["messages"], r["closes"]
hs, pr = r["handshake_us"], r["ping_rtt_us"]
end_of_hold = t0 + r["ramp_s"] + r["duration_s"]
tl_exit = t1 - end_of_hold
td_exit = t3 - t2
err = open(f"{out}/tetherd.err").read() + open(f"{out}/load.err").read()
print(f"connections   {c['established']}/{n} established, {c['failed']} failed; ramp {r['ramp_s']:.1f} s = {r['connect_rate_per_s']:.0f}/s")
print(f"handshake     p50 {hs['p50']/1000:.2f} ms  p99 {hs['p99']/1000:.2f} ms  p99.9 {hs['p999']/1000:.2f} ms  max {hs['max']/1000:.1f} ms")
print(f"ping RTT      p50 {pr['p50']/1000:.2f} ms  p99 {pr['p99']/1000:.2f} ms  p99.9 {pr['p999']/1000:.2f} ms  max {pr['max']/1000:.1f} ms  ({pr['count']} pongs)")
ph = r.get("ping_rtt_hold_us")
if ph and ph["count"]:
    print(f"  in the hold p50 {ph['p50']/1000:.2f} ms  p99 {ph['p99']/1000:.2f} ms  p99.9 {ph['p999']/1000:.2f} ms  max {ph['max']/1000:.1f} ms  ({ph['count']} pongs; the ramp's queues left out)")
print(f"drops         {d['total']} {d['by_code']}; final echo {m['final_echoed']}/{m['final_sent']}")
print(f"closes        clean {cl['clean']}, unclean {cl['unclean']}, left open {cl['left_open']}")
end = r.get("end_s", 0.0)
print(f"exit          tether-load {tl_exit:.1f} s after the end of its hold ({end:.1f} s of final echo ({r.get('final_echo_s', 0):.1f} s) and closes, then {tl_exit - end:.1f} s; rc {tl_rc}); tetherd {td_exit:.1f} s after SIGTERM (rc {td_rc})")
per = lambda kib: f"{kib * 1024 / open1:.0f} B" if open1 else "-"
print(f"memory        mid-hold, {open1} open: tetherd RSS {rss0} -> {rss1} KiB = {per(rss1 - rss0)} per connection; "
      f"kernel slab {per(slab1 - slab0)} and TCP buffers {per((tcp1 - tcp0) * 4)} per connection (both ends); "
      f"tether-load peak {r['peak_rss_mib']} MiB = {per(r['peak_rss_mib'] * 1024)}")
print(f"keepalive CPU 10 s mid-hold: tetherd {td_ticks / hz / 10:.0%} of a core, tether-load {tl_ticks / hz / 10:.0%}")
print(f"kernel        {backlog_dropped} packets dropped at a full CPU input backlog during the run (/proc/net/softnet_stat, "
      f"whole machine; net.core.netdev_max_backlog {max_backlog})")
for pat in ["drain deadline passed", "did not exit", "panicked"]:
    if pat in err:
        fails.append(f"log says: {pat}")
if c["established"] != n: fails.append("not every connection established")
if d["total"]: fails.append(f"{d['total']} drops")
if m["final_echoed"] != m["final_sent"] or m["final_sent"] != n: fails.append("final echo incomplete")
if cl["clean"] != n or cl["left_open"]: fails.append("not every close clean")
if latency:  # issue 10's targets at 200,000: ping RTT p99 <= 20 ms, p99.9 <= 100 ms, handshake p99 <= 100 ms
    # (checked on the whole run, ramp included: the stricter reading; the hold's figures are printed above)
    for what, got, most in [("ping RTT p99", pr["p99"], 20), ("ping RTT p99.9", pr["p999"], 100), ("handshake p99", hs["p99"], 100)]:
        if got > most * 1000: fails.append(f"{what} {got / 1000:.0f} ms > {most} ms")
if tl_rc != 0: fails.append(f"tether-load exit code {tl_rc}")
if td_rc != 0: fails.append(f"tetherd exit code {td_rc}")
if tl_exit - end > limit: fails.append(f"tether-load took {tl_exit - end:.0f} s to exit after its last close")
if td_exit > limit: fails.append(f"tetherd took {td_exit:.0f} s to exit")
print("RESULT " + ("ok" if not fails else "FAILED: " + "; ".join(fails)))
sys.exit(1 if fails else 0)
PY

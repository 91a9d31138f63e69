#!/usr/bin/env bash
# tetherd and tether-load at scale on this machine, and the checks of issue 10: every connection
# established, no drops, every final echo answered, every close clean, tether-load exits within EXIT_LIMIT
# of the end of its hold and tetherd within EXIT_LIMIT of SIGTERM. Prints ping RTT and handshake
# percentiles, ramp rate, memory per connection and CPU; exits 1 when a check fails.
#   bash benches/scripts/scale.sh [N] [HOLD]          (defaults: 200000 connections, 30s hold)
# Environment: RATE (40000/s), SERVER_PING (5s), CLIENT_PING (10s), SERVER_ARGS / LOAD_ARGS (extra flags),
#   BIN_DIR (target/release; when set nothing is built), PORT (9601), SRC_NET (127.0.60), ADDRS_PER (12000),
#   EXIT_LIMIT (15 s), OUT (a temp dir). Loopback only; both processes are bounded in time and stopped at the end.
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
now() { date +%s.%N; }

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
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
rss0=$(rss_kib "$tdpid")

t0=$(now)
timeout -s KILL $((hold_s + N / 1000 + 300)) "$BIN/tether-load" run --url "ws://127.0.0.1:$PORT/" --connections "$N" \
    --rate "$RATE" --duration "$HOLD" --ping-interval "$CLIENT_PING" --source-ips "$SRC_NET.1-$SRC_NET.$addrs" \
    --final-echo --close-wait 30s --json "$OUT/report.json" --quiet ${LOAD_ARGS:-} >"$OUT/load.txt" 2>"$OUT/load.err" &
tlwrap=$!
sleep $(( N / RATE + hold_s / 2 + 2 ))
rss1=$(rss_kib "$tdpid"); cpu_mid=$(cpu_ticks "$tdpid")
tl_rc=0; wait "$tlwrap" || tl_rc=$?
tlwrap=""
t1=$(now)
cpu_end=$(cpu_ticks "$tdpid")
kill -TERM "$tdpid"
t2=$(now)
td_rc=0; wait "$tdwrap" || td_rc=$?
t3=$(now)

python3 - "$OUT" "$N" "$hold_s" "$EXIT_LIMIT" "$t0" "$t1" "$t2" "$t3" "$tl_rc" "$td_rc" "$rss0" "$rss1" <<'PY'
import json, sys, re
out, n, hold, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
t0, t1, t2, t3 = map(float, sys.argv[5:9])
tl_rc, td_rc, rss0, rss1 = int(sys.argv[9]), int(sys.argv[10]), int(sys.argv[11]), int(sys.argv[12])
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
print(f"drops         {d['total']} {d['by_code']}; final echo {m['final_echoed']}/{m['final_sent']}")
print(f"closes        clean {cl['clean']}, unclean {cl['unclean']}, left open {cl['left_open']}")
print(f"exit          tether-load {tl_exit:.1f} s after the end of its hold (rc {tl_rc}); tetherd {td_exit:.1f} s after SIGTERM (rc {td_rc})")
print(f"tetherd RSS   {rss0} KiB idle -> {rss1} KiB mid-hold: {(rss1 - rss0) * 1024 / n:.0f} B per connection; tether-load peak {r['peak_rss_mib']} MiB")
for pat in ["drain deadline passed", "did not exit", "panicked"]:
    if pat in err:
        fails.append(f"log says: {pat}")
if c["established"] != n: fails.append("not every connection established")
if d["total"]: fails.append(f"{d['total']} drops")
if m["final_echoed"] != m["final_sent"] or m["final_sent"] != n: fails.append("final echo incomplete")
if cl["clean"] != n or cl["left_open"]: fails.append("not every close clean")
if tl_rc != 0: fails.append(f"tether-load exit code {tl_rc}")
if td_rc != 0: fails.append(f"tetherd exit code {td_rc}")
if tl_exit > limit + 30: fails.append(f"tether-load took {tl_exit:.0f} s to exit")
if td_exit > limit: fails.append(f"tetherd took {td_exit:.0f} s to exit")
print("RESULT " + ("ok" if not fails else "FAILED: " + "; ".join(fails)))
sys.exit(1 if fails else 0)
PY

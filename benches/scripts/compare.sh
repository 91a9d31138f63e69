#!/usr/bin/env bash
# Side-by-side: Tether (tetherd) and the peer echo servers, each driven by the same tether-load run.
#
#   benches/scripts/compare.sh [--connections N] [--message-rate R] [--message-size B] [--duration D]
#                              [--threads T] [--servers "tether tungstenite fastwebsockets node-ws"]
#                              [--out DIR] [--no-build]
#
# Defaults: 1000 connections, 1 message/s each, 64 B, 30 s, 1 server thread, all four servers,
# results in target/compare/<timestamp>/. Per server it writes <name>.json (tether-load's report),
# <name>.server.log, and a line in summary.md with what the load generator saw plus the server's peak RSS
# and CPU seconds (from /proc). Loopback only; every server is stopped before the next one starts.
#
# The tokio and node peers use ordinary file descriptors: keep --connections under the process's open-file
# limit (`ulimit -n`, 20,000 on the project machines); tetherd uses io_uring direct descriptors and is not
# bound by it. The load generator spreads connections over 127.0.0.x source addresses by itself.
set -euo pipefail

connections=1000 message_rate=1 message_size=64 duration=30s threads=1 build=1
servers="tether tungstenite fastwebsockets node-ws"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/target/compare/$(date +%Y%m%d-%H%M%S)"
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) connections="$2"; shift 2 ;;
        --message-rate) message_rate="$2"; shift 2 ;;
        --message-size) message_size="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --servers) servers="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$root"
if [ "$build" = 1 ]; then
    cargo build --release -q -p tetherd -p tether-load -p tether-benches --bins
    case " $servers " in *" node-ws "*) [ -d benches/node/node_modules/ws ] || benches/scripts/setup-node.sh ;; esac
fi
mkdir -p "$out"
bin="$root/target/release"
port=19100
server_pid=""
cleanup() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

wait_for_port() {
    python3 - "$1" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.time() + 15
while time.time() < deadline:
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("server did not start listening on " + sys.argv[1])
PY
}

# utime + stime of a process, in seconds.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
peak_rss_mib() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

{
    echo "connections=$connections message_rate=$message_rate/s message_size=$message_size B duration=$duration threads=$threads"
    echo
    echo "| server | established | failed | messages sent | echoed | echo p50 us | echo p99 us | ping rtt p99 us | drops | server peak RSS MiB | server CPU s |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} > "$out/summary.md"

for name in $servers; do
    port=$((port + 1))
    addr="127.0.0.1:$port"
    case "$name" in
        tether) cmd=("$bin/tetherd" --listen "$addr" --shards "$threads") ;;
        tungstenite) cmd=("$bin/echo-tungstenite" --listen "$addr" --threads "$threads") ;;
        fastwebsockets) cmd=("$bin/echo-fastwebsockets" --listen "$addr" --threads "$threads") ;;
        node-ws) cmd=(node "$root/benches/node/echo-ws.js" --listen "$addr" --threads 1) ;;
        *) echo "compare.sh: unknown server $name" >&2; exit 2 ;;
    esac
    echo "== $name: ${cmd[*]}"
    "${cmd[@]}" > "$out/$name.server.log" 2>&1 &
    server_pid=$!
    wait_for_port "$addr"
    cpu_before=$(cpu_seconds "$server_pid")
    "$bin/tether-load" run --url "ws://$addr/" --connections "$connections" \
        --message-rate "$message_rate" --message-size "$message_size" --duration "$duration" \
        --json "$out/$name.json" --quiet || echo "tether-load exited with $? against $name"
    cpu=$(awk -v a="$cpu_before" -v b="$(cpu_seconds "$server_pid")" 'BEGIN { printf "%.2f", b - a }')
    rss=$(peak_rss_mib "$server_pid")
    cleanup
    server_pid=""
    python3 - "$out/$name.json" "$name" "$rss" "$cpu" >> "$out/summary.md" <<'PY'
import json, sys
path, name, rss, cpu = sys.argv[1:]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print(f"| {name} | (no report) | | | | | | | | {rss} | {cpu} |")
    sys.exit()
c, m = r["connections"], r["messages"]
print(f"| {name} | {c['established']} | {c['failed']} | {m['sent']} | {m['echoed']} | "
      f"{r['echo_us']['p50']} | {r['echo_us']['p99']} | {r['ping_rtt_us']['p99']} | {r['drops']['total']} | {rss} | {cpu} |")
PY
done
echo
cat "$out/summary.md"
echo "(results in $out)"

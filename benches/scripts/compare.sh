#!/usr/bin/env bash
# Side-by-side: Tether (tetherd) and the peer echo servers, each driven by the same tether-load run.
#
#   benches/scripts/compare.sh [--connections N] [--message-rate R] [--message-size B] [--duration D]
#                              [--threads T] [--servers "tether tungstenite fastwebsockets node-ws bun
#                                                        axum-adopt axum-native"]
#                              [--out DIR] [--no-build] [--load-args "EXTRA tether-load run ARGS"]
#                              [--tls] [--deflate]
#
# Defaults: 1000 connections, 1 message/s each, 64 B, 30 s, 1 server thread, all four servers,
# results in target/compare/<timestamp>/. Per server it writes <name>.json (tether-load's report),
# <name>.server.log, and a line in summary.md with what the load generator saw (messages/s: echoed over ramp
# + hold, echo latency), the server's CPU seconds over the run (utime + stime from /proc) and echoed messages
# per server CPU-second, the server's RSS before the load, its peak RSS (VmHWM) and (peak - before) per
# connection, the load average at the start of the run, and tether-load's own CPU seconds (it shares the
# machine: when server + client CPU fill the cores, the client is part of the limit) and the machine's busy CPU
# over the run in cores (from /proc/stat: above server + client, something else ran beside). `axum-adopt` and `axum-native` are the axum example
# app (engine/examples/axum.rs, route /ws with its session cookie): its WebSockets adopted by the engine, or
# served by axum's own WebSocket (tokio-tungstenite, a task and a ping timer per connection). Node's ws and Bun are single-threaded: with --threads
# above 1 it is skipped. Loopback only; every server is stopped before the next one starts, every process is
# bounded in time.
# --tls: wss:// with the test certificate (tests/certs/localhost.crt, ECDSA P-256; tether-load trusts
# tests/certs/ca.crt): tetherd --tls-cert/--tls-key, the Bun and Node peers TLS_CERT/TLS_KEY; the others have no
# TLS mode. --deflate: tether-load offers permessage-deflate (shared: no context takeover), tetherd accepts it
# (its default, --deflate shared), the Bun and Node peers get DEFLATE=1; the others have no deflate mode.
# Environment: BIN_DIR (default target/release): where tetherd, tether-load and the echo-* peers are; when it
# is set nothing is built (as --no-build). PIN=1: the server on CPU 0, tether-load (--shards 1) on CPU 1
# (taskset), so neither takes the other's core (the closed-loop shape of issue 10).
#
# The tokio and node peers use ordinary file descriptors: keep --connections under the process's open-file
# limit (`ulimit -n`, 20,000 on the project machines); tetherd uses io_uring direct descriptors and is not
# bound by it. The load generator spreads connections over 127.0.0.x source addresses by itself.
set -euo pipefail

connections=1000 message_rate=1 message_size=64 duration=30s threads=1 build=1 load_args="" tls=0 deflate=0
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
        --load-args) load_args="$2"; shift 2 ;;
        --tls) tls=1; shift ;;
        --deflate) deflate=1; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$root"
[ -n "${BIN_DIR:-}" ] && build=0
if [ "$build" = 1 ]; then
    cargo build --release -q -p tetherd -p tether-load -p tether-benches --bins
    case " $servers " in *" axum-"*) cargo build --release -q -p tether --example axum ;; esac
fi
case " $servers " in *" node-ws "*) [ -d benches/node/node_modules/ws ] || benches/scripts/setup-node.sh ;; esac
case " $servers " in *" bun "*) BUN=${BUN:-$(bash benches/bun/setup.sh)} ;; esac
mkdir -p "$out"
bin="${BIN_DIR:-$root/target/release}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
dur_s=$(awk -v h="$duration" 'BEGIN { n = h + 0; u = substr(h, length(h)); if (u == "m") n *= 60; print n }')
port=19100
server_pid=""
spid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        # The server itself, not its `timeout` wrapper (which would pass the signal to its whole group, and a
        # second SIGTERM makes tetherd skip its drain); the wrapper ends with it.
        kill "${spid:-$server_pid}" 2>/dev/null || true
        # tetherd drains for up to its --drain-timeout; do not wait longer than that.
        for _ in $(seq 150); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
# Busy jiffies of the whole machine (every CPU, all but idle and iowait).
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

scheme=ws tls_env=() load_tls=() tetherd_tls=() modes=""
if [ "$tls" = 1 ]; then
    scheme=wss modes="$modes tls"
    tls_env=(TLS_CERT="$root/tests/certs/localhost.crt" TLS_KEY="$root/tests/certs/localhost.key")
    tetherd_tls=(--tls-cert "$root/tests/certs/localhost.crt" --tls-key "$root/tests/certs/localhost.key")
    load_tls=(--tls-ca "$root/tests/certs/ca.crt")
fi
deflate_env=() load_deflate=()
if [ "$deflate" = 1 ]; then
    modes="$modes deflate"
    deflate_env=(DEFLATE=1)
    load_deflate=(--deflate)
fi
{
    echo "connections=$connections message_rate=$message_rate/s message_size=$message_size B duration=$duration threads=$threads${modes:+ modes:$modes}${load_args:+ load args: $load_args}"
    echo
    echo "| server | established | failed | messages sent | echoed | messages/s | per server CPU s | echo p50 us | echo p99 us | ping rtt p99 us | drops | server CPU s | server RSS before MiB | server peak RSS MiB | KiB per conn | load avg | client CPU s | machine busy cores |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} > "$out/summary.md"

pin_server=() pin_client=()
if [ "${PIN:-0}" = 1 ]; then pin_server=(taskset -c 0); pin_client=(taskset -c 1); load_args="$load_args --shards 1"; fi
for name in $servers; do
    port=$((port + 1))
    if { [ "$name" = node-ws ] || [ "$name" = bun ]; } && [ "$threads" != 1 ]; then echo "== $name: skipped (single-threaded, --threads $threads)"; continue; fi
    addr="127.0.0.1:$port"
    path=/ header=""
    case "$name" in
        tether|node-ws|bun) ;;
        *) if [ -n "$modes" ]; then echo "== $name: skipped (no$modes mode)"; continue; fi ;;
    esac
    case "$name" in
        tether) cmd=("$bin/tetherd" --listen "$addr" --shards "$threads" --log warn "${tetherd_tls[@]}") ;;
        tungstenite) cmd=("$bin/echo-tungstenite" --listen "$addr" --threads "$threads") ;;
        fastwebsockets) cmd=("$bin/echo-fastwebsockets" --listen "$addr" --threads "$threads") ;;
        node-ws) cmd=(env "${tls_env[@]}" "${deflate_env[@]}" node "$root/benches/node/echo-ws.js" --listen "$addr" --threads 1) ;;
        bun) cmd=(env "${tls_env[@]}" "${deflate_env[@]}" "$BUN" "$root/benches/bun/echo.js" --listen "$addr" --threads 1) ;;
        axum-adopt) cmd=("$bin/examples/axum" --listen "$addr" --shards "$threads")
            path=/ws header="Cookie: session=demo" ;;
        axum-native) cmd=("$bin/examples/axum" --native --listen "$addr")
            path=/ws header="Cookie: session=demo" ;;
        *) echo "compare.sh: unknown server $name" >&2; exit 2 ;;
    esac
    echo "== $name: ${cmd[*]}"
    # Bounded: the server lives at most as long as the run could take (the trap stops it sooner).
    timeout -s KILL $((dur_s + connections / 500 + 120)) "${pin_server[@]}" "${cmd[@]}" > "$out/$name.server.log" 2>&1 &
    server_pid=$!
    wait_for_port "$addr"
    sleep 0.5
    load=$(cut -d' ' -f1 /proc/loadavg)
    # `timeout` forks the server (and `env` execs it); read /proc of the server itself.
    spid=$(pgrep -P "$server_pid" | head -1); spid=${spid:-$server_pid}
    rss_before=$(rss_mib "$spid")
    cpu_before=$(cpu_seconds "$spid")
    busy_before=$(busy_jiffies) t_before=$(date +%s.%N)
    # shellcheck disable=SC2086
    /usr/bin/time -f '%U %S' -o "$out/$name.client-time" \
        timeout -s INT -k 10 $((dur_s + connections / 500 + 60)) "${pin_client[@]}" "$bin/tether-load" run --url "$scheme://$addr$path" \
        ${header:+--header "$header"} "${load_tls[@]}" "${load_deflate[@]}" \
        --connections "$connections" --message-rate "$message_rate" --message-size "$message_size" \
        --duration "$duration" --json "$out/$name.json" --quiet $load_args \
        || echo "tether-load exited with $? against $name"
    busy=$(awk -v a="$busy_before" -v b="$(busy_jiffies)" -v t0="$t_before" -v t1="$(date +%s.%N)" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz / (t1 - t0) }')
    client_cpu=$(awk 'END { printf "%.2f", $1 + $2 }' "$out/$name.client-time" 2>/dev/null || echo "?")
    cpu=$(awk -v a="$cpu_before" -v b="$(cpu_seconds "$spid")" 'BEGIN { printf "%.2f", b - a }')
    rss=$(peak_rss_mib "$spid")
    cleanup
    server_pid="" spid=""
    python3 - "$out/$name.json" "$name" "$rss" "$cpu" "$rss_before" "$connections" "$load" "$client_cpu" "$busy" >> "$out/summary.md" <<'PY'
import json, sys
path, name, rss, cpu, before, n, load, client_cpu, busy = sys.argv[1:]
try:
    per_conn = f"{(float(rss) - float(before)) * 1024 / int(n):.1f}"
except ValueError:
    per_conn = "?"
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print(f"| {name} | (no report) | | | | | | | | | | {cpu} | {before} | {rss} | {per_conn} | {load} | {client_cpu} | {busy} |")
    sys.exit()
c, m = r["connections"], r["messages"]
# Messages flow from each connection's open to the end of the hold: average over ramp + hold.
active = r["duration_s"] + r.get("ramp_s", 0)
rate = m["echoed"] / active if active else 0
per_cpu = f"{m['echoed'] / float(cpu):.0f}" if float(cpu) > 0 else "-"
print(f"| {name} | {c['established']} | {c['failed']} | {m['sent']} | {m['echoed']} | {rate:.0f} | {per_cpu} | "
      f"{r['echo_us']['p50']} | {r['echo_us']['p99']} | {r['ping_rtt_us']['p99']} | {r['drops']['total']} | {cpu} | "
      f"{before} | {rss} | {per_conn} | {load} | {client_cpu} | {busy} |")
PY
done
echo
cat "$out/summary.md"
echo "(results in $out)"

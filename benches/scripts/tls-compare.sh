#!/usr/bin/env bash
# TLS and permessage-deflate against Bun and Node `ws` (issue 14; BENCHMARKS.md section 12), all through
# compare.sh:
#   echo   {plain, deflate, tls, tls+deflate} x {closed loop, open loop} x SERVERS: 100 connections, 1 KB JSON
#          text messages (tether-load --payload json), one server thread (tetherd --shards 1);
#   hs     {plain, tls}: HS_CONNS new connections as fast as tether-load makes them (at most HS_INFLIGHT connects
#          in flight, no messages, no pings, TLS session resumption off: every handshake a full one), held 1 s
#          and closed; the server's CPU over the run gives connections per server CPU-second;
#   check  before the echo runs, benches/scripts/deflate-check.py against every server with deflate (does it
#          compress its echoes, and how small).
# Then one table per part (table.md): per server CPU-second, the ratio of tetherd to the best peer, and the
# client's CPU.
#
#   benches/scripts/tls-compare.sh [OUT_DIR]        (default target/tls-compare/<timestamp>)
#
# Environment: BIN_DIR (as compare.sh), SERVERS ("tether bun node-ws"), CONNS (100), SIZE (1024: Node's `ws`
# leaves messages under 1024 bytes uncompressed), DURATION (10s), RATE (open loop, messages/s per connection:
# 50, i.e. 5,000/s offered), MODES ("plain deflate tls tls+deflate"), SHAPES ("closed open"), HS_CONNS (10000),
# HS_INFLIGHT (256), HS_MODES ("plain tls"), ROUNDS (1); an empty MODES, SHAPES or HS_MODES skips that part. One round: 8 compare.sh runs of DURATION + ~3 s per
# server and the handshake runs, ~6 minutes with three servers.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out=${1:-$root/target/tls-compare/$(date +%Y%m%d-%H%M%S)}
SERVERS=${SERVERS:-tether bun node-ws}
CONNS=${CONNS:-100}
SIZE=${SIZE:-1024}
DURATION=${DURATION:-10s}
RATE=${RATE:-50}
MODES=${MODES-plain deflate tls tls+deflate}
SHAPES=${SHAPES-closed open}
HS_CONNS=${HS_CONNS:-10000}
HS_INFLIGHT=${HS_INFLIGHT:-256}
HS_MODES=${HS_MODES-plain tls}
ROUNDS=${ROUNDS:-1}
mkdir -p "$out"
cd "$root"
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -q -p tetherd -p tether-load
    export BIN_DIR="$root/target/release"
fi
case " $SERVERS " in *" node-ws "*) [ -d benches/node/node_modules/ws ] || benches/scripts/setup-node.sh ;; esac
case " $SERVERS " in *" bun "*) BUN=${BUN:-$(bash benches/bun/setup.sh)}; export BUN ;; esac

mode_flags() { # mode -> compare.sh flags
    case "$1" in
        plain) ;;
        deflate) echo --deflate ;;
        tls) echo --tls ;;
        tls+deflate) echo --tls --deflate ;;
        *) echo "tls-compare.sh: unknown mode $1" >&2; exit 2 ;;
    esac
}
stamp() { echo "$(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"; }

# Does each server compress its echoes? One short-lived server at a time, on its own port.
if case " $MODES " in *deflate*) true ;; *) false ;; esac; then
    {
        echo "| server | mode | echo compressed | wire bytes of $SIZE | negotiated |"
        echo "| --- | --- | --- | ---: | --- |"
    } > "$out/deflate-check.md"
    port=19180
    for name in $SERVERS; do
        for tls in 0 1; do
            port=$((port + 1))
            env_args=(DEFLATE=1) tls_args=() scheme=ws
            if [ "$tls" = 1 ]; then
                env_args+=(TLS_CERT=tests/certs/localhost.crt TLS_KEY=tests/certs/localhost.key)
                tls_args=(--tls-cert tests/certs/localhost.crt --tls-key tests/certs/localhost.key)
                scheme=wss
            fi
            case "$name" in
                tether) cmd=("$BIN_DIR/tetherd" --listen "127.0.0.1:$port" --shards 1 --log warn "${tls_args[@]}") ;;
                bun) cmd=(env "${env_args[@]}" "$BUN" benches/bun/echo.js --listen "127.0.0.1:$port") ;;
                node-ws) cmd=(env "${env_args[@]}" node benches/node/echo-ws.js --listen "127.0.0.1:$port") ;;
                *) continue ;;
            esac
            timeout -s KILL 20 "${cmd[@]}" > "$out/deflate-check-$name-$tls.log" 2>&1 &
            pid=$!
            line="?"
            for _ in $(seq 50); do
                line=$(timeout 10 python3 benches/scripts/deflate-check.py "$scheme://localhost:$port/" \
                    --ca tests/certs/ca.crt --size "$SIZE" 2>/dev/null) && break
                sleep 0.2
            done
            kill "$(pgrep -P "$pid" | head -1 || echo "$pid")" 2>/dev/null || true
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            python3 - "$name" "$scheme" "$line" >> "$out/deflate-check.md" <<'PY'
import re, sys
name, scheme, line = sys.argv[1:]
m = re.match(r"compressed=(\S+) negotiated=(.*) wire=(\d+) of", line)
mode = "tls+deflate" if scheme == "wss" else "deflate"
print(f"| {name} | {mode} | {m[1]} | {m[3]} | {m[2]} |" if m else f"| {name} | {mode} | (no answer: {line}) | | |")
PY
        done
    done
    cat "$out/deflate-check.md"
fi

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        for shape in $SHAPES; do
            dir="$out/r$round-$mode-$shape"
            if [ "$shape" = closed ]; then
                rate=1 extra="--closed-loop"
            else
                rate=$RATE extra=""
            fi
            echo "=== round $round, $mode, $shape loop ($(stamp))"
            # shellcheck disable=SC2046
            benches/scripts/compare.sh --no-build --connections "$CONNS" --message-rate "$rate" --message-size "$SIZE" \
                --duration "$DURATION" --threads 1 --servers "$SERVERS" --out "$dir" $(mode_flags "$mode") \
                --load-args "--payload json $extra" > "$dir.log" 2>&1 || echo "compare.sh failed: see $dir.log"
        done
    done
    for mode in $HS_MODES; do
        dir="$out/r$round-hs-$mode"
        echo "=== round $round, handshakes, $mode ($(stamp))"
        # shellcheck disable=SC2046
        benches/scripts/compare.sh --no-build --connections "$HS_CONNS" --message-rate 0 --duration 1s --threads 1 \
            --servers "$SERVERS" --out "$dir" $(mode_flags "$mode") \
            --load-args "--rate 1000000 --max-connecting $HS_INFLIGHT --ping-interval 0 --tls-resume off" \
            > "$dir.log" 2>&1 || echo "compare.sh failed: see $dir.log"
    done
done

# One table per part from the summaries and reports.
python3 - "$out" > "$out/table.md" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
cols = None
def rows(d):
    text = (d / "summary.md").read_text().splitlines()
    head = [c.strip() for c in text[2].strip("|").split("|")]
    for line in text[4:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(head):
            yield dict(zip(head, cells))
def f(x):
    try:
        return float(x)
    except ValueError:
        return None
print("#### echo: messages per server CPU-second (1 KB JSON)\n")
print("| round | mode | shape | server | echoed/s | per server CPU-s | tetherd / best peer | echo p50 / p99 us | server CPU (cores) | client CPU (cores) | machine busy (cores) |")
print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for d in sorted(p for p in out.iterdir() if p.is_dir() and "-hs-" not in p.name and (p / "summary.md").exists()):
    m = re.match(r"r(\d+)-(.+)-(closed|open)$", d.name)
    if not m:
        continue
    rs = list(rows(d))
    wall = {}
    for r in rs:
        try:
            rep = json.load(open(d / f"{r['server']}.json"))
            wall[r["server"]] = rep["duration_s"] + rep.get("ramp_s", 0)
        except (OSError, ValueError):
            wall[r["server"]] = None
    per = {r["server"]: f(r["per server CPU s"]) for r in rs}
    peers = [v for k, v in per.items() if k != "tether" and v]
    best = max(peers) if peers else None
    for r in rs:
        s = r["server"]
        ratio = f"{per['tether'] / best:.2f}x" if s == "tether" and best and per.get("tether") else ""
        w = wall.get(s)
        sc = f"{f(r['server CPU s']) / w:.2f}" if w and f(r["server CPU s"]) is not None else "?"
        cc = f"{f(r['client CPU s']) / w:.2f}" if w and f(r["client CPU s"]) is not None else "?"
        print(f"| {m[1]} | {m[2]} | {m[3]} | {s} | {r['messages/s']} | {r['per server CPU s']} | {ratio} | "
              f"{r['echo p50 us']} / {r['echo p99 us']} | {sc} | {cc} | {r.get('machine busy cores', '?')} |")
print("\n#### handshakes: new connections per server CPU-second (TCP + TLS + upgrade + close)\n")
print("| round | mode | server | established / failed | connects/s | server CPU s | **per server CPU-s** | tetherd / best peer | handshake p50 / p99 ms | client CPU s | machine busy (cores) |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for d in sorted(p for p in out.iterdir() if p.is_dir() and "-hs-" in p.name and (p / "summary.md").exists()):
    m = re.match(r"r(\d+)-hs-(.+)$", d.name)
    rs = list(rows(d))
    per, info = {}, {}
    for r in rs:
        try:
            rep = json.load(open(d / f"{r['server']}.json"))
        except (OSError, ValueError):
            continue
        est, cpu = rep["connections"]["established"], f(r["server CPU s"])
        per[r["server"]] = est / cpu if cpu else None
        info[r["server"]] = (rep, r)
    peers = [v for k, v in per.items() if k != "tether" and v]
    best = max(peers) if peers else None
    for s, (rep, r) in info.items():
        ratio = f"{per['tether'] / best:.2f}x" if s == "tether" and best and per.get("tether") else ""
        hs = rep["handshake_us"]
        print(f"| {m[1]} | {m[2]} | {s} | {rep['connections']['established']} / {rep['connections']['failed']} | "
              f"{rep['connect_rate_per_s']:.0f} | {r['server CPU s']} | {per[s]:.0f} | {ratio} | "
              f"{hs['p50'] / 1000:.1f} / {hs['p99'] / 1000:.1f} | {r['client CPU s']} | {r.get('machine busy cores', '?')} |")
PY
cat "$out/table.md"
echo "(results in $out)"

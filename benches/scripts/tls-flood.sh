#!/usr/bin/env bash
# Open TLS connections' ping RTT while a flood of new TLS clients arrives, with tetherd's handshake cap at
# CAP per loop iteration (default 64) and effectively off (1,000,000):
#   bash benches/scripts/tls-flood.sh [CAP...]
# tetherd: one shard pinned to CPU 0, wss:// with tests/certs; the clients on CPU 1, the flood at nice 19 so
# that the open connections' client is not what delays their pings. tether-load A: 2,000 established connections pinging every
# 200 ms for 20 s. 3 s in, tether-load B: 20,000 new connections at up to 20,000/s (full handshakes, up to
# 5,000 in flight), held 3 s. Reports A's ping RTT percentiles (its whole run) and B's handshakes. Loopback,
# bounded in time, everything stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CAPS=("$@"); [ ${#CAPS[@]} -gt 0 ] || CAPS=(64 1000000)
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
BIN=${BIN_DIR:-target/release}
[ -n "${BIN_DIR:-}" ] || cargo build --release -q -p tetherd -p tether-load
TLS=(--tls-ca tests/certs/ca.crt)
port=9711
for cap in "${CAPS[@]}"; do
    port=$((port + 1))
    taskset -c 0 timeout -s KILL 120 "$BIN/tetherd" --listen 127.0.0.1:$port --shards 1 --log warn --max-connections 30000 \
        --tls-cert tests/certs/localhost.crt --tls-key tests/certs/localhost.key --tls-handshakes-per-loop "$cap" \
        --ping-interval 0 >"$OUT/td-$cap.out" 2>"$OUT/td-$cap.err" &
    td=$!
    for _ in $(seq 50); do curl -sk -m 1 "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    taskset -c 1 timeout -s INT 60 "$BIN/tether-load" run --url "wss://127.0.0.1:$port/" "${TLS[@]}" --connections 2000 --rate 2000 \
        --duration 20s --ping-interval 200ms --quiet --source-ips 127.0.1.1 --json "$OUT/a-$cap.json" >"$OUT/a-$cap.txt" 2>&1 &
    a=$!
    sleep 3
    taskset -c 1 timeout -s INT 60 "$BIN/tether-load" run --url "wss://127.0.0.1:$port/" "${TLS[@]}" --connections 20000 --rate 20000 \
        --max-connecting 5000 --tls-resume off --handshake-timeout 30s --duration 3s --ping-interval 0 --quiet \
        --source-ips 127.0.2.1-127.0.2.4 --json "$OUT/b-$cap.json" >"$OUT/b-$cap.txt" 2>&1 || true
    wait "$a" || true
    deferred=$(curl -sk -m 2 "https://127.0.0.1:$port/metrics" | awk '$1 ~ /^tether_tls_handshakes_deferred_total/ && /total/ {print $2}' | head -1)
    kill "$td" 2>/dev/null || true; wait "$td" 2>/dev/null || true
    python3 - "$OUT/a-$cap.json" "$OUT/b-$cap.json" "$cap" "${deferred:-?}" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
p, h = a["ping_rtt_us"], b["handshake_us"]
print(f"cap {sys.argv[3]:>8}: open connections' ping RTT p50 {p['p50']/1000:.1f} ms  p99 {p['p99']/1000:.1f} ms  "
      f"p99.9 {p['p999']/1000:.1f} ms  max {p['max']/1000:.1f} ms (count {p['count']}, drops {a['drops']['total']});  "
      f"flood: {b['connections']['established']} of 20000 in, handshake p50 {h['p50']/1000:.0f} ms p99 {h['p99']/1000:.0f} ms;  "
      f"deferred {sys.argv[4]}")
PY
done
echo "files: $OUT"

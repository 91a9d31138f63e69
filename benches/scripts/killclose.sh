#!/usr/bin/env bash
# A mass close: N connections held by tether-load, which is then SIGKILLed. Reports how long tetherd takes to
# free every slot and how many io_uring io-wq worker threads (iou-wrk) it ran meanwhile; exits 1 when the
# slots are not all free within LIMIT seconds or any io-wq thread appeared (teardown must stay inline).
#   bash benches/scripts/killclose.sh [N]        (default 50000)
# Environment: PORT (9611), SRC_NET (127.0.61), LIMIT (30 s), BIN_DIR (target/release; when set nothing is
# built), OUT (a temp dir). Loopback only; both processes are bounded in time and stopped at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
N=${1:-50000}
PORT=${PORT:-9611}
SRC_NET=${SRC_NET:-127.0.61}
LIMIT=${LIMIT:-30}
OUT=${OUT:-$(mktemp -d)}
if [ -n "${BIN_DIR:-}" ]; then BIN=$BIN_DIR; else cargo build --release -q -p tetherd -p tether-load; BIN=target/release; fi
addrs=$(( (N + 11999) / 12000 ))
gauge() { curl -s -m 2 "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$0 ~ "^" m "\\{" && /total/ {print $2}'; }
iou() { cat /proc/"$1"/task/*/comm 2>/dev/null | grep -c iou-wrk || true; }

timeout -s KILL $((N / 1000 + 300)) "$BIN/tetherd" --listen "127.0.0.1:$PORT" --max-connections $((N + 1000)) \
    --log warn >"$OUT/tetherd.out" 2>"$OUT/tetherd.err" &
tdwrap=$!
tdpid=""
cleanup() {
    pkill -KILL -f "tether-load run --url ws://127.0.0.1:$PORT/" 2>/dev/null || true
    kill -KILL "${tdpid:-$tdwrap}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do tdpid=$(pgrep -P "$tdwrap" -x tetherd || true); [ -n "$tdpid" ] && break; sleep 0.1; done
for _ in $(seq 100); do grep -q "listening on" "$OUT/tetherd.out" 2>/dev/null && break; sleep 0.1; done
timeout -s KILL $((N / 1000 + 200)) "$BIN/tether-load" run --url "ws://127.0.0.1:$PORT/" --connections "$N" \
    --rate 20000/s --duration $((N / 1000 + 100))s --source-ips "$SRC_NET.1-$SRC_NET.$addrs" --quiet \
    >"$OUT/load.txt" 2>&1 &
open=0
for _ in $(seq $((N / 1000 + 60))); do
    open=$(gauge tether_websockets_open); [ "${open:-0}" -ge "$N" ] && break; sleep 1
done
echo "open before the kill: $open"
pkill -KILL -f "tether-load run --url ws://127.0.0.1:$PORT/"
t0=$(date +%s.%N)
max_iou=0 left=""
while :; do
    left=$(gauge tether_connections_open)
    n=$(iou "$tdpid"); [ "$n" -gt "$max_iou" ] && max_iou=$n
    # The scrape's own connection counts as one.
    [ -n "$left" ] && [ "$left" -le 1 ] && break
    [ "$(echo "$(date +%s.%N) - $t0 > $LIMIT" | bc)" = 1 ] && break
    sleep 0.5
done
took=$(echo "$(date +%s.%N) - $t0" | bc)
echo "slots still held: ${left:-?} after ${took} s; io-wq threads seen: $max_iou"
kill -TERM "$tdpid"; wait "$tdwrap" || true
fail=""
[ -n "$left" ] && [ "$left" -le 1 ] || fail="$fail slots not freed within ${LIMIT}s;"
[ "$max_iou" = 0 ] || fail="$fail io-wq threads during teardown;"
if [ -n "$fail" ]; then echo "RESULT FAILED:$fail"; exit 1; fi
echo "RESULT ok"

#!/usr/bin/env python3
"""What a server API publication costs tetherd with HTTP keep-alive and without.

One tetherd (the gateway, one namespace with history) and one `tether-load --protocol centrifugo` holding a
few subscribers and publishing through the HTTP API at a fixed rate (`--publish-concurrency` lanes, each
keeping its connection open when the server lets it). The same binaries run twice per round: tetherd with
`--http-keepalive off` (every answer `Connection: close`: a TCP handshake, accept and teardown per
publication) and with the default (one connection per lane). Reported per run: publications/s reached, the
API's request latency p50/p99 as tether-load measured it, tetherd's CPU-seconds and its microseconds per
publication, and the accepted connections (tether_accepted_total).

    python3 benches/scripts/api_keepalive.py [--rate 3000] [--duration 20] [--rounds 2]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(os.environ.get("BIN_DIR", ROOT / "target/release"))
sys.path.insert(0, str(ROOT / "benches/scripts"))
from soak import cpu_seconds  # noqa: E402


def accepted(addr):
    req = urllib.request.Request(f"http://{addr}/metrics", headers={"Connection": "close"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    return int(next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith('tether_accepted_total{shard="total"}')))


def one(keepalive, args, tmp, port):
    config = {"client": {"token": {"hmac_secret_key": "secret"}}, "http_api": {"key": "key"},
              "channel": {"namespaces": [{"name": "ka", "allow_subscribe_for_client": True,
                                          "history_size": 10, "history_ttl": "60s"}]}}
    path = pathlib.Path(tmp) / "gw.json"
    path.write_text(json.dumps(config))
    extra = [] if keepalive else ["--http-keepalive", "off"]
    server = subprocess.Popen([str(BIN_DIR / "tetherd"), "--listen", f"127.0.0.1:{port}", "--gateway", str(path),
                               "--log", "warn", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("tetherd listening on "):
            raise SystemExit(f"tetherd did not start: {line!r}")
        addr = line.split()[-1]
        report = pathlib.Path(tmp) / "load.json"
        before_cpu, before_acc = cpu_seconds(server.pid), accepted(addr)
        subprocess.run([str(BIN_DIR / "tether-load"), "run", "--url", f"ws://{addr}/connection/websocket",
                        "--api-url", f"http://{addr}/api", "--protocol", "centrifugo", "--token-secret", "secret",
                        "--api-key", "key", "--connections", str(args.connections), "--channels",
                        str(args.connections), "--subscriptions-per-connection", "1", "--channel-prefix", "ka:",
                        "--publish-rate", f"{args.rate}/s", "--publish-concurrency", str(args.concurrency),
                        "--duration", f"{args.duration}s", "--ping-interval", "0", "--quiet", "--json", str(report)],
                       check=True, timeout=args.duration + 120, stdout=subprocess.DEVNULL)
        used = cpu_seconds(server.pid) - before_cpu
        conns = accepted(addr) - before_acc - 1  # the second scrape counts itself
        r = json.loads(report.read_text())
    finally:
        server.terminate()
        server.wait(10)
    c = r["centrifugo"]
    published, lat = c["publications"]["ok"], c["api_request_us"]
    return {"keepalive": keepalive, "published": published, "pub_per_s": c["publications"]["per_s"],
            "api_p50_ms": lat["p50"] / 1000, "api_p99_ms": lat["p99"] / 1000, "server_cpu_s": used,
            "us_per_publication": 1e6 * used / max(1, published), "accepted": conns}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=3000.0, help="API publications/s offered")
    ap.add_argument("--concurrency", type=int, default=8, help="publisher lanes (connections when kept alive)")
    ap.add_argument("--connections", type=int, default=100, help="subscribers, one channel each")
    ap.add_argument("--duration", type=int, default=20, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=19620)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for keepalive in ((False, True) if rnd % 2 == 0 else (True, False)):
                row = one(keepalive, args, tmp, args.port)
                rows.append(row)
                print(f"round {rnd + 1} keep-alive {'on ' if keepalive else 'off'}: {row['pub_per_s']:.0f} pub/s, "
                      f"API p50 {row['api_p50_ms']} ms p99 {row['api_p99_ms']} ms, tetherd "
                      f"{row['server_cpu_s']:.2f} CPU-s = {row['us_per_publication']:.1f} us/publication, "
                      f"{row['accepted']} connections accepted", flush=True)
                time.sleep(1)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

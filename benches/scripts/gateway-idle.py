#!/usr/bin/env python3
"""Memory per idle gateway connection: tetherd --gateway holding N connected clients, each with one subscription.

    benches/scripts/gateway-idle.py [--connections 200000] [--channels personal|one] [--hold 60s]
                                    [--rate 20000/s] [--out DIR]

Starts tetherd with a Centrifugo config (HS256 tokens, default pings every 25 s), reads its RSS, runs
tether-load --protocol centrifugo (each connection connects with a token and subscribes to one channel:
its own with --channels personal, one shared channel with --channels one) and holds them, reads tetherd's RSS
in the middle of the hold, and reports (RSS during hold - RSS before) / connections: the user-space memory per
idle connection (the kernel's socket memory, about 3.6 KB per TCP socket, is not in RSS). Also reports
what tether-load saw (established, drops by code, server pings received) so a run that lost connections
shows it. Loopback only; bounded in time; both processes are stopped at the end.
Environment: BIN_DIR (default target/release).
"""

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", text)
    if not m:
        raise SystemExit(f"bad duration {text}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=200_000)
    ap.add_argument("--channels", choices=["personal", "one"], default="personal")
    ap.add_argument("--hold", default="60s")
    ap.add_argument("--rate", default="20000/s")
    ap.add_argument("--out", default=str(ROOT / "target/gateway-idle" / time.strftime("%Y%m%d-%H%M%S")))
    args = ap.parse_args()
    bins = pathlib.Path(os.environ.get("BIN_DIR", ROOT / "target/release"))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.connections
    cfg = {
        "client": {"token": {"hmac_secret_key": "idle-secret"}},
        "http_api": {"key": "idle-key"},
        "channel": {"namespaces": [{"name": "idle", "allow_subscribe_for_client": True}]},
    }
    (out / "gateway.json").write_text(json.dumps(cfg))
    server = subprocess.Popen(
        [str(bins / "tetherd"), "--listen", "127.0.0.1:0", "--gateway", str(out / "gateway.json"),
         "--max-connections", str(n + 1000), "--log", "warn"],
        stdout=subprocess.PIPE, stderr=open(out / "tetherd.log", "w"), text=True)
    line = server.stdout.readline()
    if not line.startswith("tetherd listening on "):
        server.kill()
        raise SystemExit(f"tetherd did not start: {line!r}, see {out}/tetherd.log")
    addr = line.split()[-1]
    time.sleep(1)
    before = rss_kib(server.pid)
    hold = seconds(args.hold)
    report = out / "load.json"
    load = subprocess.Popen(
        [str(bins / "tether-load"), "run", "--url", f"ws://{addr}", "--protocol", "centrifugo",
         "--token-secret", "idle-secret", "--connections", str(n), "--rate", args.rate,
         "--duration", args.hold, "--channel-prefix", "idle:", "--subscriptions-per-connection", "1",
         "--channels", str(n if args.channels == "personal" else 1), "--ping-interval", "0",
         "--json", str(report)],
        stdout=open(out / "load.log", "w"), stderr=subprocess.STDOUT)
    # The hold starts after the ramp (connections / rate) and the subscribes; sample in its second half.
    rate = float(args.rate.split("/")[0])
    time.sleep(n / rate + 5 + hold * 0.6)
    during = rss_kib(server.pid)
    opened = None
    try:
        load.wait(timeout=n / rate + hold + 120)
    finally:
        if load.poll() is None:
            load.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    r = json.loads(report.read_text())
    c = r["centrifugo"]
    opened = r["connections"]["established"]
    row = {
        "connections": n,
        "channels": args.channels,
        "established": opened,
        "subscribed_at_end": c["subscribed_at_end"],
        "drops": r["drops"]["total"],
        "drops_by_code": r["drops"]["by_code"],
        "server_pings_received": c["server_pings"],
        "rss_before_mib": round(before / 1024, 1),
        "rss_hold_mib": round(during / 1024, 1),
        "bytes_per_connection": round((during - before) * 1024 / max(opened, 1)),
    }
    (out / "summary.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row))
    print(f"results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

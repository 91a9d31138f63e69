#!/usr/bin/env python3
"""A/B of two tetherd builds (or two sets of flags) on the closed-loop echo, interleaved round by round.

    benches/scripts/ab.py --a BIN[:FLAGS] --b BIN[:FLAGS] [--sizes 512,16384] [--connections 100]
                          [--rounds 3] [--duration 10s] [--server-cpu 0] [--load-cpu 1] [--out FILE]

Each side is a tetherd binary and optional extra flags after a colon, e.g.
`--a /tmp/tetherd-base --b target/release/tetherd:--recv-buffer-size=32KiB`. For every round and message size
it runs A then B (B then A on odd rounds, so neither always goes first): tetherd `--shards 1` pinned to
--server-cpu, one tether-load `run --closed-loop --shards 1` pinned to --load-cpu (one message in flight per
connection), and reads the server's CPU time from /proc before and after. Reported per run: messages echoed
per server CPU-second (the comparison), echoed/s, echo p50/p99; per round and size B/A. Same-round pairs
compare; rounds differ when something else shares the machine. Loopback only; every process is bounded in
time and killed on exit. Environment: BIN_DIR (tether-load; default target/release).
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from soak import cpu_seconds  # noqa: E402  (a process's user + system CPU seconds, from /proc)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def wait_port(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"tetherd did not listen on {port}")


def one(side, size, args, port, tmp):
    binary, _, flags = side.partition(":")
    server = subprocess.Popen(["taskset", "-c", str(args.server_cpu), binary, "--listen", f"127.0.0.1:{port}",
                               "--shards", "1", "--log", "warn"] + flags.split(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        before = cpu_seconds(server.pid)
        report = pathlib.Path(tmp) / f"{port}.json"
        load = [str(pathlib.Path(os.environ.get("BIN_DIR", ROOT / "target/release")) / "tether-load"), "run",
                "--url", f"ws://127.0.0.1:{port}/", "--connections", str(args.connections), "--shards", "1",
                "--closed-loop", "--message-size", str(size), "--duration", args.duration, "--quiet",
                "--json", str(report)]
        subprocess.run(["taskset", "-c", str(args.load_cpu)] + load, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        used = cpu_seconds(server.pid) - before
        r = json.loads(report.read_text())
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    echoed = r["messages"]["echoed"]
    active = r["duration_s"] + r.get("ramp_s", 0)
    return {"per_cpu_s": echoed / used if used > 0 else 0.0, "per_s": echoed / active if active else 0.0,
            "p50_us": r["echo_us"]["p50"], "p99_us": r["echo_us"]["p99"], "server_cpu_s": used}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--sizes", default="512,16384")
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--port", type=int, default=19300)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    print(f"A = {args.a}\nB = {args.b}\n{args.connections} connections, closed loop, {args.duration} per run\n")
    print("| round | size | A per server CPU-s | B per server CPU-s | B/A | A / B echoed/s | A / B p50, p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        port = args.port
        for rnd in range(args.rounds):
            for size in [int(s) for s in args.sizes.split(",")]:
                order = [("A", args.a), ("B", args.b)]
                if rnd % 2:
                    order.reverse()
                got = {}
                for name, side in order:
                    got[name] = one(side, size, args, port, tmp)
                    port += 1
                a, b = got["A"], got["B"]
                ratio = b["per_cpu_s"] / a["per_cpu_s"] if a["per_cpu_s"] else 0.0
                rows.append({"round": rnd + 1, "size": size, "a": a, "b": b, "b_over_a": ratio})
                print(f"| {rnd + 1} | {size} | {a['per_cpu_s']:,.0f} | {b['per_cpu_s']:,.0f} | {ratio:.3f} | "
                      f"{a['per_s']:,.0f} / {b['per_s']:,.0f} | {a['p50_us'] / 1000:.2f}, {a['p99_us'] / 1000:.2f} / "
                      f"{b['p50_us'] / 1000:.2f}, {b['p99_us'] / 1000:.2f} |", flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Publications through Redis: one tetherd on the memory engine, one on the Redis engine, and three nodes on one
Redis, driven by the same tether-load runs (one tether-load per node, the subscribers split evenly).

    benches/scripts/redis-fanout.py [--setups memory-1,redis-1,redis-3] [--subscribers 60000]
                                    [--channels 600] [--publish-rate 2000] [--duration 20s] [--out DIR]

Every subscriber takes one of --channels channels (connection i of each tether-load takes channel i mod N, so
each channel has subscribers on every node); tether-load 0 (against node 0) publishes --publish-rate
publications/s through node 0's POST /api/publish (an open-loop publisher, 8 threads); the others only
receive. Publish -> delivery latency is measured in every tether-load on one clock (`t` in the publication is
wall-clock-anchored, see loadgen/src/centrifugo/mod.rs), so a delivery on node 2 of a publication made on node 0
counts as it should. Reported per setup: publications, deliveries (all tether-loads) against the expected
(publications x subscribers per channel), deliveries per second of publishing, latency p50 / p99 (the worst
tether-load's), API request p50, and over a window inside the publishing period (2 s after its start to 1 s
before its end) the CPU-seconds of the tetherd nodes, of redis-server (and per 100,000 publications), of the
tether-loads. Loopback only; every process is bounded in time and stopped before the next setup starts.
Environment: BIN_DIR (default target/release) for tetherd and tether-load; REDIS_SERVER (default redis-server).
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches/scripts"))
from fanout import Sampler, stop  # noqa: E402  (the CPU sampler and the polite stop)

SECRET, API_KEY = "bench-secret", "bench-key"


def start_redis(port, workdir):
    cmd = [os.environ.get("REDIS_SERVER", "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
           "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=2)
            if "PONG" in out.stdout:
                return proc
        except (OSError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def start_node(i, port, redis_port, workdir, connections, bin_dir):
    ns = {"name": "bench", "allow_subscribe_for_client": True, "allow_publish_for_client": True}
    cfg = {"client": {"token": {"hmac_secret_key": SECRET}}, "http_api": {"key": API_KEY},
           "channel": {"namespaces": [ns]}}
    if redis_port:
        cfg["engine"] = {"type": "redis", "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": "bench"}}
    path = workdir / f"node{i}.json"
    path.write_text(json.dumps(cfg))
    cmd = [str(bin_dir / "tetherd"), "--listen", f"127.0.0.1:{port}", "--gateway", str(path), "--log", "warn",
           "--max-connections", str(connections + 1000)]
    log = open(workdir / f"node{i}.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "tetherd listening on" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"node {i} did not start: see {workdir}/node{i}.log")


def run_setup(name, args, workdir, bin_dir, base_port):
    nodes_n = int(name.split("-")[1])
    use_redis = name.startswith("redis")
    per_node = args.subscribers // nodes_n
    redis = start_redis(base_port, workdir) if use_redis else None
    nodes = [start_node(i, base_port + 1 + i, base_port if use_redis else 0, workdir, per_node, bin_dir)
             for i in range(nodes_n)]
    dur = float(args.duration.rstrip("s"))
    loads, reports = [], []
    try:
        # Receivers first (held 6 s longer), then the publishing tether-load 3 s later: every receiver is
        # subscribed before the first publication and still there after the last.
        order = list(range(1, nodes_n)) + [0]
        t0 = None
        for i in order:
            if i == 0 and nodes_n > 1:
                time.sleep(3)
            report = workdir / f"{name}-load{i}.json"
            reports.append((i, report))
            cmd = [str(bin_dir / "tether-load"), "run", "--url", f"ws://127.0.0.1:{base_port + 1 + i}",
                   "--protocol", "centrifugo", "--token-secret", SECRET, "--api-key", API_KEY,
                   "--connections", str(per_node), "--rate", "20000/s", "--ping-interval", "0",
                   "--channel-prefix", "bench:", "--channels", str(args.channels),
                   "--subscriptions-per-connection", "1", "--json", str(report), "--close-wait", "10s",
                   "--duration", f"{dur + (0 if i == 0 else 6)}s"]
            if i == 0:
                cmd += ["--publish-rate", f"{args.publish_rate}/s", "--publish-concurrency", "8"]
                t0 = time.monotonic()
            loads.append(subprocess.Popen(cmd, stdout=open(workdir / f"{name}-load{i}.log", "w"),
                                          stderr=subprocess.STDOUT))
        pids = [n.pid for n in nodes] + [l.pid for l in loads] + ([redis.pid] if redis else [])
        sampler = Sampler(pids)
        sampler.start()
        for l in loads:
            l.wait(timeout=600)
        sampler.stop.set()
        sampler.join()
    finally:
        for l in loads:
            if l.poll() is None:
                l.kill()
        for n in nodes:
            stop(n)
        if redis:
            stop(redis)
    by_node = {i: json.loads(r.read_text()) for i, r in reports}
    r0 = by_node[0]
    c0 = r0["centrifugo"]
    publish_start = t0 + r0["ramp_s"] + c0["setup_s"]
    start, end = publish_start + 2.0, publish_start + c0["publish_s"] - 1.0
    cpu = lambda pid: sampler.at(pid, end) - sampler.at(pid, start)  # noqa: E731
    pubs = c0["publications"]["ok"]
    deliveries = sum(r["centrifugo"]["deliveries"]["total"] for r in by_node.values())
    # Each tether-load spreads its connections over the channels the same way: loader 0's expected count (its
    # own subscribers of each publication) times the number of loaders.
    expected = c0["deliveries"]["expected"] * nodes_n
    redis_cpu = cpu(redis.pid) if redis else 0.0
    window_pubs = pubs * (end - start) / max(c0["publish_s"], 1e-9)
    return {
        "setup": name,
        "subscribers": per_node * nodes_n,
        "established": sum(r["connections"]["established"] for r in by_node.values()),
        "publications": pubs,
        "deliveries": deliveries,
        "expected": expected,
        "gaps_or_duplicates": sum(r["centrifugo"]["deliveries"]["gaps"] + r["centrifugo"]["deliveries"]["duplicates"]
                                  for r in by_node.values()),
        "deliveries_per_s": round(deliveries / max(c0["publish_s"], 1e-9)),
        "p50_ms": max(r["centrifugo"]["latency_us"]["p50"] for r in by_node.values()) / 1000,
        "p99_ms": max(r["centrifugo"]["latency_us"]["p99"] for r in by_node.values()) / 1000,
        "api_p50_ms": c0["api_request_us"]["p50"] / 1000,
        "window_s": round(end - start, 2),
        "nodes_cpu_s": round(sum(cpu(n.pid) for n in nodes), 2),
        "redis_cpu_s": round(redis_cpu, 2),
        "redis_cpu_s_per_100k_pubs": round(redis_cpu / window_pubs * 100_000, 2) if redis and window_pubs else None,
        "loads_cpu_s": round(sum(cpu(l.pid) for l in loads), 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", default="memory-1,redis-1,redis-3")
    ap.add_argument("--subscribers", type=int, default=60_000)
    ap.add_argument("--channels", type=int, default=600)
    ap.add_argument("--publish-rate", type=float, default=2000)
    ap.add_argument("--duration", default="20s")
    ap.add_argument("--out", default=str(ROOT / "target/redis-fanout" / time.strftime("%Y%m%d-%H%M%S")))
    args = ap.parse_args()
    bin_dir = pathlib.Path(os.environ.get("BIN_DIR", ROOT / "target/release"))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    base = 19600
    for name in args.setups.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        work = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-", dir=out))
        row = run_setup(name, args, work, bin_dir, base)
        base += 10
        print(json.dumps(row), flush=True)
        rows.append(row)
        time.sleep(2)
    head = list(rows[0].keys())
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(h)) for h in head) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results in {out}", file=sys.stderr)
    shutil.rmtree(out / "unused", ignore_errors=True)


if __name__ == "__main__":
    _ = signal  # stop() uses SIGTERM
    main()

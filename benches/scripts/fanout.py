#!/usr/bin/env python3
"""Fan-out side by side: tetherd's gateway and Bun's topic pub/sub, driven by the same tether-load run.

    benches/scripts/fanout.py [--servers tether,bun] [--shapes one,personal] [--subscribers 100000]
                              [--one-rate 5] [--personal-rate 20000] [--personal-batch 1000]
                              [--duration 20s] [--publish-concurrency 8] [--history] [--out DIR]

Shapes (both with --subscribers connections, one subscription each):
  one       one channel that every connection subscribes to; --one-rate publications/s through POST
            /api/publish (each publication is --subscribers deliveries);
  personal  --subscribers channels with one subscriber each; --personal-rate publications/s through POST
            /api/broadcast, --personal-batch channels per request.

Bun keeps each socket in an ordinary file descriptor: one Bun process holds at most RLIMIT_NOFILE connections
(20,000 on the project machines), so side by side with Bun keep --subscribers below that; tetherd holds its
sockets in io_uring's registered file tables and is not bound by it (run it alone with --servers tether).

Per (shape, server) it starts the server (tetherd --gateway with a namespace without history, or with
--history a second tetherd row whose namespace keeps history and recovery; Bun: benches/bun/gateway.js),
samples the server's and tether-load's CPU time (utime + stime, /proc) every 0.2 s, runs tether-load
--protocol centrifugo with an open-loop publisher (--publish-concurrency threads, staggered), and reports
deliveries, deliveries/s of publishing, publish -> delivery latency p50/p99, the API request p50, and over a
window inside the publishing period (2 s after its start to 1 s before its end, from tether-load's JSON, so
that neither the subscribes before nor the closes after count): server CPU-seconds, deliveries per server
CPU-second, the client's CPU-seconds (the client is the limit when it used about one core per thread); and
the server's RSS at the end. Results go to DIR/summary.md and one JSON
per run. Loopback only; every process is bounded in time and stopped before the next starts.
Environment: BIN_DIR (default target/release) for tetherd and tether-load; BUN (default: benches/bun/setup.sh).
"""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
TICKS = os.sysconf("SC_CLK_TCK")
SECRET, API_KEY = "bench-secret", "bench-key"


def cpu_seconds(pid):
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """(monotonic time, cpu seconds) of a few processes, every 0.2 s."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.samples = {p: [] for p in pids}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            for p in self.pids:
                c = cpu_seconds(p)
                if c is not None:
                    self.samples[p].append((now, c))
            self.stop.wait(0.2)

    def at(self, pid, t):
        """CPU seconds of `pid` at time `t` (linear between samples)."""
        s = self.samples[pid]
        if not s:
            return 0.0
        if t <= s[0][0]:
            return s[0][1]
        for (t0, c0), (t1, c1) in zip(s, s[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0)
        return s[-1][1]


def start_server(name, port, history, workdir, connections):
    env = dict(os.environ)
    if name.startswith("tether"):
        ns = {"name": "bench", "allow_subscribe_for_client": True, "allow_publish_for_client": True}
        if history:
            ns.update(history_size=100, history_ttl="60s", force_recovery=True)
        cfg = {
            "client": {"token": {"hmac_secret_key": SECRET}},
            "http_api": {"key": API_KEY},
            "channel": {"namespaces": [ns]},
        }
        path = workdir / f"gateway-{name}.json"
        path.write_text(json.dumps(cfg))
        cmd = [str(BIN_DIR / "tetherd"), "--listen", f"127.0.0.1:{port}", "--gateway", str(path), "--log", "warn",
               "--max-connections", str(connections + 1000), "--shards", str(SHARDS)]
        ready = "tetherd listening on"
    else:
        cmd = [BUN, str(ROOT / "benches/bun/gateway.js")]
        env.update(PORT=str(port), API_KEY=API_KEY)
        ready = "bun gateway listening"
    log = open(workdir / f"{name}.server.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if ready in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{name} did not start: see {workdir}/{name}.server.log")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_one(shape, name, args, port, workdir):
    n = args.subscribers
    server = start_server(name, port, name == "tether+history", workdir, n)
    report = workdir / f"{shape}-{name}.json"
    load = [
        str(BIN_DIR / "tether-load"), "run", "--url", f"ws://127.0.0.1:{port}", "--protocol", "centrifugo",
        "--token-secret", SECRET, "--api-key", API_KEY, "--connections", str(n), "--rate", args.connect_rate,
        "--duration", args.duration, "--ping-interval", "0", "--channel-prefix", "bench:",
        "--subscriptions-per-connection", "1", "--json", str(report), "--close-wait", "10s",
        "--publish-concurrency", str(args.publish_concurrency),
    ]
    if shape == "one":
        load += ["--channels", "1", "--publish-rate", f"{args.one_rate}/s"]
    else:
        load += ["--channels", str(n), "--publish-rate", f"{args.personal_rate}/s",
                 "--publish-batch", str(args.personal_batch)]
    t0 = time.monotonic()
    client = subprocess.Popen(load, stdout=open(workdir / f"{shape}-{name}.load.log", "w"), stderr=subprocess.STDOUT)
    sampler = Sampler([server.pid, client.pid])
    sampler.start()
    rss_after_setup = None
    try:
        client.wait(timeout=600)
    finally:
        sampler.stop.set()
        sampler.join()
        if client.poll() is None:
            client.kill()
        rss_after_setup = rss_kib(server.pid)
        stop(server)
    r = json.loads(report.read_text())
    c = r["centrifugo"]
    # CPU is read inside the publishing period, away from its edges (the subscribes before it, the closes
    # after it): from 2 s after it starts to 1 s before it ends. Publishing is open-loop and even, so the
    # deliveries in that window are the run's deliveries per second of publishing times its length.
    publish_start = t0 + r["ramp_s"] + c["setup_s"]
    start, end = publish_start + 2.0, publish_start + c["publish_s"] - 1.0
    server_cpu = sampler.at(server.pid, end) - sampler.at(server.pid, start)
    client_cpu = sampler.at(client.pid, end) - sampler.at(client.pid, start)
    d = c["deliveries"]
    in_window = d["total"] * (end - start) / max(c["publish_s"], 1e-9)
    return {
        "shape": shape,
        "server": name,
        "subscribers": n,
        "established": r["connections"]["established"],
        "publications": c["publications"]["ok"],
        "deliveries": d["total"],
        "expected": d["expected"],
        "missing": d.get("missing", 0),
        "window_s": round(end - start, 2),
        "deliveries_per_s": round(d["total"] / max(c["publish_s"], 1e-9)),
        "p50_ms": c["latency_us"]["p50"] / 1000,
        "p99_ms": c["latency_us"]["p99"] / 1000,
        "api_p50_ms": c["api_request_us"]["p50"] / 1000,
        "server_cpu_s": round(server_cpu, 2),
        "deliveries_per_server_cpu_s": round(in_window / server_cpu) if server_cpu > 0 else None,
        "client_cpu_s": round(client_cpu, 2),
        "server_rss_mib_at_end": round(rss_after_setup / 1024, 1) if rss_after_setup else None,
    }


def main():
    global BIN_DIR, BUN, SHARDS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="tether,bun")
    ap.add_argument("--shapes", default="one,personal")
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--one-rate", type=float, default=5)
    ap.add_argument("--personal-rate", type=float, default=20_000)
    ap.add_argument("--personal-batch", type=int, default=1000)
    ap.add_argument("--duration", default="20s")
    ap.add_argument("--connect-rate", default="20000/s", help="tether-load --rate (new connections per second)")
    ap.add_argument("--publish-concurrency", type=int, default=8,
                    help="API publisher threads in tether-load (1: one request at a time, a closed-loop publisher)")
    ap.add_argument("--history", action="store_true", help="also run tetherd with history and recovery on")
    ap.add_argument("--tether-shards", type=int, default=0, help="tetherd --shards (0: one per core)")
    ap.add_argument("--out", default=str(ROOT / "target/fanout" / time.strftime("%Y%m%d-%H%M%S")))
    args = ap.parse_args()
    BIN_DIR = pathlib.Path(os.environ.get("BIN_DIR", ROOT / "target/release"))
    SHARDS = args.tether_shards
    servers = args.servers.split(",") + (["tether+history"] if args.history else [])
    if "bun" in servers:
        BUN = os.environ.get("BUN") or subprocess.check_output(["bash", str(ROOT / "benches/bun/setup.sh")], text=True).strip()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    port = 19400
    for shape in args.shapes.split(","):
        for name in servers:
            port += 1
            print(f"== {shape} / {name}", file=sys.stderr, flush=True)
            row = run_one(shape, name, args, port, out)
            print(json.dumps(row), flush=True)
            rows.append(row)
            time.sleep(2)
    head = ["shape", "server", "established", "publications", "deliveries", "missing", "window_s", "deliveries_per_s",
            "p50_ms", "p99_ms", "api_p50_ms", "server_cpu_s", "deliveries_per_server_cpu_s", "client_cpu_s", "server_rss_mib_at_end"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(h)) for h in head) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    print(f"results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

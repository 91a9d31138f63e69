#!/usr/bin/env python3
"""Gateway soak with tenants: churn and steady publishing, then the same with one tenant flooding (issue 12).

    benches/scripts/soak.py [--connections 200000] [--duration 1h] [--reconnects-per-second 2000]
                            [--tenants a,b,c] [--flood-tenant c] [--publish-rate 500] [--ramp-rate 4000]
                            [--phases baseline,flood] [--out DIR] [... see --help]

One tetherd with one tenant per name in --tenants (`--tenant NAME=FILE`, Centrifugo-format configs generated
into DIR: HS256 tokens, a namespace `soak` with history and force_recovery so that every reconnect recovers;
the quiet tenants with no connection or rate limits; the flooding tenant with its own client.connection_limit,
client.connection_rate_limit, client.command_rate_limit/_burst and client.publication_rate_limit, and a namespace
`flood` its flood publishes into). The connections are split evenly between the tenants; each tenant gets one tether-load --protocol
centrifugo on /t/NAME/connection/websocket with --reconnect-every set so that all of them together close and
recover --reconnects-per-second connections per second (period = connections / rate), --publish-rate
publications per second through /t/NAME/api (--publish-concurrency paced threads, each waiting for its answer:
the rate reached is at most threads / API latency, and the table shows it with the API p50), each connection
subscribed to --subscriptions-per-connection channels of --subscribers-per-channel subscribers.

Phases (tetherd stays up across them; each phase starts fresh tether-loads, ramps, holds --duration):
  baseline  the tenants' steady load only;
  flood     the same, plus, once every tenant's load is holding, on the flooding tenant:
              a command flood: --flood-connections clients publishing with client commands at
                --flood-command-rate in all, far above its client.command_rate_limit (error 111, then 3013),
                each closed one reconnecting (after ~1 s) to flood again, for the whole phase;
              a connection storm: --storm-connections clients opened at --storm-rate with --reconnect, against
                its client.connection_rate_limit (HTTP 503) and client.connection_limit (3504).

Sampled every --sample-interval: tetherd's VmRSS and CPU time, every tether-load's CPU time, the machine's CPU
(/proc/stat), and /metrics (tether_gateway_* by tenant). Reported per phase and tenant: connections held (mean
and min of tether-load's open count during the hold), reconnects/s, publications/s, deliveries/s (client-seen
and the server's tether_gateway_deliveries_total), delivery latency p50/p99/p99.9, GAPS, DUPLICATES, missing,
drops by close code, failed (re)connects, the server's rejections by reason; and tetherd's RSS at the start and
end of each hold with its least-squares slope (MiB/hour) over the hold after --rss-warmup (history fills for
history_ttl first). DIR gets summary.md, summary.json, samples.json, every process's log and JSON report.

Before each phase tetherd must answer /healthz (waits up to --health-wait; a phase it does not answer for is
skipped and the threads' CPU time is written to DIR/stuck-PHASE.txt).
Bounded: every tether-load has its --duration and bounded waits; the script kills whatever is left past its
deadline, and every child (tetherd, tether-loads) is killed when the script ends, on an exception or on
Ctrl-C/SIGTERM (and by PR_SET_PDEATHSIG if the script itself is killed). Loopback only; each tether-load has its
own 127.0.X.0/24 of source addresses (8,000 connections per address).
Environment: BIN_DIR (default target/release).
"""

import argparse
import ctypes
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The /metrics series kept in samples.json: the loads, and every gauge of what the gateway holds (users,
# channels, subscriptions, history), to tell a growing structure from allocator behaviour when RSS climbs.
SAMPLED_METRICS = ("tether_gateway_deliveries_total", "tether_gateway_connections", "tether_gateway_rejections_total",
                   "tether_connections_open", "tether_gateway_history_publications", "tether_gateway_history_streams",
                   "tether_gateway_users", "tether_gateway_channels", "tether_gateway_subscriptions",
                   "tether_send_pool_bytes", "tether_gateway_table_bytes")
TICKS = os.sysconf("SC_CLK_TCK")
PER_ADDRESS = 8000
LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def duration_s(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 300s, 5m, 1h)")
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def rate(text):
    v = float(str(text).strip().removesuffix("/s"))
    if v < 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"bad rate {text!r}")
    return v


def rss_kib(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid):
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu():
    """(busy at normal priority, busy niced, total) jiffies over all CPUs (user nice system idle iowait irq
    softirq steal; guest time is inside user). Niced work is other jobs on a shared machine (a fuzzer)."""
    f = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return f[0] + f[2] + f[5] + f[6] + f[7], f[1], sum(f)


METRIC = re.compile(r"^(tether_\w+?)(?:\{([^}]*)\})? (\S+)$")


def scrape(addr):
    """tether_gateway_* rows by tenant, and a few engine counters: {(name, labels-tuple): value}."""
    out = {}
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        if not (name.startswith("tether_gateway_") or name in ("tether_connections_open", "tether_deliveries_total")):
            continue
        lab = tuple(sorted(tuple(kv.split("=", 1)) for kv in re.findall(r'\w+="[^"]*"', labels or "")))
        lab = tuple((k, v.strip('"')) for k, v in lab)
        try:
            out[(name, lab)] = float(value)
        except ValueError:
            pass
    return out


def metric(sample, name, **want):
    """Sum of the rows of `name` whose labels include `want`."""
    total = 0.0
    for (n, lab), v in sample.items():
        if n == name and all((k, str(w)) in lab for k, w in want.items()):
            total += v
    return total


def fit_slope(points):
    """Least-squares slope of (t seconds, y) points, per second; None for fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((t - mt) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mt) * (y - my) for t, y in points) / sxx


def healthy(addr, timeout=5):
    try:
        with urllib.request.urlopen(f"http://{addr}/healthz", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def _die_with_parent():
    # Runs in the child between fork and exec: the kernel kills it when this script's (main) thread ends.
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _lowered(nice, idle):
    def pre():
        _die_with_parent()
        if nice:
            os.nice(nice)
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return pre


class Children:
    """Every process this script started; all killed on exit."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, log, stdout=None, nice=0, idle=False):
        p = subprocess.Popen(cmd, stdout=stdout or log, stderr=log if stdout is not None else subprocess.STDOUT,
                             preexec_fn=_lowered(nice, idle), start_new_session=True,
                             text=stdout is not None)
        self.procs.append(p)
        return p

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


class Sampler(threading.Thread):
    """Every `interval` s: time, tetherd RSS and CPU, each load's CPU, machine CPU, /metrics."""

    def __init__(self, server_pid, addr, interval):
        super().__init__(daemon=True)
        self.server_pid, self.addr, self.interval = server_pid, addr, interval
        self.loads = {}  # name -> pid
        self.samples = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def watch(self, name, pid):
        with self.lock:
            self.loads[name] = pid

    def one(self):
        t = time.monotonic()
        with self.lock:
            loads = dict(self.loads)
        s = {"t": t, "rss_kib": rss_kib(self.server_pid), "server_cpu_s": cpu_seconds(self.server_pid),
             "load_cpu_s": {n: cpu_seconds(p) for n, p in loads.items()}, "machine": machine_cpu()}
        try:
            s["metrics"] = scrape(self.addr)
        except Exception as e:  # a slow scrape is reported, not fatal
            s["metrics"], s["scrape_error"] = None, str(e)
        s["scrape_s"] = time.monotonic() - t
        self.samples.append(s)

    def run(self):
        while not self.stop.is_set():
            self.one()
            self.stop.wait(self.interval)

    def near(self, t):
        """The sample with metrics closest to monotonic time t."""
        good = [s for s in self.samples if s.get("metrics")]
        return min(good, key=lambda s: abs(s["t"] - t)) if good else None

    def cpu_at(self, key, t, load=None):
        pts = [(s["t"], s["load_cpu_s"].get(load) if load else s[key]) for s in self.samples]
        pts = [(a, b) for a, b in pts if b is not None]
        if not pts:
            return None
        return min(pts, key=lambda p: abs(p[0] - t))[1]


PROGRESS = re.compile(r"^\[\s*(\d+)s\] (\S+)\s+open (\d+)/(\d+)\s+conn/s (\d+).*?drops (\d+)"
                      r"(?:\s+deliveries/s (\d+)\s+gaps (\d+)\s+dups (\d+))?")


class Load:
    """One tether-load process and what its progress lines said."""

    def __init__(self, name, tenant, role, cmd, workdir, children, sampler, nice=0, idle=False):
        self.name, self.tenant, self.role = name, tenant, role
        self.log_path = workdir / f"{name}.log"
        self.json_path = workdir / f"{name}.json"
        self.cmd = cmd + ["--json", str(self.json_path)]
        prefix = ("chrt -i 0 " if idle else "") + (f"nice -n {nice} " if nice else "")
        (workdir / f"{name}.cmd").write_text(prefix + " ".join(self.cmd) + "\n")
        self.t0 = time.monotonic()
        self.proc = children.start(self.cmd, open(self.log_path, "w"), nice=nice, idle=idle)
        sampler.watch(name, self.proc.pid)

    def progress(self):
        rows = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return rows
        for line in text.splitlines():
            m = PROGRESS.match(line)
            if m:
                rows.append({"t": self.t0 + int(m.group(1)), "phase": m.group(2), "open": int(m.group(3)),
                             "conn_s": int(m.group(5)), "drops": int(m.group(6)),
                             "deliveries_s": int(m.group(7)) if m.group(7) else None})
        return rows

    def phase_start(self, phase):
        for r in self.progress():
            if r["phase"] == phase:
                return r["t"]
        return None

    def report(self):
        try:
            return json.loads(self.json_path.read_text())
        except (OSError, ValueError):
            return None


def tenant_config(args, name, share, flooder):
    ns = {"name": "soak", "allow_subscribe_for_client": True, "history_size": args.history_size,
          "history_ttl": args.history_ttl, "force_recovery": True}
    client = {"token": {"hmac_secret_key": f"secret-{name}"}}
    cfg = {"client": client, "http_api": {"key": f"key-{name}"}, "channel": {"namespaces": [ns]}}
    if flooder:
        cfg["channel"]["namespaces"].append(
            {"name": "flood", "allow_subscribe_for_client": True, "allow_publish_for_client": True})
        client.update(
            connection_limit=share + args.flood_connections + args.connection_limit_margin,
            connection_rate_limit=args.flood_connection_rate_limit,
            command_rate_limit=args.flood_command_rate_limit,
            command_rate_burst=args.flood_command_rate_burst,
            publication_rate_limit=args.flood_publication_rate_limit,
            # The burst must exceed channel_limit (a reconnect resubscribes everything in one frame).
            channel_limit=max(args.subscriptions_per_connection, min(16, args.flood_command_rate_burst - 1)))
    else:
        # The quiet tenants: no connection cap, no connection rate limit, a command rate far above their use.
        client.update(connection_limit=0, connection_rate_limit=0, command_rate_limit=1000)
    return cfg


def load_cmd(args, addr, tenant, net, connections, rate_s, duration, extra):
    ips = max(1, math.ceil(connections / PER_ADDRESS))
    return [str(BIN_DIR / "tether-load"), "run", "--url", f"ws://{addr}/t/{tenant}/connection/websocket",
            "--api-url", f"http://{addr}/t/{tenant}/api", "--protocol", "centrifugo",
            "--token-secret", f"secret-{tenant}", "--api-key", f"key-{tenant}",
            "--connections", str(connections), "--rate", f"{rate_s:g}/s", "--duration", f"{duration:.0f}s",
            "--ping-interval", "0", "--close-wait", "20s", "--handshake-timeout", "20s",
            "--source-ips", f"127.0.{net}.1-127.0.{net}.{ips}"] + extra


def run_phase(phase, args, addr, workdir, children, sampler, shares):
    """Starts the phase's loads, waits for them (bounded), returns (loads, hold window)."""
    tenants = args.tenants
    per_tenant_rate = args.ramp_rate / len(tenants)
    loads = []
    net = 100 if phase == "baseline" else 150
    for i, t in enumerate(tenants):
        share = shares[t]
        period = share / (args.reconnects_per_second * share / args.connections) if args.reconnects_per_second else 0
        channels = max(1, share * args.subscriptions_per_connection // args.subscribers_per_channel)
        extra = ["--channels", str(channels), "--subscriptions-per-connection", str(args.subscriptions_per_connection),
                 "--channel-prefix", "soak:", "--publish-rate", f"{args.publish_rate:g}/s",
                 "--publish-concurrency", str(args.publish_concurrency)]
        if period:
            extra += ["--reconnect-every", f"{period * 1000:.0f}ms"]
        if args.delivery_hgrm:
            extra += ["--delivery-hgrm", str(workdir / f"{phase}-{t}.hgrm")]
        cmd = load_cmd(args, addr, t, net + i, share, per_tenant_rate, args.duration, extra)
        loads.append(Load(f"{phase}-{t}", t, "steady", cmd, workdir, children, sampler))
    ramp = max(shares.values()) / per_tenant_rate
    # Every steady load holding (publishing and cycling), or give up waiting.
    deadline = time.monotonic() + ramp + 90
    while time.monotonic() < deadline and not all(l.phase_start("hold") for l in loads):
        if any(l.proc.poll() is not None for l in loads):
            break
        time.sleep(0.5)
    starts = [l.phase_start("hold") for l in loads]
    hold_start = max(s for s in starts if s) if any(starts) else time.monotonic()
    print(f"[{phase}] holding since {hold_start - loads[0].t0:.0f} s after start "
          f"({', '.join(f'{l.tenant}: {s - l.t0:.0f} s' if s else f'{l.tenant}: not holding' for l, s in zip(loads, starts))})",
          file=sys.stderr, flush=True)
    if phase == "flood":
        f = args.flood_tenant
        left = args.duration - (time.monotonic() - hold_start) - args.flood_margin
        if left < 5:
            print("[flood] no time left in the hold for a flood (raise --duration)", file=sys.stderr)
        else:
            if args.flood_connections and args.flood_command_rate:
                cmd = load_cmd(args, addr, f, 200, args.flood_connections, args.flood_connections, left,
                               ["--channels", str(args.flood_connections), "--subscriptions-per-connection", "1",
                                "--channel-prefix", "flood:", "--publish-via", "client",
                                "--publish-rate", f"{args.flood_command_rate:g}/s", "--reconnect"])
                loads.append(Load(f"flood-{f}-commands", f, "command flood", cmd, workdir, children, sampler,
                                  nice=args.flood_nice, idle=args.flood_idle))
            if args.storm_connections:
                cmd = load_cmd(args, addr, f, 210, args.storm_connections, args.storm_rate, left,
                               ["--channels", str(args.storm_connections), "--subscriptions-per-connection", "1",
                                "--channel-prefix", "flood:", "--reconnect"])
                loads.append(Load(f"flood-{f}-storm", f, "connection storm", cmd, workdir, children, sampler,
                                  nice=args.flood_nice, idle=args.flood_idle))
            print(f"[flood] tenant {f}: {len(loads) - len(tenants)} flood loads for {left:.0f} s",
                  file=sys.stderr, flush=True)
    hold_end = hold_start + args.duration
    # Bounded: the hold, the drain and close waits (20 s each), slack.
    deadline = hold_end + 120
    for l in loads:
        try:
            l.proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[{phase}] {l.name} past its deadline: killed", file=sys.stderr)
            os.killpg(l.proc.pid, signal.SIGKILL)
            l.proc.wait()
    ends = [l.phase_start("drain") for l in loads[:len(tenants)]]
    if all(ends):
        hold_end = min(ends)
    return loads, hold_start, hold_end


def summarize(phase, loads, hold_start, hold_end, sampler, args, shares, phase_start, phase_end):
    rows = []
    m0, m1 = sampler.near(hold_start), sampler.near(hold_end)
    p0, p1 = sampler.near(phase_start), sampler.near(phase_end)
    win = max(1e-9, (m1["t"] - m0["t"])) if m0 and m1 else None
    for l in loads:
        r = l.report()
        prog = [p for p in l.progress() if hold_start <= p["t"] <= hold_end and p["phase"] == "hold"]
        opens = [p["open"] for p in prog]
        row = {"phase": phase, "tenant": l.tenant, "load": l.role, "connections": shares.get(l.tenant) if l.role == "steady"
               else (args.flood_connections if l.role == "command flood" else args.storm_connections),
               "exit": l.proc.returncode}
        if opens:
            row["held_mean"] = round(sum(opens) / len(opens))
            row["held_min"] = min(opens)
        if r:
            c = r["centrifugo"]
            d, lat = c["deliveries"], c["latency_us"]
            ps = max(c["publish_s"], 1e-9)
            row.update(
                established=r["connections"]["established"], failed=r["connections"]["failed"],
                reconnects=r["connections"]["reconnects"], retry_failed=r["connections"]["retry_failed"],
                cycles=c["recovery"]["cycles"], cycles_per_s=round(c["recovery"]["cycles"] / ps, 1),
                publications_per_s=c["publications"]["per_s"], publications_ok=c["publications"]["ok"],
                publications_failed=c["publications"]["failed"], deliveries=d["total"], expected=d["expected"],
                missing=d["missing"], deliveries_per_s=d["per_s"], gaps=d["gaps"], duplicates=d["duplicates"],
                recovered=c["recovery"]["recovered"], not_recovered=c["recovery"]["not_recovered"],
                p50_ms=lat["p50"] / 1000, p99_ms=lat["p99"] / 1000, p999_ms=lat["p999"] / 1000,
                max_ms=lat["max"] / 1000, api_p99_ms=c["api_request_us"]["p99"] / 1000,
                drops=r["drops"]["total"], drops_by_code=r["drops"]["by_code"],
                drops_ramp=r["drops"]["by_phase"]["ramp"], drops_hold=r["drops"]["by_phase"]["hold"],
                api_p50_ms=c["api_request_us"]["p50"] / 1000, handshake_p99_ms=r["handshake_us"]["p99"] / 1000, errors_by_code=c["errors_by_code"],
                connect_errors=r.get("errors", {}), load_peak_rss_mib=r.get("peak_rss_mib"))
            if prog:
                row["conn_per_s_mean"] = round(sum(p["conn_s"] for p in prog) / len(prog), 1)
        cpu0, cpu1 = sampler.cpu_at(None, hold_start, l.name), sampler.cpu_at(None, hold_end, l.name)
        if cpu0 is not None and cpu1 is not None:
            row["load_cpu_cores"] = round((cpu1 - cpu0) / max(hold_end - hold_start, 1e-9), 2)
        if l.role == "steady" and m0 and m1:
            row["server_deliveries_per_s"] = round(
                (metric(m1["metrics"], "tether_gateway_deliveries_total", tenant=l.tenant)
                 - metric(m0["metrics"], "tether_gateway_deliveries_total", tenant=l.tenant)) / win)
        if l.role == "steady" and p0 and p1:
            rej = {}
            for (n, lab), v in p1["metrics"].items():
                if n == "tether_gateway_rejections_total" and ("tenant", l.tenant) in lab:
                    reason = dict(lab)["reason"]
                    dv = v - p0["metrics"].get((n, lab), 0)
                    if dv:
                        rej[reason] = int(dv)
            row["rejections"] = rej
            closes = {}
            for (n, lab), v in p1["metrics"].items():
                if n == "tether_gateway_closes_total" and ("tenant", l.tenant) in lab:
                    dv = v - p0["metrics"].get((n, lab), 0)
                    if dv:
                        closes[dict(lab)["code"]] = int(dv)
            row["server_closes"] = closes
        rows.append(row)
    # tetherd over the hold.
    pts = [(s["t"], s["rss_kib"] / 1024) for s in sampler.samples
           if s["rss_kib"] and hold_start + min(args.rss_warmup, (hold_end - hold_start) / 3) <= s["t"] <= hold_end]
    all_pts = [(s["t"], s["rss_kib"] / 1024) for s in sampler.samples if s["rss_kib"] and hold_start <= s["t"] <= hold_end]
    slope = fit_slope(pts)
    slope_all = fit_slope(all_pts)
    srv0, srv1 = sampler.cpu_at("server_cpu_s", hold_start), sampler.cpu_at("server_cpu_s", hold_end)
    mach = [s["machine"] for s in sampler.samples if hold_start <= s["t"] <= hold_end]
    span = max(1, mach[-1][2] - mach[0][2]) if len(mach) > 1 else None
    busy = (mach[-1][0] - mach[0][0]) / span if span else None
    niced = (mach[-1][1] - mach[0][1]) / span if span else None
    server = {
        "phase": phase, "hold_s": round(hold_end - hold_start, 1),
        "rss_hold_start_mib": round(all_pts[0][1], 1) if all_pts else None,
        "rss_hold_end_mib": round(all_pts[-1][1], 1) if all_pts else None,
        "rss_fit_from_s": round(pts[0][0] - hold_start) if pts else None,
        "rss_slope_mib_per_h": round(slope * 3600, 1) if slope is not None else None,
        "rss_slope_whole_hold_mib_per_h": round(slope_all * 3600, 1) if slope_all is not None else None,
        "rss_samples": len(pts),
        "server_cpu_cores": round((srv1 - srv0) / max(hold_end - hold_start, 1e-9), 2)
        if srv0 is not None and srv1 is not None else None,
        "machine_busy_pct": round(100 * busy, 1) if busy is not None else None,
        "machine_niced_pct": round(100 * niced, 1) if niced is not None else None,
        "open_connections_mean": None,
    }
    opens = [metric(s["metrics"], "tether_connections_open", shard="total") for s in sampler.samples
             if s.get("metrics") and hold_start <= s["t"] <= hold_end]
    if opens:
        server["open_connections_mean"] = round(sum(opens) / len(opens))
        server["open_connections_min"] = round(min(opens))
    scrapes = [s["scrape_s"] for s in sampler.samples if hold_start <= s["t"] <= hold_end]
    if scrapes:
        server["metrics_scrape_max_s"] = round(max(scrapes), 2)
    return rows, server


def fmt_codes(d):
    return ",".join(f"{k}:{v}" for k, v in sorted(d.items())) if d else "0"


def tables(rows, servers):
    head = ["phase", "tenant", "load", "connections", "held mean/min", "reconnects/s", "pub/s", "deliveries/s (client / server)",
            "p50 / p99 / p99.9 ms", "GAPS", "DUPS", "missing", "drops by code (ramp / hold)", "failed (re)connects",
            "server rejections", "load CPU cores"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["phase"], r["tenant"], r["load"], f"{r['connections']:,}",
                 f"{r.get('held_mean', '-'):,} / {r.get('held_min', '-'):,}" if "held_mean" in r else "-",
                 str(r.get("cycles_per_s", "-")) + (f" ({r['conn_per_s_mean']} opens/s)" if "conn_per_s_mean" in r else ""),
                 str(r.get("publications_per_s", "-")) + (f" (API p50 {r['api_p50_ms']:.1f} ms)" if r["load"] == "steady" and "api_p50_ms" in r else ""),
                 f"{r.get('deliveries_per_s', '-')} / {r.get('server_deliveries_per_s', '-')}",
                 f"{r.get('p50_ms', '-')} / {r.get('p99_ms', '-')} / {r.get('p999_ms', '-')}" if "p50_ms" in r else "-",
                 str(r.get("gaps", "-")), str(r.get("duplicates", "-")), str(r.get("missing", "-")),
                 fmt_codes(r.get("drops_by_code", {})) + (f" ({r['drops_ramp']} / {r['drops_hold']})" if "drops_ramp" in r else ""),
                 f"{r.get('failed', 0)} / {r.get('retry_failed', 0)}",
                 fmt_codes(r.get("rejections", {})) if r["load"] == "steady" else "(tenant row)",
                 str(r.get("load_cpu_cores", "-"))]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    head = ["phase", "hold s", "RSS hold start -> end MiB", "RSS slope MiB/h (from s)", "slope whole hold MiB/h",
            "tetherd CPU cores", "machine busy % (niced: other jobs)", "open conns mean/min", "max /metrics scrape s"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in servers:
        out.append("| " + " | ".join(str(x) for x in [
            s["phase"], s["hold_s"], f"{s['rss_hold_start_mib']} -> {s['rss_hold_end_mib']}",
            f"{s['rss_slope_mib_per_h']} ({s['rss_fit_from_s']})", s["rss_slope_whole_hold_mib_per_h"],
            s["server_cpu_cores"], f"{s['machine_busy_pct']} ({s['machine_niced_pct']})",
            f"{s['open_connections_mean']} / {s.get('open_connections_min')}", s.get("metrics_scrape_max_s")]) + " |")
    return "\n".join(out) + "\n"


def main():
    global BIN_DIR
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=200_000, help="steady connections over all tenants")
    ap.add_argument("--duration", type=duration_s, default=3600.0, help="hold of each phase (e.g. 300s, 1h)")
    ap.add_argument("--reconnects-per-second", type=rate, default=2000.0,
                    help="churn over all tenants: each connection closes and recovers once per connections/rate s")
    ap.add_argument("--tenants", default="a,b,c")
    ap.add_argument("--flood-tenant", default=None, help="default: the last of --tenants")
    ap.add_argument("--phases", default="baseline,flood")
    ap.add_argument("--publish-rate", type=rate, default=500.0, help="API publications/s per tenant")
    ap.add_argument("--publish-concurrency", type=int, default=32,
                    help="API publisher threads per tenant; each waits for its answer, so rate <= threads / API latency")
    ap.add_argument("--subscriptions-per-connection", type=int, default=2)
    ap.add_argument("--subscribers-per-channel", type=int, default=20)
    ap.add_argument("--history-size", type=int, default=20)
    ap.add_argument("--history-ttl", default="60s")
    ap.add_argument("--ramp-rate", type=rate, default=4000.0, help="new connections/s during the ramps, all tenants")
    ap.add_argument("--flood-connections", type=int, default=2000, help="command flood clients (0: none)")
    ap.add_argument("--flood-command-rate", type=rate, default=40000.0, help="their publish commands/s in all")
    ap.add_argument("--flood-command-rate-limit", type=int, default=10, help="flood tenant's client.command_rate_limit")
    ap.add_argument("--flood-publication-rate-limit", type=int, default=500,
                    help="flood tenant's client.publication_rate_limit: its clients' publications per second in all "
                         "(0: none; then its command flood publishes up to connections x command_rate_limit)")
    ap.add_argument("--flood-command-rate-burst", type=int, default=32,
                    help="its client.command_rate_burst (above its client.channel_limit, set to 16)")
    ap.add_argument("--storm-connections", type=int, default=5000, help="connection storm clients (0: none)")
    ap.add_argument("--storm-rate", type=rate, default=2000.0,
                    help="their new connections/s; each closed (3504) or refused (503) one retries after ~1 s")
    ap.add_argument("--flood-connection-rate-limit", type=int, default=3000,
                    help="flood tenant's client.connection_rate_limit (its steady ramp and churn must fit)")
    ap.add_argument("--connection-limit-margin", type=int, default=1000,
                    help="flood tenant's client.connection_limit = its share + --flood-connections + this")
    ap.add_argument("--flood-nice", type=int, default=0,
                    help="run the flood loads at this nice value (e.g. 19): on one box they then take only the CPU "
                         "tetherd and the quiet tenants' loads leave, as an attacker on another machine would")
    ap.add_argument("--flood-idle", action="store_true",
                    help="run the flood loads under SCHED_IDLE: they get a core only when nothing else (tetherd, the "
                         "quiet tenants' loads, their publishers) wants one, and a waking task preempts them at once; "
                         "closer still to an attacker on another machine than --flood-nice")
    ap.add_argument("--flood-margin", type=duration_s, default=10.0, help="flood ends this long before the hold")
    ap.add_argument("--sample-interval", type=duration_s, default=5.0)
    ap.add_argument("--rss-warmup", type=duration_s, default=90.0,
                    help="RSS slope fitted from this long into each hold (at most a third of it)")
    ap.add_argument("--health-wait", type=duration_s, default=120.0,
                    help="before each phase, wait this long at most for tetherd to answer /healthz")
    ap.add_argument("--shards", type=int, default=0, help="tetherd --shards")
    ap.add_argument("--port", type=int, default=19500)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="one more tetherd argument (repeatable), e.g. --server-arg=--http-keepalive=off")
    ap.add_argument("--max-connections", type=int, default=0,
                    help="tetherd --max-connections (0: the connections, flood clients and a quarter more); it sizes "
                         "the descriptor tables, which churn walks through in full over time")
    ap.add_argument("--delivery-hgrm", action="store_true", help="a delivery latency .hgrm per tenant and phase")
    ap.add_argument("--out", default=str(ROOT / "target/soak" / time.strftime("%Y%m%d-%H%M%S")))
    args = ap.parse_args()
    args.tenants = [t for t in args.tenants.split(",") if t]
    args.flood_tenant = args.flood_tenant or args.tenants[-1]
    if args.flood_tenant not in args.tenants:
        raise SystemExit("--flood-tenant must be one of --tenants")
    BIN_DIR = pathlib.Path(os.environ.get("BIN_DIR", ROOT / "target/release"))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(args.tenants)
    shares = {t: args.connections // n + (1 if i < args.connections % n else 0) for i, t in enumerate(args.tenants)}
    tenant_args = []
    for t in args.tenants:
        path = out / f"tenant-{t}.json"
        path.write_text(json.dumps(tenant_config(args, t, shares[t], t == args.flood_tenant), indent=1))
        tenant_args += ["--tenant", f"{t}={path}"]
    flood_total = args.flood_connections + args.storm_connections
    max_conns = args.max_connections or args.connections + flood_total + args.connections // 4 + 10_000

    children = Children()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.time()
    rows, servers, sampler, server, notes = [], [], None, None, []
    try:
        server = children.start(
            [str(BIN_DIR / "tetherd"), "--listen", f"127.0.0.1:{args.port}", *tenant_args,
             "--max-connections", str(max_conns), "--shards", str(args.shards), "--log", "warn",
             *args.server_arg],
            open(out / "tetherd.log", "w"), stdout=subprocess.PIPE)
        line = server.stdout.readline()
        if not line.startswith("tetherd listening on "):
            raise SystemExit(f"tetherd did not start: {line!r}, see {out}/tetherd.log")
        addr = line.split()[-1]
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        sampler = Sampler(server.pid, addr, args.sample_interval)
        sampler.start()
        time.sleep(max(1.0, args.sample_interval))
        rss_start = rss_kib(server.pid)
        print(f"tetherd on {addr} (pid {server.pid}), RSS {rss_start / 1024:.1f} MiB; tenants {shares}, "
              f"flood tenant {args.flood_tenant}; out {out}", file=sys.stderr, flush=True)
        for phase in [p for p in args.phases.split(",") if p]:
            if phase not in ("baseline", "flood"):
                raise SystemExit(f"unknown phase {phase}")
            # tetherd must answer before a phase starts: after the last phase's clients all closed, wait for it.
            t = time.monotonic()
            while not healthy(addr) and time.monotonic() - t < args.health_wait:
                time.sleep(2)
            waited = time.monotonic() - t
            if not healthy(addr):
                note = (f"tetherd (pid {server.pid}) did not answer /healthz for {waited:.0f} s before phase {phase} "
                        f"(after the previous phase's clients closed): phase skipped; see {out}/stuck-*.txt")
                print(note, file=sys.stderr, flush=True)
                notes.append(note)
                for task in pathlib.Path(f"/proc/{server.pid}/task").iterdir():
                    try:
                        st = (task / "stat").read_text().rsplit(")", 1)[1].split()
                        notes.append(f"  thread {task.name} {(task / 'comm').read_text().strip()}: state {st[0]} "
                                     f"utime {int(st[11]) / TICKS:.1f} s stime {int(st[12]) / TICKS:.1f} s")
                    except OSError:
                        pass
                (out / f"stuck-{phase}.txt").write_text("\n".join(notes) + "\n" + subprocess.run(
                    ["ss", "-s"], capture_output=True, text=True).stdout)
                break
            if waited > 3:
                notes.append(f"tetherd answered /healthz only {waited:.0f} s after the previous phase")
            phase_start = time.monotonic()
            loads, hs, he = run_phase(phase, args, addr, out, children, sampler, shares)
            time.sleep(args.sample_interval + 1)  # one more sample after the loads left
            phase_end = time.monotonic()
            r, s = summarize(phase, loads, hs, he, sampler, args, shares, phase_start, phase_end)
            rows += r
            servers.append(s)
            (out / f"{phase}.json").write_text(json.dumps({"rows": r, "server": s}, indent=1))
            print(tables(r, [s]), flush=True)
            if server.poll() is not None:
                raise SystemExit(f"tetherd exited ({server.returncode}) during {phase}: see {out}/tetherd.log")
            time.sleep(5)
    finally:
        if sampler:
            sampler.stop.set()
            sampler.join(10)
            (out / "samples.json").write_text(json.dumps(
                [{k: v for k, v in s.items() if k != "metrics"} | {
                    "gateway": {f"{n}{dict(l)}": v for (n, l), v in (s.get("metrics") or {}).items()
                                if n in SAMPLED_METRICS and v}}
                 for s in sampler.samples]))
        if server and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                pass
        children.kill_all()
    text = (f"soak: {args.connections:,} connections over tenants {','.join(args.tenants)} (flood tenant "
            f"{args.flood_tenant}), {args.reconnects_per_second:g} reconnects/s, {args.publish_rate:g} publications/s "
            f"per tenant, hold {args.duration:.0f} s per phase; {time.strftime('%H:%M', time.gmtime(started))}-"
            f"{time.strftime('%H:%M', time.gmtime())} UTC\n\n" + tables(rows, servers)
            + "".join(f"\n{n}" for n in notes) + ("\n" if notes else ""))
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "rows": rows,
                                                  "server": servers, "notes": notes}, indent=1, default=str))
    print(text)
    print(f"results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

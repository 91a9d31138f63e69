#!/usr/bin/env python3
"""Live heap of a running process on glibc's malloc, sampled with gdb (issue 12: the soak's RSS slope).

    benches/scripts/malloc_stats.py --pid PID --stderr-log FILE [--interval 120] [--count 10]

Every --interval seconds, attaches gdb to PID (a pause of about a second) and has the process call glibc's
malloc_stats(), which writes its arenas' totals to the process's own stderr; FILE is where that stderr goes
(tetherd.log in a soak's output folder). Prints one line per sample: UTC time, RSS, bytes the heap took from the
system and bytes in use (live allocations, every arena and mmapped chunk), and at the end the least-squares
slope of each in MiB/hour.

Only meaningful for a tetherd built on the C library's malloc (`cargo build --release -p tetherd --features
system-alloc`): mimalloc's heap is invisible to malloc_stats. Bounded by --count; needs gdb (Debian's gdb).
"""

import argparse
import pathlib
import re
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from soak import fit_slope, rss_kib  # noqa: E402  (the soak's RSS reader and least-squares fit)

TOTAL = re.compile(r"Total \(incl\. mmap\):\s*\n\s*system bytes\s*=\s*(\d+)\s*\n\s*in use bytes\s*=\s*(\d+)")


def per_hour(points):
    """The least-squares slope of (t seconds, MiB) points in MiB/hour, as text ("n/a" below 3 points)."""
    slope = fit_slope(points)
    return "n/a" if slope is None else f"{slope * 3600:.1f}"


def sample(pid, log):
    before = log.stat().st_size
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "call (void)malloc_stats()"],
                   capture_output=True, timeout=60, check=False)
    for _ in range(50):
        with open(log, "rb") as f:
            f.seek(before)
            m = TOTAL.search(f.read().decode(errors="replace"))
        if m:
            return int(m.group(1)), int(m.group(2))
        time.sleep(0.1)
    raise SystemExit(f"no malloc_stats totals appeared in {log}: is {pid}'s stderr there, and is it on glibc's malloc?")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--stderr-log", type=pathlib.Path, required=True, help="the file the process's stderr goes to")
    ap.add_argument("--interval", type=float, default=120.0)
    ap.add_argument("--count", type=int, default=10)
    args = ap.parse_args()
    start = time.monotonic()
    rss, system, in_use = [], [], []
    print("utc       elapsed_s  rss_MiB  system_MiB  in_use_MiB", flush=True)
    for i in range(args.count):
        if i:
            time.sleep(args.interval)
        sys_b, use_b = sample(args.pid, args.stderr_log)
        t = time.monotonic() - start
        r = (rss_kib(args.pid) or 0) / 1024
        rss.append((t, r))
        system.append((t, sys_b / 2**20))
        in_use.append((t, use_b / 2**20))
        print(f"{time.strftime('%H:%M:%S', time.gmtime())}  {t:9.0f}  {r:7.1f}  {sys_b / 2**20:10.1f}  "
              f"{use_b / 2**20:10.1f}", flush=True)
    print(f"slope MiB/h: rss {per_hour(rss)}, system {per_hour(system)}, in use {per_hour(in_use)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Turns criterion's results for `--bench wheel` into the BENCHMARKS.md tables (ns per operation per key).

Usage: python3 benches/scripts/wheel-table.py [target/criterion]
Reads <dir>/<operation>/<structure>/<n>/new/estimates.json; criterion's estimate is the time for all n
operations, so it is divided by n. Cells are "median (95% CI of the median)": the median, because the
project machines are shared and a sample that collided with someone else's build should not move the figure.
Missing runs are "-".
"""
import json
import os
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
OPERATIONS = ["schedule", "rearm", "cancel", "expire", "expire_after_rearm"]
STRUCTURES = [
    ("wheel", "`tether::wheel::Wheel`"),
    ("heap", "`BinaryHeap` + lazy deletion"),
    ("tokio_sleep", "tokio `Sleep` per connection"),
    ("delay_queue", "tokio-util `DelayQueue`"),
]
SIZES = [10_000, 100_000, 1_000_000]


def cell(operation, structure, n):
    path = os.path.join(ROOT, operation, structure, str(n), "new", "estimates.json")
    try:
        with open(path) as f:
            median = json.load(f)["median"]
    except FileNotFoundError:
        return "-"
    low = median["confidence_interval"]["lower_bound"] / n
    high = median["confidence_interval"]["upper_bound"] / n
    return f"{median['point_estimate'] / n:.1f} ({low:.1f}-{high:.1f})"


for operation in OPERATIONS:
    print(f"#### {operation} (ns per key; median, 95% CI)\n")
    print("| structure | " + " | ".join(f"{n:,}" for n in SIZES) + " |")
    print("| --- |" + " ---: |" * len(SIZES))
    for structure, label in STRUCTURES:
        print(f"| {label} | " + " | ".join(cell(operation, structure, n) for n in SIZES) + " |")
    print()

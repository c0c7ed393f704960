#!/usr/bin/env python3
"""A/B of two or more quorumkv builds or settings, each on a fresh 3-node cluster.

For every round, each variant gets a fresh cluster (started as bench/compare.py starts its
quorumkv cluster), and every cell runs on it with a short warm-up; variants alternate order
round by round so drift in machine speed cancels out. Prints each run, then per cell the
median ops/s, p50, p99 and server CPU per op (all members, from /proc), with ratios against the
first variant. No etcd involved; every run is bounded.

    python3 bench/ab.py --variant base=/tmp/quorumkv-old --variant new=target/release/quorumkv
    python3 bench/ab.py --variant readindex=target/release/quorumkv \\
        --variant lease=target/release/quorumkv,QUORUMKV_LEASE_READS=true --cells get:64,get:1

A variant is NAME=BINARY[,ENV=VALUE...]: the environment is set for its servers only (every
server setting has a QUORUMKV_* variable). The first variant's binary is the load generator.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def parse_variant(text):
    name, rest = text.split("=", 1)
    binary, *env = rest.split(",")
    return name, binary, dict(e.split("=", 1) for e in env)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="NAME=BINARY[,ENV=VALUE...]")
    ap.add_argument("--cells", default="put:64,get:64,put:1", help="WORKLOAD:CLIENTS,...")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=33379)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    cells = [(w, int(n)) for w, n in (c.split(":") for c in args.cells.split(","))]
    load_generator = variants[0][1]
    results = {}
    for rnd in range(args.rounds):
        for name, binary, env in variants if rnd % 2 == 0 else list(reversed(variants)):
            saved = dict(os.environ)
            os.environ.update(env)
            workdir = tempfile.mkdtemp(prefix="qkv-ab-")
            try:
                cluster = compare.start_quorumkv(binary, workdir, args.base_port)
            finally:
                os.environ.clear()
                os.environ.update(saved)
            try:
                compare.wait_ready(load_generator, cluster)
                for workload, clients in cells:
                    r = compare.measure(load_generator, cluster, workload, clients, args.duration)
                    results.setdefault((workload, clients, name), []).append(r)
                    print(f"round {rnd} {name:>10} {workload}×{clients}: {r['ops_per_sec']:>9,.0f} ops/s "
                          f"p50 {r['latency_ms_p50']:.2f} ms  p99 {r['latency_ms_p99']:.2f} ms  "
                          f"cpu {r['cpu_us_per_op']:.0f} µs/op", flush=True)
            finally:
                cluster.stop()
                shutil.rmtree(workdir, ignore_errors=True)
    print("== medians")
    for workload, clients in cells:
        base = None
        for name, _, _ in variants:
            rs = results[(workload, clients, name)]
            ops = statistics.median(r["ops_per_sec"] for r in rs)
            cpu = statistics.median(r["cpu_us_per_op"] for r in rs)
            p50 = statistics.median(r["latency_ms_p50"] for r in rs)
            p99 = statistics.median(r["latency_ms_p99"] for r in rs)
            base = base or (ops, cpu)
            print(f"{workload}×{clients:<4} {name:>10}: {ops:>9,.0f} ops/s ({ops / base[0]:.2f}×)  "
                  f"p50 {p50:.2f} ms  p99 {p99:.2f} ms  cpu {cpu:.0f} µs/op ({cpu / base[1]:.2f}×)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side benchmark of quorumkv and etcd on this machine, with the same client.

Starts a 3-member etcd cluster (Debian's etcd-server, installed if absent) and a 3-node
quorumkv cluster on loopback, both fsyncing before they acknowledge; runs the same matrix on
both with `quorumkv bench` (an etcd v3 API client), alternating systems cell by cell; measures
server CPU time per operation from /proc (all members together) and the load generator's
own CPU per operation (it shares the cores); prints one table with the
quorumkv/etcd ratio per row and writes it as JSON and as an HTML page with a bar chart.

Everything it starts is stopped at the end, also on error or Ctrl-C. Every run is bounded.

    python3 bench/compare.py                      # the default matrix, 10 s per cell
    python3 bench/compare.py --duration 5 --clients 1,64 --workloads put
    python3 bench/compare.py --workloads get --quorumkv-flags "--lease-reads true"
"""

import argparse
import html
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_etcd():
    if shutil.which("etcd"):
        return shutil.which("etcd")
    for p in ("/usr/bin/etcd", "/usr/sbin/etcd"):
        if os.path.exists(p):
            return p
    log("etcd not found: installing Debian's etcd-server")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True, env=env)
    return shutil.which("etcd") or "/usr/bin/etcd"


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of the whole line (12 and 13 after the name).
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


class Cluster:
    def __init__(self, name):
        self.name = name
        self.procs = []
        self.endpoints = []
        self.logs = []

    def pids(self):
        return [p.pid for p in self.procs]

    def cpu(self):
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()
        self.procs = []


def start_etcd(etcd, workdir, base):
    c = Cluster("etcd")
    peers = ",".join(f"e{i}=http://127.0.0.1:{base + 10 * i + 1}" for i in range(3))
    for i in range(3):
        cport, pport = base + 10 * i, base + 10 * i + 1
        logf = open(os.path.join(workdir, f"etcd{i}.log"), "w")
        c.logs.append(logf)
        c.procs.append(subprocess.Popen(
            [etcd, "--name", f"e{i}", "--data-dir", os.path.join(workdir, f"etcd{i}"),
             "--listen-client-urls", f"http://127.0.0.1:{cport}",
             "--advertise-client-urls", f"http://127.0.0.1:{cport}",
             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-cluster", peers, "--initial-cluster-state", "new",
             "--initial-cluster-token", "bench", "--log-level", "warn"],
            stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, ETCD_UNSUPPORTED_ARCH="amd64")))
        c.endpoints.append(f"127.0.0.1:{cport}")
    return c


def start_quorumkv(qkv, workdir, base, flags=()):
    c = Cluster("quorumkv")
    initial = ",".join(f"{i + 1}=127.0.0.1:{base + 10 * i + 1}" for i in range(3))
    for i in range(3):
        cport = base + 10 * i
        logf = open(os.path.join(workdir, f"quorumkv{i}.log"), "w")
        c.logs.append(logf)
        c.procs.append(subprocess.Popen(
            [qkv, "server", "--id", str(i + 1), "--name", f"q{i + 1}",
             "--data-dir", os.path.join(workdir, f"quorumkv{i}"),
             "--client-addr", f"127.0.0.1:{cport}", "--peer-addr", f"127.0.0.1:{cport + 1}",
             "--http-addr", f"127.0.0.1:{cport + 2}", "--initial-cluster", initial,
             "--log-format", "json", "--log-level", "warn", *flags],
            stdout=logf, stderr=subprocess.STDOUT))
        c.endpoints.append(f"127.0.0.1:{cport}")
    return c


def bench(qkv, cluster, workload, clients, duration, warmup, extra=()):
    args = [qkv, "bench", "--endpoints", ",".join(cluster.endpoints), "--leader-only",
            "--workload", workload, "--clients", str(clients),
            "--connections", str(min(max(1, clients // 4), 16)),
            "--duration", str(duration), "--warmup", str(warmup), "--keys", "10000",
            "--value-size", "256", "--json", "--label", cluster.name, *extra]
    # The load generator's own CPU (user + system), from the rusage of waited-for children:
    # it shares the machine's cores with the servers, so it bounds what any server can reach.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(args, capture_output=True, text=True, timeout=duration + warmup + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"bench against {cluster.name} failed: {r.stderr.strip()[-500:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    client_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out["client_cpu_us_per_op"] = client_s * 1e6 / max(1, out.get("ops", 0))
    return out


def wait_ready(qkv, cluster, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            bench(qkv, cluster, "put", 1, 0.2, 0)
            return
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
            for p in cluster.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{cluster.name} member exited (code {p.returncode}); see its log")
            time.sleep(0.5)
    raise RuntimeError(f"{cluster.name} did not become ready within {timeout} s")


def measure(qkv, cluster, workload, clients, duration):
    bench(qkv, cluster, workload, clients, min(2.0, duration), 0)  # warm-up, discarded
    before = cluster.cpu()
    r = bench(qkv, cluster, workload, clients, duration, 0)
    r["cpu_us_per_op"] = (cluster.cpu() - before) * 1e6 / max(1, r["ops"])
    return r


def render_html(rows, machine, command):
    bars = []
    width = 560
    for i, row in enumerate(rows):
        e, q = row["etcd"]["ops_per_sec"], row["quorumkv"]["ops_per_sec"]
        top = max(e, q, 1)
        y = 30 + i * 60
        bars.append(f'<text x="0" y="{y + 12}" font-size="12">{html.escape(row["name"])}</text>')
        bars.append(f'<rect x="170" y="{y}" width="{width * e / top:.0f}" height="18" fill="#9aa7b8"/>')
        bars.append(f'<text x="{175 + width * e / top:.0f}" y="{y + 13}" font-size="11">etcd {e:,.0f}/s</text>')
        bars.append(f'<rect x="170" y="{y + 22}" width="{width * q / top:.0f}" height="18" fill="#2f7d4f"/>')
        bars.append(f'<text x="{175 + width * q / top:.0f}" y="{y + 35}" font-size="11">quorumkv {q:,.0f}/s ({q / max(e, 1e-9):.2f}×)</text>')
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{40 + 60 * len(rows)}">{"".join(bars)}</svg>'
    table = "".join(
        f"<tr><td>{html.escape(r['name'])}</td>"
        f"<td>{r['etcd']['ops_per_sec']:,.0f}</td><td>{r['quorumkv']['ops_per_sec']:,.0f}</td><td>{r['ratio_ops']:.2f}</td>"
        f"<td>{r['etcd']['latency_ms_p50']:.2f}</td><td>{r['quorumkv']['latency_ms_p50']:.2f}</td>"
        f"<td>{r['etcd']['latency_ms_p99']:.2f}</td><td>{r['quorumkv']['latency_ms_p99']:.2f}</td>"
        f"<td>{r['etcd']['cpu_us_per_op']:.0f}</td><td>{r['quorumkv']['cpu_us_per_op']:.0f}</td><td>{r['ratio_cpu']:.2f}</td>"
        f"<td>{r['etcd']['client_cpu_us_per_op']:.0f}</td><td>{r['quorumkv']['client_cpu_us_per_op']:.0f}</td></tr>"
        for r in rows)
    return f"""<!doctype html><meta charset="utf-8"><title>quorumkv vs etcd</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style>
<h1>quorumkv vs etcd, same machine, same client</h1>
<p>{html.escape(machine)}<br><code>{html.escape(command)}</code></p>
{svg}
<table><tr><th>cell</th><th>etcd ops/s</th><th>quorumkv ops/s</th><th>ratio</th><th>etcd p50 ms</th><th>qkv p50 ms</th>
<th>etcd p99 ms</th><th>qkv p99 ms</th><th>etcd CPU µs/op</th><th>qkv CPU µs/op</th><th>CPU ratio</th>
<th>client CPU µs/op (etcd run)</th><th>client CPU µs/op (qkv run)</th></tr>{table}</table>
<p>Server CPU is all three members together; client CPU is the load generator's, which runs on
the same cores.</p>"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quorumkv", default=os.path.join(ROOT, "target", "release", "quorumkv"),
                    help="the quorumkv binary (default: target/release/quorumkv, built if missing)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    ap.add_argument("--clients", default="1,16,64,256")
    ap.add_argument("--workloads", default="put,get")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--quorumkv-flags", default="",
                    help="extra flags for every quorumkv server, e.g. \"--lease-reads true\" "
                         "(linearizable reads from the leader's lease instead of a ReadIndex round)")
    args = ap.parse_args()

    if not os.path.exists(args.quorumkv):
        log("building quorumkv (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "quorumkv"], cwd=ROOT, check=True)
    etcd = ensure_etcd()
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="qkv-compare-")
    clusters = []
    rows = []
    try:
        etcd_c = start_etcd(etcd, workdir, 31379)
        clusters.append(etcd_c)
        qkv_c = start_quorumkv(args.quorumkv, workdir, 32379, shlex.split(args.quorumkv_flags))
        clusters.append(qkv_c)
        wait_ready(args.quorumkv, etcd_c)
        wait_ready(args.quorumkv, qkv_c)
        for workload in args.workloads.split(","):
            for clients in [int(c) for c in args.clients.split(",")]:
                name = f"{workload} ×{clients}"
                log(f"cell {name}")
                # Alternate which system goes first, so drift in machine speed cancels out.
                order = [etcd_c, qkv_c] if len(rows) % 2 == 0 else [qkv_c, etcd_c]
                res = {c.name: measure(args.quorumkv, c, workload, clients, args.duration) for c in order}
                row = {"name": name, "workload": workload, "clients": clients, **res}
                row["ratio_ops"] = res["quorumkv"]["ops_per_sec"] / max(res["etcd"]["ops_per_sec"], 1e-9)
                row["ratio_p50"] = res["quorumkv"]["latency_ms_p50"] / max(res["etcd"]["latency_ms_p50"], 1e-9)
                row["ratio_cpu"] = res["quorumkv"]["cpu_us_per_op"] / max(res["etcd"]["cpu_us_per_op"], 1e-9)
                rows.append(row)
    finally:
        for c in clusters:
            c.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    machine = f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; 3 members each on loopback, fsync on"
    if args.quorumkv_flags:
        machine += f"; quorumkv servers run with {args.quorumkv_flags}"
    command = "python3 bench/compare.py " + " ".join(sys.argv[1:])
    print(f"{'cell':<12} {'etcd ops/s':>11} {'qkv ops/s':>11} {'ratio':>6} {'etcd p50':>9} {'qkv p50':>8} {'etcd p99':>9} {'qkv p99':>8} {'etcd µs/op':>10} {'qkv µs/op':>9} {'cpu ratio':>9} {'client µs/op':>13}")
    for r in rows:
        e, q = r["etcd"], r["quorumkv"]
        print(f"{r['name']:<12} {e['ops_per_sec']:>11,.0f} {q['ops_per_sec']:>11,.0f} {r['ratio_ops']:>6.2f} "
              f"{e['latency_ms_p50']:>9.2f} {q['latency_ms_p50']:>8.2f} {e['latency_ms_p99']:>9.2f} {q['latency_ms_p99']:>8.2f} "
              f"{e['cpu_us_per_op']:>10.0f} {q['cpu_us_per_op']:>9.0f} {r['ratio_cpu']:>9.2f} "
              f"{e['client_cpu_us_per_op']:>6.0f}/{q['client_cpu_us_per_op']:<6.0f}")
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump({"machine": machine, "command": command, "rows": rows}, f, indent=2)
    with open(os.path.join(args.out, "compare.html"), "w") as f:
        f.write(render_html(rows, machine, command))
    log(f"wrote {args.out}/compare.json and compare.html")


if __name__ == "__main__":
    main()

//! A few-second smoke run of `quorumkv bench` against the demo cluster: every workload gets
//! answers, the JSON report is complete, and a cluster that is not there is an error. Speed is
//! not asserted here (see bench/compare.py); only that the tool measures something real.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "bounded_run/mod.rs"]
mod bounded_run;
use bounded_run::poll_until;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGINT, as Ctrl-C would send: the demo stops its nodes; a kill as a fallback.
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        if poll_until(Duration::from_secs(10), POLL, || matches!(self.0.try_wait(), Ok(Some(_)))) {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(100);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_quorumkv")
}

/// Starts the demo on free ports and waits until it reports a leader; returns the endpoints.
fn start_demo(dir: &std::path::Path) -> (Demo, String) {
    // The demo uses base + 10·(i-1) (+1, +2) for node i: find a base whose 23 ports are free.
    let base = (0..50)
        .map(|_| quorumkv_node::ports::free_loopback_port().expect("a port"))
        .find(|&b| {
            b < 60_000 && (0..23).all(|d| std::net::TcpListener::bind(("127.0.0.1", b + d)).is_ok())
        })
        .expect("a free run of ports");
    let mut child = Command::new(bin())
        .args(["demo", "--exit-after", "120", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("cluster is up") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the demo cluster came up");
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", base + 10 * i)).collect::<Vec<_>>();
    (demo, endpoints.join(","))
}

fn bench(endpoints: &str, extra: &[&str]) -> Value {
    let out = Command::new(bin())
        .args(["bench", "--endpoints", endpoints, "--duration", "2", "--warmup", "0.5"])
        .args(["--clients", "8", "--keys", "100", "--json"])
        .args(extra)
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "bench {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("bench --json: {e}: {text}"))
}

#[test]
fn bench_measures_every_workload_against_the_demo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_demo, endpoints) = start_demo(dir.path());
    for extra in [
        &["--workload", "put", "--preload"][..],
        &["--workload", "get"][..],
        &["--workload", "get", "--consistency", "serializable"][..],
        &["--workload", "mixed", "--read-ratio", "0.9", "--key-dist", "zipf"][..],
        &["--workload", "txn-cas"][..],
        &["--workload", "put", "--rate", "200"][..],
    ] {
        let r = bench(&endpoints, extra);
        let ops = r["ops"].as_u64().unwrap_or(0);
        assert!(ops > 0, "{extra:?}: {r}");
        let p50 = r["latency_ms_p50"].as_f64().unwrap_or(0.0);
        let p99 = r["latency_ms_p99"].as_f64().unwrap_or(0.0);
        let max = r["latency_ms_max"].as_f64().unwrap_or(0.0);
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{extra:?}: percentiles out of order: {r}");
        assert!((r["ops_per_sec"].as_f64().unwrap_or(0.0) - ops as f64 / 2.0).abs() < 1.0);
    }
}

/// The pids of `quorumkv server` processes whose data folder is under `dir`.
fn servers_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie =
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && cmdline.contains(" server ") && cmdline.contains(&needle) {
            pids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

#[test]
fn the_demo_stops_its_nodes_on_sigint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (demo, _) = start_demo(dir.path());
    assert_eq!(servers_under(dir.path()).len(), 3, "three nodes run");
    drop(demo);
    let stopped =
        poll_until(Duration::from_secs(10), POLL, || servers_under(dir.path()).is_empty());
    assert!(stopped, "nodes left running: {:?}", servers_under(dir.path()));
}

#[test]
fn bench_against_no_cluster_is_a_clear_error() {
    let port = quorumkv_node::ports::free_loopback_port().expect("a port");
    let out = Command::new(bin())
        .args(["bench", "--endpoints", &format!("127.0.0.1:{port}"), "--duration", "1"])
        .output()
        .expect("run bench");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
}

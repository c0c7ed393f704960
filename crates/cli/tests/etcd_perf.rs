//! `etcdctl check perf --load=s` against a 3-node quorumkv cluster: 60 s of 150 writes/s
//! from 50 clients (256-byte keys, 1 KiB values). etcdctl judges the run itself (throughput
//! within 90 % of the target, slowest request under 0.5 s, deviation under 0.1 s); the test
//! adds no timing assertion of its own.

mod etcd_support;

use std::time::Duration;

use etcd_support::{Cluster, lines, run_bounded, wait_until};

#[test]
fn check_perf_small_load_passes() {
    let c = Cluster::start(3);
    let run = run_bounded(
        c.etcdctl_cmd(&c.endpoints(), &["check", "perf", "--load=s"]),
        "",
        Duration::from_secs(240),
    );
    let out = lines(&run.stdout);
    assert_eq!(run.code, Some(0), "check perf failed: {run:?}");
    assert_eq!(out.last().map(String::as_str), Some("PASS"), "{run:?}");
    assert!(out.iter().any(|l| l.starts_with("PASS: Throughput is")), "{run:?}");
    eprintln!("etcdctl check perf --load=s:\n{}", out.join("\n"));
    // etcdctl deletes what it wrote. (Retried: right after the run the store may be taking
    // a snapshot, and a leader change answers "no leader" for a moment.)
    let mut left = None;
    wait_until(Duration::from_secs(30), "a read of the check's prefix", || {
        let r = c.etcdctl(&["get", "--prefix", "/etcdctl-check-perf/", "--keys-only"]);
        left = (r.code == Some(0)).then(|| lines(&r.stdout).len());
        left.is_some()
    });
    assert_eq!(left, Some(0), "keys left behind");
}

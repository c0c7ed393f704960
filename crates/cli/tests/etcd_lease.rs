//! etcdctl's lease commands against a 3-node quorumkv cluster: grant, put --lease,
//! timetolive, list, keep-alive (through a follower), revoke, and expiry.

mod etcd_support;

use std::time::Duration;

use etcd_support::{Cluster, lines, wait_until};

/// The hex lease id out of "lease 694d77aa9e38260f granted with TTL(30s)".
fn granted_id(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        words.len() >= 3 && words[0] == "lease" && words[2] == "granted",
        "unexpected grant output: {out}"
    );
    words[1].to_string()
}

fn exists(c: &Cluster, key: &str) -> bool {
    !lines(&c.etcdctl(&["get", key]).ok()).is_empty()
}

#[test]
fn grant_attach_timetolive_list_keepalive_revoke() {
    let c = Cluster::start(3);
    let (li, fi) = c.leader_and_follower();
    let follower = c.nodes[fi].endpoint();
    let leader = c.nodes[li].endpoint();

    // Granted through a follower (forwarded to the leader).
    let out = c.etcdctl_at(&follower, &["lease", "grant", "60"]).ok();
    let id = granted_id(&out);
    assert_eq!(out.trim(), format!("lease {id} granted with TTL(60s)"));
    let lease_flag = format!("--lease={id}");
    c.etcdctl(&["put", "l/a", "1", &lease_flag]).ok();
    c.etcdctl(&["put", "l/b", "2", &lease_flag]).ok();

    // timetolive from a follower: the leader's clock answers.
    let out = c.etcdctl_at(&follower, &["lease", "timetolive", &id, "--keys"]).ok();
    assert!(out.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")), "{out}");
    assert!(out.trim().ends_with("attached keys([l/a l/b])"), "{out}");
    let remaining: i64 = out
        .split("remaining(")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    assert!((50..=60).contains(&remaining), "remaining {remaining}s: {out}");
    let out = c.etcdctl(&["lease", "timetolive", &id]).ok();
    assert!(!out.contains("attached keys"), "{out}");

    // list: every member's table has it.
    for n in &c.nodes {
        let out = lines(&c.etcdctl_at(&n.endpoint(), &["lease", "list"]).ok());
        assert_eq!(out, ["found 1 leases", id.as_str()], "lease list on node {}", n.id);
    }

    // keep-alive once, through a follower and through the leader.
    for ep in [&follower, &leader] {
        let out = c.etcdctl_at(ep, &["lease", "keep-alive", "--once", &id]).ok();
        assert_eq!(out.trim(), format!("lease {id} keepalived with TTL(60)"));
    }

    // revoke: the keys go with it, everywhere.
    let out = c.etcdctl_at(&follower, &["lease", "revoke", &id]).ok();
    assert_eq!(out.trim(), format!("lease {id} revoked"));
    assert!(!exists(&c, "l/a") && !exists(&c, "l/b"));
    let out = c.etcdctl(&["lease", "timetolive", &id]).ok();
    assert_eq!(out.trim(), format!("lease {id} already expired"));
    assert_eq!(lines(&c.etcdctl(&["lease", "list"]).ok()), ["found 0 leases"]);

    // etcd's errors for a lease that is gone.
    let err = c.etcdctl(&["lease", "revoke", &id]).err();
    assert!(err.contains("etcdserver: requested lease not found"), "{err}");
    let err = c.etcdctl(&["put", "l/c", "3", &lease_flag]).err();
    assert!(err.contains("etcdserver: requested lease not found"), "{err}");
    // A keep-alive answered with TTL 0 is "not found" to clientv3.
    let err = c.etcdctl_at(&follower, &["lease", "keep-alive", "--once", &id]).err();
    assert!(err.contains("etcdserver: requested lease not found"), "{err}");
}

#[test]
fn keys_vanish_when_the_lease_expires_unless_kept_alive_through_a_follower() {
    let c = Cluster::start(3);
    let (_, fi) = c.leader_and_follower();
    let follower = c.nodes[fi].endpoint();

    // Kept alive through a follower, the lease outlives its TTL many times over.
    let kept = granted_id(&c.etcdctl(&["lease", "grant", "3"]).ok());
    c.etcdctl(&["put", "e/kept", "1", &format!("--lease={kept}")]).ok();
    let mut ka = c.etcdctl_background(&follower, &["lease", "keep-alive", &kept]);
    // A short-lived lease without keep-alives, for comparison.
    let lone = granted_id(&c.etcdctl(&["lease", "grant", "3"]).ok());
    c.etcdctl(&["put", "e/lone", "1", &format!("--lease={lone}")]).ok();
    assert!(exists(&c, "e/lone"));
    // clientv3 renews every TTL/3 = 1 s: eight answers take longer than two TTLs.
    let want = format!("lease {kept} keepalived with TTL(3)");
    ka.wait_for(Duration::from_secs(30), "eight keep-alive answers", |l| {
        l.iter().filter(|x| x.trim() == want).count() >= 8
    });
    wait_until(Duration::from_secs(20), "the lease without keep-alives to expire", || {
        !exists(&c, "e/lone")
    });
    assert!(exists(&c, "e/kept"), "the kept-alive lease's key is still there");
    let out = c.etcdctl(&["lease", "timetolive", &lone]).ok();
    assert_eq!(out.trim(), format!("lease {lone} already expired"));

    // Stop the keep-alives: the leader expires the lease and its key goes.
    drop(ka);
    wait_until(Duration::from_secs(20), "the lease to expire once keep-alives stop", || {
        !exists(&c, "e/kept")
    });
    let out = c.etcdctl(&["lease", "timetolive", &kept]).ok();
    assert_eq!(out.trim(), format!("lease {kept} already expired"));
}

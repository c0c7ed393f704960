//! etcdctl's cluster and maintenance commands against quorumkv: member list / add / promote
//! / remove with a fourth server process, endpoint status / health / hashkv, snapshot save,
//! and how authentication answers.

mod etcd_support;

use std::time::Duration;

use etcd_support::{Cluster, free_ports, lines, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// `member list` rows: (id hex, status, name, peer URL, client URL, is learner).
fn member_rows(c: &Cluster, endpoints: &str) -> Vec<Vec<String>> {
    lines(&c.etcdctl_at(endpoints, &["member", "list"]).ok())
        .iter()
        .map(|l| l.split(", ").map(String::from).collect())
        .collect()
}

#[test]
fn member_list_add_promote_remove_and_endpoint_status_report_truthfully() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();

    let rows = member_rows(&c, &c.endpoints());
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, n) in rows.iter().zip(&c.nodes) {
        assert_eq!(row[0], format!("{:x}", n.id));
        assert_eq!(row[1], "started");
        assert_eq!(row[2], format!("node{}", n.id));
        assert_eq!(row[3], format!("http://{}", n.peer_addr()));
        assert_eq!(row[4], format!("http://{}", n.endpoint()));
        assert_eq!(row[5], "false");
    }

    // endpoint status: every member names the same leader, and itself. (Not `--cluster`:
    // etcdctl then dials the members' `http://` URLs with the URL as the HTTP/2 authority,
    // which the server's HTTP/2 layer refuses; see the README's etcd section.)
    let out = c.etcdctl(&["endpoint", "status", "-w", "json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let list = st.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 3, "{out}");
    for e in &list {
        assert_eq!(e["Status"]["leader"].as_u64(), Some(leader), "{e}");
        let me = e["Status"]["header"]["member_id"].as_u64().unwrap_or_default();
        let ep = e["Endpoint"].as_str().unwrap_or_default();
        let node = c.nodes.iter().find(|n| n.id == me).expect("status names a member");
        assert_eq!(ep, node.endpoint());
        assert!(e["Status"]["raftIndex"].as_u64().unwrap_or_default() > 0);
    }
    // etcdctl 3.4 prints the health lines on standard error.
    let run = c.etcdctl(&["endpoint", "health", "--cluster"]);
    let health = lines(&run.stderr);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(health.len(), 3, "{health:?}");
    assert!(health.iter().all(|l| l.contains("is healthy: successfully committed proposal")));

    // Add a learner, start it, promote it once it caught up, then remove it.
    c.etcdctl(&["put", "before-join", "1"]).ok();
    let ports = free_ports(3);
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);
    let out = c
        .etcdctl(&["member", "add", "node4", &format!("--peer-urls={peer_url}"), "--learner"])
        .ok();
    let first = out.lines().next().unwrap_or_default().to_string();
    let hex = first.split_whitespace().nth(1).unwrap_or_default().to_string();
    assert!(first.starts_with("Member ") && first.contains(" added to cluster "), "{out}");
    let id = u64::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("member id in {out}"));
    let rows = member_rows(&c, &c.endpoints());
    let row = rows.iter().find(|r| r[0] == hex).unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(row[1], "unstarted", "not yet running");
    assert_eq!(row[3], peer_url);
    assert_eq!(row[5], "true", "a learner");

    // [client, peer, http]: the peer port is the one given to `member add`.
    let i = c.spawn_joining(id, [ports[0], ports[1], ports[2]]);
    let node4 = c.nodes[i].endpoint();
    wait_until(WAIT, "the new member to catch up", || {
        c.etcdctl_at(&node4, &["get", "before-join", "--consistency=s", "--print-value-only"])
            .stdout
            .trim()
            == "1"
    });
    let mut promoted = String::new();
    wait_until(WAIT, "the learner to be promoted", || {
        let r = c.etcdctl(&["member", "promote", &hex]);
        promoted = r.stdout.clone();
        r.code == Some(0)
    });
    // etcdctl prints ids as `%16x` here (space-padded), as `%x` in `member list`.
    let padded = format!("{id:16x}");
    assert!(promoted.contains(&format!("Member {padded} promoted in cluster")), "{promoted}");
    wait_until(WAIT, "member list to show four started voters", || {
        let rows = member_rows(&c, &c.endpoints());
        rows.len() == 4 && rows.iter().all(|r| r[1] == "started" && r[5] == "false")
    });
    // The new member serves writes and linearizable reads.
    assert_eq!(c.etcdctl_at(&node4, &["put", "after-join", "2"]).ok().trim(), "OK");
    assert_eq!(c.etcdctl_at(&node4, &["get", "after-join", "--print-value-only"]).ok().trim(), "2");
    let status = c.etcdctl_at(&node4, &["endpoint", "status", "-w", "json"]).ok();
    let st: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    assert_eq!(st[0]["Status"]["header"]["member_id"].as_u64(), Some(id), "{status}");

    let out = c.etcdctl_at(&c.nodes[0].endpoint(), &["member", "remove", &hex]).ok();
    assert!(out.contains(&format!("Member {padded} removed from cluster")), "{out}");
    c.remove_node(i);
    let rows = member_rows(&c, &c.endpoints());
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r[0] != hex));
    assert_eq!(c.etcdctl(&["put", "after-remove", "3"]).ok().trim(), "OK");
}

#[test]
fn hashkv_agrees_snapshot_saves_and_auth_is_off() {
    let c = Cluster::start(3);
    for i in 0..20 {
        c.etcdctl(&["put", &format!("h{i}"), &format!("v{i}")]).ok();
    }
    c.etcdctl(&["del", "h3"]).ok();
    let out = c.etcdctl(&["put", "h-last", "x", "-w", "json"]).ok();
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let rev = j["header"]["revision"].as_i64().unwrap_or_default().to_string();
    // Every member gives the same hash at that revision (once it applied it).
    let mut hashes = Vec::new();
    wait_until(WAIT, "every member to answer hashkv at the revision", || {
        hashes = c
            .nodes
            .iter()
            .map(|n| c.etcdctl_at(&n.endpoint(), &["endpoint", "hashkv", "--rev", &rev]))
            .filter(|r| r.code == Some(0))
            .map(|r| r.stdout.trim().rsplit(", ").next().unwrap_or_default().to_string())
            .collect();
        hashes.len() == 3
    });
    assert!(hashes.iter().all(|h| h == &hashes[0] && !h.is_empty()), "{hashes:?}");
    // A later write changes the hash at the new revision but not at the old one.
    c.etcdctl(&["put", "h0", "changed"]).ok();
    let again = c.etcdctl(&["endpoint", "hashkv", "--rev", &rev]).ok();
    let again: Vec<String> = lines(&again)
        .iter()
        .map(|l| l.rsplit(", ").next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|h| h == &hashes[0]), "{again:?}");
    let now = c.etcdctl_at(&c.nodes[0].endpoint(), &["endpoint", "hashkv"]).ok();
    assert!(!now.contains(&hashes[0]), "{now}");

    // snapshot save: a checksummed quorumkv snapshot file (its header frame starts at
    // byte 9 with the magic).
    let path = c.dir.join("backup.snap");
    let path_s = path.display().to_string();
    let out = c.etcdctl_at(&c.nodes[1].endpoint(), &["snapshot", "save", &path_s]).ok();
    assert!(out.contains(&format!("Snapshot saved at {path_s}")), "{out}");
    let bytes = std::fs::read(&path).unwrap_or_default();
    assert!(bytes.len() > 64, "snapshot of {} bytes", bytes.len());
    assert_eq!(&bytes[9..17], b"QKVSNAP\0");
    // etcd's envelope: a multiple of 512 bytes, then a SHA-256 (etcdctl checks the length).
    assert_eq!(bytes.len() % 512, 32);

    // Authentication is off: a client that brings a user still works (etcd's "not enabled"
    // answer), and what would manage users says it is not supported.
    assert_eq!(
        c.etcdctl(&["--user=root:secret", "get", "h1", "--print-value-only"]).ok().trim(),
        "v1"
    );
    assert_eq!(c.etcdctl(&["auth", "disable"]).ok().trim(), "Authentication Disabled");
    let err = c.etcdctl(&["user", "add", "alice", "--new-user-password=pw"]).err();
    assert!(err.contains("authentication is not supported by quorumkv yet"), "{err}");
    let err = c.etcdctl(&["auth", "enable"]).err();
    assert!(err.contains("authentication is not supported by quorumkv yet"), "{err}");
}

//! `etcdctl watch` against a 3-node quorumkv cluster: live events from other clients,
//! history replay with `--rev`, `--prev-kv`, and the compaction cancel.

mod etcd_support;

use std::time::Duration;

use etcd_support::{Background, Cluster, lines};

const WAIT: Duration = Duration::from_secs(20);

fn non_empty(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Writes `key` until the watcher prints it: then the watch is certainly registered and live.
fn until_live(c: &Cluster, w: &mut Background, key: &str) {
    for i in 0..200 {
        c.etcdctl(&["put", key, &i.to_string()]).ok();
        if w.try_wait_for(Duration::from_millis(500), |l| l.iter().any(|x| x == key)) {
            return;
        }
    }
    panic!("the watcher never saw {key}: {:?} {:?}", w.lines, w.err_lines);
}

#[test]
fn watch_prefix_sees_other_clients_writes_in_order() {
    let c = Cluster::start(3);
    let (li, fi) = c.leader_and_follower();
    // The watcher talks to a follower; the writes go to the leader: events come from the
    // follower's own applied log.
    let mut w = c.etcdctl_background(&c.nodes[fi].endpoint(), &["watch", "--prefix", "w/"]);
    until_live(&c, &mut w, "w/ready");
    let skip = non_empty(&w.lines).len();
    let leader = c.nodes[li].endpoint();
    c.etcdctl_at(&leader, &["put", "w/a", "1"]).ok();
    c.etcdctl_at(&leader, &["put", "other/x", "not watched"]).ok();
    c.etcdctl_at(&leader, &["put", "w/b", "2"]).ok();
    c.etcdctl_at(&leader, &["del", "w/a"]).ok();
    let txn = "\nput w/c 3\nput w/d 4\n\n\n";
    c.etcdctl_stdin(&leader, &["txn"], txn).ok();
    let want = [
        "PUT", "w/a", "1", "PUT", "w/b", "2", "DELETE", "w/a", "PUT", "w/c", "3", "PUT", "w/d", "4",
    ];
    w.wait_for(WAIT, "the watcher to print every event", |l| {
        non_empty(l).len() >= skip + want.len()
    });
    let got = non_empty(&w.lines)[skip..].to_vec();
    assert_eq!(got, want, "events in revision order, nothing outside the prefix, no duplicates");
}

#[test]
fn watch_rev_replays_history_with_prev_kv_and_compaction_cancels() {
    let c = Cluster::start(3);
    let first = {
        let out = c.etcdctl(&["put", "h/k", "1", "-w", "json"]).ok();
        let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        j["header"]["revision"].as_i64().unwrap_or_default()
    };
    assert!(first > 0);
    c.etcdctl(&["put", "h/k", "2"]).ok();
    c.etcdctl(&["del", "h/k"]).ok();
    c.etcdctl(&["put", "h/other", "3"]).ok();
    let rev = first.to_string();
    for n in &c.nodes {
        // Every member replays the same history.
        let mut w =
            c.etcdctl_background(&n.endpoint(), &["watch", "--prefix", "h/", "--rev", &rev]);
        let want = ["PUT", "h/k", "1", "PUT", "h/k", "2", "DELETE", "h/k", "PUT", "h/other", "3"];
        w.wait_for(WAIT, "the history", |l| non_empty(l).len() >= want.len());
        assert_eq!(non_empty(&w.lines), want, "replay from node {}", n.id);
    }
    // --prev-kv: each event also prints the pair it replaced.
    let mut w = c.etcdctl_background(&c.endpoints(), &["watch", "h/k", "--rev", &rev, "--prev-kv"]);
    let want = ["PUT", "h/k", "1", "PUT", "h/k", "1", "h/k", "2", "DELETE", "h/k", "2", "h/k"];
    w.wait_for(WAIT, "the history with previous values", |l| non_empty(l).len() >= want.len());
    assert_eq!(non_empty(&w.lines), want);
    drop(w);

    // A watch that starts below the compacted revision is canceled with etcd's reason.
    let out = c.etcdctl(&["put", "h/k", "5", "-w", "json"]).ok();
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let now = j["header"]["revision"].as_i64().unwrap_or_default();
    c.etcdctl(&["compaction", &now.to_string()]).ok();
    let mut w = c.etcdctl_background(&c.endpoints(), &["watch", "h/k", "--rev", &rev]);
    w.wait_exit(WAIT);
    let err = w.err_lines.join("\n");
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "stderr: {err}; stdout: {:?}",
        w.lines
    );
    assert!(non_empty(&w.lines).is_empty(), "no event from a compacted position");
    // From the compacted revision on, history is still there.
    let mut w = c.etcdctl_background(&c.endpoints(), &["watch", "h/k", "--rev", &now.to_string()]);
    w.wait_for(WAIT, "the event at the compacted revision", |l| non_empty(l).len() >= 3);
    assert_eq!(non_empty(&w.lines), ["PUT", "h/k", "5"]);
    assert!(lines(&c.etcdctl(&["get", "h/k", "--print-value-only"]).ok()) == ["5"]);
}

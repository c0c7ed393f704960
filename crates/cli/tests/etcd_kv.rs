//! etcdctl against a 3-node quorumkv cluster: keys, ranges, revisions, txn, compaction.

mod etcd_support;

use etcd_support::{Cluster, base64_decode, lines};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("etcdctl printed no JSON ({e}): {s}"))
}

#[test]
fn put_get_delete_ranges_revisions_and_json() {
    let c = Cluster::start(3);
    let (_, fi) = c.leader_and_follower();
    let follower = c.nodes[fi].endpoint();

    // A write sent to a follower is forwarded to the leader.
    assert_eq!(c.etcdctl_at(&follower, &["put", "a1", "v1"]).ok().trim(), "OK");
    for (k, v) in [("a2", "v2"), ("a3", "v3"), ("b1", "w1")] {
        assert_eq!(c.etcdctl(&["put", k, v]).ok().trim(), "OK");
    }
    assert_eq!(lines(&c.etcdctl(&["get", "a1"]).ok()), ["a1", "v1"]);
    assert_eq!(
        lines(&c.etcdctl(&["get", "--prefix", "a"]).ok()),
        ["a1", "v1", "a2", "v2", "a3", "v3"]
    );
    assert_eq!(lines(&c.etcdctl(&["get", "--from-key", "a3"]).ok()), ["a3", "v3", "b1", "w1"]);
    assert_eq!(
        lines(&c.etcdctl(&["get", "--prefix", "--limit", "2", "a"]).ok()),
        ["a1", "v1", "a2", "v2"]
    );
    assert_eq!(
        lines(&c.etcdctl(&["get", "--print-value-only", "--prefix", "a"]).ok()),
        ["v1", "v2", "v3"]
    );
    assert_eq!(
        lines(&c.etcdctl(&["get", "--keys-only", "--prefix", "a"]).ok()),
        ["a1", "a2", "a3"]
    );
    let j = json(&c.etcdctl(&["get", "--prefix", "a", "--limit", "1", "-w", "json"]).ok());
    assert_eq!((j["count"].as_i64(), j["more"].as_bool()), (Some(3), Some(true)), "{j}");
    // A range [a2, b1).
    assert_eq!(lines(&c.etcdctl(&["get", "a2", "b1"]).ok()), ["a2", "v2", "a3", "v3"]);
    // Sorted by modification, newest first.
    assert_eq!(
        lines(
            &c.etcdctl(&[
                "get",
                "--prefix",
                "a",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--keys-only"
            ])
            .ok()
        ),
        ["a3", "a2", "a1"]
    );
    // A serializable read on a follower sees what was committed (once it applied it).
    etcd_support::wait_until(std::time::Duration::from_secs(10), "the follower to apply", || {
        c.etcdctl_at(&follower, &["get", "b1", "--consistency=s", "--print-value-only"])
            .stdout
            .trim()
            == "w1"
    });

    // -w json: base64 keys and values, revisions, count and the header.
    let j = json(&c.etcdctl(&["get", "a1", "-w", "json"]).ok());
    let kv = &j["kvs"][0];
    assert_eq!(base64_decode(kv["key"].as_str().unwrap_or_default()), b"a1");
    assert_eq!(base64_decode(kv["value"].as_str().unwrap_or_default()), b"v1");
    assert_eq!(kv["version"], 1);
    assert_eq!(j["count"], 1);
    let first_rev = kv["mod_revision"].as_i64().unwrap_or_default();
    assert!(first_rev > 0);
    assert!(j["header"]["revision"].as_i64().unwrap_or_default() >= first_rev + 3);
    assert!(j["header"]["cluster_id"].as_u64().unwrap_or_default() != 0);
    assert!(j["header"]["member_id"].as_u64().unwrap_or_default() != 0);

    // --rev reads the past.
    assert_eq!(c.etcdctl(&["put", "a1", "v1-new"]).ok().trim(), "OK");
    let rev = first_rev.to_string();
    assert_eq!(c.etcdctl(&["get", "a1", "--print-value-only", "--rev", &rev]).ok().trim(), "v1");
    assert_eq!(c.etcdctl(&["get", "a1", "--print-value-only"]).ok().trim(), "v1-new");
    let j = json(&c.etcdctl(&["get", "a1", "-w", "json"]).ok());
    assert_eq!(j["kvs"][0]["version"], 2);
    assert_eq!(j["kvs"][0]["create_revision"].as_i64(), Some(first_rev));
    // put --prev-kv prints the old pair.
    assert_eq!(
        lines(&c.etcdctl(&["put", "a1", "v1-third", "--prev-kv"]).ok()),
        ["OK", "a1", "v1-new"]
    );
    // A future revision is refused with etcd's message.
    let future = (j["header"]["revision"].as_i64().unwrap_or_default() + 100).to_string();
    let err = c.etcdctl(&["get", "a1", "--rev", &future]).err();
    assert!(err.contains("etcdserver: mvcc: required revision is a future revision"), "{err}");

    // Deletes print how many keys went; --prev-kv prints them.
    assert_eq!(c.etcdctl(&["del", "a2"]).ok().trim(), "1");
    assert_eq!(lines(&c.etcdctl(&["del", "--prev-kv", "a3"]).ok()), ["1", "a3", "v3"]);
    assert_eq!(c.etcdctl(&["del", "--prefix", "a"]).ok().trim(), "1");
    assert_eq!(c.etcdctl(&["del", "nothing-here"]).ok().trim(), "0");
    assert!(lines(&c.etcdctl(&["get", "--prefix", "a"]).ok()).is_empty());
    assert_eq!(c.etcdctl(&["del", "--from-key", "b"]).ok().trim(), "1");
    assert!(lines(&c.etcdctl(&["get", "--from-key", ""]).ok()).is_empty());
}

#[test]
fn txn_with_compares_takes_the_right_branch() {
    let c = Cluster::start(3);
    let (_, fi) = c.leader_and_follower();
    let follower = c.nodes[fi].endpoint();
    c.etcdctl(&["put", "k1", "v1"]).ok();
    let txn = "value(\"k1\") = \"v1\"\ncreate(\"k2\") = \"0\"\n\nput k1 v2\nput k2 x\nget k1\n\nput k1 failed\n\n";
    // Through a follower: the txn is forwarded like any write.
    let out = lines(&c.etcdctl_stdin(&follower, &["txn"], txn).ok());
    // As in etcd, a read inside a txn sees the txn's own earlier writes.
    assert_eq!(out, ["SUCCESS", "OK", "OK", "k1", "v2"]);
    assert_eq!(c.etcdctl(&["get", "k1", "--print-value-only"]).ok().trim(), "v2");
    assert_eq!(c.etcdctl(&["get", "k2", "--print-value-only"]).ok().trim(), "x");
    // The same compares now fail: the failure branch runs.
    let out = lines(&c.etcdctl_stdin(&c.endpoints(), &["txn"], txn).ok());
    assert_eq!(out, ["FAILURE", "OK"]);
    assert_eq!(c.etcdctl(&["get", "k1", "--print-value-only"]).ok().trim(), "failed");
    // Version and mod-revision compares, and a delete in the success branch.
    let j = json(&c.etcdctl(&["get", "k1", "-w", "json"]).ok());
    let mod_rev = j["kvs"][0]["mod_revision"].as_i64().unwrap_or_default();
    let txn = format!("ver(\"k1\") = \"3\"\nmod(\"k1\") = \"{mod_rev}\"\n\ndel k2\n\n\n");
    assert_eq!(lines(&c.etcdctl_stdin(&c.endpoints(), &["txn"], &txn).ok()), ["SUCCESS", "1"]);
    assert!(lines(&c.etcdctl(&["get", "k2"]).ok()).is_empty());
    // An empty txn with a false compare and nothing to do.
    let txn = "value(\"k1\") > \"zzz\"\n\n\n\n";
    assert_eq!(lines(&c.etcdctl_stdin(&c.endpoints(), &["txn"], txn).ok()), ["FAILURE"]);
    // etcd's rule: one txn may not put the same key twice.
    let txn = "\nput d 1\nput d 2\n\n\n";
    let err = c.etcdctl_stdin(&c.endpoints(), &["txn"], txn).err();
    assert!(err.contains("etcdserver: duplicate key given in txn request"), "{err}");
}

#[test]
fn compaction_makes_old_revisions_unreadable_with_etcds_message() {
    let c = Cluster::start(3);
    c.etcdctl(&["put", "c", "1"]).ok();
    let j = json(&c.etcdctl(&["get", "c", "-w", "json"]).ok());
    let old = j["kvs"][0]["mod_revision"].as_i64().unwrap_or_default();
    c.etcdctl(&["put", "c", "2"]).ok();
    let j = json(&c.etcdctl(&["put", "c", "3", "-w", "json"]).ok());
    let now = j["header"]["revision"].as_i64().unwrap_or_default();
    assert_eq!(
        c.etcdctl(&["get", "c", "--rev", &old.to_string(), "--print-value-only"]).ok().trim(),
        "1"
    );
    let out = c.etcdctl(&["compaction", &now.to_string()]).ok();
    assert_eq!(out.trim(), format!("compacted revision {now}"));
    // Every member refuses the compacted revision, leader and followers alike.
    for n in &c.nodes {
        let err = c.etcdctl_at(&n.endpoint(), &["get", "c", "--rev", &old.to_string()]).err();
        assert!(err.contains("etcdserver: mvcc: required revision has been compacted"), "{err}");
    }
    // The compacted revision itself still reads.
    assert_eq!(
        c.etcdctl(&["get", "c", "--rev", &now.to_string(), "--print-value-only"]).ok().trim(),
        "3"
    );
    // Compacting again at or below it is refused as etcd refuses it.
    let err = c.etcdctl(&["compaction", &old.to_string()]).err();
    assert!(err.contains("etcdserver: mvcc: required revision has been compacted"), "{err}");
}

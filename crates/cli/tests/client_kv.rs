//! The Rust client (`quorumkv-client`) against a real 3-node cluster: reads and writes,
//! compare-and-set, scans, watches, status, and finding the leader from a follower.

mod client_support;

use std::time::Duration;

use client_support::Cluster;
use quorumkv_client::{
    Client, ClientOptions, EventKind, Health, KeyRange, ReadConsistency, Role, ScanOptions,
};

/// The watch's next event, within 30 s.
async fn next(w: &mut quorumkv_client::Watch) -> quorumkv_client::WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .expect("an event within 30 s")
        .expect("a watch event")
}

fn client(endpoints: &[String]) -> Client {
    Client::connect(endpoints, ClientOptions::default()).expect("valid endpoints")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_operations_against_a_cluster() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3));
    let c = client(&cluster.endpoints());

    // put / get
    assert_eq!(c.get("greeting").await.expect("get"), None);
    let first = c.put("greeting", "hello").await.expect("put");
    assert!(first.prev.is_none());
    let kv = c.get("greeting").await.expect("get").expect("the key exists");
    assert_eq!(&kv.value[..], b"hello");
    assert_eq!(
        (kv.version, kv.mod_revision, kv.create_revision),
        (1, first.revision, first.revision)
    );
    let second = c.put("greeting", "world").await.expect("put");
    assert!(second.revision > first.revision);
    assert_eq!(second.prev.as_ref().map(|p| &p.value[..]), Some(&b"hello"[..]));
    assert_eq!(c.get("greeting").await.expect("get").map(|kv| kv.version), Some(2));

    // delete
    assert_eq!(c.delete("greeting").await.expect("delete"), 1);
    assert_eq!(c.delete("greeting").await.expect("delete"), 0);
    assert_eq!(c.get("greeting").await.expect("get"), None);

    // compare-and-set on value, absence and revision
    let r = c.cas_value("lock", None, "me").await.expect("cas");
    assert!(r.succeeded && r.current.is_none());
    let r = c.cas_value("lock", None, "you").await.expect("cas");
    assert!(!r.succeeded);
    assert_eq!(r.current.as_ref().map(|kv| &kv.value[..]), Some(&b"me"[..]));
    let r = c.cas_value("lock", Some(b"you"), "x").await.expect("cas");
    assert!(!r.succeeded);
    let r = c.cas_value("lock", Some(b"me"), "you").await.expect("cas");
    assert!(r.succeeded);
    let kv = c.get("lock").await.expect("get").expect("exists");
    assert_eq!(&kv.value[..], b"you");
    let r = c.cas_revision("lock", kv.mod_revision - 1, "stale").await.expect("cas");
    assert!(!r.succeeded);
    assert_eq!(r.current.map(|kv| kv.mod_revision), Some(kv.mod_revision));
    let r = c.cas_revision("lock", kv.mod_revision, "fresh").await.expect("cas");
    assert!(r.succeeded);
    assert_eq!(c.get("lock").await.expect("get").map(|kv| kv.value), Some("fresh".into()));
    // mod_revision 0 means "absent".
    assert!(c.cas_revision("new", 0, "a").await.expect("cas").succeeded);
    assert!(!c.cas_revision("new", 0, "b").await.expect("cas").succeeded);

    // scan: prefix, limit, range, revision
    for i in 0..5 {
        c.put(format!("user/{i}"), format!("name{i}")).await.expect("put");
    }
    c.put("user0", "not under user/").await.expect("put");
    let all = c.scan(&KeyRange::prefix("user/"), ScanOptions::default()).await.expect("scan");
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| &kv.key[..]).collect();
    assert_eq!(keys, [&b"user/0"[..], b"user/1", b"user/2", b"user/3", b"user/4"]);
    assert!(!all.more);
    let some = c
        .scan(&KeyRange::prefix("user/"), ScanOptions { limit: 2, ..Default::default() })
        .await
        .expect("scan");
    assert_eq!(some.kvs.len(), 2);
    assert!(some.more);
    assert_eq!(some.count, 5);
    let mid =
        c.scan(&KeyRange::between("user/1", "user/3"), ScanOptions::default()).await.expect("scan");
    assert_eq!(
        mid.kvs.iter().map(|kv| kv.key.to_vec()).collect::<Vec<_>>(),
        [b"user/1".to_vec(), b"user/2".to_vec()]
    );
    let before = all.revision;
    c.put("user/9", "late").await.expect("put");
    let then = c
        .scan(
            &KeyRange::prefix("user/"),
            ScanOptions { revision: Some(before), ..Default::default() },
        )
        .await
        .expect("scan at a past revision");
    assert_eq!(then.kvs.len(), 5, "the scan at revision {before} must not see user/9");
    let err = c
        .scan(
            &KeyRange::prefix("user/"),
            ScanOptions { revision: Some(1 << 40), ..Default::default() },
        )
        .await
        .expect_err("a future revision");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("future revision"), "{err}");

    // delete a range
    assert_eq!(c.delete_range(&KeyRange::prefix("user/")).await.expect("delete"), 6);

    // status: three healthy members, one leader, and the leader is the one the nodes name.
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let members = c.status().await.expect("status");
    assert_eq!(members.len(), 3, "{members:#?}");
    assert_eq!(members.iter().filter(|m| m.is_leader).count(), 1, "{members:#?}");
    let l = members.iter().find(|m| m.is_leader).expect("a leader");
    assert_eq!(l.id, leader);
    assert_eq!(l.role, Role::Leader);
    for m in &members {
        assert!(m.reachable, "{m:#?}");
        assert_eq!(m.health, Health::Healthy, "{m:#?}");
        assert!(m.commit_index > 0 && m.applied_index > 0, "{m:#?}");
        assert_eq!(m.client_addr, cluster.node(m.id).endpoint());
        assert!(m.name.starts_with("node"), "{m:#?}");
        if m.id != leader {
            assert_eq!(m.role, Role::Follower);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_found_from_a_follower() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let follower = cluster.other_than(leader);

    // Only a follower is given: the leader's address comes from the member list.
    let c = client(&[cluster.node(follower).endpoint()]);
    let found = c.leader().await.expect("leader discovery");
    assert_eq!(found.id, leader);
    assert_eq!(found.client_addr, cluster.node(leader).endpoint());
    c.put("k", "v").await.expect("a write through a follower-only endpoint list");
    assert_eq!(c.get("k").await.expect("get").map(|kv| kv.value), Some("v".into()));

    // The follower listed first, the leader later: still the leader.
    let first = cluster.node(follower).endpoint();
    let mut endpoints = vec![first.clone()];
    endpoints.extend(cluster.endpoints().into_iter().filter(|e| *e != first));
    let c = client(&endpoints);
    assert_eq!(c.leader().await.expect("leader discovery").id, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_changes_in_order_and_resumes_after_its_member_dies() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3));
    let c = client(&cluster.endpoints());
    let before = c.put("w/before", "0").await.expect("put");

    // "From now" starts after the newest revision this client has seen, even when the
    // member serving the watch has not applied it yet.
    let mut w = c.watch(&KeyRange::prefix("w/"), None).await.expect("watch");
    let start = w.next_revision();
    assert_eq!(start, before.revision + 1);
    let a = c.put("w/a", "1").await.expect("put");
    c.put("other", "ignored").await.expect("put");
    c.put("w/b", "2").await.expect("put");
    let d = c.delete("w/a").await.expect("delete");
    assert_eq!(d, 1);

    let e1 = next(&mut w).await;
    assert_eq!(
        (e1.kind, &e1.kv.key[..], &e1.kv.value[..]),
        (EventKind::Put, &b"w/a"[..], &b"1"[..])
    );
    assert_eq!(e1.revision(), a.revision);
    assert!(e1.revision() >= start);
    let e2 = next(&mut w).await;
    assert_eq!((e2.kind, &e2.kv.key[..]), (EventKind::Put, &b"w/b"[..]));
    let e3 = next(&mut w).await;
    assert_eq!((e3.kind, &e3.kv.key[..]), (EventKind::Delete, &b"w/a"[..]));
    assert_eq!(e3.prev.as_ref().map(|p| &p.value[..]), Some(&b"1"[..]));
    assert!(e1.revision() < e2.revision() && e2.revision() < e3.revision());

    // The watch is served by the first endpoint; kill that member. The watch must go on
    // from the next revision on another member: nothing lost, nothing twice.
    tokio::task::block_in_place(|| cluster.kill(1));
    for i in 0..3 {
        c.put(format!("w/after{i}"), "x").await.expect("put after the kill");
    }
    for i in 0..3 {
        let e = next(&mut w).await;
        assert_eq!(e.kind, EventKind::Put);
        assert_eq!(e.kv.key.to_vec(), format!("w/after{i}").into_bytes(), "{e:?}");
    }

    // Replaying from a past revision delivers history.
    let mut replay = c.watch(&KeyRange::key("w/b"), Some(a.revision)).await.expect("watch");
    let e = next(&mut replay).await;
    assert_eq!((&e.kv.key[..], e.revision()), (&b"w/b"[..], e2.revision()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serializable_read_is_served_by_a_follower_without_a_quorum() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let follower = cluster.other_than(leader);
    let c = client(&cluster.endpoints());
    c.put("k", "v").await.expect("put");

    let opts = ClientOptions {
        deadline: Duration::from_secs(2),
        read_consistency: ReadConsistency::Serializable,
        ..Default::default()
    };
    let only_follower =
        Client::connect(&[cluster.node(follower).endpoint()], opts).expect("endpoint");
    assert_eq!(only_follower.read_consistency(), ReadConsistency::Serializable);
    // The follower applies the write shortly after the leader acknowledged it.
    let mut seen = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.is_none() && std::time::Instant::now() < deadline {
        seen = only_follower.get("k").await.expect("serializable get");
    }
    assert_eq!(seen.map(|kv| kv.value), Some("v".into()));

    // With the two other members gone there is no quorum: the follower still answers
    // serializable reads, while a linearizable read cannot be served.
    for id in [1, 2, 3] {
        if id != follower {
            tokio::task::block_in_place(|| cluster.kill(id));
        }
    }
    let kv = only_follower.get("k").await.expect("a serializable read needs no quorum");
    assert_eq!(kv.map(|kv| kv.value), Some("v".into()));
    let err = only_follower
        .with_read_consistency(ReadConsistency::Linearizable)
        .get("k")
        .await
        .expect_err("no quorum, no linearizable read");
    assert!(err.is_retryable(), "{err}");
}

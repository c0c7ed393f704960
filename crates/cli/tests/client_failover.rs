//! The Rust client across a leader crash: writes are retried against the new leader and
//! applied exactly once.

mod client_support;

use std::time::{Duration, Instant};

use client_support::Cluster;
use quorumkv_client::{Client, ClientOptions, KeyRange, ScanOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_leader_crash_and_apply_once() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3));
    let old_leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let c = Client::connect(&cluster.endpoints(), ClientOptions::default()).expect("endpoints");
    assert_eq!(c.leader().await.expect("leader").id, old_leader);

    // A write with an explicit id, applied before the crash.
    let id = c.new_write_id();
    let first = c.put_with_id(id, "once", "v").await.expect("put");
    let kv = c.get("once").await.expect("get").expect("exists");
    assert_eq!((kv.version, kv.mod_revision), (1, first.revision));

    // A stream of writes runs while the leader is SIGKILLed: every one must succeed (the
    // client retries against the new leader) and apply once (each key's version stays 1).
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                c.put(format!("stream/{i:03}"), "x").await.map_err(|e| format!("put {i}: {e}"))?;
            }
            Ok::<_, String>(())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = c
            .with_read_consistency(quorumkv_client::ReadConsistency::Serializable)
            .scan(
                &KeyRange::prefix("stream/"),
                ScanOptions { keys_only: true, ..Default::default() },
            )
            .await
            .map_or(0, |r| r.count);
        if done >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the writer made no progress before the crash");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = cluster.node(old_leader).pid().expect("the leader runs");
    tokio::task::block_in_place(|| cluster.kill(old_leader));
    eprintln!("killed the leader, node {old_leader} (pid {pid})");
    assert!(!writer.is_finished(), "the writes must still be running when the leader dies");

    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finishes within 60 s")
        .expect("the writer task")
        .expect("every write succeeds across the crash");
    let new_leader = c.leader().await.expect("a new leader");
    assert_ne!(new_leader.id, old_leader);
    let all = c.scan(&KeyRange::prefix("stream/"), ScanOptions::default()).await.expect("scan");
    assert_eq!(all.kvs.len(), 200);
    for kv in &all.kvs {
        assert_eq!(kv.version, 1, "{kv:?} was applied more than once");
    }

    // The write from before the crash, re-sent with the same session and sequence number
    // to the new leader: answered with the first result, not applied again.
    let again = c.put_with_id(id, "once", "v").await.expect("re-sent put");
    assert_eq!(again.revision, first.revision);
    let kv = c.get("once").await.expect("get").expect("exists");
    assert_eq!((kv.version, kv.mod_revision), (1, first.revision), "the re-sent put applied twice");

    // A new logical write does apply.
    c.put("once", "v").await.expect("put");
    assert_eq!(c.get("once").await.expect("get").map(|kv| kv.version), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waits_out_an_election_instead_of_failing() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(3));
    let leader = tokio::task::block_in_place(|| cluster.wait_for_leader());
    let c = Client::connect(&cluster.endpoints(), ClientOptions::default()).expect("endpoints");
    c.put("before", "1").await.expect("put");
    // The client still believes in the dead leader; its first attempt fails at the
    // transport, later ones find the new leader once it is elected.
    tokio::task::block_in_place(|| cluster.kill(leader));
    let r = c.put("after", "2").await.expect("put after the leader died");
    assert!(r.revision > 0);
    let found = c.leader().await.expect("leader");
    assert_ne!(found.id, leader);
    assert_eq!(c.get("before").await.expect("get").map(|kv| kv.value), Some("1".into()));
    assert_eq!(c.get("after").await.expect("get").map(|kv| kv.version), Some(1));

    // Leadership moves on request too.
    let target = cluster.other_than(found.id);
    assert_ne!(target, leader);
    c.transfer_leader(target).await.expect("transfer leadership");
    assert_eq!(c.leader().await.expect("leader").id, target);
    let members = c.status().await.expect("status");
    let dead = members.iter().find(|m| m.id == leader).expect("the dead member is listed");
    assert!(!dead.reachable && !dead.health.is_healthy(), "{dead:#?}");
    assert_eq!(members.iter().filter(|m| m.is_leader).count(), 1);
}

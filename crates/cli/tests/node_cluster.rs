//! Multi-process tests of the node: real `quorumkv server` processes on loopback, driven
//! through the etcd v3 API. Each test is bounded in time and kills what it started.

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{Cluster, poll_until_async};
use quorumkv_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use quorumkv_etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, PutRequest,
    RangeRequest,
};
use tonic::transport::Channel;

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn get(key: &str, serializable: bool) -> RangeRequest {
    RangeRequest { key: key.as_bytes().to_vec().into(), serializable, ..Default::default() }
}

/// Waits up to 20 s for node `i` to serve `key = value` from its own store (a node catching
/// up); fails with `what` and the node's log otherwise.
async fn serves_within(c: &Cluster, i: usize, (key, value): (&str, &str), what: &str) {
    let served = poll_until_async(Duration::from_secs(20), Duration::from_millis(50), async || {
        value_at(c, i, key, true).await.as_deref() == Some(value)
    })
    .await;
    assert!(served, "{what}:\n{}", c.nodes[i].log_tail(20));
}

async fn value_at(c: &Cluster, i: usize, key: &str, serializable: bool) -> Option<String> {
    let mut kv = c.kv(i).await;
    let r = kv.range(get(key, serializable)).await.ok()?.into_inner();
    r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Puts through any node, retrying on errors until `deadline`; true once acknowledged.
async fn put_until(c: &Cluster, key: &str, value: &str, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        for i in 0..c.nodes.len() {
            let mut kv = c.kv(i).await;
            if kv.put(put(key, value)).await.is_ok() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn cluster_client(addr: &str) -> ClusterClient<Channel> {
    ClusterClient::new(Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_survive_leader_kill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(20));
    // A write is readable from every node after commit.
    let mut kv = c.kv(leader).await;
    kv.put(put("greeting", "hello")).await.expect("put on the leader");
    for i in 0..3 {
        assert_eq!(
            value_at(&c, i, "greeting", false).await.as_deref(),
            Some("hello"),
            "linearizable read on node {i}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..3 {
        while value_at(&c, i, "greeting", true).await.as_deref() != Some("hello") {
            assert!(Instant::now() < deadline, "node {i} never applied the write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Acknowledged writes, then SIGKILL the leader.
    let mut acked = Vec::new();
    for k in 0..50 {
        let key = format!("k{k}");
        if put_until(&c, &key, &format!("v{k}"), Instant::now() + Duration::from_secs(10)).await {
            acked.push(key);
        }
    }
    assert_eq!(acked.len(), 50);
    c.kill(leader);
    let killed_at = Instant::now();
    let new_leader = loop {
        if let Some(l) = c.leader().filter(|&l| l != leader) {
            break l;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no new leader within 10 s of killing the old one"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("new leader after {:?}", killed_at.elapsed());
    assert_ne!(new_leader, leader);
    for key in &acked {
        let got = value_at(&c, new_leader, key, false).await;
        assert!(got.is_some(), "acknowledged write {key} lost after the leader was killed");
    }
    // Writes continue without the old leader; then it restarts from its data dir and catches up.
    assert!(put_until(&c, "after", "kill", Instant::now() + Duration::from_secs(10)).await);
    c.spawn(leader);
    serves_within(&c, leader, ("after", "kill"), "restarted node did not catch up").await;
    for key in &acked {
        assert!(value_at(&c, leader, key, true).await.is_some(), "restarted node lacks {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_as_learner_is_promoted_and_a_node_is_removed() {
    // Snapshots every few entries: by the time the learner joins, the log it needs is gone
    // and it must be sent a snapshot (taken off the group loop on the leader).
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "8"]);
    let leader = c.wait_leader(Duration::from_secs(20));
    let mut kv = c.kv(leader).await;
    for k in 0..20 {
        kv.put(put(&format!("before{k}"), "x")).await.expect("put");
    }
    // The new node starts empty, waiting to be added.
    let idx = c.add_node(4, &["--join", "true"]);
    c.spawn(idx);
    let peer = c.nodes[idx].peer.clone();
    let mut cluster = cluster_client(&c.nodes[leader].client);
    let mut req = tonic::Request::new(MemberAddRequest {
        peer_ur_ls: vec![format!("http://{peer}")],
        is_learner: true,
    });
    req.metadata_mut().insert("x-quorumkv-member-id", "4".parse().expect("metadata"));
    let added = cluster.member_add(req).await.expect("member add").into_inner();
    assert_eq!(added.member.as_ref().map(|m| (m.id, m.is_learner)), Some((4, true)));
    // The learner catches up (it received the whole log or a snapshot).
    serves_within(&c, idx, ("before19", "x"), "learner did not catch up").await;
    let log = c.nodes[idx].log_tail(500);
    assert!(log.contains("installing snapshot from the leader"), "no snapshot install:\n{log}");
    // The leader encoded that image because the learner needed it; its compactions keep none.
    let leader_log = c.nodes[leader].log_tail(2000);
    assert!(
        leader_log.contains("took an image of the store for a follower"),
        "the leader did not take an image on request:\n{leader_log}"
    );
    cluster.member_promote(MemberPromoteRequest { id: 4 }).await.expect("promote");
    let members = cluster
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("list")
        .into_inner()
        .members;
    let by_id: BTreeMap<u64, bool> = members.iter().map(|m| (m.id, m.is_learner)).collect();
    assert_eq!(by_id, BTreeMap::from([(1, false), (2, false), (3, false), (4, false)]));
    // Remove a follower; the rest keeps serving.
    let victim = (0..3).find(|&i| i != leader).expect("a follower");
    let victim_id = c.nodes[victim].id;
    cluster.member_remove(MemberRemoveRequest { id: victim_id }).await.expect("remove");
    let members = cluster
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("list")
        .into_inner()
        .members;
    assert!(members.iter().all(|m| m.id != victim_id));
    assert_eq!(members.len(), 3);
    c.kill(victim);
    assert!(put_until(&c, "after-remove", "ok", Instant::now() + Duration::from_secs(10)).await);
    assert_eq!(value_at(&c, idx, "after-remove", false).await.as_deref(), Some("ok"));
    // A follower that compacted its log behind its store, keeping no image, restarts from the
    // store alone and catches up.
    let other = (0..3).find(|&i| i != leader && i != victim).expect("another follower");
    let compacted = c.status(other).and_then(|s| s["snapshot_index"].as_u64()).unwrap_or(0);
    assert!(compacted > 0, "follower {other} never compacted its log");
    let images = std::fs::read_dir(c.nodes[other].data_dir.join("snap"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().is_file()).count())
        .unwrap_or(0);
    assert_eq!(images, 0, "a follower's compaction encoded an image");
    c.kill(other);
    c.spawn(other);
    assert!(put_until(&c, "after-restart", "ok", Instant::now() + Duration::from_secs(10)).await);
    serves_within(&c, other, ("after-restart", "ok"), "restarted follower did not catch up").await;
    assert_eq!(value_at(&c, other, "before19", true).await.as_deref(), Some("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let mut c = Cluster::start(3);
    c.wait_leader(Duration::from_secs(20));
    let before = refused_handshakes(&c);
    // A stranger: same ids and addresses of the members, another cluster name.
    let idx = c.add_node(9, &["--cluster", "someone-else"]);
    let initial = c.initial.clone();
    c.initial = format!("{initial},9={}", c.nodes[idx].peer);
    c.spawn(idx);
    c.initial = initial;
    // The stranger dials the members (they are in its initial cluster); they refuse it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stranger_log = std::fs::read_to_string(&c.nodes[idx].log).unwrap_or_default();
        if refused_handshakes(&c) > before && stranger_log.contains("refused") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stranger was not refused:\n{}",
            c.nodes[idx].log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let member_logs: String =
        (0..3).map(|i| std::fs::read_to_string(&c.nodes[i].log).unwrap_or_default()).collect();
    assert!(member_logs.contains("cluster id mismatch"), "members do not log why they refused");
    // The cluster itself is unaffected.
    assert!(put_until(&c, "still", "fine", Instant::now() + Duration::from_secs(10)).await);
}

/// A counter or gauge of node `i` from its `/metrics` page.
fn metric(c: &Cluster, i: usize, name: &str) -> Option<u64> {
    let (_, body) = c.http(i, "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

fn refused_handshakes(c: &Cluster) -> u64 {
    (0..3).filter_map(|i| metric(c, i, "quorumkv_peer_refused_handshakes_total")).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_requests_get_clear_errors_and_the_node_stays_up() {
    let c = Cluster::start_with(
        1,
        &["--max-key-bytes", "64", "--max-value-bytes", "1024", "--max-request-bytes", "65536"],
    );
    let mut kv = c.kv(0).await;
    let long_key = "k".repeat(65);
    let e = kv.put(put(&long_key, "v")).await.expect_err("oversize key accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("max_key_bytes"), "{}", e.message());
    let e = kv.put(put("k", &"v".repeat(1025))).await.expect_err("oversize value accepted");
    assert!(e.message().contains("max_value_bytes"), "{}", e.message());
    let e = kv.put(put("k", &"v".repeat(70_000))).await.expect_err("oversize request accepted");
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{e:?}"
    );
    let e = kv.put(put("", "v")).await.expect_err("empty key accepted");
    assert!(e.message().contains("key is not provided"), "{}", e.message());
    // Garbage on the client port and on the peer port: each closes its own connection.
    for addr in [&c.nodes[0].client, &c.nodes[0].peer] {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr.as_str()).expect("connect");
        let _ = s.write_all(b"\x00\x00\x00\x10\x07\x03garbage garbage garbage garbage");
        let _ = s.write_all(&[0xff; 4096]);
    }
    let peer_garbage_seen = || {
        c.http(0, "/metrics").is_some_and(|(_, body)| {
            body.lines()
                .any(|l| l.starts_with("quorumkv_malformed_frames_total ") && !l.ends_with(" 0"))
        })
    };
    c.wait_for(Duration::from_secs(5), "the malformed peer frame to be counted", |_| {
        peer_garbage_seen()
    });
    // Still serving.
    kv.put(put("alive", "yes")).await.expect("the node stopped serving after bad input");
    assert_eq!(value_at(&c, 0, "alive", false).await.as_deref(), Some("yes"));
    assert_eq!(c.http(0, "/livez").map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_named_metric_and_probes_answer() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(20));
    let mut kv = c.kv(leader).await;
    kv.put(put("m", "1")).await.expect("put");
    kv.range(get("m", false)).await.expect("get");
    let (code, body) = c.http(leader, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    for name in [
        "quorumkv_build_info",
        "quorumkv_requests_total",
        "quorumkv_request_duration_seconds_bucket",
        "quorumkv_raft_term",
        "quorumkv_raft_commit_index",
        "quorumkv_raft_applied_index",
        "quorumkv_raft_proposals_total",
        "quorumkv_raft_elections_won_total",
        "quorumkv_raft_leader_changes_total",
        "quorumkv_wal_fsync_duration_seconds_bucket",
        "quorumkv_wal_batch_entries_bucket",
        "quorumkv_apply_batch_entries_bucket",
        "quorumkv_peer_received_bytes_total",
        "quorumkv_peer_sent_bytes_total",
        "quorumkv_peer_dropped_messages_total",
        "quorumkv_malformed_frames_total",
        "quorumkv_malformed_requests_total",
    ] {
        assert!(body.lines().any(|l| l.starts_with(name)), "metric {name} missing from /metrics");
    }
    assert!(body.contains("quorumkv_requests_total{op=\"put\",result=\"ok\"}"));
    // Lease reads are off unless asked for: the read above took a heartbeat round.
    assert!(body.lines().any(|l| l == "quorumkv_lease_reads_total 0"), "lease read served");
    // The batch histograms are fed, not only declared: the put above went through both.
    for count in ["quorumkv_wal_batch_entries_count", "quorumkv_apply_batch_entries_count"] {
        let observed = body
            .lines()
            .find_map(|l| l.strip_prefix(count)?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(observed > 0, "{count} is {observed} after a put");
    }
    for i in 0..3 {
        assert_eq!(c.http(i, "/livez").map(|r| r.0), Some(200));
        assert_eq!(c.http(i, "/readyz").map(|r| r.0), Some(200), "node {i} not ready");
        let s = c.status(i).expect("status json");
        assert_eq!(s["voters"].as_array().map(Vec::len), Some(3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_are_answered_by_the_leader_without_a_heartbeat_round() {
    let mut c = Cluster::start_with(3, &["--lease-reads", "true"]);
    let leader = c.wait_leader(Duration::from_secs(20));
    let mut kv = c.kv(leader).await;
    for i in 0..50 {
        let value = i.to_string();
        kv.put(put("lease/k", &value)).await.expect("put");
        // Each read follows an acknowledged write and must see it.
        assert_eq!(value_at(&c, leader, "lease/k", false).await.as_deref(), Some(value.as_str()));
    }
    let served = metric(&c, leader, "quorumkv_lease_reads_total").expect("lease read counter");
    // The lease is renewed by every heartbeat round, so nearly all reads take the fast path;
    // a read may still fall back to a round (say, one between a lease's end and the next ack).
    assert!(served >= 40, "only {served} of 50 reads were served under the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_without_a_quorum_while_livez_stays_up() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader(Duration::from_secs(20));
    let survivor = (0..3).find(|&i| i != leader).expect("a follower");
    for i in 0..3 {
        if i != survivor {
            c.kill(i);
        }
    }
    c.wait_for(Duration::from_secs(15), "readyz to report not ready", |c| {
        c.http(survivor, "/readyz").is_some_and(|r| r.0 == 503)
    });
    assert_eq!(c.http(survivor, "/livez").map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_under_load() {
    // One node: every acknowledgement is its own fsync's promise.
    let mut c = Cluster::start(1);
    let client = c.nodes[0].client.clone();
    let writer = tokio::spawn(async move {
        let ch = Channel::from_shared(format!("http://{client}")).expect("uri").connect_lazy();
        let mut acked = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8u32 {
            let mut kv = quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient::new(ch.clone());
            tasks.spawn(async move {
                let mut mine = Vec::new();
                for k in 0..100_000u32 {
                    let key = format!("w{w}-{k}");
                    match kv.put(put(&key, "v")).await {
                        Ok(_) => mine.push(key),
                        Err(_) => break,
                    }
                }
                mine
            });
        }
        while let Some(r) = tasks.join_next().await {
            acked.extend(r.unwrap_or_default());
        }
        acked
    });
    // Let the load run, then kill mid-flight.
    let started = Instant::now();
    c.wait_for(Duration::from_secs(20), "some load", |c| {
        c.status(0).and_then(|s| s["applied"].as_u64()).is_some_and(|a| a > 500)
            || started.elapsed() > Duration::from_secs(15)
    });
    c.kill(0);
    let acked = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writers stop")
        .expect("writers");
    assert!(acked.len() > 100, "load too light to mean anything: {}", acked.len());
    c.spawn(0);
    c.wait_leader(Duration::from_secs(20));
    let mut kv = c.kv(0).await;
    let mut missing = Vec::new();
    for key in &acked {
        let r = kv.range(get(key, false)).await.expect("read after restart").into_inner();
        if r.kvs.is_empty() {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

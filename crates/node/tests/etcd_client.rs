//! A Rust etcd v3 client against a 3-node quorumkv cluster: KV, txn, watch and leases.
//!
//! The client is the tonic one generated in `quorumkv-etcd-proto` from etcd's own protos.
//! (The third-party `etcd-client` crate needs `protoc` to build; it is driven separately, in
//! compat/etcd-client, built with a pure-Rust protoc stand-in by
//! scripts/etcd-client-compat.sh.) The three nodes run in this process, each with its
//! own store, WAL and ports: real nodes on real loopback sockets, started with the same
//! `quorumkv_node::start` as `quorumkv server`.

use std::time::Duration;

use bytes::Bytes;
use quorumkv_etcd_proto::etcdserverpb::auth_client::AuthClient;
use quorumkv_etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient;
use quorumkv_etcd_proto::etcdserverpb::lease_client::LeaseClient;
use quorumkv_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use quorumkv_etcd_proto::etcdserverpb::watch_client::WatchClient;
use quorumkv_etcd_proto::etcdserverpb::watch_create_request::FilterType;
use quorumkv_etcd_proto::etcdserverpb::{
    AuthStatusRequest, AuthUserAddRequest, AuthenticateRequest, CompactionRequest, Compare,
    DeleteRangeRequest, HashKvRequest, HashRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse, request_op, response_op, watch_request,
};
use quorumkv_etcd_proto::mvccpb::event::EventType;
use quorumkv_node::{NodeConfig, RunningNode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

struct TestCluster {
    nodes: Vec<RunningNode>,
    _dir: tempfile::TempDir,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in self.nodes.drain(..) {
            n.shutdown();
        }
    }
}

impl TestCluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listeners: Vec<std::net::TcpListener> = (0..9)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
            .collect();
        let ports: Vec<u16> =
            listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect();
        drop(listeners);
        let initial: Vec<String> =
            (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[3 * i + 1])).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let cfg = NodeConfig {
                id: i as u64 + 1,
                name: format!("node{}", i + 1),
                data_dir: dir.path().join(format!("node{}", i + 1)),
                client_addr: format!("127.0.0.1:{}", ports[3 * i]),
                peer_addr: format!("127.0.0.1:{}", ports[3 * i + 1]),
                http_addr: format!("127.0.0.1:{}", ports[3 * i + 2]),
                initial_cluster: vec![initial.join(",")],
                ..NodeConfig::default()
            };
            nodes.push(quorumkv_node::start(cfg).await.expect("start a node"));
        }
        let c = Self { nodes, _dir: dir };
        c.wait_for_leader().await;
        c
    }

    async fn wait_for_leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leaders: Vec<Option<u64>> =
                self.nodes.iter().map(|n| n.group.status().leader).collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
            {
                let applied_leader = self.nodes.iter().position(|n| n.config.id == *l);
                if let Some(i) = applied_leader {
                    return i;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn channel(&self, i: usize) -> Channel {
        Channel::from_shared(format!("http://{}", self.nodes[i].client_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        ..Default::default()
    }
}

/// One open Watch stream.
struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    async fn open(ch: Channel) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let rx =
            WatchClient::new(ch).watch(ReceiverStream::new(rx)).await.expect("watch").into_inner();
        Self { tx, rx }
    }

    async fn send(&self, r: watch_request::RequestUnion) {
        self.tx.send(WatchRequest { request_union: Some(r) }).await.expect("send");
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(watch_request::RequestUnion::CreateRequest(c)).await;
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a watch response in time")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// Collects the events of `watch_id` until `n` arrived (other responses must not come).
    async fn events(&mut self, watch_id: i64, n: usize) -> Vec<(EventType, String, i64)> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = self.next().await;
            assert_eq!(r.watch_id, watch_id, "unexpected response {r:?}");
            for e in r.events {
                let kv = e.kv.unwrap_or_default();
                out.push((
                    EventType::try_from(e.r#type).unwrap_or(EventType::Put),
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.mod_revision,
                ));
            }
        }
        assert_eq!(out.len(), n);
        out
    }
}

fn create(key: &str, range_end: &str, start: i64, id: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: Bytes::from(key.to_string()),
        range_end: Bytes::from(range_end.to_string()),
        start_revision: start,
        watch_id: id,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_client_kv_txn_watch_and_leases() {
    tokio::time::timeout(Duration::from_secs(180), scenario())
        .await
        .expect("the test ran too long");
}

async fn scenario() {
    let c = TestCluster::start().await;
    let li = c.wait_for_leader().await;
    let fi = (li + 1) % 3;
    let (leader, follower) = (c.channel(li).await, c.channel(fi).await);
    let mut kv_f = KvClient::new(follower.clone());
    let mut kv_l = KvClient::new(leader.clone());

    // --- KV and txn, written through a follower.
    let r = kv_f.put(put("k/a", "1")).await.expect("put").into_inner();
    let rev_a = r.header.expect("header").revision;
    let got = kv_l
        .range(RangeRequest { key: Bytes::from("k/a"), ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.kvs[0].value, Bytes::from("1"));
    let txn = |expect_version: i64| TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: Bytes::from("k/a"),
            target_union: Some(TargetUnion::Version(expect_version)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("k/a", "2"))),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from("k/a"),
                ..Default::default()
            })),
        }],
    };
    let t = kv_f.txn(txn(1)).await.expect("txn").into_inner();
    assert!(t.succeeded);
    let t = kv_f.txn(txn(1)).await.expect("txn").into_inner();
    assert!(!t.succeeded, "version is 2 now");
    match &t.responses[0].response {
        Some(response_op::Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, "2"),
        other => panic!("unexpected {other:?}"),
    }

    // --- Watch: two streams on a follower, client-chosen and assigned ids, filters, prev_kv.
    let mut s1 = WatchStream::open(follower.clone()).await;
    let mut s2 = WatchStream::open(follower.clone()).await;
    s1.create(WatchCreateRequest { prev_kv: true, ..create("k/", "k0", 0, 0) }).await;
    let r = s1.next().await;
    assert!(r.created && !r.canceled && r.watch_id == 0, "{r:?}");
    s1.create(WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        ..create("k/a", "", 0, 7)
    })
    .await;
    let r = s1.next().await;
    assert!(r.created && r.watch_id == 7, "{r:?}");
    s1.create(create("k/a", "", 0, 7)).await;
    let r = s1.next().await;
    assert!(r.created && r.canceled && r.watch_id == -1, "duplicate id refused: {r:?}");
    assert!(r.cancel_reason.contains("duplicate watch ID"), "{r:?}");
    s1.create(create("z", "a", 0, 0)).await;
    let r = s1.next().await;
    assert!(r.canceled && r.cancel_reason.contains("watcher range is empty"), "{r:?}");
    // The other stream gets id 0 too: ids are per stream, the hub's are not.
    s2.create(create("k/", "k0", 0, 0)).await;
    let r = s2.next().await;
    assert!(r.created && r.watch_id == 0, "{r:?}");

    kv_l.put(put("k/b", "x")).await.expect("put");
    kv_l.put(put("k/b", "y")).await.expect("put");
    kv_l.put(put("other", "x")).await.expect("put");
    let d = kv_l
        .delete_range(DeleteRangeRequest { key: Bytes::from("k/a"), ..Default::default() })
        .await
        .expect("delete")
        .into_inner();
    let del_rev = d.header.expect("header").revision;
    // Stream 1: watcher 0 sees the put and the delete (with its previous value); watcher 7
    // sees only the delete. Responses of the two may interleave; sort them apart.
    let mut w0 = Vec::new();
    let mut w7 = Vec::new();
    while w0.len() < 3 || w7.is_empty() {
        let r = s1.next().await;
        for e in r.events {
            let kv = e.kv.clone().unwrap_or_default();
            let item = (e.r#type, String::from_utf8_lossy(&kv.key).into_owned(), e.prev_kv.clone());
            match r.watch_id {
                0 => w0.push(item),
                7 => w7.push(item),
                other => panic!("event for unknown watcher {other}"),
            }
        }
    }
    assert_eq!(w0[0].0, EventType::Put as i32);
    assert_eq!(w0[0].1, "k/b");
    assert!(w0[0].2.is_none(), "k/b was new");
    assert_eq!(w0[1].1, "k/b");
    let prev = w0[1].2.as_ref().expect("an overwrite's prev_kv");
    assert_eq!((prev.value.clone(), prev.version), (Bytes::from("x"), 1), "prev_kv");
    assert_eq!(w0[2].0, EventType::Delete as i32);
    assert_eq!(w0[2].2.as_ref().map(|p| p.value.clone()), Some(Bytes::from("2")), "prev_kv");
    assert_eq!(w7.len(), 1);
    assert_eq!(w7[0].0, EventType::Delete as i32);
    assert!(w7[0].2.is_none(), "no prev_kv asked for");
    let ev = s2.events(0, 3).await;
    let want = vec![
        (EventType::Put, String::from("k/b"), del_rev - 3),
        (EventType::Put, String::from("k/b"), del_rev - 2),
        (EventType::Delete, String::from("k/a"), del_rev),
    ];
    assert_eq!(ev, want);

    // Progress request: answered with the broadcast id at a revision covering what was sent.
    s1.send(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
    let r = s1.next().await;
    assert_eq!(r.watch_id, -1);
    assert!(r.events.is_empty() && !r.created && !r.canceled);
    assert!(r.header.expect("header").revision >= del_rev);

    // Cancel watcher 0: it says so, and only watcher 7 hears of the next delete.
    s1.send(watch_request::RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 0 })).await;
    let r = s1.next().await;
    assert!(r.canceled && r.watch_id == 0 && r.compact_revision == 0, "{r:?}");
    kv_l.put(put("k/a", "3")).await.expect("put");
    kv_l.delete_range(DeleteRangeRequest { key: Bytes::from("k/a"), ..Default::default() })
        .await
        .expect("delete");
    let ev = s1.events(7, 1).await;
    assert_eq!(ev[0].0, EventType::Delete);

    // History from the first revision, on the leader's hub: every change, in order.
    let mut s3 = WatchStream::open(leader.clone()).await;
    s3.create(create("k/", "k0", rev_a, 0)).await;
    assert!(s3.next().await.created);
    let ev = s3.events(0, 7).await;
    let keys: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(keys, ["k/a", "k/a", "k/b", "k/b", "k/a", "k/a", "k/a"]);
    assert!(ev.windows(2).all(|w| w[0].2 < w[1].2), "revision order: {ev:?}");

    // A slow reader: far more events than a stream queues, while nobody reads. The watcher is
    // paused, falls back to the store, and still gets every event once, in order.
    let mut slow = WatchStream::open(follower.clone()).await;
    slow.create(create("bulk/", "bulk0", 0, 0)).await;
    assert!(slow.next().await.created);
    let per_txn = 128;
    let txns = 80;
    for t in 0..txns {
        let success = (0..per_txn)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    &format!("bulk/{t:03}/{i:03}"),
                    "v",
                ))),
            })
            .collect();
        kv_l.txn(TxnRequest { success, ..Default::default() }).await.expect("bulk txn");
    }
    let ev = slow.events(0, per_txn * txns).await;
    for (n, e) in ev.iter().enumerate() {
        let (t, i) = (n / per_txn, n % per_txn);
        assert_eq!(e.1, format!("bulk/{t:03}/{i:03}"), "event {n} out of order");
    }
    assert!(ev.windows(2).all(|w| w[1].2 == w[0].2 || w[1].2 == w[0].2 + 1), "no gaps");

    // Compaction: a watch from before it is told so and canceled, as etcd does.
    let now = kv_l
        .range(RangeRequest { key: Bytes::from("k/b"), ..Default::default() })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision;
    kv_l.compact(CompactionRequest { revision: now, physical: false }).await.expect("compact");
    // On the leader: it applied the compaction before answering (a follower may lag).
    let mut s4 = WatchStream::open(leader.clone()).await;
    s4.create(create("k/", "k0", rev_a, 0)).await;
    let mut r = s4.next().await;
    if r.created {
        r = s4.next().await;
    }
    assert!(r.canceled && r.compact_revision == now, "{r:?}");

    // --- Leases through the follower: grant, attach, keep-alive stream, time-to-live, list,
    // revoke.
    let mut lease_f = LeaseClient::new(follower.clone());
    let g = lease_f
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(g.id != 0 && g.ttl == 30, "{g:?}");
    kv_f.put(PutRequest { lease: g.id, ..put("leased", "1") }).await.expect("put with lease");
    let (ka_tx, ka_rx) = mpsc::channel(4);
    let mut ka =
        lease_f.lease_keep_alive(ReceiverStream::new(ka_rx)).await.expect("ka").into_inner();
    for _ in 0..3 {
        ka_tx.send(LeaseKeepAliveRequest { id: g.id }).await.expect("send keep-alive");
        let r = tokio::time::timeout(WAIT, ka.message()).await.expect("in time").expect("ok");
        let r = r.expect("a keep-alive answer");
        assert_eq!((r.id, r.ttl), (g.id, 30));
    }
    let ttl = lease_f
        .lease_time_to_live(LeaseTimeToLiveRequest { id: g.id, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 30);
    assert!((25..=30).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.keys, vec![Bytes::from("leased")]);
    let list = lease_f.lease_leases(LeaseLeasesRequest {}).await.expect("leases").into_inner();
    assert!(list.leases.iter().any(|l| l.id == g.id));
    lease_f.lease_revoke(LeaseRevokeRequest { id: g.id }).await.expect("revoke");
    let gone = kv_f
        .range(RangeRequest { key: Bytes::from("leased"), ..Default::default() })
        .await
        .expect("range")
        .into_inner();
    assert!(gone.kvs.is_empty(), "the lease's key went with it");
    ka_tx.send(LeaseKeepAliveRequest { id: g.id }).await.expect("send keep-alive");
    let r = tokio::time::timeout(WAIT, ka.message()).await.expect("in time").expect("ok");
    assert_eq!(r.map(|r| r.ttl), Some(0), "a revoked lease answers TTL 0");
    let ttl = lease_f
        .lease_time_to_live(LeaseTimeToLiveRequest { id: g.id, keys: false })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    let err = lease_f.lease_revoke(LeaseRevokeRequest { id: g.id }).await.expect_err("gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "etcdserver: requested lease not found");

    // --- Every member hashes the same history.
    let rev = kv_l
        .put(put("final", "x"))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut m = MaintenanceClient::new(c.channel(i).await);
        let deadline = tokio::time::Instant::now() + WAIT;
        let h = loop {
            match m.hash_kv(HashKvRequest { revision: rev }).await {
                Ok(h) => break h.into_inner(),
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "hashkv on {i}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(h.compact_revision, now);
        hashes.push(h.hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    // The whole-store hash agrees too once every member applied the same log.
    let mut whole = Vec::new();
    for i in 0..3 {
        let mut m = MaintenanceClient::new(c.channel(i).await);
        let deadline = tokio::time::Instant::now() + WAIT;
        let h = loop {
            let h = m.hash(HashRequest {}).await.expect("hash").into_inner();
            if h.header.map(|h| h.revision) == Some(rev) {
                break h.hash;
            }
            assert!(tokio::time::Instant::now() < deadline, "member {i} never reached {rev}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        whole.push(h);
    }
    assert!(whole.iter().all(|h| *h == whole[0]), "{whole:?}");

    // Authentication is off, and says so; managing users is not supported.
    let mut auth = AuthClient::new(follower.clone());
    let st = auth.auth_status(AuthStatusRequest {}).await.expect("auth status").into_inner();
    assert!(!st.enabled);
    let err = auth
        .authenticate(AuthenticateRequest { name: "root".into(), password: "x".into() })
        .await
        .expect_err("not enabled");
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::FailedPrecondition, "etcdserver: authentication is not enabled")
    );
    let err = auth
        .user_add(AuthUserAddRequest { name: "alice".into(), ..Default::default() })
        .await
        .expect_err("not supported");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("not supported"), "{err}");
}

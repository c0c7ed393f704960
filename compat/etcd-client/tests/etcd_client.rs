//! quorumkv's etcd v3 API driven by the third-party `etcd-client` crate (tonic/prost): KV,
//! Txn, Compact, Watch, Lease, Cluster and Maintenance against a real 3-node cluster.
//!
//! Each test owns its cluster (killed by pid when it drops, panics included) and runs under
//! a deadline. The Lock and Election services are not covered: quorumkv does not serve them.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Error, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, ResponseHeader, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};
use quorumkv_etcd_client_compat::{Cluster, bounded};
use tonic::Code;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";

/// A header every response must carry: a cluster id and a revision.
fn header(h: Option<&ResponseHeader>) -> ResponseHeader {
    let h = h.expect("a response header").clone();
    assert_ne!(h.cluster_id(), 0, "cluster id in {h:?}");
    assert!(h.revision() > 0, "revision in {h:?}");
    assert!(h.raft_term() > 0, "raft term in {h:?}");
    h
}

fn values(kvs: &[etcd_client::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The gRPC code and message of an etcd-client error.
fn status(e: Error) -> (Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_put_get_range_txn_delete_compact() {
    let cluster = Cluster::start(3).await;
    bounded(async {
        let mut c = cluster.client().await;

        // Put, with and without a previous value.
        let r = c.put("kv/a", "1", Some(PutOptions::new().with_prev_key())).await.unwrap();
        let rev_a1 = header(r.header()).revision();
        assert!(r.prev_key().is_none(), "first put has no previous value: {r:?}");
        let r = c.put("kv/a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
        let rev_a2 = header(r.header()).revision();
        assert_eq!(rev_a2, rev_a1 + 1);
        let prev = r.prev_key().expect("prev_kv asked for");
        assert_eq!((prev.key(), prev.value()), (&b"kv/a"[..], &b"1"[..]));
        assert_eq!(
            (prev.create_revision(), prev.mod_revision(), prev.version()),
            (rev_a1, rev_a1, 1)
        );
        for (k, v) in [("kv/b", "b"), ("kv/c", "c"), ("kv0", "outside the prefix")] {
            c.put(k, v, None).await.unwrap();
        }

        // Get one key: value and its revisions.
        let r = c.get("kv/a", None).await.unwrap();
        header(r.header());
        assert_eq!(r.count(), 1);
        let kv = &r.kvs()[0];
        assert_eq!(kv.value(), b"2");
        assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (rev_a1, rev_a2, 2));
        assert_eq!(kv.lease(), 0);

        // A missing key.
        let r = c.get("kv/missing", None).await.unwrap();
        assert_eq!((r.count(), r.kvs().len()), (0, 0));

        // A read at an older revision.
        let r = c.get("kv/a", Some(GetOptions::new().with_revision(rev_a1))).await.unwrap();
        assert_eq!(values(r.kvs()), pairs(&[("kv/a", "1")]));

        // Prefix (the key "kv0", just past the prefix range, is left out).
        let r = c.get("kv/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(values(r.kvs()), pairs(&[("kv/a", "2"), ("kv/b", "b"), ("kv/c", "c")]));
        assert_eq!(r.count(), 3);
        assert!(!r.more());

        // Limit: the first keys, `more`, and the count of the whole range.
        let r = c.get("kv/", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
        assert_eq!(values(r.kvs()), pairs(&[("kv/a", "2"), ("kv/b", "b")]));
        assert!(r.more());
        assert_eq!(r.count(), 3);

        // Count only / keys only.
        let r =
            c.get("kv/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
        assert!(r.kvs().is_empty(), "count_only returned kvs: {r:?}");
        assert_eq!(r.count(), 3);
        let r = c.get("kv/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
        assert_eq!(values(r.kvs()), pairs(&[("kv/a", ""), ("kv/b", ""), ("kv/c", "")]));
        assert_eq!(r.kvs()[0].mod_revision(), rev_a2, "keys_only keeps the revisions");

        // Txn on a value compare: then branch (a put and a get, both seeing the txn's write).
        let r = c
            .txn(
                Txn::new()
                    .when([Compare::value("kv/a", CompareOp::Equal, "2")])
                    .and_then([TxnOp::put("kv/a", "3", None), TxnOp::get("kv/a", None)])
                    .or_else([TxnOp::get("kv/b", None)]),
            )
            .await
            .unwrap();
        let rev_t1 = header(r.header()).revision();
        assert!(r.succeeded());
        let ops = r.op_responses();
        assert_eq!(ops.len(), 2);
        assert!(matches!(&ops[0], TxnOpResponse::Put(_)), "{ops:?}");
        match &ops[1] {
            TxnOpResponse::Get(g) => {
                assert_eq!(values(g.kvs()), pairs(&[("kv/a", "3")]));
                assert_eq!(g.kvs()[0].mod_revision(), rev_t1);
                assert_eq!(g.kvs()[0].version(), 3);
            }
            other => panic!("expected a get response, got {other:?}"),
        }

        // Txn on a version compare that fails: else branch; a read-only txn keeps the revision.
        let r = c
            .txn(
                Txn::new()
                    .when([Compare::version("kv/a", CompareOp::Equal, 1)])
                    .and_then([TxnOp::put("kv/a", "never", None)])
                    .or_else([TxnOp::get("kv/b", None)]),
            )
            .await
            .unwrap();
        assert!(!r.succeeded());
        assert_eq!(header(r.header()).revision(), rev_t1);
        match &r.op_responses()[..] {
            [TxnOpResponse::Get(g)] => assert_eq!(values(g.kvs()), pairs(&[("kv/b", "b")])),
            other => panic!("expected one get response, got {other:?}"),
        }

        // Mod revision and version compares that hold: then branch, a delete with prev_kv.
        let r = c
            .txn(
                Txn::new()
                    .when([
                        Compare::mod_revision("kv/a", CompareOp::Equal, rev_t1),
                        Compare::version("kv/a", CompareOp::Greater, 2),
                    ])
                    .and_then([TxnOp::delete("kv/c", Some(DeleteOptions::new().with_prev_key()))])
                    .or_else([TxnOp::put("kv/else", "x", None)]),
            )
            .await
            .unwrap();
        let rev_t3 = header(r.header()).revision();
        assert!(r.succeeded());
        assert_eq!(rev_t3, rev_t1 + 1);
        match &r.op_responses()[..] {
            [TxnOpResponse::Delete(d)] => {
                assert_eq!(d.deleted(), 1);
                assert_eq!(values(d.prev_kvs()), pairs(&[("kv/c", "c")]));
            }
            other => panic!("expected one delete response, got {other:?}"),
        }

        // A mod revision compare that fails: else branch writes.
        let r = c
            .txn(
                Txn::new()
                    .when([Compare::mod_revision("kv/a", CompareOp::Less, rev_t1)])
                    .and_then([TxnOp::put("kv/then", "x", None)])
                    .or_else([TxnOp::put("kv/else", "x", None)]),
            )
            .await
            .unwrap();
        assert!(!r.succeeded());
        assert_eq!(header(r.header()).revision(), rev_t3 + 1);
        let r = c.get("kv/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
        assert_eq!(values(r.kvs()), pairs(&[("kv/a", ""), ("kv/b", ""), ("kv/else", "")]));

        // Delete a range, with the previous values.
        let r = c
            .delete("kv/", Some(DeleteOptions::new().with_prefix().with_prev_key()))
            .await
            .unwrap();
        let rev_del = header(r.header()).revision();
        assert_eq!(rev_del, rev_t3 + 2);
        assert_eq!(r.deleted(), 3);
        assert_eq!(values(r.prev_kvs()), pairs(&[("kv/a", "3"), ("kv/b", "b"), ("kv/else", "x")]));
        let r = c.get("kv/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!((r.count(), r.kvs().len()), (0, 0));
        // Deleting nothing does not move the revision.
        let r = c.delete("kv/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
        assert_eq!(r.deleted(), 0);
        assert_eq!(header(r.header()).revision(), rev_del);

        // A revision in the future.
        let e = c
            .get("kv/a", Some(GetOptions::new().with_revision(rev_del + 1000)))
            .await
            .expect_err("a read at a future revision");
        let (code, message) = status(e);
        assert_eq!((code, message.as_str()), (Code::OutOfRange, FUTURE_REV));

        // Compact; a read below the compacted revision fails as in etcd, one at it succeeds.
        let r = c.compact(rev_t1, None).await.unwrap();
        assert!(header(r.header()).revision() >= rev_del);
        let e = c
            .get("kv/a", Some(GetOptions::new().with_revision(rev_a1)))
            .await
            .expect_err("a read at a compacted revision");
        let (code, message) = status(e);
        assert_eq!((code, message.as_str()), (Code::OutOfRange, COMPACTED));
        let r = c.get("kv/a", Some(GetOptions::new().with_revision(rev_t1))).await.unwrap();
        assert_eq!(values(r.kvs()), pairs(&[("kv/a", "3")]));
        // Compacting again at or below the compacted revision is refused.
        let (code, message) =
            status(c.compact(rev_a2, None).await.expect_err("compacting an old revision"));
        assert_eq!((code, message.as_str()), (Code::OutOfRange, COMPACTED));
        // The key outside the prefix survived every range operation.
        let r = c.get("kv0", None).await.unwrap();
        assert_eq!(values(r.kvs()), pairs(&[("kv0", "outside the prefix")]));
    })
    .await;
}

/// Reads watch responses until `n` events arrived, failing on a cancel or a closed stream.
async fn next_events(w: &mut WatchStream, n: usize) -> Vec<etcd_client::Event> {
    let mut events = Vec::new();
    while events.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .unwrap_or_else(|_| panic!("no watch event within 10 s; got so far {events:?}"))
            .expect("watch stream error")
            .expect("watch stream closed");
        assert!(!msg.canceled(), "watch canceled: {msg:?}");
        header(msg.header());
        events.extend(msg.events().iter().cloned());
    }
    assert_eq!(events.len(), n, "more events than expected: {events:?}");
    events
}

fn event_summary(e: &etcd_client::Event) -> (EventType, String, String, i64) {
    let kv = e.kv().expect("event kv");
    (
        e.event_type(),
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
        kv.mod_revision(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prefix_live_replay_and_compacted() {
    let cluster = Cluster::start(3).await;
    bounded(async {
        // Watch through one node, write through another.
        let mut wc = cluster.client_of(1).await;
        let mut c = cluster.client_of(0).await;

        let mut w =
            wc.watch("w/", Some(WatchOptions::new().with_prefix().with_prev_key())).await.unwrap();
        let created = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("the created response")
            .unwrap()
            .expect("watch stream open");
        assert!(created.created(), "first response is the creation: {created:?}");
        assert!(created.events().is_empty());
        let watch_id = created.watch_id();

        let rev_x1 = header(c.put("w/x", "1", None).await.unwrap().header()).revision();
        let e = next_events(&mut w, 1).await;
        assert_eq!(event_summary(&e[0]), (EventType::Put, "w/x".into(), "1".into(), rev_x1));
        let kv = e[0].kv().unwrap();
        assert_eq!((kv.create_revision(), kv.version()), (rev_x1, 1));
        assert!(e[0].prev_kv().is_none(), "a created key has no prev_kv: {e:?}");

        // A key outside the prefix is not seen; the next put inside it is.
        c.put("wz", "outside", None).await.unwrap();
        let rev_x2 = header(c.put("w/x", "2", None).await.unwrap().header()).revision();
        let e = next_events(&mut w, 1).await;
        assert_eq!(event_summary(&e[0]), (EventType::Put, "w/x".into(), "2".into(), rev_x2));
        assert_eq!(e[0].kv().unwrap().version(), 2);
        let prev = e[0].prev_kv().expect("prev_kv asked for");
        assert_eq!((prev.value(), prev.mod_revision()), (&b"1"[..], rev_x1));

        let rev_y = header(c.put("w/y", "y", None).await.unwrap().header()).revision();
        let rev_del = header(c.delete("w/x", None).await.unwrap().header()).revision();
        let e = next_events(&mut w, 2).await;
        assert_eq!(event_summary(&e[0]), (EventType::Put, "w/y".into(), "y".into(), rev_y));
        assert_eq!(event_summary(&e[1]), (EventType::Delete, "w/x".into(), String::new(), rev_del));
        assert_eq!(e[1].prev_kv().map(|p| p.value().to_vec()), Some(b"2".to_vec()));
        w.cancel(watch_id).await.unwrap();

        // A watch from an old revision replays the history, in order, then goes on live.
        let mut replay = wc
            .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(rev_x1)))
            .await
            .unwrap();
        let e = next_events(&mut replay, 4).await;
        let got: Vec<_> = e.iter().map(event_summary).collect();
        assert_eq!(
            got,
            vec![
                (EventType::Put, "w/x".into(), "1".into(), rev_x1),
                (EventType::Put, "w/x".into(), "2".into(), rev_x2),
                (EventType::Put, "w/y".into(), "y".into(), rev_y),
                (EventType::Delete, "w/x".into(), String::new(), rev_del),
            ]
        );
        let rev_z = header(c.put("w/z", "z", None).await.unwrap().header()).revision();
        let e = next_events(&mut replay, 1).await;
        assert_eq!(event_summary(&e[0]), (EventType::Put, "w/z".into(), "z".into(), rev_z));

        // After a compaction, a watch from before it is canceled with the compact revision.
        c.compact(rev_y, None).await.unwrap();
        let mut old = wc
            .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(rev_x1)))
            .await
            .unwrap();
        let canceled = loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), old.message())
                .await
                .expect("a response to a watch from a compacted revision")
                .unwrap()
                .expect("watch stream open");
            assert!(msg.events().is_empty(), "events from a compacted revision: {msg:?}");
            if msg.canceled() || msg.compact_revision() != 0 {
                break msg;
            }
        };
        assert!(canceled.canceled(), "{canceled:?}");
        assert_eq!(canceled.compact_revision(), rev_y, "{canceled:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_grant_keepalive_ttl_list_revoke() {
    let cluster = Cluster::start(3).await;
    bounded(async {
        let mut c = cluster.client().await;

        let g = c.lease_grant(30, None).await.unwrap();
        header(g.header());
        let id = g.id();
        assert_ne!(id, 0);
        assert_eq!(g.ttl(), 30);
        assert_eq!(g.error(), "");

        // A lease id chosen by the client.
        let g2 = c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x7a11))).await.unwrap();
        assert_eq!((g2.id(), g2.ttl()), (0x7a11, 60));

        c.put("l/k", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
        c.put("l/k2", "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
        let r = c.get("l/k", None).await.unwrap();
        assert_eq!(r.kvs()[0].lease(), id);

        // One keep-alive round trip: the lease is renewed to its full TTL.
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await.unwrap();
        assert_eq!(keeper.id(), id);
        keeper.keep_alive().await.unwrap();
        let ka = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a keep-alive response")
            .unwrap()
            .expect("keep-alive stream open");
        header(ka.header());
        assert_eq!((ka.id(), ka.ttl()), (id, 30));

        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        header(t.header());
        assert_eq!((t.id(), t.granted_ttl()), (id, 30));
        assert!((1..=30).contains(&t.ttl()), "remaining ttl {}", t.ttl());
        let keys: BTreeSet<&[u8]> = t.keys().iter().map(Vec::as_slice).collect();
        assert_eq!(keys, BTreeSet::from([&b"l/k"[..], &b"l/k2"[..]]));

        let listed: BTreeSet<i64> =
            c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
        assert_eq!(listed, BTreeSet::from([id, 0x7a11]));

        // Revoke: the attached keys are deleted, the lease is gone.
        let r = c.lease_revoke(id).await.unwrap();
        header(r.header());
        let r = c.get("l/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(r.count(), 0, "keys of a revoked lease: {r:?}");
        let listed: BTreeSet<i64> =
            c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
        assert_eq!(listed, BTreeSet::from([0x7a11]));
        // etcd answers TimeToLive of an unknown lease with ttl -1, not an error.
        let t = c.lease_time_to_live(id, None).await.unwrap();
        assert_eq!((t.id(), t.ttl()), (id, -1));
        let (code, message) =
            status(c.lease_revoke(id).await.expect_err("revoking a revoked lease"));
        assert_eq!(
            (code, message.as_str()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_members_maintenance_status_and_headers() {
    let cluster = Cluster::start(3).await;
    bounded(async {
        let mut c = cluster.client().await;

        let r = c.member_list().await.unwrap();
        let cluster_id = header(r.header()).cluster_id();
        let members = r.members();
        assert_eq!(members.len(), 3, "{members:?}");
        for node in &cluster.nodes {
            let m = members
                .iter()
                .find(|m| m.id() == node.id)
                .unwrap_or_else(|| panic!("member {} missing: {members:?}", node.id));
            assert_eq!(m.name(), format!("node{}", node.id));
            assert_eq!(m.peer_urls(), [format!("http://127.0.0.1:{}", node.peer)]);
            assert_eq!(m.client_urls(), [node.endpoint()]);
            assert!(!m.is_learner());
        }

        // Status of each node: the same leader, a raft index, its own member id.
        let mut leaders = BTreeSet::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let mut nc = cluster.client_of(i).await;
            let s = nc.status().await.unwrap();
            let h = header(s.header());
            assert_eq!(h.cluster_id(), cluster_id, "one cluster id everywhere");
            assert_eq!(h.member_id(), node.id, "status answered by the node asked");
            assert!(s.raft_index() > 0, "raft index of node {}: {s:?}", node.id);
            assert!(s.raft_applied_index() > 0, "applied index of node {}: {s:?}", node.id);
            assert!(s.raft_term() > 0);
            assert!(!s.version().is_empty(), "version of node {}: {s:?}", node.id);
            assert!(!s.is_learner());
            leaders.insert(s.leader());
        }
        assert_eq!(leaders.len(), 1, "the nodes disagree on the leader: {leaders:?}");
        let leader = *leaders.first().unwrap();
        assert!(cluster.nodes.iter().any(|n| n.id == leader), "leader {leader} is no member");

        // A write through one node is read through each other one (linearizable reads).
        let mut first = cluster.client_of(0).await;
        let put = first.put("m/k", "v", None).await.unwrap();
        let h = header(put.header());
        assert_eq!(h.cluster_id(), cluster_id);
        for i in 1..cluster.nodes.len() {
            let mut other: Client = cluster.client_of(i).await;
            let r = other.get("m/k", None).await.unwrap();
            let rh = header(r.header());
            assert_eq!(rh.cluster_id(), cluster_id);
            assert!(rh.revision() >= h.revision());
            assert_eq!(values(r.kvs()), pairs(&[("m/k", "v")]));
            assert_eq!(r.kvs()[0].mod_revision(), h.revision());
        }
    })
    .await;
}

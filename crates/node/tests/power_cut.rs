//! A node on a simulated disk loses power after its log was compacted: it must come back with
//! every acknowledged write. The log may only be compacted behind a store that is durable
//! (the store's commits are not fsynced on their own; the WAL is the durable record until the
//! compaction drops it), and the planted `unsafe_compact_before_store_sync` setting, which
//! compacts first, must be caught by the same power cut.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient;
use quorumkv_etcd_proto::etcdserverpb::{PutRequest, RangeRequest};
use quorumkv_node::{NodeConfig, RunningNode, StartError, start_on};
use quorumkv_storage::disk::{Disk, SimDisk};
use tonic::transport::Channel;

#[path = "../../cli/tests/bounded_run/mod.rs"]
mod bounded_run;
use bounded_run::poll_until_async;

const WAIT: Duration = Duration::from_secs(20);
/// Compaction every 40 applied entries, keeping 20: 100 puts compact the log at least twice.
const SNAPSHOT_ENTRIES: u64 = 40;
const PUTS: u32 = 100;

fn config(dir: &Path, unsafe_compaction: bool) -> NodeConfig {
    NodeConfig {
        id: 1,
        name: "solo".into(),
        data_dir: dir.to_path_buf(),
        client_addr: "127.0.0.1:0".into(),
        peer_addr: "127.0.0.1:0".into(),
        http_addr: "127.0.0.1:0".into(),
        snapshot_entries: SNAPSHOT_ENTRIES,
        unsafe_test_settings: unsafe_compaction,
        unsafe_compact_before_store_sync: unsafe_compaction,
        ..NodeConfig::default()
    }
}

async fn kv(node: &RunningNode) -> KvClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", node.client_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the client port");
    KvClient::new(channel)
}

/// Waits (bounded) for a condition of the node's status, which no event announces.
async fn until(what: &str, done: impl Fn() -> bool) {
    let held = poll_until_async(WAIT, Duration::from_millis(10), async || done()).await;
    assert!(held, "timed out waiting until {what}");
}

/// Writes `PUTS` keys (each acknowledged), waits for the log to be compacted, cuts the power,
/// and starts the node again on what the disk kept.
async fn write_compact_and_cut_power(
    unsafe_compaction: bool,
) -> (Result<RunningNode, StartError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = SimDisk::new(7);
    disk.create_dir_all(dir.path()).expect("mkdir on the simulated disk");
    let disk: Arc<SimDisk> = Arc::new(disk);
    let node = start_on(config(dir.path(), unsafe_compaction), disk.clone()).await.expect("start");
    until("the node leads", || node.group.status().leader == Some(1)).await;
    let mut client = kv(&node).await;
    for i in 0..PUTS {
        let put = PutRequest {
            key: Bytes::from(format!("k{i:03}")),
            value: Bytes::from(format!("v{i}")),
            ..Default::default()
        };
        client.put(put).await.expect("put acknowledged");
    }
    until("the log is compacted", || node.group.status().snapshot_index > 0).await;
    node.shutdown();
    // Everything not fsynced is gone, as after a power cut.
    disk.crash();
    let restarted = start_on(config(dir.path(), unsafe_compaction), disk).await;
    (restarted, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_after_log_compaction_loses_no_acknowledged_write() {
    let (restarted, _dir) = write_compact_and_cut_power(false).await;
    let node = restarted.expect("the node starts again after the power cut");
    until("the node leads again", || node.group.status().leader == Some(1)).await;
    let mut client = kv(&node).await;
    let all =
        RangeRequest { key: Bytes::from("k"), range_end: Bytes::from("l"), ..Default::default() };
    let got = client.range(all).await.expect("range").into_inner();
    assert_eq!(got.count, i64::from(PUTS), "every acknowledged put is there");
    for (i, kv) in got.kvs.iter().enumerate() {
        assert_eq!(kv.value, Bytes::from(format!("v{i}")));
    }
    node.shutdown();
}

/// The demonstration that the test above can fail: with the log compacted before the store
/// is durable, the same power cut leaves a store behind the compaction point, and the node
/// refuses to start (rather than serve a state missing acknowledged writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_before_the_store_sync_is_caught_by_a_power_cut() {
    let (restarted, _dir) = write_compact_and_cut_power(true).await;
    match restarted {
        Err(StartError::Storage(msg)) => {
            assert!(msg.contains("the store lost synced writes"), "unexpected refusal: {msg}");
        }
        Err(other) => panic!("unexpected start error: {other}"),
        Ok(node) => {
            node.shutdown();
            panic!(
                "a node whose log was compacted before its store was durable came back after a power cut"
            );
        }
    }
}

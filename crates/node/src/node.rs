//! Starting a node: lock the data directory, recover the write-ahead log, the store and the
//! latest snapshot, bootstrap a new cluster or wait to be joined, then serve the peer, client
//! and HTTP ports.
//!
//! Recovery order matters: the WAL says what the log holds (and the latest compaction point);
//! the store says what was applied. The log is compacted only behind a synced store or a saved
//! image, so the store is at or past the compaction point, except after a crash between
//! saving a received snapshot and installing it: that store is re-installed from the snapshot
//! file first. The store is never ahead of the WAL: entries are applied only once durable.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_core::SnapshotMeta;
use quorumkv_kv::StateMachine;
use quorumkv_raft::RestoreState;
use quorumkv_storage::disk::{Disk, RealDisk};
use quorumkv_storage::mvcc::{CommitDurability, RedbOptions, RedbStore};
use quorumkv_storage::snapshot::{SnapshotDecoder, SnapshotFileStore};
use quorumkv_storage::wal::{Wal, WalOptions, WalWriter, WriterOptions};
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::codec::Hello;
use crate::config::NodeConfig;
use crate::group::{self, GroupHandle, GroupParams, Member};
use crate::metrics::Metrics;
use crate::transport::Transport;

/// The one consensus group every node runs today (the whole keyspace).
pub const DEFAULT_GROUP: u64 = 1;

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Another process holds the data directory.
    #[error(
        "data directory {0} is in use by another quorumkv process (lock file {0}/LOCK); stop it or choose another data_dir"
    )]
    Locked(PathBuf),
    /// A port could not be bound.
    #[error("cannot listen on {what} address {addr}: {source}; choose a free port with --{flag}")]
    Bind {
        /// Which port.
        what: &'static str,
        /// Address.
        addr: String,
        /// Flag to change it.
        flag: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// Storage could not be opened or recovered.
    #[error("storage: {0}")]
    Storage(String),
    /// The Raft group could not start.
    #[error("raft: {0}")]
    Raft(String),
}

/// A running node.
pub struct RunningNode {
    /// Effective configuration.
    pub config: NodeConfig,
    /// The group.
    pub group: GroupHandle,
    /// The transport.
    pub transport: Transport,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cluster id.
    pub cluster_id: u64,
    /// Bound client address.
    pub client_addr: std::net::SocketAddr,
    /// Bound peer address.
    pub peer_addr: std::net::SocketAddr,
    /// Bound HTTP address.
    pub http_addr: std::net::SocketAddr,
    _lock: File,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops serving (tasks are aborted; the WAL writer drains when dropped).
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Resolves when the group stops on a fatal error.
    pub async fn failed(&self) -> String {
        loop {
            if let Some(e) = self.group.status().failed {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn lock_dir(dir: &Path) -> Result<File, StartError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError::Storage(format!("cannot create {}: {e}", dir.display())))?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| StartError::Storage(format!("cannot open {}/LOCK: {e}", dir.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(_) => Err(StartError::Locked(dir.to_path_buf())),
    }
}

async fn bind(
    addr: &str,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
        what,
        addr: addr.into(),
        flag,
        source,
    })
}

/// Recovers storage and Raft state for the default group.
fn recover(
    cfg: &NodeConfig,
    disk: Arc<dyn Disk>,
) -> Result<(RestoreState, StateMachine<RedbStore>, WalWriter, SnapshotFileStore), StartError> {
    let st = |e: &dyn std::fmt::Display| StartError::Storage(e.to_string());
    let (mut wal, recovered) =
        Wal::open(disk.clone(), cfg.wal_path(), WalOptions::default()).map_err(|e| st(&e))?;
    if let Some(torn) = &recovered.torn_tail {
        warn!(path = %torn.path.display(), offset = torn.offset, bytes = torn.bytes_dropped, "cut a torn write off the end of the WAL (it was never acknowledged)");
    }
    let store = RedbStore::open(
        disk.clone(),
        &cfg.data_dir.join("store.redb"),
        RedbOptions {
            // The WAL is the durable record; the store is synced only when the log is
            // compacted behind it (off the group loop). A periodic fsync on the apply path
            // (every 1,024 commits before) cost 10-16% of put throughput and lengthened p99.
            durability: CommitDurability::ON_SYNC_ONLY,
            ..Default::default()
        },
    )
    .map_err(|e| st(&e))?;
    let mut sm = StateMachine::open(
        Arc::new(store),
        quorumkv_kv::Config { max_txn_ops: cfg.max_txn_ops, ..Default::default() },
    )
    .map_err(|e| st(&e))?;
    let snapshots =
        SnapshotFileStore::open(disk.clone(), &cfg.data_dir.join("snap"), 2).map_err(|e| st(&e))?;
    let restore = match recovered.groups.get(&DEFAULT_GROUP) {
        Some(g) => {
            // The last compaction point, and its image if the node kept one (a log compacted
            // behind the synced store keeps none: the store itself is the state to go on from).
            let snapshot_data = match &g.snapshot {
                Some(meta) => load_snapshot(&snapshots, disk.as_ref(), meta)?,
                None => None,
            };
            let snap_index = g.snapshot.as_ref().map_or(0, |m| m.index);
            if sm.applied_index() < snap_index {
                let Some(data) = &snapshot_data else {
                    return Err(StartError::Storage(format!(
                        "the WAL says the log was compacted at {snap_index}, but the store in {} has applied only {} and no snapshot file for {snap_index} is in {}: the store lost synced writes; restore this node from a backup or remove it and add it back empty",
                        cfg.data_dir.display(),
                        sm.applied_index(),
                        snapshots.dir().display()
                    )));
                };
                info!(index = snap_index, "store is behind the snapshot; installing it");
                let mut dec = SnapshotDecoder::new(&data[..]).map_err(|e| st(&e))?;
                sm.install_snapshot(&mut dec).map_err(|e| st(&e))?;
            }
            let last = snap_index + g.entries.len() as u64;
            let applied = sm.applied_index().clamp(snap_index, last);
            if sm.applied_index() > last {
                return Err(StartError::Storage(format!(
                    "the store applied index {} is beyond the last log entry {last}: the WAL in {} lost acknowledged entries",
                    sm.applied_index(),
                    cfg.wal_path().display()
                )));
            }
            info!(
                entries = g.entries.len(),
                snapshot = snap_index,
                applied,
                "recovered the write-ahead log"
            );
            RestoreState {
                hard_state: g.hard_state.unwrap_or_default(),
                snapshot: g.snapshot.clone(),
                snapshot_data,
                entries: g.entries.clone(),
                applied,
            }
        }
        None if cfg.join => {
            info!("empty data directory: waiting to be added to a cluster");
            RestoreState::default()
        }
        None => {
            let members = cfg.initial_members()?;
            let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
            info!(?voters, "empty data directory: bootstrapping a new cluster");
            let boot = RestoreState::bootstrap(&voters);
            wal.append(DEFAULT_GROUP, &boot.entries).map_err(|e| st(&e))?;
            wal.set_hard_state(DEFAULT_GROUP, boot.hard_state).map_err(|e| st(&e))?;
            wal.sync().map_err(|e| st(&e))?;
            boot
        }
    };
    let writer = WalWriter::start(wal, WriterOptions::default()).map_err(|e| st(&e))?;
    Ok((restore, sm, writer, snapshots))
}

/// The image kept for compaction point `meta`, if its file is there (verified); `None` if the
/// log was compacted with no image.
fn load_snapshot(
    snapshots: &SnapshotFileStore,
    disk: &dyn Disk,
    meta: &SnapshotMeta,
) -> Result<Option<Bytes>, StartError> {
    let files = snapshots.list().map_err(|e| StartError::Storage(e.to_string()))?;
    let Some(info) = files.iter().rev().find(|f| f.index == meta.index && f.term == meta.term)
    else {
        return Ok(None);
    };
    snapshots.verify(info).map_err(|e| StartError::Storage(e.to_string()))?;
    let data = disk
        .read_all(&info.path)
        .map_err(|e| StartError::Storage(format!("{}: {e}", info.path.display())))?;
    Ok(Some(Bytes::from(data)))
}

/// Starts a node and serves its three ports until the returned node is shut down.
pub async fn start(cfg: NodeConfig) -> Result<RunningNode, StartError> {
    start_on(cfg, Arc::new(RealDisk)).await
}

/// [`start`] with the WAL, store and snapshot files on `disk` (tests run nodes on a
/// `SimDisk` to cut their power). The data directory's lock file is always on the real
/// file system.
pub async fn start_on(cfg: NodeConfig, disk: Arc<dyn Disk>) -> Result<RunningNode, StartError> {
    cfg.validate()?;
    let lock = lock_dir(&cfg.data_dir)?;
    let (restore, sm, writer, snapshots) = recover(&cfg, disk.clone())?;
    let peer_listener = bind(&cfg.peer_addr, "peer", "peer-addr").await?;
    let client_listener = bind(&cfg.client_addr, "client", "client-addr").await?;
    let http_listener = bind(&cfg.http_addr, "HTTP", "http-addr").await?;
    let peer_addr = peer_listener.local_addr().map_err(|e| StartError::Storage(e.to_string()))?;
    let client_addr =
        client_listener.local_addr().map_err(|e| StartError::Storage(e.to_string()))?;
    let http_addr = http_listener.local_addr().map_err(|e| StartError::Storage(e.to_string()))?;

    let metrics = Arc::new(Metrics::default());
    let cluster_id = cfg.cluster_id();
    let hello = Hello {
        cluster_id,
        node_id: cfg.id,
        expect_id: 0,
        name: cfg.name.clone(),
        peer_addr: cfg.advertise_peer_addr.clone().unwrap_or_else(|| peer_addr.to_string()),
        client_addr: cfg.advertise_client_addr.clone().unwrap_or_else(|| client_addr.to_string()),
        http_addr: http_addr.to_string(),
    };
    // The transport exists before the group it feeds (the group sends through it); messages
    // that arrive before the group is set are dropped, and Raft resends them.
    let route_to: Arc<std::sync::OnceLock<GroupHandle>> = Arc::default();
    let inbox: crate::transport::Inbox = {
        let route_to = route_to.clone();
        Arc::new(move |m: quorumkv_raft::Message| {
            // One group per node today; the group id routes once there are many.
            if let Some(g) = route_to.get().filter(|_| m.group == DEFAULT_GROUP) {
                g.deliver(m);
            }
        })
    };
    let transport = Transport::new(hello.clone(), inbox, metrics.clone());
    let initial_members: Vec<Member> = cfg
        .initial_members()?
        .into_iter()
        .map(|m| Member {
            id: m.id,
            name: if m.id == cfg.id { cfg.name.clone() } else { String::new() },
            peer_addr: if m.id == cfg.id { hello.peer_addr.clone() } else { m.peer_addr },
            client_addr: if m.id == cfg.id { hello.client_addr.clone() } else { String::new() },
        })
        .collect();
    let mut raft_cfg = quorumkv_raft::Config::new(cfg.id, DEFAULT_GROUP);
    raft_cfg.election_timeout_ticks_min = cfg.election_ticks;
    raft_cfg.election_timeout_ticks_max = cfg.election_ticks * 2;
    raft_cfg.heartbeat_interval_ticks = cfg.heartbeat_ticks;
    raft_cfg.lease_read_max_drift_ticks = cfg.lease_reads.then_some(cfg.lease_drift_ticks);
    raft_cfg.max_uncommitted_entries = cfg.max_inflight_proposals.max(1) * 2;
    let (group, group_task) = group::start(GroupParams {
        group: DEFAULT_GROUP,
        raft: raft_cfg,
        restore,
        sm,
        wal: Arc::new(writer),
        snapshots,
        transport: transport.clone(),
        tick: Duration::from_millis(cfg.tick_ms),
        snapshot_entries: cfg.snapshot_entries,
        max_inflight_proposals: cfg.max_inflight_proposals,
        initial_members,
        unsafe_stale_reads: cfg.unsafe_stale_reads,
        clock_offset_ms: cfg.unsafe_clock_offset_ms,
        unsafe_lease_never_expires: cfg.unsafe_lease_never_expires,
        unsafe_compact_before_store_sync: cfg.unsafe_compact_before_store_sync,
        metrics: metrics.clone(),
        disk,
        snapshot_dir: cfg.data_dir.join("snap"),
    })
    .map_err(|e| StartError::Raft(e.to_string()))?;

    let _ = route_to.set(group.clone());
    let mut tasks = vec![group_task];
    let t = transport.clone();
    tasks.push(tokio::spawn(async move { t.serve(peer_listener).await }));
    let api = crate::etcd::Api::new(
        cfg.clone(),
        cluster_id,
        group.clone(),
        transport.clone(),
        metrics.clone(),
    );
    tasks.push(tokio::spawn(crate::etcd::serve(
        api.clone(),
        client_listener,
        cfg.max_request_bytes,
        cfg.max_connections,
    )));
    tasks.push(tokio::spawn(crate::http::serve(http_listener, api)));
    info!(
        id = cfg.id,
        cluster = %cfg.cluster,
        client = %client_addr,
        peer = %peer_addr,
        http = %http_addr,
        "node started"
    );
    Ok(RunningNode {
        config: cfg,
        group,
        transport,
        metrics,
        cluster_id,
        client_addr,
        peer_addr,
        http_addr,
        _lock: lock,
        tasks,
    })
}

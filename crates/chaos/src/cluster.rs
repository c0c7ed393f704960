//! The cluster under test: real `quorumkv server` processes on loopback, every peer link
//! through the [`ProxyNet`].
//!
//! Addressing, and why it is built this way:
//! - Each node has its real peer port and an *ingress* proxy port, which it advertises
//!   (`--advertise-peer-addr`): whoever learns the node's address from the node itself
//!   (handshakes, the replicated member table, a snapshot) still dials it through a proxy.
//! - For every ordered pair (i, j) a proxy listens on its own port, and node i's
//!   `--initial-cluster` names j at that port: each node starts with its own view of its
//!   peers' addresses. The proxy learns the real link from the dialer's handshake anyway.
//! - Clients talk to the client ports directly. A follower forwarding a client request to
//!   the leader's client port is not proxied either: only Raft traffic is.
//!
//! Every process started here is killed by pid when the [`Cluster`] is dropped (a guard: a
//! failing run, an error or Ctrl-C leaves nothing running). Data lives in a temporary folder
//! removed on drop; logs go to the report folder.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::ChaosError;
use crate::proxy::{NodeId, ProxyNet};

/// How to start the cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `quorumkv` binary (its `server` subcommand runs a node).
    pub binary: PathBuf,
    /// Number of nodes (3 or 5).
    pub nodes: usize,
    /// Where node logs go.
    pub log_dir: PathBuf,
    /// Cluster name (nodes refuse peers of other clusters).
    pub name: String,
    /// How the nodes answer linearizable reads.
    pub reads: ReadMode,
}

/// How the nodes under test answer linearizable reads. The unsafe modes exist to show that
/// the checkers catch what they break.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadMode {
    /// A leader answers from its store while its read lease holds (`--lease-reads true`).
    pub lease_reads: bool,
    /// UNSAFE: every node answers from local state without ReadIndex
    /// (`--unsafe-stale-reads true`).
    pub unsafe_stale_reads: bool,
    /// UNSAFE: with lease reads, a leader's lease never ends, not even after it lost
    /// leadership (`--unsafe-lease-never-expires true`).
    pub unsafe_lease_never_expires: bool,
}

impl ReadMode {
    /// True if any unsafe mode is on.
    pub fn is_unsafe(&self) -> bool {
        self.unsafe_stale_reads || self.unsafe_lease_never_expires
    }

    /// The `quorumkv server` flags of this mode.
    fn server_flags(&self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        if self.lease_reads || self.unsafe_lease_never_expires {
            flags.extend(["--lease-reads", "true"]);
        }
        if self.unsafe_stale_reads {
            flags.extend(["--unsafe-stale-reads", "true"]);
        }
        if self.unsafe_lease_never_expires {
            flags.extend(["--unsafe-lease-never-expires", "true"]);
        }
        flags
    }

    /// What the report says about this mode: a short label for its title line and a note,
    /// if the mode is not the default.
    pub fn describe(&self) -> Option<(&'static str, &'static str)> {
        if self.unsafe_stale_reads {
            Some((
                "<b>UNSAFE: every node served linearizable reads from local state</b>",
                "This run used --unsafe-stale-reads: every node answered linearizable reads from its local state without ReadIndex, so stale reads are expected.",
            ))
        } else if self.unsafe_lease_never_expires {
            Some((
                "<b>UNSAFE: read leases never ended</b>",
                "This run used --unsafe-lease-never-expires: a leader's read lease never ended, not even after it lost leadership, so stale reads are expected.",
            ))
        } else if self.lease_reads {
            Some((
                "lease reads",
                "This run used --lease-reads: leaders answered linearizable reads under their read lease, without a heartbeat round.",
            ))
        } else {
            None
        }
    }
}

/// One node as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Node id.
    pub id: NodeId,
    /// Client (etcd gRPC) address.
    pub client: String,
}

/// The current members' client endpoints, shared with the workloads; updated when the
/// membership nemesis replaces a node.
#[derive(Clone, Default)]
pub struct Endpoints(Arc<RwLock<Vec<Endpoint>>>);

impl Endpoints {
    /// The endpoints now.
    pub fn list(&self) -> Vec<Endpoint> {
        self.0.read().clone()
    }

    /// The endpoint for client number `n` (spread over the members).
    pub fn pick(&self, n: u64) -> Endpoint {
        let list = self.0.read();
        list[(n % list.len().max(1) as u64) as usize].clone()
    }

    fn set(&self, list: Vec<Endpoint>) {
        *self.0.write() = list;
    }
}

/// One node slot: a node id with its ports, data and process.
#[derive(Debug)]
pub struct NodeSlot {
    /// Node id (never reused).
    pub id: NodeId,
    /// Client address.
    pub client: String,
    /// Real peer address (only the proxies dial it).
    pub peer: String,
    /// HTTP address.
    pub http: String,
    /// The advertised peer address: the node's ingress proxy.
    pub ingress: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// `--initial-cluster` as this node sees it.
    pub initial_cluster: String,
    /// Started with `--join true` (added to a running cluster).
    pub join: bool,
    /// Removed from the cluster (kept for its log).
    pub removed: bool,
    /// Lease clock offset it runs with (clock-skew nemesis).
    pub clock_offset_ms: i64,
    /// Stopped with SIGSTOP.
    pub paused: bool,
    child: Option<Child>,
}

impl NodeSlot {
    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while a process was started and not killed.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A free loopback port that a restarted node can bind again (see `quorumkv_node::ports`).
fn free_port() -> Result<u16, ChaosError> {
    quorumkv_node::ports::free_loopback_port().map_err(ChaosError::io("find a free port"))
}

/// The cluster under test.
pub struct Cluster {
    spec: ClusterSpec,
    /// The proxy network every peer link passes through.
    pub net: ProxyNet,
    /// Every node slot ever created, removed ones included.
    pub slots: Vec<NodeSlot>,
    /// Client endpoints of the current members.
    pub endpoints: Endpoints,
    /// Proxy address of each ordered pair.
    pair_addrs: BTreeMap<(NodeId, NodeId), String>,
    next_id: NodeId,
    data: tempfile::TempDir,
}

impl Cluster {
    /// Creates slots and proxies for `spec.nodes` nodes and starts them; waits for a leader.
    pub async fn start(spec: ClusterSpec, net: ProxyNet) -> Result<Cluster, ChaosError> {
        std::fs::create_dir_all(&spec.log_dir).map_err(ChaosError::io("create the log folder"))?;
        let data = tempfile::Builder::new()
            .prefix("quorumkv-check-")
            .tempdir()
            .map_err(ChaosError::io("create a data folder"))?;
        let mut c = Cluster {
            spec,
            net,
            slots: Vec::new(),
            endpoints: Endpoints::default(),
            pair_addrs: BTreeMap::new(),
            next_id: 1,
            data,
        };
        for _ in 0..c.spec.nodes {
            c.new_slot().await?;
        }
        let ids: Vec<NodeId> = c.slots.iter().map(|s| s.id).collect();
        for &i in &ids {
            for &j in &ids {
                if i != j {
                    c.add_pair(i, j).await?;
                }
            }
        }
        for i in 0..c.slots.len() {
            c.slots[i].initial_cluster = c.view_of(c.slots[i].id, &ids);
            c.spawn(i)?;
        }
        c.sync_endpoints();
        c.wait_leader(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// A new slot with fresh ports and its ingress proxy; returns its index.
    async fn new_slot(&mut self) -> Result<usize, ChaosError> {
        let id = self.next_id;
        self.next_id += 1;
        let peer = format!("127.0.0.1:{}", free_port()?);
        let ingress = self
            .net
            .listen(None, id, peer.clone())
            .await
            .map_err(ChaosError::io("start a proxy"))?
            .to_string();
        self.slots.push(NodeSlot {
            id,
            client: format!("127.0.0.1:{}", free_port()?),
            peer,
            http: format!("127.0.0.1:{}", free_port()?),
            ingress,
            data_dir: self.data.path().join(format!("n{id}")),
            log: self.spec.log_dir.join(format!("n{id}.log")),
            initial_cluster: String::new(),
            join: false,
            removed: false,
            clock_offset_ms: 0,
            paused: false,
            child: None,
        });
        Ok(self.slots.len() - 1)
    }

    /// Starts the proxy of link i → j.
    async fn add_pair(&mut self, i: NodeId, j: NodeId) -> Result<(), ChaosError> {
        let target = self.slot_by_id(j).map(|s| s.peer.clone()).unwrap_or_default();
        let addr =
            self.net.listen(Some(i), j, target).await.map_err(ChaosError::io("start a proxy"))?;
        self.pair_addrs.insert((i, j), addr.to_string());
        Ok(())
    }

    /// Node `me`'s `--initial-cluster`: every other member at the proxy of link me → it.
    fn view_of(&self, me: NodeId, members: &[NodeId]) -> String {
        members
            .iter()
            .map(|&j| {
                let addr = if j == me {
                    self.slot_by_id(me).map(|s| s.ingress.clone()).unwrap_or_default()
                } else {
                    self.pair_addrs.get(&(me, j)).cloned().unwrap_or_default()
                };
                format!("{j}={addr}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn slot_by_id(&self, id: NodeId) -> Option<&NodeSlot> {
        self.slots.iter().find(|s| s.id == id)
    }

    /// Index of the slot of node `id`.
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    /// Indexes of the current members.
    pub fn active(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&i| !self.slots[i].removed).collect()
    }

    /// Ids of the current members.
    pub fn active_ids(&self) -> Vec<NodeId> {
        self.active().into_iter().map(|i| self.slots[i].id).collect()
    }

    fn sync_endpoints(&self) {
        self.endpoints.set(
            self.active()
                .into_iter()
                .map(|i| Endpoint { id: self.slots[i].id, client: self.slots[i].client.clone() })
                .collect(),
        );
    }

    /// Starts (or restarts) the process of slot `i`.
    pub fn spawn(&mut self, i: usize) -> Result<(), ChaosError> {
        let spec = self.spec.clone();
        let s = &mut self.slots[i];
        if s.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(ChaosError::io("open a node log"))?;
        let err = log.try_clone().map_err(ChaosError::io("open a node log"))?;
        let mut cmd = Command::new(&spec.binary);
        cmd.arg("server")
            .args(["--id", &s.id.to_string(), "--name", &format!("n{}", s.id)])
            .args(["--cluster", &spec.name])
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--client-addr", &s.client, "--peer-addr", &s.peer, "--http-addr", &s.http])
            .args(["--advertise-peer-addr", &s.ingress])
            .args(["--initial-cluster", &s.initial_cluster])
            .args(["--log-format", "json", "--log-level", "info"])
            // Snapshots and their installs on lagging or wiped nodes happen within a short run.
            .args(["--snapshot-entries", "2000"]);
        if s.join {
            cmd.args(["--join", "true"]);
        }
        let unsafe_flags = spec.reads.is_unsafe() || s.clock_offset_ms != 0;
        if unsafe_flags {
            cmd.args(["--unsafe-test-settings", "true"]);
        }
        cmd.args(spec.reads.server_flags());
        if s.clock_offset_ms != 0 {
            cmd.args(["--unsafe-clock-offset-ms", &s.clock_offset_ms.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(ChaosError::io("start a quorumkv server"))?;
        s.child = Some(child);
        s.paused = false;
        Ok(())
    }

    /// SIGKILLs the process of slot `i` (nothing is flushed) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.slots[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.slots[i].paused = false;
    }

    /// SIGSTOPs the process of slot `i`.
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.slots[i].pid() {
            signal(pid, "STOP");
            self.slots[i].paused = true;
        }
    }

    /// SIGCONTs the process of slot `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.slots[i].pid()
            && self.slots[i].paused
        {
            signal(pid, "CONT");
        }
        self.slots[i].paused = false;
    }

    /// Restarts slot `i` with its lease clock offset by `offset_ms` (0 = no offset).
    pub fn restart_with_offset(&mut self, i: usize, offset_ms: i64) -> Result<(), ChaosError> {
        self.kill(i);
        self.slots[i].clock_offset_ms = offset_ms;
        self.spawn(i)
    }

    /// Adds a fresh slot for a node that will join the running cluster under a new id:
    /// its proxies, and its own view of the members. Returns its index; not started yet.
    pub async fn prepare_join(&mut self) -> Result<usize, ChaosError> {
        let members = self.active_ids();
        let i = self.new_slot().await?;
        let id = self.slots[i].id;
        for &m in &members {
            self.add_pair(id, m).await?;
            self.add_pair(m, id).await?;
        }
        let mut view: Vec<NodeId> = members;
        view.push(id);
        self.slots[i].initial_cluster = self.view_of(id, &view);
        self.slots[i].join = true;
        Ok(i)
    }

    /// Marks slot `i` removed from the cluster and kills it.
    pub fn retire(&mut self, i: usize) {
        self.kill(i);
        self.slots[i].removed = true;
        self.sync_endpoints();
    }

    /// Makes slot `i` a member as far as clients are concerned.
    pub fn admit(&mut self, i: usize) {
        self.slots[i].removed = false;
        self.sync_endpoints();
    }

    /// Node `i`'s `/status` JSON, if it answers within a second.
    pub async fn status(&self, i: usize) -> Option<serde_json::Value> {
        let (code, body) = http_get(&self.slots[i].http, "/status").await?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// True when node `i` answers `/readyz` with 200.
    pub async fn ready(&self, i: usize) -> bool {
        matches!(http_get(&self.slots[i].http, "/readyz").await, Some((200, _)))
    }

    /// The member that reports itself leader with the highest term.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.active() {
            if self.slots[i].paused || !self.slots[i].running() {
                continue;
            }
            if let Some(s) = self.status(i).await
                && s["role"] == "leader"
            {
                let term = s["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits for a leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize, ChaosError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Cluster(format!(
                    "no leader within {timeout:?}; see the node logs in {}",
                    self.spec.log_dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every member runs, is ready, and all agree on one leader.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), ChaosError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            let mut ok = true;
            for i in self.active() {
                match self.status(i).await {
                    Some(s) if self.ready(i).await => leaders.push(s["leader"].as_u64()),
                    _ => ok = false,
                }
            }
            leaders.dedup();
            if ok && leaders.len() == 1 && leaders[0].is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Cluster(format!(
                    "the cluster did not become healthy within {timeout:?} after healing; see the node logs in {}",
                    self.spec.log_dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills every process (the guard's work, also callable early).
    pub fn kill_all(&mut self) {
        for i in 0..self.slots.len() {
            self.kill(i);
        }
    }

    /// Where the node logs are.
    pub fn log_dir(&self) -> &Path {
        &self.spec.log_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        self.net.shutdown();
    }
}

/// Sends a signal by pid through `kill(1)`: only processes this run started are signalled.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A minimal HTTP/1.0 GET with a one-second budget: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.ok()?;
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(3), fetch).await.ok().flatten()
}

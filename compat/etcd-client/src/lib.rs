//! A real 3-node quorumkv cluster for the etcd-client compatibility tests.
//!
//! The `quorumkv` binary comes from `QUORUMKV_BIN` (scripts/etcd-client-compat.sh builds it).
//! Nodes listen on loopback ports below the kernel's ephemeral range (as
//! `quorumkv_node::ports` picks them); every process started here is killed by pid when the
//! [`Cluster`] drops, panics included. Every wait has a deadline. When a test fails, the node
//! logs are printed and the data folder is kept.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

/// Longest a cluster may take to elect a leader that every node reports.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole test body may run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest a single RPC may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The lowest port tried.
const PORT_FLOOR: u32 = 10_000;

/// A loopback port that is free now and below the kernel's ephemeral range (a port handed out
/// for port 0 can be taken by an outgoing connection before the node binds it). Each call
/// returns a different port; processes start at different offsets.
pub fn free_loopback_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ceiling = ephemeral_low().max(PORT_FLOOR + 1_000);
    let span = ceiling - PORT_FLOOR;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_FLOOR + (start + n) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port between {PORT_FLOOR} and {ceiling}");
}

/// The first port of the kernel's ephemeral range (32768 if it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|lo| lo.parse().ok()))
        .filter(|&lo: &u32| lo > PORT_FLOOR && lo <= 65_535)
        .unwrap_or(32_768)
}

/// The quorumkv binary under test.
pub fn quorumkv_bin() -> PathBuf {
    match std::env::var_os("QUORUMKV_BIN") {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        Some(p) => panic!("QUORUMKV_BIN={} is not a file", Path::new(&p).display()),
        None => panic!(
            "QUORUMKV_BIN is not set: run scripts/etcd-client-compat.sh, or build with \
             `cargo build -p quorumkv` and point QUORUMKV_BIN at target/debug/quorumkv"
        ),
    }
}

/// One `quorumkv server` process.
pub struct Node {
    /// Node id (also its etcd member id).
    pub id: u64,
    /// Client (etcd gRPC) port.
    pub client: u16,
    /// Peer (raft) port.
    pub peer: u16,
    /// HTTP port.
    pub http: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }
}

/// A running cluster; dropping it kills every node.
pub struct Cluster {
    /// The nodes, in id order.
    pub nodes: Vec<Node>,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` nodes and waits until every one reports the same leader.
    pub async fn start(n: u64) -> Cluster {
        let bin = quorumkv_bin();
        let dir = tempfile::Builder::new().prefix("quorumkv-etcd-client-").tempdir().unwrap();
        let mut cluster = Cluster { nodes: Vec::new(), dir: None };
        for id in 1..=n {
            cluster.nodes.push(Node {
                id,
                client: free_loopback_port(),
                peer: free_loopback_port(),
                http: free_loopback_port(),
                child: None,
                log: dir.path().join(format!("node{id}.log")),
            });
        }
        let initial = cluster
            .nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        for node in &mut cluster.nodes {
            let log = std::fs::File::create(&node.log).expect("create the node log");
            let mut cmd = Command::new(&bin);
            cmd.arg("server")
                .args(["--id", &node.id.to_string(), "--name", &format!("node{}", node.id)])
                .arg("--data-dir")
                .arg(dir.path().join(format!("node{}", node.id)))
                .args(["--client-addr", &format!("127.0.0.1:{}", node.client)])
                .args(["--peer-addr", &format!("127.0.0.1:{}", node.peer)])
                .args(["--http-addr", &format!("127.0.0.1:{}", node.http)])
                .args(["--initial-cluster", &initial])
                .args(["--log-format", "json"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log);
            // The developer's shell must not smuggle settings in (QUORUMKV_BIN included).
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("QUORUMKV_") {
                    cmd.env_remove(k);
                }
            }
            node.child = Some(cmd.spawn().expect("start quorumkv server"));
        }
        cluster.dir = Some(dir);
        cluster.wait_for_leader().await;
        cluster
    }

    /// Every client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::endpoint).collect()
    }

    /// A client balanced over every node.
    pub async fn client(&self) -> Client {
        connect(&self.endpoints()).await
    }

    /// A client of the node at index `i` alone.
    pub async fn client_of(&self, i: usize) -> Client {
        connect(&[self.nodes[i].endpoint()]).await
    }

    /// The leader's id, once every node's Maintenance.Status names the same nonzero one.
    pub async fn wait_for_leader(&self) -> u64 {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        let mut clients = Vec::new();
        for i in 0..self.nodes.len() {
            clients.push(self.client_of(i).await);
        }
        let mut last = Vec::new();
        loop {
            last.clear();
            for c in &mut clients {
                let leader = match tokio::time::timeout(Duration::from_secs(2), c.status()).await {
                    Ok(Ok(s)) => Ok(s.leader()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                };
                last.push(leader);
            }
            if let Some(Ok(first)) = last.first()
                && *first != 0
                && last.iter().all(|l| l.as_ref() == Ok(first))
            {
                return *first;
            }
            assert!(
                Instant::now() < deadline,
                "no leader every node agrees on after {LEADER_TIMEOUT:?}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn dump_logs(&self) {
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- node {} log (last 40 lines of {}) -----", n.id, n.log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!("test data kept in {}", dir.keep().display());
            }
        }
    }
}

/// A client of `endpoints`, with connect and request deadlines.
pub async fn connect(endpoints: &[String]) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(RPC_TIMEOUT);
    Client::connect(endpoints, Some(opts)).await.expect("etcd-client connect")
}

/// Runs a test body with a deadline; a body that overruns fails the test. Start the cluster
/// before and pass it by reference, so it drops while the test panics (logs are printed).
pub async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("test body did not finish within {TEST_TIMEOUT:?}");
    }
}

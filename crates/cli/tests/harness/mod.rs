//! A cluster of real `quorumkv server` processes on loopback, for integration tests.
//!
//! Every node gets three free ports, its own data directory under a temporary folder, and a
//! log file. Processes are killed by pid when the cluster is dropped, so a failing test leaves
//! nothing running.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

#[path = "../bounded_run/mod.rs"]
mod bounded_run;
pub use bounded_run::{poll_until, poll_until_async};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_quorumkv")
}

/// A free loopback port a restarted node can bind again.
pub fn free_port() -> u16 {
    quorumkv_node::ports::free_loopback_port().expect("a free port")
}

/// One node of a test cluster.
pub struct Node {
    /// Node id.
    pub id: u64,
    /// Client address.
    pub client: String,
    /// Peer address.
    pub peer: String,
    /// HTTP address.
    pub http: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Extra flags it was started with.
    pub extra: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A cluster of server processes.
pub struct Cluster {
    /// The nodes, index 0 = id 1.
    pub nodes: Vec<Node>,
    /// Root of every node's data.
    pub dir: tempfile::TempDir,
    /// `--initial-cluster` value.
    pub initial: String,
    /// Cluster name.
    pub name: String,
}

impl Cluster {
    /// Starts `n` nodes forming a new cluster and waits for a leader.
    pub fn start(n: u64) -> Self {
        Self::start_with(n, &[])
    }

    /// Starts `n` nodes with extra flags for every node.
    pub fn start_with(n: u64, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(Self::node(dir.path(), id, extra));
        }
        let initial =
            nodes.iter().map(|n| format!("{}={}", n.id, n.peer)).collect::<Vec<_>>().join(",");
        let mut c = Cluster { nodes, dir, initial, name: "test".into() };
        for i in 0..n as usize {
            c.spawn(i);
        }
        c.wait_leader(Duration::from_secs(30));
        c
    }

    fn node(root: &Path, id: u64, extra: &[&str]) -> Node {
        Node {
            id,
            client: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            data_dir: root.join(format!("node{id}")),
            log: root.join(format!("node{id}.log")),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        }
    }

    /// Adds a node that is not started yet (for joins); returns its index.
    pub fn add_node(&mut self, id: u64, extra: &[&str]) -> usize {
        let n = Self::node(self.dir.path(), id, extra);
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Starts (or restarts) node `i`.
    pub fn spawn(&mut self, i: usize) {
        let initial = self.initial.clone();
        let name = self.name.clone();
        let n = &mut self.nodes[i];
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&n.log).expect("log file");
        let child = Command::new(binary())
            .arg("server")
            .args(["--id", &n.id.to_string(), "--name", &format!("node{}", n.id)])
            .args(if n.extra.iter().any(|a| a == "--cluster") {
                vec![]
            } else {
                vec!["--cluster".to_string(), name]
            })
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--client-addr", &n.client, "--peer-addr", &n.peer, "--http-addr", &n.http])
            .args(["--initial-cluster", &initial, "--log-format", "json", "--log-level", "info"])
            .args(&n.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn quorumkv server");
        n.child = Some(child);
    }

    /// SIGKILLs node `i` (no chance to flush anything).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs node `i` and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let exited = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if exited {
                return;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// GET on node `i`'s HTTP port: (status code, body).
    pub fn http(&self, i: usize, path: &str) -> Option<(u16, String)> {
        http_get(&self.nodes[i].http, path)
    }

    /// Node `i`'s `/status` JSON.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let (code, body) = self.http(i, "/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// Index of the node that reports itself leader with the highest term, if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                self.status(i)
                    .filter(|s| s["role"] == "leader")
                    .map(|s| (s["term"].as_u64().unwrap_or(0), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Waits for a leader; panics with the logs if none appears in time.
    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        let mut leader = None;
        if poll_until(timeout, Duration::from_millis(50), || {
            leader = self.leader();
            leader.is_some()
        }) && let Some(l) = leader
        {
            return l;
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, n.log_tail(15)))
            .collect();
        panic!("no leader within {timeout:?}\n{}", logs.join("\n"));
    }

    /// Waits until `f` holds, or panics with `what`.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Self) -> bool) {
        if !poll_until(timeout, Duration::from_millis(50), || f(self)) {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
    }

    /// A KV client for node `i`.
    pub async fn kv(&self, i: usize) -> KvClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.nodes[i].client))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        KvClient::new(ch)
    }

    /// Comma-separated client endpoints.
    pub fn endpoints(&self) -> String {
        self.nodes.iter().map(|n| n.client.clone()).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A minimal HTTP/1.0 GET.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

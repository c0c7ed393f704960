//! A real quorumkv cluster for the Rust client and CLI client-verb tests: `quorumkv server`
//! processes on free loopback ports, each killed by pid when the cluster drops.
//!
//! Every wait has a deadline and polls a condition; nothing sleeps a fixed time to let
//! something happen. When a test fails, the last lines of every node's log are printed and
//! the data folder is kept.

#![allow(dead_code)] // Each test binary uses part of this module.

#[path = "../bounded_run/mod.rs"]
mod bounded_run;
pub use bounded_run::{Run, run_bounded};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a cluster may take to elect a leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one `quorumkv` client command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary under test.
pub fn quorumkv_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quorumkv"))
}

/// Free loopback ports: bound together (so they differ), then released for the servers.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| quorumkv_node::ports::free_loopback_port().expect("a free port")).collect()
}

/// Polls `cond` until it holds; panics naming `what` at the deadline.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One server process.
pub struct Node {
    /// Member id.
    pub id: u64,
    /// Client port (etcd v3 gRPC).
    pub client: u16,
    /// Peer port.
    pub peer: u16,
    /// HTTP port.
    pub http: u16,
    /// Log file (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of `quorumkv server` processes on loopback.
pub struct Cluster {
    /// The nodes, node i+1 at index i.
    pub nodes: Vec<Node>,
    /// `--initial-cluster` of the founding members.
    initial: String,
    dir: Option<tempfile::TempDir>,
}

/// A minimal HTTP/1.0 GET on loopback; the body if the answer is 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.split_whitespace().nth(1).filter(|c| *c == "200").map(|_| body.to_string())
}

impl Cluster {
    /// Starts `n` nodes and waits until one leads.
    pub fn start(n: u64) -> Cluster {
        // A port picked free can be taken by another process before the server binds it;
        // then the whole cluster starts again on new ports.
        for _ in 0..5 {
            let mut cluster = Cluster::spawn_all(n);
            match cluster.wait_started() {
                Ok(()) => {
                    cluster.wait_for_leader();
                    return cluster;
                }
                Err(why) => eprintln!("restarting the test cluster on new ports: {why}"),
            }
        }
        panic!("could not start a {n}-node cluster on free ports in 5 attempts")
    }

    fn spawn_all(n: u64) -> Cluster {
        let dir =
            tempfile::Builder::new().prefix("quorumkv-client-test-").tempdir().expect("tempdir");
        let ports = free_ports(3 * n as usize);
        let nodes: Vec<Node> = (0..n as usize)
            .map(|i| Node {
                id: i as u64 + 1,
                client: ports[3 * i],
                peer: ports[3 * i + 1],
                http: ports[3 * i + 2],
                log: dir.path().join(format!("node{}.log", i + 1)),
                child: None,
            })
            .collect();
        let initial: Vec<String> =
            nodes.iter().map(|n| format!("{}=127.0.0.1:{}", n.id, n.peer)).collect();
        let mut cluster = Cluster { nodes, initial: initial.join(","), dir: Some(dir) };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i, false);
        }
        cluster
    }

    /// Waits until every node answers on its HTTP port; Err if one lost a port race.
    fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            for n in &mut self.nodes {
                let exited = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    n.child = None;
                    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                    if log.contains("Address already in use") {
                        return Err(format!("node {} lost its port ({status})", n.id));
                    }
                    let kept = self.dir.take().map(tempfile::TempDir::keep);
                    panic!(
                        "node {} exited during start-up ({status}); data kept in {kept:?}:\n{log}",
                        n.id
                    );
                }
            }
            if self.nodes.iter().all(|n| http_get(n.http, "/livez").is_some()) {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "the nodes did not start within {LEADER_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process of the node at index `i` (`join`: empty, waiting to be added).
    fn spawn(&mut self, i: usize, join: bool) {
        let data = self.dir.as_ref().map(|d| d.path().to_path_buf()).expect("the data folder");
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(&node.log).expect("create the node log");
        let mut cmd = Command::new(quorumkv_bin());
        cmd.arg("server")
            .args(["--id", &node.id.to_string(), "--name", &format!("node{}", node.id)])
            .arg("--data-dir")
            .arg(data.join(format!("node{}", node.id)))
            .args(["--client-addr", &node.endpoint()])
            .args(["--peer-addr", &format!("127.0.0.1:{}", node.peer)])
            .args(["--http-addr", &format!("127.0.0.1:{}", node.http)])
            .args(["--initial-cluster", &self.initial])
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if join {
            cmd.args(["--join", "true"]);
        }
        // Settings must not leak in from the developer's shell.
        for (k, _) in std::env::vars() {
            if k.starts_with("QUORUMKV_") {
                cmd.env_remove(k);
            }
        }
        node.child = Some(cmd.spawn().expect("start quorumkv server"));
    }

    /// Starts node `id` on fresh ports, empty and waiting to be added to the cluster;
    /// answers its peer address.
    pub fn spawn_joining(&mut self, id: u64) -> String {
        let ports = free_ports(3);
        let log = self.dir.as_ref().map(|d| d.path().join(format!("node{id}.log"))).expect("dir");
        self.nodes.push(Node {
            id,
            client: ports[0],
            peer: ports[1],
            http: ports[2],
            log,
            child: None,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i, true);
        format!("127.0.0.1:{}", ports[1])
    }

    /// Every running node's `/status` JSON, by node index.
    pub fn statuses(&self) -> Vec<Option<serde_json::Value>> {
        self.nodes
            .iter()
            .map(|n| {
                if !n.running() {
                    return None;
                }
                http_get(n.http, "/status").and_then(|b| serde_json::from_str(&b).ok())
            })
            .collect()
    }

    /// The id of the node that leads, once one does and every running node agrees.
    pub fn wait_for_leader(&self) -> u64 {
        let mut leader = 0;
        wait_until(LEADER_TIMEOUT, "a leader every running node knows", || {
            let st = self.statuses();
            let running = self.nodes.iter().filter(|n| n.running()).count();
            let leaders: Vec<u64> = st
                .iter()
                .flatten()
                .filter(|s| s["role"] == "leader")
                .filter_map(|s| s["id"].as_u64())
                .collect();
            let agree = st.iter().flatten().count() == running
                && st.iter().flatten().all(|s| s["leader"].as_u64() == leaders.first().copied());
            if leaders.len() == 1 && agree {
                leader = leaders[0];
                true
            } else {
                false
            }
        });
        leader
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("a node with that id")
    }

    /// The client addresses of all nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::endpoint).collect()
    }

    /// A running node other than `not`.
    pub fn other_than(&self, not: u64) -> u64 {
        self.nodes.iter().find(|n| n.id != not && n.running()).map(|n| n.id).expect("another node")
    }

    /// SIGKILLs node `id` by its pid and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("a node with that id");
        if let Some(mut child) = node.child.take() {
            // Child::kill sends SIGKILL to this very pid: no cleanup, as in a crash.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `quorumkv ARGS` against this cluster's endpoints, with a deadline.
    pub fn cli(&self, args: &[&str]) -> Run {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push("--endpoints".into());
        all.push(self.endpoints().join(","));
        run_cli(&all, "")
    }

    fn dump_logs(&self) {
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- node {} log (last 30 lines of {}) -----", n.id, n.log.display());
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!("data and logs kept in {}", dir.keep().display());
            }
        }
    }
}

/// Runs `quorumkv ARGS` with `stdin`, killed at [`CLI_TIMEOUT`].
pub fn run_cli(args: &[String], stdin: &str) -> Run {
    let mut cmd = Command::new(quorumkv_bin());
    cmd.args(args).env_remove("QUORUMKV_ENDPOINTS");
    run_bounded(cmd, stdin, CLI_TIMEOUT)
}

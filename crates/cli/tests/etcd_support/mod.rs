//! A real quorumkv cluster for the etcd compatibility tests: `quorumkv server` processes on
//! loopback ports picked free, driven with Debian's `etcdctl` (API v3).
//!
//! Everything a test starts is killed by pid when its guard drops (the cluster, background
//! etcdctl processes); every wait has a deadline; nothing sleeps for a fixed time to let
//! something happen. When a test fails, the node logs are printed and the data folder kept.

#![allow(dead_code)] // Each test binary uses part of this module.

#[path = "../bounded_run/mod.rs"]
mod bounded_run;
pub use bounded_run::{Run, run_bounded};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest any single etcdctl invocation may run.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a cluster may take to elect a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// The etcdctl binary, or a failure that says how to install it. Tests never pass without it.
pub fn etcdctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCDCTL_BIN") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("etcdctl")).find(|p| p.is_file())
    });
    match found {
        Some(p) => p,
        None => panic!(
            "etcdctl is not installed: these tests drive quorumkv with the real etcd client. \
             Install Debian's `etcd-client` package (apt-get install etcd-client), as CI does, \
             or point ETCDCTL_BIN at an etcdctl 3.4+ binary."
        ),
    }
}

/// Waits until `cond` holds, polling; panics with `what` at the deadline.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Free loopback ports: bound to port 0 together (so they differ), then released.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| quorumkv_node::ports::free_loopback_port().expect("a free port")).collect()
}

/// A background process (a watcher, a lock holder, a candidate) whose output lines arrive
/// on channels; killed when dropped.
pub struct Background {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Lines read so far from standard output.
    pub lines: Vec<String>,
    /// Lines read so far from standard error.
    pub err_lines: Vec<String>,
}

impl Background {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start a background process");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stdout, stderr, lines: Vec::new(), err_lines: Vec::new() }
    }

    /// Takes whatever output has arrived.
    pub fn drain(&mut self) {
        while let Ok(l) = self.stdout.try_recv() {
            self.lines.push(l);
        }
        while let Ok(l) = self.stderr.try_recv() {
            self.err_lines.push(l);
        }
    }

    /// Waits until the output lines read so far satisfy `cond`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[String]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if cond(&self.lines) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; stdout so far: {:?}; stderr: {:?}",
                self.lines,
                self.err_lines
            );
            if let Ok(l) = self.stdout.recv_timeout(Duration::from_millis(50)) {
                self.lines.push(l);
            }
        }
    }

    /// Like [`Background::wait_for`], but answers false at the deadline instead of failing.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&[String]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if cond(&self.lines) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if let Ok(l) = self.stdout.recv_timeout(Duration::from_millis(50)) {
                self.lines.push(l);
            }
        }
    }

    /// The non-empty output lines so far, trimmed.
    pub fn text_lines(&mut self) -> Vec<String> {
        self.drain();
        self.lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// Waits for the process to exit; returns its code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Give the reader threads the last lines.
                std::thread::sleep(Duration::from_millis(20));
                self.drain();
                return status.code();
            }
            assert!(Instant::now() < deadline, "process did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT (etcdctl then resigns / unlocks / closes cleanly).
    pub fn interrupt(&self) {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server process.
pub struct Node {
    /// Node id.
    pub id: u64,
    /// Client (etcd) port.
    pub client: u16,
    /// Peer port.
    pub peer: u16,
    /// HTTP port.
    pub http: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// The client address.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    /// The peer address.
    pub fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.peer)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster of `quorumkv server` processes.
pub struct Cluster {
    /// Where data and logs are.
    pub dir: PathBuf,
    /// The nodes, in id order.
    pub nodes: Vec<Node>,
}

/// GET over HTTP/1.0 on loopback; `None` on any failure.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = format!("127.0.0.1:{port}");
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

impl Cluster {
    /// Starts `n` nodes and waits until they agree on a leader.
    pub fn start(n: u64) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "quorumkv-etcd-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test folder");
        let ports = free_ports(3 * n as usize);
        let mut cluster = Cluster { dir, nodes: Vec::new() };
        for i in 0..n {
            let p = &ports[3 * i as usize..3 * i as usize + 3];
            cluster.nodes.push(Node {
                id: i + 1,
                client: p[0],
                peer: p[1],
                http: p[2],
                child: None,
                log: PathBuf::new(),
            });
        }
        let initial = cluster.initial_cluster();
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i, &initial, false);
        }
        cluster.wait_for_leader();
        cluster
    }

    /// `id=peer,...` of the current nodes.
    pub fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, initial: &str, join: bool) {
        let node = &mut self.nodes[i];
        let log = self.dir.join(format!("node{}.log", node.id));
        let file = std::fs::File::create(&log).expect("create the node log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorumkv"));
        cmd.arg("server")
            .args(["--id", &node.id.to_string(), "--name", &format!("node{}", node.id)])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node{}", node.id)))
            .args(["--client-addr", &node.endpoint()])
            .args(["--peer-addr", &node.peer_addr()])
            .args(["--http-addr", &format!("127.0.0.1:{}", node.http)])
            .args(["--initial-cluster", initial])
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file);
        if join {
            cmd.args(["--join", "true"]);
        }
        // The environment must not smuggle settings in from the developer's shell.
        for (k, _) in std::env::vars() {
            if k.starts_with("QUORUMKV_") {
                cmd.env_remove(k);
            }
        }
        node.child = Some(cmd.spawn().expect("start quorumkv server"));
        node.log = log;
    }

    /// Adds a node process that waits to be joined (after `member add`), with the given id.
    pub fn spawn_joining(&mut self, id: u64, ports: [u16; 3]) -> usize {
        let initial = self.initial_cluster();
        self.nodes.push(Node {
            id,
            client: ports[0],
            peer: ports[1],
            http: ports[2],
            child: None,
            log: PathBuf::new(),
        });
        let i = self.nodes.len() - 1;
        self.spawn(i, &initial, true);
        i
    }

    /// Stops the node at index `i` (SIGKILL) and forgets it.
    pub fn remove_node(&mut self, i: usize) {
        let mut n = self.nodes.remove(i);
        n.kill();
    }

    fn statuses(&self) -> Vec<Option<serde_json::Value>> {
        self.nodes
            .iter()
            .map(|n| http_get(n.http, "/status").and_then(|b| serde_json::from_str(&b).ok()))
            .collect()
    }

    /// The leader's id, once every node reports the same one.
    pub fn wait_for_leader(&self) -> u64 {
        let mut leader = 0;
        wait_until(LEADER_TIMEOUT, "the nodes to agree on a leader", || {
            let st = self.statuses();
            let leaders: Vec<u64> =
                st.iter().filter_map(|s| s.as_ref()?["leader"].as_u64()).collect();
            if leaders.len() == self.nodes.len()
                && leaders.windows(2).all(|w| w[0] == w[1])
                && leaders[0] != 0
            {
                leader = leaders[0];
                true
            } else {
                false
            }
        });
        leader
    }

    /// Index in `nodes` of the leader and of one follower.
    pub fn leader_and_follower(&self) -> (usize, usize) {
        let leader = self.wait_for_leader();
        let li = self.nodes.iter().position(|n| n.id == leader).expect("leader is a node");
        let fi = (li + 1) % self.nodes.len();
        (li, fi)
    }

    /// Every client endpoint, comma separated.
    pub fn endpoints(&self) -> String {
        self.nodes.iter().map(Node::endpoint).collect::<Vec<_>>().join(",")
    }

    /// An etcdctl command against `endpoints`.
    pub fn etcdctl_cmd(&self, endpoints: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--dial-timeout=5s")
            .args(args);
        cmd
    }

    /// Runs etcdctl against every endpoint.
    pub fn etcdctl(&self, args: &[&str]) -> Run {
        self.etcdctl_at(&self.endpoints(), args)
    }

    /// Runs etcdctl against the given endpoints.
    pub fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Run {
        run_bounded(self.etcdctl_cmd(endpoints, args), "", ETCDCTL_TIMEOUT)
    }

    /// Runs etcdctl with `stdin` (for `txn`).
    pub fn etcdctl_stdin(&self, endpoints: &str, args: &[&str], stdin: &str) -> Run {
        run_bounded(self.etcdctl_cmd(endpoints, args), stdin, ETCDCTL_TIMEOUT)
    }

    /// Starts a long-running etcdctl (watch, lock, elect, keep-alive).
    pub fn etcdctl_background(&self, endpoints: &str, args: &[&str]) -> Background {
        Background::spawn(self.etcdctl_cmd(endpoints, args))
    }

    /// Starts a long-running etcdctl with extra environment.
    pub fn etcdctl_background_env(
        &self,
        endpoints: &str,
        args: &[&str],
        env: &HashMap<String, String>,
    ) -> Background {
        let mut cmd = self.etcdctl_cmd(endpoints, args);
        cmd.envs(env);
        Background::spawn(cmd)
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
            n.kill();
        }
        if std::thread::panicking() {
            self.dump_logs();
            eprintln!("test data kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Decodes standard base64 (etcdctl's JSON output encodes keys and values so).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {s:?}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The lines of an output, trimmed, without empty ones.
pub fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Path helper for files a test writes next to the cluster's data.
pub fn test_file(cluster: &Cluster, name: &str) -> PathBuf {
    cluster.dir.join(name)
}

/// True if a file exists and is non-empty.
pub fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

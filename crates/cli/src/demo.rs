//! `quorumkv demo`: a local cluster of separate `quorumkv server` processes on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

/// Arguments of `quorumkv demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the nodes keep their data (one folder per node) and logs.
    #[arg(long, default_value = "quorumkv-data")]
    pub data_dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Client port of node 1; node i uses base + 10·(i-1) for its client port, +1 peer, +2 HTTP.
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
    /// Start the cluster, print where it is, and exit after this many seconds (0 = run until
    /// Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub exit_after: u64,
}

/// Ports of node `i` (1-based).
pub fn ports(base: u16, i: u64) -> (u16, u16, u16) {
    let p = base + 10 * (i as u16 - 1);
    (p, p + 1, p + 2)
}

/// A minimal HTTP/1.0 GET on loopback; returns (status code, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("bad address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

struct Cluster {
    children: Vec<(u64, Child)>,
}

impl Cluster {
    fn stop(&mut self) {
        for (_, c) in &self.children {
            // SIGTERM: each node shuts down cleanly (the WAL writer drains).
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (i, c) in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("node {i} did not stop within 10 s; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the quorumkv binary")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let initial: Vec<String> =
        (1..=args.nodes).map(|i| format!("{i}=127.0.0.1:{}", ports(args.base_port, i).1)).collect();
    let mut cluster = Cluster { children: Vec::new() };
    for i in 1..=args.nodes {
        let (client, peer, http) = ports(args.base_port, i);
        let log_path = args.data_dir.join(format!("node{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("server")
            .args(["--id", &i.to_string(), "--name", &format!("node{i}")])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("node{i}")))
            .args(["--client-addr", &format!("127.0.0.1:{client}")])
            .args(["--peer-addr", &format!("127.0.0.1:{peer}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {i}"))?;
        cluster.children.push((i, child));
    }
    println!(
        "starting a {}-node quorumkv cluster (data and logs in {}/)",
        args.nodes,
        args.data_dir.display()
    );
    let leader = wait_for_leader(&mut cluster, &args)?;
    println!();
    println!("  cluster is up; leader is node {leader}");
    println!();
    println!("  node  client (etcd v3 gRPC)  peer              HTTP (status, metrics)");
    for i in 1..=args.nodes {
        let (c, p, h) = ports(args.base_port, i);
        println!("  {i:<4}  127.0.0.1:{c:<14} 127.0.0.1:{p:<8} http://127.0.0.1:{h}/status");
    }
    let endpoints: Vec<String> =
        (1..=args.nodes).map(|i| format!("127.0.0.1:{}", ports(args.base_port, i).0)).collect();
    println!();
    println!("  try, from another terminal:");
    println!("    quorumkv put greeting hello");
    println!("    quorumkv get greeting");
    println!("    quorumkv status");
    println!("    etcdctl --endpoints={} put k v", endpoints.join(","));
    println!();
    println!(
        "  dashboard: http://127.0.0.1:{}/status   metrics: http://127.0.0.1:{}/metrics",
        ports(args.base_port, 1).2,
        ports(args.base_port, 1).2
    );
    println!("  press Ctrl-C to stop the cluster");
    let started = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A runtime with a worker thread of its own: the loop below never drives the runtime, and
    // on a current-thread one the Ctrl-C task would never be polled, leaving SIGINT's default
    // action (exit at once, nodes left running when the signal reached the demo alone).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let flag = stop.clone();
    rt.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        if args.exit_after > 0 && started.elapsed() >= Duration::from_secs(args.exit_after) {
            break;
        }
        for (i, c) in &mut cluster.children {
            if let Ok(Some(status)) = c.try_wait() {
                let log = args.data_dir.join(format!("node{i}.log"));
                bail!(
                    "node {i} exited ({status}); last lines of {}:\n{}",
                    log.display(),
                    tail(&log, 20)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping the cluster");
    cluster.stop();
    Ok(())
}

fn wait_for_leader(cluster: &mut Cluster, args: &DemoArgs) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for (i, c) in &mut cluster.children {
            if let Ok(Some(status)) = c.try_wait() {
                let log = args.data_dir.join(format!("node{i}.log"));
                bail!(
                    "node {i} exited during start-up ({status}); last lines of {}:\n{}",
                    log.display(),
                    tail(&log, 20)
                );
            }
        }
        for i in 1..=args.nodes {
            let http = format!("127.0.0.1:{}", ports(args.base_port, i).2);
            if let Ok((200, body)) = http_get(&http, "/status", Duration::from_millis(500))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                && v["role"] == "leader"
            {
                return Ok(i);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no leader was elected within 60 s; see the node logs in {}", args.data_dir.display())
}

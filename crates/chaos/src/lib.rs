//! Fault injection against real quorumkv processes: the engine behind `quorumkv check`.
//!
//! A run, in order:
//! 1. [`cluster`]: start N `quorumkv server` processes on loopback, every peer link through
//!    the frame-aware fault proxy of [`proxy`].
//! 2. [`workload`]: start the chosen workloads, all at once, against the same cluster,
//!    each recording its history.
//! 3. [`nemesis`]: inject faults on a seeded schedule for the time limit.
//! 4. Stop the workloads, heal everything (network, paused and killed processes, clock
//!    offsets) and wait until every member is ready under one leader.
//! 5. Final reads, then each workload's checker.
//! 6. [`report`]: `summary.json`, `report.html`, histories and node logs in the report
//!    folder. The run is valid only if every checker passed.
//!
//! Every process and proxy this run started is stopped when [`run`] returns, fails, or is
//! interrupted (Ctrl-C, SIGTERM): the [`cluster::Cluster`] kills its processes by pid when
//! dropped.

pub mod client;
pub mod cluster;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod workload;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::client::Channels;
pub use crate::cluster::ReadMode;
use crate::cluster::{Cluster, ClusterSpec};
use crate::nemesis::{Kind, Nemesis};
use crate::proxy::ProxyNet;
use crate::report::{MemberInfo, OpTotals, Summary};
use crate::workload::{Counts, Ctx, Recorder, Verdict, WorkloadResult};

/// Why a run could not be carried out (as opposed to a checker finding a violation).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A file or socket operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster did not come up or did not recover.
    #[error("{0}")]
    Cluster(String),
    /// A bookkeeping mistake of the harness itself.
    #[error("harness error: {0}")]
    Harness(String),
    /// The options do not make a run.
    #[error("{0}")]
    Options(String),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; every process this run started was stopped")]
    Interrupted,
}

impl ChaosError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ChaosError {
        move |source| ChaosError::Io { what, source }
    }
}

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// Read / write / cas, checked for linearizability.
    Register,
    /// Unique adds and reads (set-full).
    Set,
    /// Transfers that keep a total.
    Bank,
    /// Watchers that must see every change.
    Watch,
    /// A lease-based lock with fenced writes.
    LeaseLock,
}

impl WorkloadKind {
    /// Every workload, in the order `all` lists them.
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::Register,
        WorkloadKind::Set,
        WorkloadKind::Bank,
        WorkloadKind::Watch,
        WorkloadKind::LeaseLock,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Set => "set",
            WorkloadKind::Bank => "bank",
            WorkloadKind::Watch => "watch",
            WorkloadKind::LeaseLock => "lease-lock",
        }
    }

    /// Parses `all` or a comma-separated list.
    pub fn parse_list(text: &str) -> Result<Vec<WorkloadKind>, String> {
        if text.trim() == "all" {
            return Ok(WorkloadKind::ALL.to_vec());
        }
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let w =
                WorkloadKind::ALL.iter().copied().find(|w| w.name() == name).ok_or_else(|| {
                    format!(
                        "unknown workload {name:?}; choose from {}, all",
                        WorkloadKind::ALL.map(WorkloadKind::name).join(", ")
                    )
                })?;
            if !out.contains(&w) {
                out.push(w);
            }
        }
        if out.is_empty() {
            return Err("no workload chosen".into());
        }
        Ok(out)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `quorumkv` binary whose `server` subcommand runs a node.
    pub binary: PathBuf,
    /// Cluster size: 3 or 5.
    pub nodes: usize,
    /// Length of the fault phase.
    pub time_limit: Duration,
    /// Clients per workload.
    pub concurrency: u64,
    /// Nemeses to draw from.
    pub nemeses: Vec<Kind>,
    /// Workloads, run concurrently.
    pub workloads: Vec<WorkloadKind>,
    /// Seed of every random choice (schedule, faults, operations).
    pub seed: u64,
    /// The report folder (created).
    pub report_dir: PathBuf,
    /// How the nodes answer linearizable reads.
    pub reads: ReadMode,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// `YYYY-MM-DDTHH-MM-SSZ` (UTC) of now: folder-name safe.
pub fn utc_timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Waits for Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a check; returns its summary (also written to the report folder). A returned
/// summary may hold failed verdicts: `summary.valid` is the verdict of the run.
pub async fn run(opts: Options) -> Result<Summary, ChaosError> {
    if opts.nodes != 3 && opts.nodes != 5 {
        return Err(ChaosError::Options(format!("--nodes must be 3 or 5, got {}", opts.nodes)));
    }
    if opts.concurrency == 0 {
        return Err(ChaosError::Options("--concurrency must be at least 1".into()));
    }
    if opts.workloads.is_empty() {
        return Err(ChaosError::Options("no workload chosen".into()));
    }
    std::fs::create_dir_all(&opts.report_dir)
        .map_err(ChaosError::io("create the report folder"))?;
    let cluster_slot: Arc<Mutex<Option<Arc<tokio::sync::Mutex<Cluster>>>>> = Arc::default();
    let result = tokio::select! {
        r = run_inner(&opts, cluster_slot.clone()) => r,
        () = interrupted() => Err(ChaosError::Interrupted),
    };
    // The guard: whatever happened, every process this run started is killed now.
    let cluster = cluster_slot.lock().take();
    if let Some(c) = cluster {
        c.lock().await.kill_all();
    }
    result
}

/// The shared progress state.
struct Progress {
    phase: Mutex<String>,
    injected: Arc<AtomicU64>,
    now: Arc<Mutex<String>>,
}

fn progress_task(
    ctx: Arc<Ctx>,
    progress: Arc<Progress>,
    time_limit: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tick += 1;
            let elapsed = ctx.t0.elapsed().min(time_limit).as_secs_f64();
            let frac = elapsed / time_limit.as_secs_f64().max(1e-9);
            let filled = (frac * 30.0) as usize;
            let (ok, fail, info) = (
                ctx.counts.ok.load(Relaxed),
                ctx.counts.fail.load(Relaxed),
                ctx.counts.info.load(Relaxed),
            );
            let phase = progress.phase.lock().clone();
            let now = progress.now.lock().clone();
            let line = format!(
                "[{}{}] {:>3.0}/{}s ops {} (ok {ok}, fail {fail}, info {info}) faults {} {}{}",
                "#".repeat(filled),
                "-".repeat(30 - filled.min(30)),
                elapsed,
                time_limit.as_secs(),
                ok + fail + info,
                progress.injected.load(Relaxed),
                phase,
                if now.is_empty() { String::new() } else { format!(": {now}") },
            );
            let mut err = std::io::stderr();
            if tty {
                let shown: String = line.chars().take(150).collect();
                let _ = write!(err, "\r\x1b[2K{shown}");
            } else if tick.is_multiple_of(20) {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
    })
}

async fn run_inner(
    opts: &Options,
    slot: Arc<Mutex<Option<Arc<tokio::sync::Mutex<Cluster>>>>>,
) -> Result<Summary, ChaosError> {
    let started_at = utc_timestamp();
    let wall = Instant::now();
    let spec = ClusterSpec {
        binary: opts.binary.clone(),
        nodes: opts.nodes,
        log_dir: opts.report_dir.join("nodes"),
        name: format!("chaos-{}", opts.seed),
        reads: opts.reads,
    };
    if opts.progress {
        eprintln!("starting {} nodes (logs in {})", opts.nodes, spec.log_dir.display());
    }
    let cluster = Cluster::start(spec, ProxyNet::new(opts.seed)).await?;
    let endpoints = cluster.endpoints.clone();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    *slot.lock() = Some(cluster.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(Ctx {
        t0: Instant::now(),
        endpoints,
        channels: Channels::default(),
        stop: stop_rx,
        samples: Mutex::new(Vec::new()),
        counts: Counts::default(),
        call_timeout: Duration::from_millis(1500),
        write_deadline: Duration::from_secs(5),
        seed: opts.seed,
    });
    let recorder = |name: &'static str, folder: &str| -> Result<Arc<Recorder>, ChaosError> {
        Ok(Arc::new(Recorder::create(
            name,
            ctx.clone(),
            &opts.report_dir.join(folder).join("history.jsonl"),
        )?))
    };
    let c = opts.concurrency;
    let has = |w: WorkloadKind| opts.workloads.contains(&w);
    let register = if has(WorkloadKind::Register) {
        let cfg = workload::register::Config {
            keys: 5,
            workers: c,
            check_time_limit: Duration::from_secs(60),
        };
        Some(workload::register::start(ctx.clone(), recorder("register", "register")?, cfg))
    } else {
        None
    };
    let set = if has(WorkloadKind::Set) {
        Some(workload::set::start(ctx.clone(), recorder("set", "set")?, c))
    } else {
        None
    };
    let bank = if has(WorkloadKind::Bank) {
        Some(workload::bank::start(ctx.clone(), recorder("bank", "bank")?, c).await?)
    } else {
        None
    };
    let watch = if has(WorkloadKind::Watch) {
        let events = opts.report_dir.join("watch").join("events.jsonl");
        Some(workload::watch::start(ctx.clone(), recorder("watch", "watch")?, 2, 3, &events).await?)
    } else {
        None
    };
    let lock = if has(WorkloadKind::LeaseLock) {
        let contenders = c.clamp(2, 4);
        Some(workload::lock::start(ctx.clone(), recorder("lease-lock", "lock")?, contenders).await?)
    } else {
        None
    };

    let nemesis = Nemesis::new(
        cluster.clone(),
        ctx.channels.clone(),
        opts.nemeses.clone(),
        opts.seed,
        ctx.t0,
    );
    let progress = Arc::new(Progress {
        phase: Mutex::new(String::new()),
        injected: nemesis.injected.clone(),
        now: nemesis.now.clone(),
    });
    let bar = opts.progress.then(|| progress_task(ctx.clone(), progress.clone(), opts.time_limit));
    let until = ctx.t0 + opts.time_limit;
    let (log, ()) = tokio::join!(nemesis.run(until), tokio::time::sleep_until(until));
    let _ = stop_tx.send(true);

    *progress.phase.lock() = "| healing".into();
    {
        let mut c = cluster.lock().await;
        c.net.heal_all();
        for i in c.active() {
            c.resume(i);
            if c.slots[i].clock_offset_ms != 0 {
                c.restart_with_offset(i, 0)?;
            } else if !c.slots[i].running() {
                c.spawn(i)?;
            }
        }
        c.wait_healthy(Duration::from_secs(60)).await?;
    }

    *progress.phase.lock() = "| final reads and checks".into();
    let mut results: Vec<WorkloadResult> = Vec::new();
    if let Some(w) = register {
        results.push(w.finish().await?);
    }
    if let Some(w) = set {
        results.push(w.finish().await?);
    }
    if let Some(w) = bank {
        results.push(w.finish().await?);
    }
    if let Some(w) = watch {
        results.push(w.finish().await?);
    }
    if let Some(w) = lock {
        results.push(w.finish().await?);
    }
    if let Some(bar) = bar {
        bar.abort();
        eprintln!();
    }

    let mut ops = OpTotals::default();
    for r in &results {
        ops.ok += r.ops[0];
        ops.fail += r.ops[1];
        ops.info += r.ops[2];
    }
    ops.total = ops.ok + ops.fail + ops.info;
    let verdict = if results.iter().any(|r| r.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if results.iter().all(|r| r.verdict == Verdict::Pass) {
        Verdict::Pass
    } else {
        Verdict::Unknown
    };
    let c = cluster.lock().await;
    let members = c
        .slots
        .iter()
        .map(|s| MemberInfo {
            id: s.id,
            removed: s.removed,
            client: s.client.clone(),
            log: format!("nodes/n{}.log", s.id),
        })
        .collect();
    let proxy = c.net.stats().into_iter().map(|((a, b), st)| (format!("n{a}->n{b}"), st)).collect();
    drop(c);
    let mut notes = vec![report::NOT_TESTED.to_string()];
    notes.push("Client requests a follower forwards to the leader's client port are not proxied: partitions cut Raft traffic only.".into());
    notes.extend(opts.reads.describe().map(|(_, note)| note.to_string()));
    let samples = std::mem::take(&mut *ctx.samples.lock());
    let summary = Summary {
        verdict,
        valid: verdict == Verdict::Pass,
        command: opts.command.clone(),
        seed: opts.seed,
        nodes: opts.nodes,
        time_limit_s: opts.time_limit.as_secs(),
        concurrency: opts.concurrency,
        workloads: opts.workloads.iter().map(|w| w.name().to_string()).collect(),
        nemeses: opts.nemeses.iter().map(|k| k.name().to_string()).collect(),
        reads: opts.reads,
        started_at,
        duration_s: wall.elapsed().as_secs_f64(),
        ops,
        results,
        nemesis: log,
        proxy,
        members,
        notes,
    };
    report::write(&opts.report_dir, &summary, &samples)
        .map_err(ChaosError::io("write the report"))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lists_parse() {
        assert_eq!(WorkloadKind::parse_list("all").unwrap().len(), 5);
        assert_eq!(
            WorkloadKind::parse_list("bank, lease-lock").unwrap(),
            vec![WorkloadKind::Bank, WorkloadKind::LeaseLock]
        );
        assert!(WorkloadKind::parse_list("queue").unwrap_err().contains("queue"));
        assert!(WorkloadKind::parse_list("").is_err());
    }

    #[test]
    fn timestamps_are_utc_and_folder_safe() {
        let t = utc_timestamp();
        assert_eq!(t.len(), "2025-01-01T00-00-00Z".len());
        assert!(t.starts_with("20"));
        assert!(!t.contains(':'));
    }
}

//! `quorumkv check`: a Jepsen-style run against real server processes — faults through a
//! proxy on every peer link, workloads over the etcd v3 API, checkers, and a report folder.
//!
//! Exit codes: 0 every checker passed; 1 a checker found a violation; 2 the run itself
//! failed (the cluster did not come up or recover, bad options, interrupted); 3 a checker
//! could not decide (e.g. the linearizability search ran out of budget).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use quorumkv_chaos::nemesis::Kind;
use quorumkv_chaos::workload::Verdict;
use quorumkv_chaos::{Options, WorkloadKind};

/// Flags of `quorumkv check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Cluster size: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Length of the fault phase in seconds (healing, final reads and checks come after).
    #[arg(long, default_value_t = 60)]
    pub time_limit: u64,
    /// Clients per workload.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u64,
    /// Faults: a comma list of partition, net, kill, pause, transfer, membership, skew; or
    /// `all`, or `none`.
    #[arg(long, default_value = "partition,kill,pause")]
    pub nemesis: String,
    /// Workloads, run concurrently against the same cluster: a comma list of register, set,
    /// bank, watch, lease-lock; or `all`.
    #[arg(long, default_value = "all")]
    pub workload: String,
    /// Seed of the schedule and of every random choice (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Report folder (default: ./quorumkv-check/<UTC timestamp>).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// UNSAFE: start every node serving linearizable reads from local state (shows that the
    /// checkers catch stale reads).
    #[arg(long)]
    pub unsafe_stale_reads: bool,
    /// Start every node with lease reads on: a leader answers linearizable reads from its
    /// store while its read lease holds, without a heartbeat round.
    #[arg(long)]
    pub lease_reads: bool,
    /// UNSAFE: lease reads whose lease never ends, not even after the leader lost leadership
    /// (shows that the checkers catch a broken lease).
    #[arg(long)]
    pub unsafe_lease_never_expires: bool,
    /// No progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `quorumkv check`.
pub fn run(args: CheckArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let nemeses = Kind::parse_list(&args.nemesis).map_err(anyhow::Error::msg)?;
    let workloads = WorkloadKind::parse_list(&args.workload).map_err(anyhow::Error::msg)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
    });
    let report_dir = args
        .report_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("quorumkv-check").join(quorumkv_chaos::utc_timestamp()));
    let binary = std::env::current_exe()?;
    let mut command = format!(
        "quorumkv check --nodes {} --time-limit {} --concurrency {} --nemesis {} --workload {} --seed {seed}",
        args.nodes, args.time_limit, args.concurrency, args.nemesis, args.workload
    );
    for (on, flag) in [
        (args.lease_reads, " --lease-reads"),
        (args.unsafe_stale_reads, " --unsafe-stale-reads"),
        (args.unsafe_lease_never_expires, " --unsafe-lease-never-expires"),
    ] {
        if on {
            command.push_str(flag);
        }
    }
    eprintln!("{command}\nreport: {}", report_dir.display());
    let opts = Options {
        binary,
        nodes: args.nodes,
        time_limit: Duration::from_secs(args.time_limit),
        concurrency: args.concurrency,
        nemeses,
        workloads,
        seed,
        report_dir: report_dir.clone(),
        reads: quorumkv_chaos::ReadMode {
            lease_reads: args.lease_reads,
            unsafe_stale_reads: args.unsafe_stale_reads,
            unsafe_lease_never_expires: args.unsafe_lease_never_expires,
        },
        progress: !args.quiet,
        command,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(quorumkv_chaos::run(opts))?;
    println!(
        "{} operations: {} ok, {} fail, {} info; {} faults injected",
        summary.ops.total,
        summary.ops.ok,
        summary.ops.fail,
        summary.ops.info,
        summary.nemesis.windows.len()
    );
    for r in &summary.results {
        let verdict = match r.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Unknown => "UNKNOWN",
        };
        println!("{:<10} {verdict:<7} {}", r.workload, r.summary);
        for p in r.problems.iter().take(5) {
            println!("           - {p}");
        }
    }
    println!("report: {}", report_dir.join("report.html").display());
    Ok(match summary.verdict {
        Verdict::Pass => {
            println!("valid: every checker passed");
            ExitCode::SUCCESS
        }
        Verdict::Fail => {
            println!("INVALID: a checker found a violation");
            ExitCode::from(1)
        }
        Verdict::Unknown => {
            println!("unknown: a checker could not decide");
            ExitCode::from(3)
        }
    })
}

//! `quorumkv sim`: run one seed (with its trace) or sweep many, and report.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Args;
use quorumkv_sim::{HistoryVerdict, RunReport, SimOptions, parse_faults};

/// Arguments of `quorumkv sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Run this many seeds (starting at --start).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of a sweep.
    #[arg(long, default_value_t = 1)]
    start: u64,
    /// Run exactly this seed (and print its report).
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size (3 or 5); by default each seed chooses.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=7))]
    nodes: Option<u64>,
    /// Comma-separated faults the seeds may choose from (default: all). Known: loss, delay,
    /// dup, partition, one-way, isolate-leader, ring, bridge, flap, crash, pause, bitflip,
    /// fsync-fail, disk-full, wipe, membership, transfer, skew, skew-beyond.
    #[arg(long)]
    faults: Option<String>,
    /// Virtual seconds of faults per run (a heal phase follows).
    #[arg(long, default_value_t = 10)]
    time: u64,
    /// Print every event of the run (with --seed).
    #[arg(long)]
    trace: bool,
    /// Write the run's client history (JSON lines) to this file (with --seed).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Worker threads for a sweep (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Skip the linearizability check (white-box invariants and liveness only).
    #[arg(long)]
    no_check: bool,
}

pub fn run(args: SimArgs) -> ExitCode {
    let faults = match args.faults.as_deref().map(parse_faults).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let options = |seed| SimOptions {
        seed,
        nodes: args.nodes.map(|n| n as usize),
        faults: faults.clone(),
        fault_secs: args.time,
        trace: args.trace,
        check_history: !args.no_check,
    };
    if let Some(seed) = args.seed {
        let report = quorumkv_sim::run(&options(seed));
        if let Some(trace) = &report.trace {
            print!("{trace}");
        }
        if let Some(path) = &args.history
            && let Err(e) = std::fs::write(path, &report.history_lines)
        {
            eprintln!("error: cannot write the history to {}: {e}", path.display());
            return ExitCode::from(2);
        }
        print_run(&report, true);
        return if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    sweep(args.start, args.seeds, args.jobs, &options)
}

fn sweep(
    start: u64,
    count: u64,
    jobs: Option<usize>,
    options: &(dyn Fn(u64) -> SimOptions + Sync),
) -> ExitCode {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let next = AtomicU64::new(start);
    let done = AtomicU64::new(0);
    let reports = Mutex::new(Vec::new());
    let began = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= start + count {
                        break;
                    }
                    let r = quorumkv_sim::run(&options(seed));
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if !r.passed() {
                        eprintln!("\nseed {seed} FAILED");
                    }
                    eprint!("\r[{d}/{count}] seeds run");
                    let _ = std::io::stderr().flush();
                    if let Ok(mut v) = reports.lock() {
                        v.push(r);
                    }
                }
            });
        }
    });
    eprintln!();
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| r.options.seed);
    let failed: Vec<&RunReport> = reports.iter().filter(|r| !r.passed()).collect();
    for r in &failed {
        print_run(r, true);
    }
    let wall = began.elapsed().as_secs_f64();
    let ops: u64 = reports.iter().map(|r| r.ops + r.ops_info).sum();
    let sim_cpu: f64 = reports.iter().map(|r| r.sim_wall.as_secs_f64()).sum();
    let safety = reports.iter().filter(|r| !r.violations.is_empty()).count();
    let lin = reports.iter().filter(|r| matches!(r.history, HistoryVerdict::Violation(_))).count();
    let unknown =
        reports.iter().filter(|r| matches!(r.history, HistoryVerdict::Unknown(_))).count();
    let dead = reports.iter().filter(|r| r.recovered_ms.is_none()).count();
    let worst = reports.iter().filter_map(|r| r.recovered_ms).max().unwrap_or(0);
    let five = reports.iter().filter(|r| r.nodes == 5).count();
    let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
    let installs: u64 = reports.iter().map(|r| r.snapshot_installs).sum();
    let on_request: u64 = reports.iter().map(|r| r.images_on_request).sum();
    let lazy = reports.iter().filter(|r| r.lazy_images).count();
    let corruptions: u64 = reports.iter().map(|r| r.corruptions_detected).sum();
    let fsync_failures: u64 = reports.iter().map(|r| r.fsync_failures).sum();
    let full_episodes: u64 = reports.iter().map(|r| r.disk_full_episodes).sum();
    let full_stops: u64 = reports.iter().map(|r| r.disk_full_stops).sum();
    let torn: u64 = reports.iter().map(|r| r.torn_tails).sum();
    println!(
        "{} seeds ({} of 5 nodes) in {wall:.1} s: {} passed, {} failed",
        reports.len(),
        five,
        reports.len() - failed.len(),
        failed.len()
    );
    println!(
        "  safety violations: {safety} seeds; linearizability violations: {lin} seeds; checker budget exhausted: {unknown} seeds; liveness failures: {dead} seeds"
    );
    println!(
        "  {ops} client operations: {:.0} per wall-clock second of simulating on one thread (history checks excluded), {:.0} per wall-clock second of this whole sweep; worst recovery after heal {worst} ms; {crashes} crashes, {installs} snapshot installs, {on_request} images taken when a leader asked ({lazy} seeds compact without images)",
        ops as f64 / sim_cpu.max(1e-9),
        ops as f64 / wall.max(1e-9)
    );
    println!(
        "  disk faults: {corruptions} corruptions detected, {fsync_failures} fsync failures, {full_episodes} disk-full episodes ({full_stops} processes stopped by a full disk), {torn} torn WAL tails cut by recovery"
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn print_run(r: &RunReport, detail: bool) {
    let faults: Vec<&str> = r.faults.iter().map(|f| f.name()).collect();
    println!(
        "seed {}: {} nodes, faults [{}]: {} ops ({} unknown), {} events, {} elections, {} crashes, {} snapshot installs, {} corruptions detected, {} fsync failures, {} disk-full episodes, recovered after heal in {}, history {}, digest {:016x}",
        r.options.seed,
        r.nodes,
        faults.join(","),
        r.ops,
        r.ops_info,
        r.events,
        r.elections,
        r.crashes,
        r.snapshot_installs,
        r.corruptions_detected,
        r.fsync_failures,
        r.disk_full_episodes,
        r.recovered_ms.map_or("never".to_string(), |ms| format!("{ms} ms")),
        match &r.history {
            HistoryVerdict::Linearizable => "linearizable".to_string(),
            HistoryVerdict::Violation(_) => "NOT linearizable".to_string(),
            HistoryVerdict::Unknown(why) => format!("unchecked ({why})"),
            HistoryVerdict::Skipped => "not checked".to_string(),
        },
        r.digest
    );
    let problems = r.problems();
    if detail && !problems.is_empty() {
        for p in &problems {
            println!("  PROBLEM: {p}");
        }
        println!("  replay: {}", r.options.replay_command());
        println!("  last events per node:\n{}", r.recent);
    }
}

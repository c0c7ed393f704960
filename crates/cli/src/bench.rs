//! `quorumkv bench`: a load generator speaking the etcd v3 API, so one client drives quorumkv
//! and etcd alike.
//!
//! - Closed loop (default): `--clients` concurrent workers, each with one request in flight,
//!   spread over `--connections` gRPC connections.
//! - Open loop (`--rate R`): requests are started on a fixed schedule of R per second whatever
//!   the answers do; each latency is measured from the request's *scheduled* start, so a
//!   stall shows up in the percentiles instead of hiding (coordinated omission corrected).
//! - A warm-up period is run and discarded; latencies go to HdrHistograms (µs precision).
//! - Everything is bounded: the run stops after `--duration` whatever happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use quorumkv_core::rng::Rng;
use quorumkv_etcd_proto::etcdserverpb::kv_client::KvClient;
use quorumkv_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use quorumkv_etcd_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest, compare, request_op,
};
use serde::Serialize;
use tonic::transport::Channel;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put a value.
    Put,
    /// Get a key.
    Get,
    /// Gets and puts mixed by `--read-ratio`.
    Mixed,
    /// A compare-and-swap txn on the key's mod revision (read, then txn).
    TxnCas,
}

/// Read consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Through a ReadIndex (or the leader lease).
    Linearizable,
    /// Local, possibly stale.
    Serializable,
}

/// Key choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with exponent 0.99 (a few hot keys).
    Zipf,
}

/// Arguments of `quorumkv bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Client endpoints (host:port), comma-separated.
    #[arg(
        long,
        env = "QUORUMKV_ENDPOINTS",
        default_value = "127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399"
    )]
    pub endpoints: String,
    /// Send every request to the current leader (found with Maintenance.Status).
    #[arg(long)]
    pub leader_only: bool,
    /// Workload.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,
    /// Concurrent clients (closed loop) or the in-flight bound (open loop).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Open loop: requests started per second (0 = closed loop).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub key_dist: KeyDist,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Put every key once before the run (so gets find values).
    #[arg(long)]
    pub preload: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// A label for the result (e.g. the system under test).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Seed of the key choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// Label given.
    pub label: String,
    /// Workload.
    pub workload: Workload,
    /// Consistency of reads.
    pub consistency: Consistency,
    /// Clients.
    pub clients: usize,
    /// Connections.
    pub connections: usize,
    /// Open-loop rate (0 = closed loop).
    pub rate: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Successful requests measured.
    pub ops: u64,
    /// Successful requests per second.
    pub ops_per_sec: f64,
    /// Latency percentiles in milliseconds.
    pub latency_ms_p50: f64,
    /// 90th percentile.
    pub latency_ms_p90: f64,
    /// 99th percentile.
    pub latency_ms_p99: f64,
    /// 99.9th percentile.
    pub latency_ms_p999: f64,
    /// Maximum.
    pub latency_ms_max: f64,
    /// Errors by gRPC code name.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Open loop: requests not started because the in-flight bound was reached.
    pub backlogged: u64,
}

/// Zipf sampler over `n` keys (cumulative table + binary search).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u) as u64
    }
}

struct Keys {
    n: u64,
    zipf: Option<Zipf>,
}

impl Keys {
    fn pick(&self, rng: &mut Rng) -> Vec<u8> {
        let k = match &self.zipf {
            Some(z) => z.sample(rng).min(self.n - 1),
            None => rng.range(0, self.n),
        };
        format!("bench/{k:08}").into_bytes()
    }
}

fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad endpoint {addr}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn find_leader(endpoints: &[String]) -> anyhow::Result<String> {
    for e in endpoints {
        let mut m = MaintenanceClient::new(channel(e)?);
        if let Ok(s) = m.status(StatusRequest {}).await {
            let s = s.into_inner();
            let me = s.header.as_ref().map_or(0, |h| h.member_id);
            if s.leader == me && me != 0 {
                return Ok(e.clone());
            }
        }
    }
    bail!("no endpoint of {} reports itself leader; is the cluster up?", endpoints.join(","))
}

/// One request of the workload; `Ok` if it succeeded.
async fn one(
    kv: &mut KvClient<Channel>,
    w: Workload,
    read: bool,
    serializable: bool,
    key: Vec<u8>,
    value: &bytes::Bytes,
) -> Result<(), tonic::Status> {
    match (w, read) {
        (Workload::Get, _) | (Workload::Mixed, true) => kv
            .range(RangeRequest { key: key.into(), serializable, ..Default::default() })
            .await
            .map(drop),
        (Workload::Put, _) | (Workload::Mixed, false) => kv
            .put(PutRequest { key: key.into(), value: value.clone(), ..Default::default() })
            .await
            .map(drop),
        (Workload::TxnCas, _) => {
            let key: bytes::Bytes = key.into();
            let cur = kv
                .range(RangeRequest { key: key.clone(), serializable, ..Default::default() })
                .await?
                .into_inner();
            let rev = cur.kvs.first().map_or(0, |kv| kv.mod_revision);
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::ModRevision(rev)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key,
                        value: value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            kv.txn(txn).await.map(drop)
        }
    }
}

struct Shared {
    hist: parking_lot_free::Mutex<Histogram<u64>>,
    errors: parking_lot_free::Mutex<std::collections::BTreeMap<String, u64>>,
    ops: AtomicU64,
    backlogged: AtomicU64,
}

/// A std Mutex that ignores poisoning (a panicking worker must not hide the results).
mod parking_lot_free {
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(t: T) -> Self {
            Self(std::sync::Mutex::new(t))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn code_name(s: &tonic::Status) -> String {
    format!("{:?}", s.code())
}

/// Runs the benchmark and returns its result.
pub async fn bench(args: &BenchArgs) -> anyhow::Result<BenchResult> {
    let endpoints: Vec<String> = args
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if endpoints.is_empty() {
        bail!("no endpoints given; pass --endpoints host:port,...");
    }
    if args.clients == 0 || args.connections == 0 || args.keys == 0 {
        bail!("--clients, --connections and --keys must be at least 1");
    }
    let targets =
        if args.leader_only { vec![find_leader(&endpoints).await?] } else { endpoints.clone() };
    let channels: Vec<Channel> = (0..args.connections)
        .map(|i| channel(&targets[i % targets.len()]))
        .collect::<Result<_, _>>()?;
    let value = bytes::Bytes::from(vec![b'x'; args.value_size]);
    let keys = Arc::new(Keys {
        n: args.keys,
        zipf: (args.key_dist == KeyDist::Zipf).then(|| Zipf::new(args.keys, 0.99)),
    });
    if args.preload || matches!(args.workload, Workload::Get | Workload::TxnCas) {
        preload(&channels, args.keys, &value).await?;
    }
    let shared = Arc::new(Shared {
        hist: parking_lot_free::Mutex::new(new_hist()),
        errors: parking_lot_free::Mutex::new(Default::default()),
        ops: AtomicU64::new(0),
        backlogged: AtomicU64::new(0),
    });
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let serializable = args.consistency == Consistency::Serializable;
    let mut tasks = tokio::task::JoinSet::new();
    if args.rate == 0 {
        for c in 0..args.clients {
            let mut kv = KvClient::new(channels[c % channels.len()].clone())
                .max_decoding_message_size(64 << 20);
            let (keys, shared, value) = (keys.clone(), shared.clone(), value.clone());
            let (w, ratio, seed) = (args.workload, args.read_ratio, args.seed);
            tasks.spawn(async move {
                let mut rng = Rng::new(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut hist = new_hist();
                while Instant::now() < end {
                    let read = rng.chance(ratio);
                    let key = keys.pick(&mut rng);
                    let t0 = Instant::now();
                    let r = one(&mut kv, w, read, serializable, key, &value).await;
                    if t0 >= measure_from && t0 < end {
                        match r {
                            Ok(()) => {
                                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                                shared.ops.fetch_add(1, Relaxed);
                            }
                            Err(e) => *shared.errors.lock().entry(code_name(&e)).or_insert(0) += 1,
                        }
                    }
                }
                let _ = shared.hist.lock().add(&hist);
            });
        }
    } else {
        // Open loop: one scheduler starts requests; the in-flight bound is --clients.
        let permits = Arc::new(tokio::sync::Semaphore::new(args.clients));
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        let mut rng = Rng::new(args.seed);
        let mut next = start;
        let mut i = 0usize;
        while next < end {
            tokio::time::sleep_until(next.into()).await;
            let scheduled = next;
            next += interval;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if scheduled >= measure_from {
                    shared.backlogged.fetch_add(1, Relaxed);
                }
                continue;
            };
            let mut kv = KvClient::new(channels[i % channels.len()].clone());
            i += 1;
            let read = rng.chance(args.read_ratio);
            let key = keys.pick(&mut rng);
            let (shared, value, w) = (shared.clone(), value.clone(), args.workload);
            tasks.spawn(async move {
                let r = one(&mut kv, w, read, serializable, key, &value).await;
                if scheduled >= measure_from && scheduled < end {
                    match r {
                        Ok(()) => {
                            let us = scheduled.elapsed().as_micros().max(1) as u64;
                            let _ = shared.hist.lock().record(us);
                            shared.ops.fetch_add(1, Relaxed);
                        }
                        Err(e) => *shared.errors.lock().entry(code_name(&e)).or_insert(0) += 1,
                    }
                }
                drop(permit);
            });
        }
    }
    // Stop waiting a few seconds after the end, whatever is still in flight. (Counted from the
    // end, not from now: closed-loop clients only finish, and merge their histograms, then.)
    let _ = tokio::time::timeout_at((end + Duration::from_secs(5)).into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let h = shared.hist.lock().clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let ops = shared.ops.load(Relaxed);
    Ok(BenchResult {
        label: args.label.clone(),
        workload: args.workload,
        consistency: args.consistency,
        clients: args.clients,
        connections: args.connections,
        rate: args.rate,
        seconds: args.duration,
        ops,
        ops_per_sec: ops as f64 / args.duration,
        latency_ms_p50: ms(0.50),
        latency_ms_p90: ms(0.90),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: h.max() as f64 / 1000.0,
        errors: shared.errors.lock().clone(),
        backlogged: shared.backlogged.load(Relaxed),
    })
}

async fn preload(channels: &[Channel], keys: u64, value: &bytes::Bytes) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let per = keys.div_ceil(32);
    for t in 0..32u64 {
        let mut kv = KvClient::new(channels[t as usize % channels.len()].clone());
        let value = value.clone();
        tasks.spawn(async move {
            for k in (t * per)..((t + 1) * per).min(keys) {
                let key = format!("bench/{k:08}").into_bytes();
                kv.put(PutRequest { key: key.into(), value: value.clone(), ..Default::default() })
                    .await?;
            }
            Ok::<(), tonic::Status>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("preload task")?.context("preloading keys failed; is the cluster up?")?;
    }
    Ok(())
}

/// `quorumkv bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let started = Instant::now();
    let progress = {
        let total = args.warmup + args.duration;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let quiet = args.json;
        let handle = std::thread::spawn(move || {
            while !flag.load(Relaxed) && !quiet {
                let t = started.elapsed().as_secs_f64().min(total);
                let filled = ((t / total) * 30.0) as usize;
                eprint!(
                    "\r[{}{}] {:>5.1}/{:.0} s",
                    "#".repeat(filled),
                    ".".repeat(30 - filled.min(30)),
                    t,
                    total
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            if !quiet {
                eprintln!();
            }
        });
        (done, handle)
    };
    let result = rt.block_on(bench(&args));
    progress.0.store(true, Relaxed);
    let _ = progress.1.join();
    let r = result?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {:?} ({:?}), {} clients over {} connections{}: {:.0} ops/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            if r.label.is_empty() { "bench" } else { &r.label },
            r.workload,
            r.consistency,
            r.clients,
            r.connections,
            if r.rate > 0 { format!(", open loop at {}/s", r.rate) } else { String::new() },
            r.ops_per_sec,
            r.latency_ms_p50,
            r.latency_ms_p90,
            r.latency_ms_p99,
            r.latency_ms_p999,
            r.latency_ms_max
        );
        if !r.errors.is_empty() {
            println!("  errors: {:?}", r.errors);
        }
        if r.backlogged > 0 {
            println!(
                "  {} requests could not start on schedule (in-flight bound reached)",
                r.backlogged
            );
        }
    }
    if r.ops == 0 {
        bail!("no request succeeded; errors: {:?}", r.errors);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_low_ranks_and_stays_in_range() {
        let z = Zipf::new(1000, 0.99);
        let mut rng = Rng::new(3);
        let mut low = 0;
        for _ in 0..10_000 {
            let k = z.sample(&mut rng);
            assert!(k < 1000);
            if k < 10 {
                low += 1;
            }
        }
        // The top 1% of keys draw far more than 1% of the samples.
        assert!(low > 2000, "{low}");
    }
}

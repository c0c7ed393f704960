//! Workloads: clients that drive the cluster through the etcd v3 API while the nemesis
//! works, record what they saw, and a checker per workload that judges the record.
//!
//! Every workload records a history in the project's format (`docs/HISTORY.md`) through
//! [`Recorder`], which wraps [`HistoryRecorder`] and stamps each event with the run's
//! monotonic clock. Each checker is a pure function of what was recorded, so it is tested on
//! hand-made histories.
//!
//! - [`register`]: read / write / cas on a few keys; linearizability (WGL, `kv` model).
//! - [`set`]: unique adds and reads; Jepsen's set-full analysis.
//! - [`bank`]: transfers in transactions; every read sees the same total.
//! - [`watch`]: watchers of a prefix see every change, in order, without gaps or duplicates.
//! - [`lock`]: a lease-based lock with fenced writes; overlaps counted, fencing judged.

pub mod bank;
pub mod lock;
pub mod register;
pub mod set;
pub mod watch;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use quorumkv_check::history::{EventType, F, History, HistoryRecorder, Value};
use serde::Serialize;
use tokio::sync::watch as signal;
use tokio::time::Instant;

use crate::ChaosError;
use crate::client::{CallError, Channels};
use crate::cluster::Endpoints;

/// How one operation ended, for the charts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Completed and took effect.
    Ok,
    /// Completed and definitely did not take effect.
    Fail,
    /// Unknown.
    Info,
}

/// One completed operation, for the latency and throughput charts.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The workload.
    pub workload: &'static str,
    /// When it was invoked, in milliseconds since the run started.
    pub start_ms: f64,
    /// How long it took, in milliseconds.
    pub latency_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Operation counters shown by the progress bar.
#[derive(Debug, Default)]
pub struct Counts {
    /// `ok` completions.
    pub ok: AtomicU64,
    /// `fail` completions.
    pub fail: AtomicU64,
    /// `info` completions.
    pub info: AtomicU64,
}

/// What every workload shares: the clock, the endpoints, the channels, the stop signal.
pub struct Ctx {
    /// Start of the run; every time is measured from here.
    pub t0: Instant,
    /// The current members' client endpoints.
    pub endpoints: Endpoints,
    /// Channels to the client ports.
    pub channels: Channels,
    /// Becomes true when the fault phase ends: workers start no new operations.
    pub stop: signal::Receiver<bool>,
    /// Completed operations, for the charts.
    pub samples: Mutex<Vec<Sample>>,
    /// Counters for the progress bar.
    pub counts: Counts,
    /// Time limit of one call.
    pub call_timeout: Duration,
    /// How long a write is retried (same session and sequence number) before its outcome
    /// is recorded as unknown.
    pub write_deadline: Duration,
    /// Seed of the workloads' random choices.
    pub seed: u64,
}

impl Ctx {
    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// True once the fault phase is over.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// A session id unique to (workload, process) in this run.
    pub fn session_id(&self, workload: &str, process: u64) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed;
        for b in workload.bytes().chain(process.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h | 1
    }

    /// Sleeps `d`, or less if the fault phase ends meanwhile.
    pub async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// A workload's history file: [`HistoryRecorder`] behind a lock, with times from the run's
/// clock (taken under the lock, so the file is in time order too) and a [`Sample`] per
/// completion. A bookkeeping error is kept and reported when the run ends.
pub struct Recorder {
    workload: &'static str,
    ctx: Arc<Ctx>,
    inner: Mutex<RecorderInner>,
    path: PathBuf,
}

struct RecorderInner {
    recorder: HistoryRecorder<BufWriter<File>>,
    started: HashMap<u64, u64>,
    error: Option<String>,
}

impl Recorder {
    /// A recorder writing `path`.
    pub fn create(workload: &'static str, ctx: Arc<Ctx>, path: &Path) -> Result<Self, ChaosError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(ChaosError::io("create a history folder"))?;
        }
        let file = File::create(path).map_err(ChaosError::io("create a history file"))?;
        Ok(Recorder {
            workload,
            ctx,
            inner: Mutex::new(RecorderInner {
                recorder: HistoryRecorder::new(BufWriter::new(file)),
                started: HashMap::new(),
                error: None,
            }),
            path: path.to_path_buf(),
        })
    }

    /// Records an invoke.
    pub fn invoke(&self, process: u64, f: F, key: Option<&str>, value: Value) {
        let mut g = self.inner.lock();
        let now = self.ctx.now_ns();
        g.started.insert(process, now);
        if let Err(e) = g.recorder.invoke(process, f, key, value, Some(now)) {
            g.error.get_or_insert_with(|| e.to_string());
        }
    }

    /// Records a completion of the process's operation in flight.
    pub fn complete(&self, process: u64, kind: EventType, value: Value) {
        let mut g = self.inner.lock();
        let now = self.ctx.now_ns();
        if let Err(e) = g.recorder.complete(process, kind, value, Some(now)) {
            g.error.get_or_insert_with(|| e.to_string());
        }
        let started = g.started.remove(&process).unwrap_or(now);
        drop(g);
        let outcome = match kind {
            EventType::Ok => {
                self.ctx.counts.ok.fetch_add(1, Relaxed);
                Outcome::Ok
            }
            EventType::Fail => {
                self.ctx.counts.fail.fetch_add(1, Relaxed);
                Outcome::Fail
            }
            _ => {
                self.ctx.counts.info.fetch_add(1, Relaxed);
                Outcome::Info
            }
        };
        self.ctx.samples.lock().push(Sample {
            workload: self.workload,
            start_ms: started as f64 / 1e6,
            latency_ms: now.saturating_sub(started) as f64 / 1e6,
            outcome,
        });
    }

    /// Records `ok`.
    pub fn ok(&self, process: u64, value: Value) {
        self.complete(process, EventType::Ok, value);
    }

    /// Records `fail` (definitely no effect).
    pub fn fail(&self, process: u64, value: Value) {
        self.complete(process, EventType::Fail, value);
    }

    /// Records `info` (unknown); the process must not be used again.
    pub fn info(&self, process: u64, value: Value) {
        self.complete(process, EventType::Info, value);
    }

    /// Flushes the file and reads it back as a history.
    pub fn finish(&self) -> Result<History, ChaosError> {
        let mut g = self.inner.lock();
        if let Some(e) = g.error.take() {
            return Err(ChaosError::Harness(format!(
                "the {} workload recorded an invalid history: {e}",
                self.workload
            )));
        }
        g.recorder.flush().map_err(ChaosError::io("write a history"))?;
        drop(g);
        let file = File::open(&self.path).map_err(ChaosError::io("read a history"))?;
        History::read(std::io::BufReader::new(file)).map_err(|e| {
            ChaosError::Harness(format!("the {} history does not read back: {e}", self.workload))
        })
    }

    /// The history file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How a write ended after its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written<T> {
    /// It took effect; the answer.
    Ok(T),
    /// It definitely did not take effect.
    Fail(String),
    /// Unknown: it may take effect at any time.
    Info(String),
}

/// Retries a write (the caller keeps the session and sequence number, so the state machine
/// applies it at most once) until it gets an answer or `ctx.write_deadline` passes. A
/// refusal counts as "did not happen" only if no earlier attempt could have happened.
pub async fn write_retrying<T, Fut>(ctx: &Ctx, mut attempt: impl FnMut(u64) -> Fut) -> Written<T>
where
    Fut: Future<Output = Result<T, CallError>>,
{
    let started = Instant::now();
    let mut unknown: Option<String> = None;
    let mut n = 0u64;
    loop {
        match attempt(n).await {
            Ok(v) => return Written::Ok(v),
            Err(CallError::Definite(m)) if unknown.is_none() => return Written::Fail(m),
            Err(CallError::Definite(m) | CallError::Unknown(m)) => unknown = Some(m),
        }
        n += 1;
        if started.elapsed() >= ctx.write_deadline {
            return Written::Info(unknown.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A checker's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every property held.
    Pass,
    /// A property was violated.
    Fail,
    /// The checker could not decide (search budget, missing final read).
    Unknown,
}

/// One operation drawn on a violation's timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineOp {
    /// Row label (usually the process).
    pub row: String,
    /// What the operation was.
    pub label: String,
    /// Invoke, ms since the run started.
    pub start_ms: f64,
    /// Completion, ms since the run started (`None`: never completed).
    pub end_ms: Option<f64>,
    /// `ok`, `fail` or `info`.
    pub status: String,
    /// Drawn in red: the operation at the heart of the violation.
    pub culprit: bool,
}

impl TimelineOp {
    /// The timeline entry of a history operation.
    pub fn of(op: &quorumkv_check::history::Operation, label: String, culprit: bool) -> Self {
        TimelineOp {
            row: format!("p{}", op.process),
            label,
            start_ms: op.invoke.time.unwrap_or(0) as f64 / 1e6,
            end_ms: op.complete.and_then(|c| c.time).map(|t| t as f64 / 1e6),
            status: format!("{:?}", op.status).to_lowercase(),
            culprit,
        }
    }
}

/// What a workload's checker decided.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    /// The workload's name.
    pub workload: String,
    /// The verdict.
    pub verdict: Verdict,
    /// One line for people.
    pub summary: String,
    /// Counters specific to the workload.
    pub stats: serde_json::Value,
    /// What went wrong, one line each (at most a few dozen).
    pub problems: Vec<String>,
    /// The operations involved in the first violation.
    pub timeline: Vec<TimelineOp>,
    /// Notes for the reader (what is and is not guaranteed).
    pub notes: Vec<String>,
    /// History file, relative to the report folder.
    pub history: String,
    /// Operations by outcome: ok, fail, info.
    pub ops: [u64; 3],
}

/// Counts a history's operations by status: [ok, fail, info].
pub fn op_counts(history: &History) -> [u64; 3] {
    use quorumkv_check::history::Status;
    let mut c = [0u64; 3];
    for op in &history.operations {
        match op.status {
            Status::Ok => c[0] += 1,
            Status::Fail => c[1] += 1,
            Status::Info => c[2] += 1,
        }
    }
    c
}

/// Most problem lines kept per workload.
pub const PROBLEMS_MAX: usize = 40;

/// Pushes a problem line unless the list is full.
pub fn problem(problems: &mut Vec<String>, line: String) {
    if problems.len() < PROBLEMS_MAX {
        problems.push(line);
    }
}

/// Integer value of a history value, if it is one.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

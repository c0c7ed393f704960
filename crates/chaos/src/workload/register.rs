//! The `register` workload: reads, writes and compare-and-sets on a few keys, checked for
//! linearizability key by key (the `kv` model of `quorumkv-check`).
//!
//! Each client process sticks to one node (process `p` talks to endpoint `p mod n`), so a
//! node cut off from the others keeps being read from: that is how a stale read shows up.
//! Writes carry the process's session, so a retried write is applied at most once; a write
//! whose outcome stays unknown is recorded as `info` and the client continues as a new
//! process with a new session. Written values are unique, which keeps the search small.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use quorumkv_check::checker::{CheckOptions, CheckOutcome, OpRef, check_history};
use quorumkv_check::history::{F, History, Value};
use quorumkv_check::model::ModelKind;
use quorumkv_core::rng::Rng;
use quorumkv_etcd_proto::etcdserverpb::PutRequest;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    Ctx, Recorder, TimelineOp, Verdict, WorkloadResult, Written, op_counts, write_retrying,
};
use crate::ChaosError;
use crate::client::{
    compare_create, compare_value, first_value, op_put, range_key, timed, txn, with_session,
};

/// Keys live under this prefix.
pub const PREFIX: &str = "chaos/register/";

/// Shape of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Number of keys.
    pub keys: u64,
    /// Concurrent clients.
    pub workers: u64,
    /// Time budget of the linearizability check.
    pub check_time_limit: Duration,
}

/// The running workload.
pub struct Running {
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    cfg: Config,
    tasks: Vec<JoinHandle<()>>,
}

fn key(i: u64) -> String {
    format!("{PREFIX}{i}")
}

/// Starts the clients.
pub fn start(ctx: Arc<Ctx>, rec: Arc<Recorder>, cfg: Config) -> Running {
    let values = Arc::new(AtomicI64::new(1));
    let tasks = (0..cfg.workers)
        .map(|w| tokio::spawn(worker(ctx.clone(), rec.clone(), cfg, w, values.clone())))
        .collect();
    Running { ctx, rec, cfg, tasks }
}

async fn worker(ctx: Arc<Ctx>, rec: Arc<Recorder>, cfg: Config, w: u64, values: Arc<AtomicI64>) {
    let mut rng = Rng::new(ctx.seed ^ 0x5245_4749_5354_4552 ^ w);
    let mut process = w;
    let mut session = crate::client::Session::new(ctx.session_id("register", process));
    // The last value this client knows of per key: what a cas expects.
    let mut known: HashMap<u64, Option<i64>> = HashMap::new();
    while !ctx.stopping() {
        let k = rng.range(0, cfg.keys);
        let key = key(k);
        let roll = rng.range(0, 100);
        if roll < 50 {
            let endpoint = ctx.endpoints.pick(process);
            rec.invoke(process, F::Read, Some(&key), Value::Null);
            let mut kv = ctx.channels.kv(&endpoint.client);
            match timed(ctx.call_timeout, kv.range(range_key(&key))).await {
                Ok(resp) => {
                    let v = first_value(&resp);
                    let parsed = v.as_deref().map(str::parse::<i64>);
                    let value = match (&v, parsed) {
                        (None, _) => Value::Null,
                        (_, Some(Ok(i))) => Value::Int(i),
                        (Some(s), _) => Value::Str(s.clone()),
                    };
                    known.insert(k, if let Value::Int(i) = value { Some(i) } else { None });
                    rec.ok(process, value);
                }
                // A read changes nothing: an error means it did not happen.
                Err(_) => rec.fail(process, Value::Null),
            }
            continue;
        }
        let new = values.fetch_add(1, Relaxed);
        let seq = session.take();
        let sid = session.id;
        let cas = roll >= 75;
        let expected = known.get(&k).copied().flatten();
        let (f, value) = if cas {
            (F::Cas, Value::List(vec![expected.map_or(Value::Null, Value::Int), Value::Int(new)]))
        } else {
            (F::Write, Value::Int(new))
        };
        rec.invoke(process, f, Some(&key), value.clone());
        let outcome = write_retrying(&ctx, |attempt| {
            let endpoint = ctx.endpoints.pick(process + attempt);
            let mut kv = ctx.channels.kv(&endpoint.client);
            let limit = ctx.call_timeout;
            let key = key.clone();
            async move {
                if cas {
                    let compare = match expected {
                        Some(e) => compare_value(&key, &e.to_string()),
                        None => compare_create(&key, 0),
                    };
                    let req = txn(vec![compare], vec![op_put(&key, &new.to_string(), 0)]);
                    timed(limit, kv.txn(with_session(req, sid, seq))).await.map(|r| r.succeeded)
                } else {
                    let req = PutRequest {
                        key: key.as_bytes().to_vec().into(),
                        value: new.to_string().into_bytes().into(),
                        ..PutRequest::default()
                    };
                    timed(limit, kv.put(with_session(req, sid, seq))).await.map(|_| true)
                }
            }
        })
        .await;
        match outcome {
            Written::Ok(true) => {
                known.insert(k, Some(new));
                rec.ok(process, value);
            }
            Written::Ok(false) => {
                // The compare did not match: our idea of the value is out of date.
                known.remove(&k);
                rec.fail(process, value);
            }
            Written::Fail(_) => rec.fail(process, value),
            Written::Info(_) => {
                rec.info(process, value);
                process += cfg.workers;
                session = crate::client::Session::new(ctx.session_id("register", process));
                known.clear();
            }
        }
    }
}

impl Running {
    /// Waits for the clients to stop, reads every key once more on the healed cluster, and
    /// checks the history.
    pub async fn finish(self) -> Result<WorkloadResult, ChaosError> {
        for t in self.tasks {
            let _ = t.await;
        }
        // Final reads, one process per key, retried until one answers.
        for k in 0..self.cfg.keys {
            let process = 1_000_000 + k;
            let key = key(k);
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut attempt = 0u64;
            loop {
                let endpoint = self.ctx.endpoints.pick(k + attempt);
                self.rec.invoke(process, F::Read, Some(&key), Value::Null);
                let mut kv = self.ctx.channels.kv(&endpoint.client);
                match timed(self.ctx.call_timeout, kv.range(range_key(&key))).await {
                    Ok(resp) => {
                        let v = first_value(&resp)
                            .map_or(Value::Null, |s| s.parse().map_or(Value::Str(s), Value::Int));
                        self.rec.ok(process, v);
                        break;
                    }
                    Err(_) => self.rec.fail(process, Value::Null),
                }
                attempt += 1;
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let history = self.rec.finish()?;
        Ok(check(&history, self.cfg.check_time_limit, "register/history.jsonl"))
    }
}

fn timeline_of(op: &OpRef, culprit: bool) -> TimelineOp {
    TimelineOp {
        row: format!("p{}", op.process),
        label: format!("{} {}", op.key.trim_start_matches(PREFIX), op.description),
        start_ms: op.invoke.time.unwrap_or(0) as f64 / 1e6,
        end_ms: op.complete.and_then(|c| c.time).map(|t| t as f64 / 1e6),
        status: format!("{:?}", op.status).to_lowercase(),
        culprit,
    }
}

/// Checks a register history for linearizability.
pub fn check(history: &History, time_limit: Duration, path: &str) -> WorkloadResult {
    let options = CheckOptions { time_limit: Some(time_limit), ..CheckOptions::default() };
    let ops = op_counts(history);
    let mut result = WorkloadResult {
        workload: "register".into(),
        verdict: Verdict::Unknown,
        summary: String::new(),
        stats: serde_json::Value::Null,
        problems: Vec::new(),
        timeline: Vec::new(),
        notes: Vec::new(),
        history: path.into(),
        ops,
    };
    match check_history(history, ModelKind::Kv, &options) {
        Ok(report) => {
            result.stats = serde_json::to_value(&report.stats).unwrap_or_default();
            match report.outcome {
                CheckOutcome::Linearizable => {
                    result.verdict = Verdict::Pass;
                    result.summary = format!(
                        "linearizable: {} operations on {} keys ({} ok, {} fail, {} info)",
                        history.operations.len(),
                        report.stats.keys,
                        ops[0],
                        ops[1],
                        ops[2]
                    );
                }
                CheckOutcome::NotLinearizable(v) => {
                    result.verdict = Verdict::Fail;
                    result.summary = format!(
                        "NOT linearizable: on key {:?}, {} ({}) cannot be placed",
                        v.key,
                        v.stuck.description,
                        v.stuck.window()
                    );
                    result.problems.push(v.explanation.clone());
                    let tail = v.prefix.len().saturating_sub(8);
                    for op in &v.prefix[tail..] {
                        result.timeline.push(timeline_of(op, false));
                    }
                    result.timeline.push(timeline_of(&v.stuck, true));
                    for op in v.unordered.iter().filter(|o| **o != v.stuck).take(12) {
                        result.timeline.push(timeline_of(op, false));
                    }
                }
                CheckOutcome::Unknown { reason } => {
                    result.summary = format!("unknown: the checker gave up ({reason})");
                    result.problems.push(reason);
                }
            }
        }
        Err(e) => {
            result.summary = format!("unknown: the history cannot be checked ({e:?})");
            result.problems.push(format!("{e:?}"));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> History {
        History::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_linearizable_history_passes() {
        let h = parse(&[
            r#"{"process":0,"type":"invoke","f":"write","key":"a","value":1,"time":1}"#,
            r#"{"process":0,"type":"ok","f":"write","key":"a","value":1,"time":2}"#,
            r#"{"process":1,"type":"invoke","f":"read","key":"a","value":null,"time":3}"#,
            r#"{"process":1,"type":"ok","f":"read","key":"a","value":1,"time":4}"#,
        ]);
        let r = check(&h, Duration::from_secs(10), "h");
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.summary);
    }

    #[test]
    fn a_stale_read_fails_and_is_drawn_on_the_timeline() {
        let h = parse(&[
            r#"{"process":0,"type":"invoke","f":"write","key":"a","value":1,"time":1000000}"#,
            r#"{"process":0,"type":"ok","f":"write","key":"a","value":1,"time":2000000}"#,
            r#"{"process":0,"type":"invoke","f":"write","key":"a","value":2,"time":3000000}"#,
            r#"{"process":0,"type":"ok","f":"write","key":"a","value":2,"time":4000000}"#,
            r#"{"process":1,"type":"invoke","f":"read","key":"a","value":null,"time":5000000}"#,
            r#"{"process":1,"type":"ok","f":"read","key":"a","value":1,"time":6000000}"#,
        ]);
        let r = check(&h, Duration::from_secs(10), "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.summary.contains("NOT linearizable"), "{}", r.summary);
        let culprit: Vec<&TimelineOp> = r.timeline.iter().filter(|t| t.culprit).collect();
        assert_eq!(culprit.len(), 1);
        assert_eq!(culprit[0].row, "p1");
        assert_eq!(culprit[0].start_ms, 5.0);
    }
}

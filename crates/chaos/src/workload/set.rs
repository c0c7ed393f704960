//! The `set` workload: clients add unique elements (a put of a unique key under a prefix),
//! a reader lists the prefix now and then, and after healing every node is read once more.
//! Judged as Jepsen's set-full: each element is **stable** (in the final read), **lost**
//! (acknowledged, or once seen, but missing from the final read), **never read** (its add's
//! outcome was unknown and no read saw it: fine) — and reads are linearizable, so a read that
//! began after an element was known present and misses it is **stale**, a violation too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use quorumkv_check::history::{F, History, Operation, Status, Value};
use quorumkv_etcd_proto::etcdserverpb::PutRequest;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    Ctx, Recorder, TimelineOp, Verdict, WorkloadResult, Written, int, op_counts, problem,
    write_retrying,
};
use crate::ChaosError;
use crate::client::{Session, range_prefix, timed, with_session};

/// Elements live under this prefix.
pub const PREFIX: &str = "chaos/set/";
/// Process ids of the periodic reader.
const READER: u64 = 1_000_000;
/// Process ids of the final reads (one per node).
const FINAL: u64 = 2_000_000;

/// The running workload.
pub struct Running {
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts `workers` adders and one reader.
pub fn start(ctx: Arc<Ctx>, rec: Arc<Recorder>, workers: u64) -> Running {
    let next = Arc::new(AtomicI64::new(1));
    let mut tasks: Vec<JoinHandle<()>> = (0..workers)
        .map(|w| tokio::spawn(adder(ctx.clone(), rec.clone(), w, workers, next.clone())))
        .collect();
    tasks.push(tokio::spawn(reader(ctx.clone(), rec.clone())));
    Running { ctx, rec, tasks }
}

async fn adder(ctx: Arc<Ctx>, rec: Arc<Recorder>, w: u64, workers: u64, next: Arc<AtomicI64>) {
    let mut process = w;
    let mut session = Session::new(ctx.session_id("set", process));
    while !ctx.stopping() {
        let e = next.fetch_add(1, Relaxed);
        let seq = session.take();
        let sid = session.id;
        rec.invoke(process, F::from("add"), None, Value::Int(e));
        let outcome = write_retrying(&ctx, |attempt| {
            let mut kv = ctx.channels.kv(&ctx.endpoints.pick(process + attempt).client);
            let limit = ctx.call_timeout;
            let req = PutRequest {
                key: format!("{PREFIX}{e:012}").into_bytes().into(),
                value: e.to_string().into_bytes().into(),
                ..PutRequest::default()
            };
            async move { timed(limit, kv.put(with_session(req, sid, seq))).await }
        })
        .await;
        match outcome {
            Written::Ok(_) => rec.ok(process, Value::Int(e)),
            Written::Fail(_) => rec.fail(process, Value::Int(e)),
            Written::Info(_) => {
                rec.info(process, Value::Int(e));
                process += workers;
                session = Session::new(ctx.session_id("set", process));
            }
        }
    }
}

/// One read of the whole set from `endpoint`: the elements, sorted.
async fn read_set(ctx: &Ctx, client: &str) -> Result<Vec<i64>, String> {
    let mut kv = ctx.channels.kv(client);
    let mut req = range_prefix(PREFIX);
    req.keys_only = true;
    let resp =
        timed(ctx.call_timeout * 2, kv.range(req)).await.map_err(|e| e.message().to_string())?;
    let mut out: Vec<i64> = resp
        .kvs
        .iter()
        .filter_map(|kv| std::str::from_utf8(&kv.key).ok()?.strip_prefix(PREFIX)?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn record_read(rec: &Recorder, process: u64, result: &Result<Vec<i64>, String>) {
    match result {
        Ok(elements) => {
            rec.ok(process, Value::List(elements.iter().map(|&e| Value::Int(e)).collect()));
        }
        Err(_) => rec.fail(process, Value::Null),
    }
}

async fn reader(ctx: Arc<Ctx>, rec: Arc<Recorder>) {
    let mut n = 0u64;
    while !ctx.stopping() {
        let endpoint = ctx.endpoints.pick(n);
        n += 1;
        rec.invoke(READER, F::Read, None, Value::Null);
        let result = read_set(&ctx, &endpoint.client).await;
        record_read(&rec, READER, &result);
        ctx.pause(Duration::from_millis(500)).await;
    }
}

impl Running {
    /// Waits for the clients, reads the set from every node, and checks.
    pub async fn finish(self) -> Result<WorkloadResult, ChaosError> {
        for t in self.tasks {
            let _ = t.await;
        }
        for (i, endpoint) in self.ctx.endpoints.list().into_iter().enumerate() {
            let process = FINAL + i as u64;
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                self.rec.invoke(process, F::Read, None, Value::Null);
                let result = read_set(&self.ctx, &endpoint.client).await;
                record_read(&self.rec, process, &result);
                if result.is_ok() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let history = self.rec.finish()?;
        Ok(check(&history, "set/history.jsonl"))
    }
}

fn time(op: &Operation) -> (u64, u64) {
    let invoke = op.invoke.time.unwrap_or(0);
    (invoke, op.complete.and_then(|c| c.time).unwrap_or(u64::MAX))
}

/// Jepsen's set-full analysis of a set history (`add` of an integer; `read` returning the
/// list of elements). The final read is the last read that began after every add ended.
pub fn check(history: &History, path: &str) -> WorkloadResult {
    let mut adds: BTreeMap<i64, &Operation> = BTreeMap::new();
    let mut reads: Vec<(&Operation, BTreeSet<i64>)> = Vec::new();
    for op in &history.operations {
        match op.f.as_str() {
            "add" => {
                if let Some(e) = int(&op.value) {
                    adds.insert(e, op);
                }
            }
            "read" if op.status == Status::Ok => {
                let set = match &op.result {
                    Value::List(items) => items.iter().filter_map(int).collect(),
                    _ => BTreeSet::new(),
                };
                reads.push((op, set));
            }
            _ => {}
        }
    }
    reads.sort_by_key(|(op, _)| time(op).0);
    let adds_done = adds.values().map(|op| time(op).1).filter(|&t| t != u64::MAX).max();
    let final_read = reads.iter().rev().find(|(op, _)| adds_done.is_none_or(|d| time(op).0 >= d));
    let ops = op_counts(history);
    let mut problems = Vec::new();
    let mut timeline = Vec::new();
    let (mut stable, mut lost, mut never_read, mut stale) = (0, 0, 0, 0);
    let mut unexpected: BTreeSet<i64> = BTreeSet::new();
    let mut stale_reads = 0u64;
    let Some((final_op, final_set)) = final_read else {
        return WorkloadResult {
            workload: "set".into(),
            verdict: Verdict::Unknown,
            summary: "unknown: no read completed after every add ended".into(),
            stats: serde_json::Value::Null,
            problems: vec!["no final read".into()],
            timeline,
            notes: Vec::new(),
            history: path.into(),
            ops,
        };
    };
    // When an element became known to be present: its add's acknowledgement, or the end
    // of the first read that saw it.
    let mut known_at: HashMap<i64, u64> = HashMap::new();
    for (e, op) in &adds {
        if op.status == Status::Ok {
            known_at.insert(*e, time(op).1);
        }
    }
    for (op, set) in &reads {
        for e in set {
            let t = time(op).1;
            known_at.entry(*e).and_modify(|k| *k = (*k).min(t)).or_insert(t);
            let legit = adds.get(e).is_some_and(|a| a.status != Status::Fail);
            if !legit && unexpected.insert(*e) {
                problem(
                    &mut problems,
                    format!("element {e} was read but never (successfully) added"),
                );
            }
        }
    }
    for (e, add) in &adds {
        let seen = known_at.contains_key(e);
        if final_set.contains(e) {
            stable += 1;
            let known = known_at.get(e).copied().unwrap_or(u64::MAX);
            let missing: Vec<&&Operation> = reads
                .iter()
                .filter(|(op, set)| time(op).0 > known && !set.contains(e))
                .map(|(op, _)| op)
                .collect();
            if !missing.is_empty() {
                stale += 1;
                stale_reads += missing.len() as u64;
                problem(
                    &mut problems,
                    format!(
                        "element {e} was known present at {:.3} s but {} later read(s) missed it (stale)",
                        known as f64 / 1e9,
                        missing.len()
                    ),
                );
                if timeline.is_empty() {
                    timeline.push(TimelineOp::of(add, format!("add {e}"), false));
                    timeline.push(TimelineOp::of(missing[0], format!("read without {e}"), true));
                }
            }
        } else if add.status == Status::Ok || seen {
            lost += 1;
            problem(
                &mut problems,
                format!(
                    "element {e} lost: {} but missing from the final read",
                    if add.status == Status::Ok { "acknowledged" } else { "once read" }
                ),
            );
            if timeline.len() < 10 {
                timeline.push(TimelineOp::of(add, format!("add {e}"), true));
            }
        } else {
            never_read += 1;
        }
    }
    if lost > 0 {
        timeline.push(TimelineOp::of(final_op, "final read".into(), false));
    }
    let acknowledged = adds.values().filter(|op| op.status == Status::Ok).count();
    let unexpected = unexpected.len();
    let valid = lost == 0 && stale == 0 && unexpected == 0;
    WorkloadResult {
        workload: "set".into(),
        verdict: if valid { Verdict::Pass } else { Verdict::Fail },
        summary: format!(
            "{} elements attempted, {acknowledged} acknowledged: {stable} stable, {lost} lost, {never_read} never read, {stale} stale, {unexpected} unexpected",
            adds.len()
        ),
        stats: serde_json::json!({
            "attempted": adds.len(),
            "acknowledged": acknowledged,
            "stable": stable,
            "lost": lost,
            "never_read": never_read,
            "stale": stale,
            "stale_reads": stale_reads,
            "unexpected": unexpected,
            "reads": reads.len(),
        }),
        problems,
        timeline,
        notes: Vec::new(),
        history: path.into(),
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(lines: &[String]) -> History {
        History::parse(&lines.join("\n")).unwrap()
    }

    fn op(p: u64, f: &str, kind: &str, value: &str, t: u64) -> String {
        format!(r#"{{"process":{p},"type":"{kind}","f":"{f}","value":{value},"time":{t}}}"#)
    }

    #[test]
    fn every_acknowledged_element_present_passes() {
        let h = history(&[
            op(0, "add", "invoke", "1", 1),
            op(0, "add", "ok", "1", 2),
            op(1, "add", "invoke", "2", 3),
            op(1, "add", "info", "2", 4),
            op(9, "read", "invoke", "null", 5),
            op(9, "read", "ok", "[1]", 6),
        ]);
        let r = check(&h, "h");
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.summary);
        assert_eq!(r.stats["stable"], 1);
        assert_eq!(r.stats["never_read"], 1);
    }

    #[test]
    fn a_lost_element_fails() {
        let h = history(&[
            op(0, "add", "invoke", "1", 1),
            op(0, "add", "ok", "1", 2),
            op(0, "add", "invoke", "2", 3),
            op(0, "add", "ok", "2", 4),
            op(9, "read", "invoke", "null", 5),
            op(9, "read", "ok", "[1]", 6),
        ]);
        let r = check(&h, "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["lost"], 1);
        assert!(r.problems[0].contains("element 2 lost"), "{:?}", r.problems);
        assert!(r.timeline.iter().any(|t| t.culprit && t.label == "add 2"));
    }

    #[test]
    fn a_stale_read_and_an_unexpected_element_fail() {
        let h = history(&[
            op(0, "add", "invoke", "1", 1),
            op(0, "add", "ok", "1", 2),
            op(8, "read", "invoke", "null", 3),
            op(8, "read", "ok", "[7]", 4),
            op(9, "read", "invoke", "null", 5),
            op(9, "read", "ok", "[1]", 6),
        ]);
        let r = check(&h, "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["stale"], 1);
        assert_eq!(r.stats["unexpected"], 1);
    }

    #[test]
    fn no_final_read_is_unknown() {
        let h = history(&[
            op(9, "read", "invoke", "null", 1),
            op(9, "read", "ok", "[]", 2),
            op(0, "add", "invoke", "1", 3),
            op(0, "add", "ok", "1", 4),
        ]);
        assert_eq!(check(&h, "h").verdict, Verdict::Unknown);
    }
}

//! The `lease-lock` workload: etcd's lock recipe, and what it does and does not guarantee.
//!
//! Each contender grants a lease (TTL 2 s) and keeps it alive, then takes the lock with a
//! transaction "if the lock key is absent, put it with my lease"; the lock key's create
//! revision is its **fencing token**. In the critical section it writes a data key, each
//! write a transaction "if the lock key's create revision is still my token, put". It
//! releases with "if my token, delete", then revokes the lease.
//!
//! What quorumkv guarantees, and what this workload judges: a fenced write commits only
//! while the lock key exists with the writer's token, so in the store's revision order no
//! write of an old holder lands after a new holder took the lock. Checked by replaying the
//! prefix's history after healing: at the revision of every data write, the lock key must
//! exist with the token the write carries; and every acknowledged acquisition and fenced
//! write must be in that history.
//!
//! What it does not guarantee, and this workload only counts: mutual exclusion in wall-clock
//! time. A holder paused (or whose node is paused or cut off, or whose clock is off) past its
//! lease still believes it holds the lock while the lease expires and another contender takes
//! it. That is inherent to leases (Jepsen found the same of etcd's locks); the holders'
//! intervals are recorded and their overlaps counted, but only fenced writes are safe.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use quorumkv_check::history::{F, History, Operation, Status, Value};
use quorumkv_core::rng::Rng;
use quorumkv_etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::watch::{Ev, current_revision, replay_any};
use super::{Ctx, Recorder, TimelineOp, Verdict, WorkloadResult, Written, int, op_counts, problem};
use crate::ChaosError;
use crate::client::{Session, compare_create, op_delete, op_put, timed, txn, with_session};

/// Keys live under this prefix.
pub const PREFIX: &str = "chaos/lock/";
/// The lock key.
pub const LOCK_KEY: &str = "chaos/lock/mutex";
/// The key written in critical sections.
pub const DATA_KEY: &str = "chaos/lock/data";
/// Lease time to live, seconds (the state machine's minimum).
const LEASE_TTL_SECS: i64 = 2;

/// What the report says about locks, in plain words.
pub const GUARANTEES: [&str; 3] = [
    "Guaranteed: the lock key's create revision is a fencing token. A write made as a transaction comparing the lock key's create revision with the holder's token commits only while that holder's lock key exists, so in revision order no fenced write of an earlier holder lands after a later holder took the lock.",
    "Not guaranteed: mutual exclusion in wall-clock time. A holder that is paused, or whose node is paused or cut off, or whose clock is off, past its lease TTL still believes it holds the lock after the lease expired and another contender acquired it. Overlapping holder intervals are counted here but do not fail the run.",
    "So: protect a resource with the fencing token (compare it in the same transaction, or have the resource reject older tokens), never with the lock alone.",
];

/// The running workload.
pub struct Running {
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    rev0: i64,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts `contenders` lock clients.
pub async fn start(
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    contenders: u64,
) -> Result<Running, ChaosError> {
    let rev0 = current_revision(&ctx, Duration::from_secs(20)).await?;
    let tasks = (0..contenders)
        .map(|w| tokio::spawn(contender(ctx.clone(), rec.clone(), w, contenders)))
        .collect();
    Ok(Running { ctx, rec, rev0, tasks })
}

/// Keeps a lease alive until dropped; `lost` turns true when the lease is known expired.
struct KeepAlive {
    task: JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn keep_alive(ctx: Arc<Ctx>, lease: i64, first: u64) -> KeepAlive {
    let lost = Arc::new(AtomicBool::new(false));
    let flag = lost.clone();
    let task = tokio::spawn(async move {
        let mut n = first;
        loop {
            let endpoint = ctx.endpoints.pick(n);
            n += 1;
            let (tx, rx) = mpsc::channel(4);
            let mut client = ctx.channels.lease(&endpoint.client);
            if let Ok(mut stream) =
                timed(ctx.call_timeout, client.lease_keep_alive(ReceiverStream::new(rx))).await
            {
                loop {
                    if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(ctx.call_timeout, stream.message()).await {
                        Ok(Ok(Some(r))) if r.ttl <= 0 => {
                            flag.store(true, Relaxed);
                            return;
                        }
                        Ok(Ok(Some(_))) => {}
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    KeepAlive { task, lost }
}

async fn grant(ctx: &Ctx, n: u64) -> Option<i64> {
    let mut lease = ctx.channels.lease(&ctx.endpoints.pick(n).client);
    let req = LeaseGrantRequest { ttl: LEASE_TTL_SECS, id: 0 };
    timed(ctx.call_timeout, lease.lease_grant(req)).await.ok().map(|r| r.id)
}

async fn revoke(ctx: &Ctx, lease: i64, n: u64) {
    let mut client = ctx.channels.lease(&ctx.endpoints.pick(n).client);
    let _ = timed(ctx.call_timeout, client.lease_revoke(LeaseRevokeRequest { id: lease })).await;
}

/// Runs one fenced transaction with retries under the process's session.
async fn fenced(
    ctx: &Ctx,
    process: u64,
    session: &mut Session,
    build: impl Fn() -> quorumkv_etcd_proto::etcdserverpb::TxnRequest,
) -> Written<quorumkv_etcd_proto::etcdserverpb::TxnResponse> {
    let seq = session.take();
    let sid = session.id;
    super::write_retrying(ctx, |attempt| {
        let mut kv = ctx.channels.kv(&ctx.endpoints.pick(process + attempt).client);
        let limit = ctx.call_timeout;
        let req = build();
        async move { timed(limit, kv.txn(with_session(req, sid, seq))).await }
    })
    .await
}

async fn contender(ctx: Arc<Ctx>, rec: Arc<Recorder>, w: u64, contenders: u64) {
    let mut rng = Rng::new(ctx.seed ^ 0x4c4f_434b ^ w);
    let mut process = w;
    let mut session = Session::new(ctx.session_id("lock", process));
    'holding: while !ctx.stopping() {
        let Some(lease) = grant(&ctx, process + rng.range(0, 3)).await else {
            ctx.pause(Duration::from_millis(200)).await;
            continue;
        };
        let alive = keep_alive(ctx.clone(), lease, process);
        // Acquire: try until it is ours, the lease is gone, or the run ends.
        let token = loop {
            if ctx.stopping() || alive.lost.load(Relaxed) {
                drop(alive);
                revoke(&ctx, lease, process).await;
                continue 'holding;
            }
            rec.invoke(process, F::from("acquire"), Some(LOCK_KEY), Value::Null);
            let holder = format!("p{process}");
            let outcome = fenced(&ctx, process, &mut session, || {
                txn(vec![compare_create(LOCK_KEY, 0)], vec![op_put(LOCK_KEY, &holder, lease)])
            })
            .await;
            match outcome {
                Written::Ok(r) if r.succeeded => {
                    let token = r.header.map_or(0, |h| h.revision);
                    rec.ok(process, Value::Int(token));
                    break token;
                }
                Written::Ok(_) | Written::Fail(_) => {
                    rec.fail(process, Value::Null);
                    ctx.pause(Duration::from_millis(rng.range(50, 200))).await;
                }
                Written::Info(_) => {
                    rec.info(process, Value::Null);
                    drop(alive);
                    // Revoking deletes the lock key if the acquisition did happen.
                    revoke(&ctx, lease, process + 1).await;
                    process += contenders;
                    session = Session::new(ctx.session_id("lock", process));
                    continue 'holding;
                }
            }
        };
        // The critical section: fenced writes, with pauses that widen the windows faults hit.
        let writes = rng.range(1, 4);
        let mut retired = false;
        for n in 0..writes {
            ctx.pause(Duration::from_millis(rng.range(50, 400))).await;
            if alive.lost.load(Relaxed) {
                break;
            }
            let value = Value::List(vec![Value::Int(token), Value::Int(n as i64)]);
            rec.invoke(process, F::from("write"), Some(DATA_KEY), value.clone());
            let data = format!("{token}:{process}:{n}");
            let outcome = fenced(&ctx, process, &mut session, || {
                txn(vec![compare_create(LOCK_KEY, token)], vec![op_put(DATA_KEY, &data, 0)])
            })
            .await;
            match outcome {
                Written::Ok(r) if r.succeeded => rec.ok(process, value),
                Written::Ok(_) | Written::Fail(_) => {
                    // The lock is gone: a fenced write was refused, as it must be.
                    rec.fail(process, value);
                    break;
                }
                Written::Info(_) => {
                    rec.info(process, value);
                    retired = true;
                    break;
                }
            }
        }
        if !retired {
            rec.invoke(process, F::from("release"), Some(LOCK_KEY), Value::Int(token));
            let outcome = fenced(&ctx, process, &mut session, || {
                txn(vec![compare_create(LOCK_KEY, token)], vec![op_delete(LOCK_KEY)])
            })
            .await;
            match outcome {
                Written::Ok(r) if r.succeeded => rec.ok(process, Value::Int(token)),
                Written::Ok(_) | Written::Fail(_) => rec.fail(process, Value::Int(token)),
                Written::Info(_) => {
                    rec.info(process, Value::Int(token));
                    retired = true;
                }
            }
        }
        drop(alive);
        revoke(&ctx, lease, process + 1).await;
        if retired {
            process += contenders;
            session = Session::new(ctx.session_id("lock", process));
        }
        ctx.pause(Duration::from_millis(rng.range(0, 200))).await;
    }
}

impl Running {
    /// Waits for the contenders, replays the prefix's history, and checks.
    pub async fn finish(self) -> Result<WorkloadResult, ChaosError> {
        for t in self.tasks {
            let _ = t.await;
        }
        let history = self.rec.finish()?;
        let until = current_revision(&self.ctx, Duration::from_secs(20)).await?;
        match replay_any(&self.ctx, PREFIX, self.rev0 + 1, until, Duration::from_secs(30)).await {
            Ok(events) => Ok(check(&history, &events, "lock/history.jsonl")),
            Err(e) => Ok(WorkloadResult {
                workload: "lease-lock".into(),
                verdict: Verdict::Unknown,
                summary: format!("unknown: the final replay failed: {e}"),
                stats: serde_json::Value::Null,
                problems: vec![e],
                timeline: Vec::new(),
                notes: GUARANTEES.iter().map(|s| s.to_string()).collect(),
                history: "lock/history.jsonl".into(),
                ops: op_counts(&history),
            }),
        }
    }
}

/// A holder's interval in wall-clock time: from its acquisition's acknowledgement to its
/// release's invocation (or its last operation).
#[derive(Clone, Debug, PartialEq)]
struct Holding<'a> {
    process: u64,
    token: i64,
    start: u64,
    end: u64,
    acquire: &'a Operation,
}

fn holdings(history: &History) -> Vec<Holding<'_>> {
    let mut by_process: HashMap<u64, Vec<&Operation>> = HashMap::new();
    for op in &history.operations {
        by_process.entry(op.process).or_default().push(op);
    }
    let mut out = Vec::new();
    for ops in by_process.values() {
        let mut current: Option<Holding<'_>> = None;
        for op in ops {
            let t_invoke = op.invoke.time.unwrap_or(0);
            let t_done = op.complete.and_then(|c| c.time).unwrap_or(t_invoke);
            match op.f.as_str() {
                "acquire" => {
                    if let Some(h) = current.take() {
                        out.push(h);
                    }
                    if op.status == Status::Ok {
                        current = Some(Holding {
                            process: op.process,
                            token: int(&op.result).unwrap_or(0),
                            start: t_done,
                            end: t_done,
                            acquire: op,
                        });
                    }
                }
                "release" => {
                    if let Some(mut h) = current.take() {
                        h.end = t_invoke;
                        out.push(h);
                    }
                }
                _ => {
                    if let Some(h) = current.as_mut() {
                        h.end = h.end.max(t_done);
                    }
                }
            }
        }
        out.extend(current);
    }
    out.sort_by_key(|h| h.start);
    out
}

/// Checks a lock history against the replayed history of the lock prefix.
pub fn check(history: &History, replay: &[Ev], path: &str) -> WorkloadResult {
    let mut problems = Vec::new();
    let mut timeline = Vec::new();
    // Fencing, judged in revision order on the store's own history.
    let mut holder: Option<i64> = None;
    let mut fencing = 0u64;
    let mut creations = BTreeSet::new();
    let mut data_writes = BTreeSet::new();
    for e in replay {
        if e.key == LOCK_KEY {
            if e.put && e.create_revision == e.revision {
                if let Some(h) = holder {
                    fencing += 1;
                    problem(
                        &mut problems,
                        format!(
                            "the lock was created at revision {} while token {h} held it",
                            e.revision
                        ),
                    );
                }
                holder = Some(e.revision);
                creations.insert(e.revision);
            } else if !e.put {
                holder = None;
            }
        } else if e.key == DATA_KEY && e.put {
            data_writes.insert(e.value.clone());
            let token: Option<i64> = e.value.split(':').next().and_then(|t| t.parse().ok());
            if token.is_none() || token != holder {
                fencing += 1;
                problem(
                    &mut problems,
                    format!(
                        "fenced write {:?} committed at revision {} while the lock was {}",
                        e.value,
                        e.revision,
                        holder.map_or("free".to_string(), |h| format!("held by token {h}"))
                    ),
                );
            }
        }
    }
    // Acknowledged acquisitions and writes must be in the history.
    let mut lost = 0u64;
    for op in history.operations.iter().filter(|o| o.status == Status::Ok) {
        match op.f.as_str() {
            "acquire" => {
                let token = int(&op.result).unwrap_or(0);
                if !creations.contains(&token) {
                    lost += 1;
                    problem(
                        &mut problems,
                        format!(
                            "acquisition with token {token} by p{} is not in the history",
                            op.process
                        ),
                    );
                    timeline.push(TimelineOp::of(op, format!("acquire → {token}"), true));
                }
            }
            "write" => {
                let (token, n) = match &op.value {
                    Value::List(v) if v.len() == 2 => {
                        (int(&v[0]).unwrap_or(0), int(&v[1]).unwrap_or(0))
                    }
                    _ => (0, 0),
                };
                let data = format!("{token}:{}:{n}", op.process);
                if !data_writes.contains(&data) {
                    lost += 1;
                    problem(
                        &mut problems,
                        format!("acknowledged fenced write {data:?} is not in the history"),
                    );
                    timeline.push(TimelineOp::of(op, format!("write {data}"), true));
                }
            }
            _ => {}
        }
    }
    // Overlaps of holders' intervals: counted, not judged.
    let hs = holdings(history);
    let mut overlaps = 0u64;
    let mut overlap_ms = 0.0;
    for (i, a) in hs.iter().enumerate() {
        for b in &hs[i + 1..] {
            if b.start >= a.end {
                continue;
            }
            if a.process != b.process {
                overlaps += 1;
                overlap_ms += (a.end.min(b.end) - b.start) as f64 / 1e6;
                if timeline.len() < 6 && fencing == 0 && lost == 0 {
                    timeline.push(TimelineOp::of(
                        a.acquire,
                        format!("holds token {}", a.token),
                        false,
                    ));
                    timeline.push(TimelineOp::of(
                        b.acquire,
                        format!("holds token {}", b.token),
                        false,
                    ));
                }
            }
        }
    }
    let acquired = hs.len();
    let fenced_ok = history
        .operations
        .iter()
        .filter(|o| o.f.as_str() == "write" && o.status == Status::Ok)
        .count();
    let fenced_refused = history
        .operations
        .iter()
        .filter(|o| o.f.as_str() == "write" && o.status == Status::Fail)
        .count();
    let valid = fencing == 0 && lost == 0;
    WorkloadResult {
        workload: "lease-lock".into(),
        verdict: if valid { Verdict::Pass } else { Verdict::Fail },
        summary: format!(
            "{acquired} acquisitions, {fenced_ok} fenced writes committed, {fenced_refused} refused; fencing violations {fencing}, lost {lost}; wall-clock overlaps {overlaps} (not guaranteed, counted only)"
        ),
        stats: serde_json::json!({
            "acquisitions": acquired,
            "fenced_writes_committed": fenced_ok,
            "fenced_writes_refused": fenced_refused,
            "fencing_violations": fencing,
            "lost": lost,
            "overlaps": overlaps,
            "overlap_ms": overlap_ms,
            "lock_creations_replayed": creations.len(),
        }),
        problems,
        timeline,
        notes: GUARANTEES.iter().map(|s| s.to_string()).collect(),
        history: path.into(),
        ops: op_counts(history),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(p: u64, f: &str, kind: &str, value: &str, t: u64) -> String {
        format!(r#"{{"process":{p},"type":"{kind}","f":"{f}","value":{value},"time":{t}}}"#)
    }

    fn put(revision: i64, key: &str, value: &str, create: i64) -> Ev {
        Ev { revision, key: key.into(), value: value.into(), put: true, create_revision: create }
    }

    fn del(revision: i64) -> Ev {
        Ev { revision, key: LOCK_KEY.into(), value: String::new(), put: false, create_revision: 0 }
    }

    /// Two holders, one after the other, each with one fenced write.
    fn history(second_acquired_at: u64) -> History {
        let t = second_acquired_at;
        let lines = [
            line(0, "acquire", "invoke", "null", 1),
            line(0, "acquire", "ok", "5", 2),
            line(0, "write", "invoke", "[5,0]", 3),
            line(0, "write", "ok", "[5,0]", 4),
            line(0, "release", "invoke", "5", 10),
            line(0, "release", "ok", "5", 11),
            line(1, "acquire", "invoke", "null", t - 1),
            line(1, "acquire", "ok", "8", t),
            line(1, "write", "invoke", "[8,0]", t + 1),
            line(1, "write", "ok", "[8,0]", t + 2),
        ];
        History::parse(&lines.join("\n")).unwrap()
    }

    fn replay() -> Vec<Ev> {
        vec![
            put(5, LOCK_KEY, "p0", 5),
            put(6, DATA_KEY, "5:0:0", 6),
            del(7),
            put(8, LOCK_KEY, "p1", 8),
            put(9, DATA_KEY, "8:1:0", 6),
        ]
    }

    #[test]
    fn sequential_holders_with_fenced_writes_pass() {
        let r = check(&history(20), &replay(), "h");
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.problems);
        assert_eq!(r.stats["overlaps"], 0);
    }

    #[test]
    fn an_overlap_is_counted_but_does_not_fail() {
        // The second holder acquires (at t=6) while the first still believes it holds the
        // lock (it releases at t=10): an overlap in wall-clock time, fencing intact.
        let r = check(&history(6), &replay(), "h");
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.problems);
        assert_eq!(r.stats["overlaps"], 1);
        assert!(!r.timeline.is_empty(), "the overlapping holders are drawn");
    }

    #[test]
    fn a_write_of_an_old_holder_after_a_new_acquisition_fails() {
        let mut events = replay();
        // Holder 5's write lands after holder 8 took the lock: the fencing was broken.
        events.push(put(10, DATA_KEY, "5:0:1", 6));
        let r = check(&history(20), &events, "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["fencing_violations"], 1);
        assert!(r.problems[0].contains("held by token 8"), "{:?}", r.problems);
    }

    #[test]
    fn a_lost_acknowledged_fenced_write_fails() {
        let events: Vec<Ev> = replay().into_iter().filter(|e| e.value != "8:1:0").collect();
        let r = check(&history(20), &events, "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["lost"], 1);
    }
}

//! The `watch` workload: writers put unique values under a prefix; watchers watch the prefix
//! and, after any error, silence or cancellation, reconnect (to another node) from the
//! revision after the last one they saw. After healing, the prefix's history is replayed
//! once more from the start (a watch from the first revision, read until a progress
//! notification proves it complete) and compared with the writers' acknowledged writes and
//! with what every watcher saw: every change, in revision order, no gap, no duplicate.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quorumkv_check::history::{F, Value};
use quorumkv_core::rng::Rng;
use quorumkv_etcd_proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, watch_request,
};
use quorumkv_etcd_proto::mvccpb;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::{Ctx, Recorder, Verdict, WorkloadResult, Written, op_counts, problem, write_retrying};
use crate::ChaosError;
use crate::client::{Session, prefix_end, range_prefix, timed, with_session};

/// Keys live under this prefix.
pub const PREFIX: &str = "chaos/watch/";
/// A watcher that hears nothing for this long reconnects (its node may be paused or cut
/// off; reconnecting from the next revision loses nothing).
const IDLE_RECONNECT: Duration = Duration::from_secs(3);

/// One change of a key, as a watch reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ev {
    /// Revision of the change.
    pub revision: i64,
    /// The key.
    pub key: String,
    /// The value (empty for a delete).
    pub value: String,
    /// A put (true) or a delete.
    pub put: bool,
    /// The key's create revision after a put.
    pub create_revision: i64,
}

impl Ev {
    fn of(e: &mvccpb::Event) -> Option<Ev> {
        let kv = e.kv.as_ref()?;
        Some(Ev {
            revision: kv.mod_revision,
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            put: e.r#type == mvccpb::event::EventType::Put as i32,
            create_revision: kv.create_revision,
        })
    }
}

fn create(prefix: &str, start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix.as_bytes()).into(),
            start_revision,
            ..WatchCreateRequest::default()
        })),
    }
}

fn progress() -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// Replays every change of `prefix` with a revision in `from..=until` through a watch on
/// `client`: the events until a progress notification at `until` or later says nothing is
/// missing.
pub async fn replay(
    ctx: &Ctx,
    client: &str,
    prefix: &str,
    from: i64,
    until: i64,
    timeout: Duration,
) -> Result<Vec<Ev>, String> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(create(prefix, from)).await.map_err(|e| e.to_string())?;
    let mut watch = ctx.channels.watch(client);
    let mut stream = timed(ctx.call_timeout * 2, watch.watch(ReceiverStream::new(rx)))
        .await
        .map_err(|e| format!("cannot open a watch: {}", e.message()))?;
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    let mut created = false;
    loop {
        if created {
            // Answered once every watcher of the stream is synced: its revision is a promise.
            let _ = tx.send(progress()).await;
        }
        let wait = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
        match wait {
            Ok(Ok(Some(resp))) => {
                if resp.canceled {
                    return Err(format!("the replay watch was canceled: {}", resp.cancel_reason));
                }
                if resp.created {
                    created = true;
                }
                events
                    .extend(resp.events.iter().filter_map(Ev::of).filter(|e| e.revision <= until));
                let synced = resp.events.is_empty() && !resp.created;
                if created && synced && resp.header.as_ref().is_some_and(|h| h.revision >= until) {
                    return Ok(events);
                }
            }
            Ok(Ok(None)) => return Err("the replay watch ended".into()),
            Ok(Err(status)) => return Err(format!("the replay watch failed: {status}")),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return Err(format!("the replay did not reach revision {until} within {timeout:?}"));
        }
    }
}

/// Finds a node that can replay: tries every endpoint in turn until `timeout`.
pub async fn replay_any(
    ctx: &Ctx,
    prefix: &str,
    from: i64,
    until: i64,
    timeout: Duration,
) -> Result<Vec<Ev>, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let endpoint = ctx.endpoints.pick(n);
        n += 1;
        match replay(ctx, &endpoint.client, prefix, from, until, Duration::from_secs(10)).await {
            Ok(events) => return Ok(events),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The store's current revision, read linearizably from any node.
pub async fn current_revision(ctx: &Ctx, timeout: Duration) -> Result<i64, ChaosError> {
    let deadline = Instant::now() + timeout;
    let mut n = 0u64;
    loop {
        let mut kv = ctx.channels.kv(&ctx.endpoints.pick(n).client);
        n += 1;
        match timed(ctx.call_timeout, kv.range(range_prefix("chaos/"))).await {
            Ok(resp) => return Ok(resp.header.map_or(0, |h| h.revision)),
            Err(e) if Instant::now() > deadline => {
                return Err(ChaosError::Cluster(format!(
                    "no node answered a read within {timeout:?}: {}",
                    e.message()
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A write the cluster acknowledged, with the revision it reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Acked {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Revision from the response header.
    pub revision: i64,
}

/// What one watcher saw.
#[derive(Debug, Default)]
struct WatcherLog {
    events: Vec<Ev>,
    reconnects: u64,
}

/// The running workload.
pub struct Running {
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    rev0: i64,
    writers: Vec<JoinHandle<()>>,
    watchers: Vec<(JoinHandle<()>, Arc<Mutex<WatcherLog>>)>,
    acked: Arc<Mutex<Vec<Acked>>>,
    events_path: std::path::PathBuf,
}

/// Starts `writers` writers and `watchers` watchers, from the store's current revision.
pub async fn start(
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    writers: u64,
    watchers: u64,
    events_path: &Path,
) -> Result<Running, ChaosError> {
    let rev0 = current_revision(&ctx, Duration::from_secs(20)).await?;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer_tasks = (0..writers)
        .map(|w| tokio::spawn(writer(ctx.clone(), rec.clone(), w, writers, acked.clone())))
        .collect();
    let watcher_tasks = (0..watchers)
        .map(|w| {
            let log = Arc::new(Mutex::new(WatcherLog::default()));
            (tokio::spawn(watcher(ctx.clone(), w, rev0, log.clone())), log)
        })
        .collect();
    Ok(Running {
        ctx,
        rec,
        rev0,
        writers: writer_tasks,
        watchers: watcher_tasks,
        acked,
        events_path: events_path.to_path_buf(),
    })
}

async fn writer(
    ctx: Arc<Ctx>,
    rec: Arc<Recorder>,
    w: u64,
    writers: u64,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let mut rng = Rng::new(ctx.seed ^ 0x0057_4154_4348 ^ w);
    let mut process = w;
    let mut session = Session::new(ctx.session_id("watch", process));
    let mut n = 0u64;
    while !ctx.stopping() {
        let key = format!("{PREFIX}k{}", rng.range(0, 4));
        let value = format!("w{w}-{n}");
        n += 1;
        let seq = session.take();
        let sid = session.id;
        rec.invoke(process, F::Write, Some(&key), Value::Str(value.clone()));
        let outcome = write_retrying(&ctx, |attempt| {
            let mut kv = ctx.channels.kv(&ctx.endpoints.pick(process + attempt).client);
            let limit = ctx.call_timeout;
            let req = PutRequest {
                key: key.clone().into_bytes().into(),
                value: value.clone().into_bytes().into(),
                ..PutRequest::default()
            };
            async move { timed(limit, kv.put(with_session(req, sid, seq))).await }
        })
        .await;
        match outcome {
            Written::Ok(resp) => {
                let revision = resp.header.map_or(0, |h| h.revision);
                acked.lock().push(Acked { key: key.clone(), value: value.clone(), revision });
                rec.ok(process, Value::Str(value));
            }
            Written::Fail(_) => rec.fail(process, Value::Str(value)),
            Written::Info(_) => {
                rec.info(process, Value::Str(value));
                process += writers;
                session = Session::new(ctx.session_id("watch", process));
            }
        }
        ctx.pause(Duration::from_millis(20)).await;
    }
}

async fn watcher(ctx: Arc<Ctx>, w: u64, rev0: i64, log: Arc<Mutex<WatcherLog>>) {
    let mut next = rev0 + 1;
    let mut n = w;
    loop {
        let endpoint = ctx.endpoints.pick(n);
        n += 1;
        let (tx, rx) = mpsc::channel(4);
        if tx.send(create(PREFIX, next)).await.is_err() {
            return;
        }
        let mut client = ctx.channels.watch(&endpoint.client);
        if let Ok(mut stream) = timed(ctx.call_timeout, client.watch(ReceiverStream::new(rx))).await
        {
            while let Ok(Ok(Some(resp))) =
                tokio::time::timeout(IDLE_RECONNECT, stream.message()).await
            {
                if resp.canceled {
                    break;
                }
                let mut log = log.lock();
                for e in resp.events.iter().filter_map(Ev::of) {
                    // Resume after the highest revision seen, even if it came out of order:
                    // the checker judges the order, reconnection must not hide it.
                    next = next.max(e.revision + 1);
                    log.events.push(e);
                }
            }
        }
        log.lock().reconnects += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything the watch checker judges.
#[derive(Clone, Debug, Default)]
pub struct WatchRecord {
    /// The revision before the workload started.
    pub rev0: i64,
    /// Acknowledged writes.
    pub acked: Vec<Acked>,
    /// The final replay of the prefix: the reference.
    pub reference: Vec<Ev>,
    /// What each watcher saw, in arrival order.
    pub watchers: Vec<Vec<Ev>>,
}

impl Running {
    /// Stops the writers, replays the prefix, waits for the watchers to catch up, checks.
    pub async fn finish(self) -> Result<WorkloadResult, ChaosError> {
        for t in self.writers {
            let _ = t.await;
        }
        let history = self.rec.finish()?;
        let ops = op_counts(&history);
        let until = current_revision(&self.ctx, Duration::from_secs(20)).await?;
        let reference =
            replay_any(&self.ctx, PREFIX, self.rev0 + 1, until, Duration::from_secs(30)).await;
        let reference = match reference {
            Ok(r) => r,
            Err(e) => {
                for (t, _) in &self.watchers {
                    t.abort();
                }
                return Ok(WorkloadResult {
                    workload: "watch".into(),
                    verdict: Verdict::Unknown,
                    summary: format!("unknown: the final replay failed: {e}"),
                    stats: serde_json::Value::Null,
                    problems: vec![e],
                    timeline: Vec::new(),
                    notes: Vec::new(),
                    history: "watch/history.jsonl".into(),
                    ops,
                });
            }
        };
        let target = reference.last().map_or(self.rev0, |e| e.revision);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let behind = self.watchers.iter().any(|(_, log)| {
                log.lock().events.iter().map(|e| e.revision).max().unwrap_or(self.rev0) < target
            });
            if !behind {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut watchers = Vec::new();
        let mut reconnects = 0;
        for (t, log) in &self.watchers {
            t.abort();
            let log = log.lock();
            watchers.push(log.events.clone());
            reconnects += log.reconnects;
        }
        let record =
            WatchRecord { rev0: self.rev0, acked: self.acked.lock().clone(), reference, watchers };
        write_events(&self.events_path, &record).map_err(ChaosError::io("write watch events"))?;
        let mut result = check(&record, "watch/history.jsonl");
        result.ops = ops;
        if let serde_json::Value::Object(m) = &mut result.stats {
            m.insert("reconnects".into(), reconnects.into());
        }
        Ok(result)
    }
}

fn write_events(path: &Path, record: &WatchRecord) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for e in &record.reference {
        writeln!(out, "{}", serde_json::json!({"watcher": "reference", "event": e}))?;
    }
    for (w, events) in record.watchers.iter().enumerate() {
        for e in events {
            writeln!(out, "{}", serde_json::json!({"watcher": w, "event": e}))?;
        }
    }
    out.flush()
}

/// Checks what the watchers saw against the reference and the acknowledged writes.
pub fn check(record: &WatchRecord, path: &str) -> WorkloadResult {
    let mut problems = Vec::new();
    let mut by_rev: BTreeMap<i64, &Ev> = BTreeMap::new();
    let mut reference_bad = 0u64;
    let mut prev = record.rev0;
    for e in &record.reference {
        if e.revision <= prev {
            reference_bad += 1;
            problem(
                &mut problems,
                format!("the final replay went from revision {prev} to {}", e.revision),
            );
        }
        prev = prev.max(e.revision);
        by_rev.insert(e.revision, e);
    }
    let mut lost_writes = 0u64;
    for a in &record.acked {
        let found = by_rev.get(&a.revision).is_some_and(|e| e.key == a.key && e.value == a.value);
        if !found {
            lost_writes += 1;
            problem(
                &mut problems,
                format!(
                    "acknowledged write {}={} at revision {} is not in the prefix's history",
                    a.key, a.value, a.revision
                ),
            );
        }
    }
    let (mut gaps, mut duplicates, mut reordered, mut phantoms, mut behind) = (0, 0, 0, 0, 0);
    let target = record.reference.last().map_or(record.rev0, |e| e.revision);
    for (w, events) in record.watchers.iter().enumerate() {
        let mut last = record.rev0;
        let mut seen = std::collections::BTreeSet::new();
        for e in events {
            if e.revision == last || seen.contains(&e.revision) {
                duplicates += 1;
                problem(&mut problems, format!("watcher {w} saw revision {} twice", e.revision));
            } else if e.revision < last {
                reordered += 1;
                problem(
                    &mut problems,
                    format!("watcher {w} saw revision {} after {last}", e.revision),
                );
            }
            if by_rev.get(&e.revision).is_none_or(|r| *r != e) {
                phantoms += 1;
                problem(
                    &mut problems,
                    format!(
                        "watcher {w} saw {}={} at revision {}, which the history does not hold",
                        e.key, e.value, e.revision
                    ),
                );
            }
            seen.insert(e.revision);
            last = last.max(e.revision);
        }
        for r in by_rev.range(record.rev0 + 1..=last).map(|(r, _)| *r) {
            if !seen.contains(&r) {
                gaps += 1;
                problem(&mut problems, format!("watcher {w} missed revision {r} (a gap)"));
            }
        }
        if last < target {
            behind += 1;
            problem(
                &mut problems,
                format!("watcher {w} stopped at revision {last}, the history goes to {target}"),
            );
        }
    }
    let violations =
        reference_bad + lost_writes + gaps + duplicates + reordered + phantoms + behind;
    WorkloadResult {
        workload: "watch".into(),
        verdict: if violations == 0 { Verdict::Pass } else { Verdict::Fail },
        summary: format!(
            "{} watchers, {} changes ({} acknowledged): {gaps} gaps, {duplicates} duplicates, {reordered} out of order, {phantoms} phantom, {lost_writes} lost writes, {behind} behind",
            record.watchers.len(),
            record.reference.len(),
            record.acked.len()
        ),
        stats: serde_json::json!({
            "watchers": record.watchers.len(),
            "changes": record.reference.len(),
            "acknowledged_writes": record.acked.len(),
            "events_seen": record.watchers.iter().map(Vec::len).sum::<usize>(),
            "gaps": gaps,
            "duplicates": duplicates,
            "out_of_order": reordered,
            "phantoms": phantoms,
            "lost_writes": lost_writes,
            "behind": behind,
        }),
        problems,
        timeline: Vec::new(),
        notes: Vec::new(),
        history: path.into(),
        ops: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: i64, value: &str) -> Ev {
        Ev { revision, key: "k".into(), value: value.into(), put: true, create_revision: 1 }
    }

    fn record(watchers: Vec<Vec<Ev>>) -> WatchRecord {
        WatchRecord {
            rev0: 10,
            acked: vec![
                Acked { key: "k".into(), value: "a".into(), revision: 11 },
                Acked { key: "k".into(), value: "c".into(), revision: 13 },
            ],
            reference: vec![ev(11, "a"), ev(12, "b"), ev(13, "c")],
            watchers,
        }
    }

    #[test]
    fn complete_ordered_streams_pass() {
        let all = vec![ev(11, "a"), ev(12, "b"), ev(13, "c")];
        let r = check(&record(vec![all.clone(), all]), "h");
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.problems);
    }

    #[test]
    fn a_gap_fails() {
        let r = check(&record(vec![vec![ev(11, "a"), ev(13, "c")]]), "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["gaps"], 1);
        assert!(r.problems[0].contains("missed revision 12"), "{:?}", r.problems);
    }

    #[test]
    fn a_duplicate_fails() {
        let r = check(&record(vec![vec![ev(11, "a"), ev(12, "b"), ev(12, "b"), ev(13, "c")]]), "h");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.stats["duplicates"], 1);
    }

    #[test]
    fn reordering_phantoms_lagging_and_lost_writes_fail() {
        let r = check(&record(vec![vec![ev(12, "b"), ev(11, "a"), ev(13, "x")]]), "h");
        assert_eq!(r.stats["out_of_order"], 1);
        assert_eq!(r.stats["phantoms"], 1);
        let r = check(&record(vec![vec![ev(11, "a")]]), "h");
        assert_eq!(r.stats["behind"], 1);
        let mut lost = record(vec![]);
        lost.acked.push(Acked { key: "k".into(), value: "z".into(), revision: 14 });
        let r = check(&lost, "h");
        assert_eq!(r.stats["lost_writes"], 1);
        assert_eq!(r.verdict, Verdict::Fail);
    }
}

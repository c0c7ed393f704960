//! Group commit: a dedicated thread owns the [`Wal`] and makes many callers' writes durable
//! with one write and one fsync per round.
//!
//! Rules this module keeps:
//! - The queue is bounded: a caller blocks in [`WalWriter::submit`] while it is full, so a slow
//!   disk slows writers down instead of growing memory without limit.
//! - Each round takes what is queued (bounded in submissions and bytes), applies every
//!   submission all-or-nothing, syncs once, then completes every submission of the round, in
//!   submission order, with `Ok(lsn)` only if its operations are durable. While more work
//!   waits, callbacks run on a companion thread, in order, as the next round is written; when
//!   nothing waits and the companion is idle, the writer runs them itself (one thread wake-up
//!   less per round on a lightly loaded node, and order is kept either way).
//! - After a fatal WAL failure the thread keeps running and answers every submission with the
//!   error, so callers learn it; it stops when every [`WalWriter`] handle is gone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::{Lsn, Wal, WalError, WalMetrics, WalOp, WalStats, fetch_max};

/// Called once a submission is durable (`Ok` with its last LSN) or has failed. Runs on the
/// writer's completion thread or the writer thread itself, one callback after another in
/// submission order: keep it short (send on a channel, wake a task). A panic in it is
/// contained.
pub type Completion = Box<dyn FnOnce(Result<Lsn, WalError>) + Send + 'static>;

/// Bounds of a [`WalWriter`].
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Submissions that may wait in the queue before `submit` blocks (default 1024).
    pub queue_capacity: usize,
    /// Most submissions made durable by one fsync (default 4096).
    pub batch_submissions_max: usize,
    /// Stop adding submissions to a round past this many encoded bytes (default 16 MiB).
    pub batch_bytes_max: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            queue_capacity: 1024,
            batch_submissions_max: 4096,
            batch_bytes_max: 16 << 20,
        }
    }
}

struct Submission {
    ops: Vec<WalOp>,
    done: Completion,
}

/// Handle on the group-commit thread. Dropping it (or [`WalWriter::shutdown`]) drains the
/// queue and stops the thread.
pub struct WalWriter {
    tx: Option<SyncSender<Submission>>,
    thread: Option<JoinHandle<Wal>>,
    metrics: Arc<WalMetrics>,
}

impl std::fmt::Debug for WalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalWriter").field("stats", &self.metrics.snapshot()).finish()
    }
}

impl WalWriter {
    /// Starts the writer thread, which takes ownership of `wal`.
    pub fn start(wal: Wal, opts: WriterOptions) -> Result<WalWriter, WalError> {
        let metrics = wal.metrics();
        let (tx, rx) = mpsc::sync_channel(opts.queue_capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("qkv-wal-writer".into())
            .spawn(move || run(wal, rx, opts))
            .map_err(|e| WalError::Io {
                op: "spawn the WAL writer thread",
                path: Default::default(),
                source: Arc::new(e),
            })?;
        Ok(WalWriter { tx: Some(tx), thread: Some(thread), metrics })
    }

    /// Queues `ops` (applied all or none) and returns; `done` is called once they are durable
    /// or have failed. Blocks while the queue is full. Fails with
    /// [`WalError::WriterStopped`] (without calling `done`) if the thread is gone.
    pub fn submit(
        &self,
        ops: Vec<WalOp>,
        done: impl FnOnce(Result<Lsn, WalError>) + Send + 'static,
    ) -> Result<(), WalError> {
        let tx = self.tx.as_ref().ok_or(WalError::WriterStopped)?;
        tx.send(Submission { ops, done: Box::new(done) }).map_err(|_| WalError::WriterStopped)
    }

    /// Queues `ops` and waits until they are durable; returns their last LSN.
    pub fn write(&self, ops: Vec<WalOp>) -> Result<Lsn, WalError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(ops, move |result| {
            let _ = tx.send(result);
        })?;
        rx.recv().map_err(|_| WalError::WriterStopped)?
    }

    /// The WAL's live counters.
    pub fn metrics(&self) -> Arc<WalMetrics> {
        self.metrics.clone()
    }

    /// A copy of the counters now.
    pub fn stats(&self) -> WalStats {
        self.metrics.snapshot()
    }

    /// Closes the queue, waits until everything queued is completed, and returns the WAL.
    pub fn shutdown(mut self) -> Result<Wal, WalError> {
        self.tx = None;
        let thread = self.thread.take().ok_or(WalError::WriterStopped)?;
        thread.join().map_err(|_| WalError::WriterStopped)
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A finished round: each submission's callback with its outcome, in submission order.
type Round = Vec<(Completion, Result<Lsn, WalError>)>;

fn run(mut wal: Wal, rx: Receiver<Submission>, opts: WriterOptions) -> Wal {
    let metrics = wal.metrics();
    // Callbacks run on a second thread, so that waking the callers of one round overlaps the
    // write and fsync of the next. One thread and a FIFO channel keep them in order;
    // `outstanding` counts the rounds handed to it and not yet completed.
    let (done_tx, done_rx) = mpsc::channel::<Round>();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let completer = {
        let outstanding = outstanding.clone();
        std::thread::Builder::new()
            .name("qkv-wal-complete".into())
            .spawn(move || {
                while let Ok(round) = done_rx.recv() {
                    complete(round);
                    outstanding.fetch_sub(1, Ordering::Release);
                }
            })
            .ok()
    };
    let mut batch: Vec<Submission> = Vec::new();
    let mut applied: Vec<Result<Lsn, WalError>> = Vec::new();
    // A submission taken while checking whether more work waits: it opens the next round.
    let mut carried: Option<Submission> = None;
    loop {
        let first = match carried.take() {
            Some(s) => s,
            None => match rx.recv() {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let mut bytes: usize = first.ops.iter().map(WalOp::size_bytes).sum();
        batch.push(first);
        while batch.len() < opts.batch_submissions_max && bytes < opts.batch_bytes_max {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.ops.iter().map(WalOp::size_bytes).sum::<usize>();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        applied.extend(batch.iter().map(|s| wal.apply_all(&s.ops)));
        let synced = wal.sync();
        let count = batch.len() as u64;
        let round: Round = batch
            .drain(..)
            .zip(applied.drain(..))
            .map(|(submission, result)| {
                let outcome = match (result, &synced) {
                    (Ok(lsn), Ok(_)) => Ok(lsn),
                    (Ok(_), Err(e)) => Err(e.clone()),
                    (Err(e), _) => Err(e),
                };
                (submission.done, outcome)
            })
            .collect();
        metrics.submissions.fetch_add(count, Ordering::Relaxed);
        fetch_max(&metrics.submissions_per_batch_max, count);
        carried = rx.try_recv().ok();
        let idle = carried.is_none() && outstanding.load(Ordering::Acquire) == 0;
        match &completer {
            Some(_) if !idle => {
                outstanding.fetch_add(1, Ordering::AcqRel);
                if let Err(mpsc::SendError(round)) = done_tx.send(round) {
                    outstanding.fetch_sub(1, Ordering::AcqRel);
                    complete(round);
                }
            }
            // Nothing to overlap with (or no second thread): complete on this one. Every
            // earlier round is completed already, so order holds.
            _ => complete(round),
        }
    }
    drop(done_tx);
    if let Some(handle) = completer {
        let _ = handle.join();
    }
    wal
}

fn complete(round: Round) {
    for (done, outcome) in round {
        // A panicking callback must not take the writer (and every other caller) down.
        let _ = catch_unwind(AssertUnwindSafe(move || done(outcome)));
    }
}

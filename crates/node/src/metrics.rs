//! Prometheus metrics, rendered in the text exposition format at `/metrics`.
//!
//! A small registry of atomics rather than a metrics framework: the set is fixed, the hot
//! paths touch one atomic each, and rendering needs no global state. Names use base units
//! (`_seconds`, `_bytes`) and `_total` for counters, as Prometheus conventions ask.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
/// Upper bounds of the batch-size buckets.
const SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((v * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count.load(Relaxed));
    }
}

/// Every metric the node exports.
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, std::sync::Arc<Histogram>>>,
    /// Current Raft term.
    pub raft_term: AtomicU64,
    /// Commit index.
    pub raft_commit_index: AtomicU64,
    /// Applied index.
    pub raft_applied_index: AtomicU64,
    /// 1 while this node leads.
    pub raft_is_leader: AtomicU64,
    /// Proposals made.
    pub proposals: AtomicU64,
    /// Proposals that failed or were lost.
    pub proposals_failed: AtomicU64,
    /// Linearizable reads a leader served under its read lease, without entering the loop.
    pub lease_reads: AtomicU64,
    /// Times this node became leader.
    pub elections_won: AtomicU64,
    /// Leader changes observed.
    pub leader_changes: AtomicU64,
    /// WAL fsync durations.
    pub wal_fsync: Histogram,
    /// Entries made durable per WAL fsync.
    pub wal_batch_entries: Histogram,
    /// Log entries applied per state-machine transaction.
    pub apply_batch_entries: Histogram,
    /// Peer bytes received.
    pub peer_bytes_in: AtomicU64,
    /// Peer bytes sent.
    pub peer_bytes_out: AtomicU64,
    /// Raft messages dropped (full queue, unknown peer).
    pub peer_messages_dropped: AtomicU64,
    /// Peer connections refused at the handshake.
    pub peer_handshakes_refused: AtomicU64,
    /// Frames that failed to decode (version, checksum, size, payload).
    pub malformed_frames: AtomicU64,
    /// Client requests refused for a limit or malformed input.
    pub malformed_requests: AtomicU64,
    /// Open client connections.
    pub client_connections: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            raft_term: AtomicU64::new(0),
            raft_commit_index: AtomicU64::new(0),
            raft_applied_index: AtomicU64::new(0),
            raft_is_leader: AtomicU64::new(0),
            proposals: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
            lease_reads: AtomicU64::new(0),
            elections_won: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            wal_fsync: Histogram::new(&LATENCY_BUCKETS),
            wal_batch_entries: Histogram::new(&SIZE_BUCKETS),
            apply_batch_entries: Histogram::new(&SIZE_BUCKETS),
            peer_bytes_in: AtomicU64::new(0),
            peer_bytes_out: AtomicU64::new(0),
            peer_messages_dropped: AtomicU64::new(0),
            peer_handshakes_refused: AtomicU64::new(0),
            malformed_frames: AtomicU64::new(0),
            malformed_requests: AtomicU64::new(0),
            client_connections: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a client request by operation and result, and records its latency.
    pub fn request(&self, op: &'static str, result: &'static str, seconds: f64) {
        *self.requests.lock().entry((op, result)).or_insert(0) += 1;
        let h = self
            .latency
            .lock()
            .entry(op)
            .or_insert_with(|| std::sync::Arc::new(Histogram::new(&LATENCY_BUCKETS)))
            .clone();
        h.observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, node_id: u64, version: &str) -> String {
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP quorumkv_build_info Build information (always 1).\n# TYPE quorumkv_build_info gauge\nquorumkv_build_info{{version=\"{version}\",node_id=\"{node_id}\"}} 1"
        );
        let _ = writeln!(
            out,
            "# HELP quorumkv_requests_total Client requests by operation and result.\n# TYPE quorumkv_requests_total counter"
        );
        for ((op, result), n) in self.requests.lock().iter() {
            let _ = writeln!(out, "quorumkv_requests_total{{op=\"{op}\",result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP quorumkv_request_duration_seconds Client request latency by operation.\n# TYPE quorumkv_request_duration_seconds histogram"
        );
        for (op, h) in self.latency.lock().iter() {
            h.render(&mut out, "quorumkv_request_duration_seconds", &format!("op=\"{op}\""));
        }
        gauge(&mut out, "quorumkv_raft_term", "Current Raft term.", self.raft_term.load(Relaxed));
        gauge(
            &mut out,
            "quorumkv_raft_commit_index",
            "Raft commit index.",
            self.raft_commit_index.load(Relaxed),
        );
        gauge(
            &mut out,
            "quorumkv_raft_applied_index",
            "Index applied to the state machine.",
            self.raft_applied_index.load(Relaxed),
        );
        gauge(
            &mut out,
            "quorumkv_raft_is_leader",
            "1 if this node is the leader.",
            self.raft_is_leader.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_raft_proposals_total",
            "Proposals made by this node.",
            self.proposals.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_raft_proposals_failed_total",
            "Proposals refused or lost.",
            self.proposals_failed.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_lease_reads_total",
            "Linearizable reads served under the leader's read lease, without a heartbeat round.",
            self.lease_reads.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_raft_elections_won_total",
            "Times this node became leader.",
            self.elections_won.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_raft_leader_changes_total",
            "Leader changes seen.",
            self.leader_changes.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP quorumkv_wal_fsync_duration_seconds Duration of WAL fsyncs.\n# TYPE quorumkv_wal_fsync_duration_seconds histogram"
        );
        self.wal_fsync.render(&mut out, "quorumkv_wal_fsync_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP quorumkv_wal_batch_entries Log entries per WAL submission of the group.\n# TYPE quorumkv_wal_batch_entries histogram"
        );
        self.wal_batch_entries.render(&mut out, "quorumkv_wal_batch_entries", "");
        let _ = writeln!(
            out,
            "# HELP quorumkv_apply_batch_entries Log entries applied per state-machine transaction.\n# TYPE quorumkv_apply_batch_entries histogram"
        );
        self.apply_batch_entries.render(&mut out, "quorumkv_apply_batch_entries", "");
        counter(
            &mut out,
            "quorumkv_peer_received_bytes_total",
            "Bytes received from peers.",
            self.peer_bytes_in.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_peer_sent_bytes_total",
            "Bytes sent to peers.",
            self.peer_bytes_out.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_peer_dropped_messages_total",
            "Raft messages dropped (queue full or peer unknown).",
            self.peer_messages_dropped.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_peer_refused_handshakes_total",
            "Peer connections refused at the handshake.",
            self.peer_handshakes_refused.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_malformed_frames_total",
            "Peer frames that failed to decode; each closed its connection.",
            self.malformed_frames.load(Relaxed),
        );
        counter(
            &mut out,
            "quorumkv_malformed_requests_total",
            "Client requests refused for a limit or malformed input.",
            self.malformed_requests.load(Relaxed),
        );
        gauge(
            &mut out,
            "quorumkv_client_connections",
            "Open client connections.",
            self.client_connections.load(Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        m.request("put", "ok", 0.002);
        m.request("put", "ok", 0.02);
        m.wal_fsync.observe(0.0003);
        m.raft_term.store(7, Relaxed);
        let text = m.render(3, "0.1.0");
        assert!(text.contains("quorumkv_requests_total{op=\"put\",result=\"ok\"} 2"));
        assert!(
            text.contains("quorumkv_request_duration_seconds_bucket{op=\"put\",le=\"0.0025\"} 1")
        );
        assert!(text.contains("quorumkv_request_duration_seconds_count{op=\"put\"} 2"));
        assert!(text.contains("quorumkv_raft_term 7"));
        assert!(text.contains("quorumkv_wal_fsync_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("quorumkv_build_info{version=\"0.1.0\",node_id=\"3\"} 1"));
    }
}

//! The run's trace: a digest of every event (so two runs of a seed can be compared cheaply and
//! exactly), optionally every event as text, and the last events of each node for failure
//! reports.

use std::collections::VecDeque;
use std::fmt::Write as _;

/// Events kept per node for a failure report.
const RECENT_PER_NODE: usize = 24;

/// One traced event, cheap to record; formatted only when shown.
#[derive(Clone, Debug)]
pub enum TraceEvent {
    /// A tick of the node's logical clock.
    Tick,
    /// A message delivered to the node.
    Deliver { from: u64, kind: &'static str, term: u64 },
    /// A message lost or blocked on the way.
    Drop { to: u64, kind: &'static str },
    /// A persisted write completed (fsync).
    Persisted { index: u64 },
    /// The node became leader.
    Leader { term: u64 },
    /// The node applied entries up to this index.
    Applied { index: u64 },
    /// The node took a snapshot and compacted its log.
    Compacted { index: u64 },
    /// A client request arrived.
    Request { client: usize, what: &'static str },
    /// A fault started or ended, or a node changed state.
    Nemesis(String),
}

/// Records a run's events.
#[derive(Debug)]
pub struct Trace {
    digest: u64,
    events: u64,
    /// Every event as a line, when asked for.
    lines: Option<String>,
    recent: Vec<VecDeque<(u64, TraceEvent)>>,
}

fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(29) ^ (x >> 7)
}

fn mix_str(mut h: u64, s: &str) -> u64 {
    for b in s.bytes() {
        h = mix(h, u64::from(b));
    }
    h
}

impl Trace {
    /// A trace for `slots` nodes; `full` keeps every event as text.
    pub fn new(slots: usize, full: bool) -> Self {
        Self {
            digest: 0xcbf2_9ce4_8422_2325,
            events: 0,
            lines: full.then(String::new),
            recent: (0..slots).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Records `event` at virtual time `now` (µs) on node slot `slot`.
    pub fn record(&mut self, now: u64, slot: usize, event: TraceEvent) {
        self.events += 1;
        let mut h = mix(mix(self.digest, now), slot as u64);
        h = match &event {
            TraceEvent::Tick => mix(h, 1),
            TraceEvent::Deliver { from, kind, term } => mix_str(mix(mix(h, 2 + from), *term), kind),
            TraceEvent::Drop { to, kind } => mix_str(mix(h, 3 + to), kind),
            TraceEvent::Persisted { index } => mix(h, 4 + index),
            TraceEvent::Leader { term } => mix(h, 5 + term),
            TraceEvent::Applied { index } => mix(h, 6 + index),
            TraceEvent::Compacted { index } => mix(h, 7 + index),
            TraceEvent::Request { client, what } => mix_str(mix(h, 8 + *client as u64), what),
            TraceEvent::Nemesis(s) => mix_str(mix(h, 9), s),
        };
        self.digest = h;
        if let Some(lines) = &mut self.lines {
            let _ = writeln!(lines, "{} n{} {}", format_time(now), slot, describe(&event));
        }
        if let Some(q) = self.recent.get_mut(slot) {
            if q.len() == RECENT_PER_NODE {
                q.pop_front();
            }
            q.push_back((now, event));
        }
    }

    /// Grows the per-node buffers when a slot is added.
    pub fn ensure_slots(&mut self, slots: usize) {
        while self.recent.len() < slots {
            self.recent.push(VecDeque::new());
        }
    }

    /// Digest of every event so far: equal digests mean (with overwhelming probability)
    /// identical runs.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Number of events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The full text trace, if it was kept.
    pub fn text(&self) -> Option<&str> {
        self.lines.as_deref()
    }

    /// The last events of every node, as text.
    pub fn recent_text(&self) -> String {
        let mut out = String::new();
        for (slot, q) in self.recent.iter().enumerate() {
            let _ = writeln!(out, "  node slot {slot}:");
            for (t, e) in q {
                let _ = writeln!(out, "    {} {}", format_time(*t), describe(e));
            }
        }
        out
    }
}

/// Virtual microseconds as seconds with 6 decimals.
pub fn format_time(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

fn describe(e: &TraceEvent) -> String {
    match e {
        TraceEvent::Tick => "tick".into(),
        TraceEvent::Deliver { from, kind, term } => format!("recv {kind} from {from} t{term}"),
        TraceEvent::Drop { to, kind } => format!("lost {kind} to {to}"),
        TraceEvent::Persisted { index } => format!("fsync done through {index}"),
        TraceEvent::Leader { term } => format!("became leader t{term}"),
        TraceEvent::Applied { index } => format!("applied through {index}"),
        TraceEvent::Compacted { index } => format!("snapshot+compact at {index}"),
        TraceEvent::Request { client, what } => format!("client {client} {what}"),
        TraceEvent::Nemesis(s) => s.clone(),
    }
}

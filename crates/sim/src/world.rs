//! The simulated world: machines, network, clients and the nemesis, driven by one event queue
//! in virtual time. Everything random comes from one generator seeded by the run's seed, and
//! ties in the queue break by insertion order, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use bytes::Bytes;
use quorumkv_check::history::{F, HistoryRecorder, Value};
use quorumkv_core::rng::Rng;
use quorumkv_core::{ConfChange, ConfChangeStep, LogIndex, NodeId, Snapshot};
use quorumkv_raft::{Config, Message, Raft, RaftError, RestoreState, Role};
use quorumkv_storage::disk::SimDisk;
use quorumkv_storage::wal::WalOptions;
use quorumkv_storage::wal::codec::SEGMENT_HEADER_BYTES;

use crate::faults::FaultKind;
use crate::invariants::Invariants;
use crate::kv::{Command, Key, Op, OpResult};
use crate::net::Net;
use crate::node::{SimNode, Status, Unsynced, Waiting};
use crate::store::{NodeStore, Opened, StoreError, segment_files};
use crate::trace::{Trace, TraceEvent};

/// Virtual microseconds.
pub type Time = u64;

const MS: Time = 1_000;
const SEC: Time = 1_000_000;
/// Nominal tick period.
const TICK: Time = 10 * MS;
/// A run that needs more events than this is stuck in a loop.
const MAX_EVENTS: u64 = 20_000_000;

/// A client's request to a node.
#[derive(Clone, Copy, Debug)]
pub enum Request {
    /// Linearizable read of a key (ReadIndex).
    Read(Key),
    /// A write or cas through the log.
    Command(Command),
}

/// A node's answer to a client.
#[derive(Clone, Copy, Debug)]
pub enum Response {
    /// Read result.
    Read(Option<i64>),
    /// Write done, or cas swapped.
    Done,
    /// Cas compare failed (definitely no effect).
    CasFailed,
    /// Not the leader: definitely not proposed here; try the hint.
    NotLeader(Option<NodeId>),
    /// Refused before proposing (back-pressure, transfer): definitely no effect here.
    Refused,
    /// Proposed but the outcome here is unknown (the entry was replaced, or leadership moved).
    Unknown,
}

/// Things that happen.
#[derive(Clone, Debug)]
pub enum Ev {
    Tick {
        slot: usize,
        incarnation: u32,
    },
    Deliver(Message),
    Fsync {
        slot: usize,
        incarnation: u32,
    },
    /// An image a leader asked for, encoded off the loop as the node does, reaches Raft.
    ImageReady {
        slot: usize,
        incarnation: u32,
        index: LogIndex,
        data: Bytes,
    },
    Arrive {
        slot: usize,
        client: usize,
        op_id: u64,
        req: Request,
    },
    Respond {
        client: usize,
        op_id: u64,
        resp: Response,
    },
    AttemptTimeout {
        client: usize,
    },
    ClientNext {
        client: usize,
    },
    Nemesis,
    EndPartition {
        token: u64,
    },
    Flap {
        token: u64,
        a: usize,
        b: usize,
    },
    Restart {
        slot: usize,
    },
    CrashLeader {
        slot: usize,
        term: u64,
    },
    DiskSpace {
        slot: usize,
    },
    Resume {
        slot: usize,
    },
    Drift,
    WipeStep {
        slot: usize,
        step: u8,
        new_id: NodeId,
    },
    Promote {
        slot: usize,
        id: NodeId,
    },
    Heal,
    StopClients,
}

/// A queue entry: when, the tie-break order, and where the event waits in the world's event
/// slab. Keeping the (large) events out of the heap makes its sift moves cheap.
struct Queued {
    at: Time,
    seq: u64,
    slot: u32,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A client operation in flight.
#[derive(Clone, Debug)]
struct ClientOp {
    op_id: u64,
    attempt: u32,
    req: Request,
    deadline: Time,
    /// When the current attempt times out.
    attempt_timeout_at: Time,
    /// Some attempt may have been proposed and not definitively refused.
    maybe_applied: bool,
}

struct Client {
    process: u64,
    session: u64,
    seq: u64,
    target: usize,
    op: Option<ClientOp>,
    /// When this client's timer event fires, if one is queued. One timer per client, re-armed
    /// when it fires, keeps the queue small: most attempts are answered long before their
    /// timeout, and a queued event per attempt would fill the queue with stale timers.
    timer_at: Option<Time>,
}

/// Knobs a run draws from its seed.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Machines.
    pub nodes: usize,
    /// Faults enabled.
    pub faults: Vec<FaultKind>,
    /// Clients.
    pub clients: usize,
    /// Keys.
    pub keys: u32,
    /// Log entries between snapshots.
    pub compact_every: u64,
    /// Compact the log with no image handed to Raft (the node's mode: its store is durable),
    /// taking an image only when a leader asks for one; otherwise every compaction carries one.
    pub lazy_images: bool,
    /// Raft tunables shared by every node (id filled per node).
    pub raft: Config,
    /// WAL segment size: small segments make rotation, checkpoints and segment deletion
    /// happen often.
    pub wal_segment_bytes_max: u64,
    /// Reserve each WAL segment's size when it is created (the node's mode): the log then
    /// ends in zeros, and torn writes land inside the file rather than at its end.
    pub wal_preallocate: bool,
    /// Fault phase length.
    pub fault_time: Time,
    /// Time after healing during which the cluster must commit a write.
    pub heal_time: Time,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// White-box invariant violations.
    pub violations: Vec<String>,
    /// Virtual µs from heal to the first acknowledged write after it; `None` = never.
    pub recovered_after: Option<Time>,
    /// The recorded history (JSON lines).
    pub history: Vec<u8>,
    /// Client operations completed (ok or fail).
    pub ops_completed: u64,
    /// Operations ending `info`.
    pub ops_info: u64,
    /// Events processed.
    pub events: u64,
    /// Trace digest.
    pub digest: u64,
    /// The full trace, if asked for.
    pub trace_text: Option<String>,
    /// Last events of each node.
    pub recent: String,
    /// Virtual time at the end.
    pub end_time: Time,
    /// Leader elections seen.
    pub elections: u64,
    /// Snapshots installed from a leader.
    pub snapshot_installs: u64,
    /// Images a leader asked for (`Ready::snapshot_wanted`) and got.
    pub images_on_request: u64,
    /// The plan compacted without images.
    pub lazy_images: bool,
    /// Crashes injected.
    pub crashes: u64,
    /// Starts refused because a flipped bit was found in the WAL.
    pub corruptions_detected: u64,
    /// Processes stopped by a failed fsync.
    pub fsync_failures: u64,
    /// Disk-full episodes injected.
    pub disk_full_episodes: u64,
    /// Processes stopped by a write the full disk rejected.
    pub disk_full_stops: u64,
    /// Torn writes WAL recovery found and cut off (crashes during an fsync, failed fsyncs).
    pub torn_tails: u64,
}

impl Outcome {
    /// The outcome of a run the protocol aborted with a panic.
    pub fn panicked(what: String) -> Self {
        Self {
            violations: vec![format!("panic: {what}")],
            recovered_after: None,
            history: Vec::new(),
            ops_completed: 0,
            ops_info: 0,
            events: 0,
            digest: 0,
            trace_text: None,
            recent: String::new(),
            end_time: 0,
            elections: 0,
            snapshot_installs: 0,
            images_on_request: 0,
            lazy_images: false,
            crashes: 0,
            corruptions_detected: 0,
            fsync_failures: 0,
            disk_full_episodes: 0,
            disk_full_stops: 0,
            torn_tails: 0,
        }
    }
}

/// The world.
pub struct World {
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    /// Events waiting in the queue, by slab slot.
    events: Vec<Option<Ev>>,
    /// Free slab slots.
    free_events: Vec<u32>,
    rng: Rng,
    plan: Plan,
    nodes: Vec<SimNode>,
    id_to_slot: BTreeMap<NodeId, usize>,
    next_node_id: NodeId,
    net: Net,
    clients: Vec<Client>,
    next_process: u64,
    next_op_id: u64,
    recorder: HistoryRecorder<Vec<u8>>,
    inv: Invariants,
    trace: Trace,
    partition_token: u64,
    heal_at: Time,
    healed: bool,
    /// Leader churn (the leader-crash fault) lasts until this time.
    leader_churn_until: Time,
    clients_stopped: bool,
    recovered_after: Option<Time>,
    ops_completed: u64,
    ops_info: u64,
    elections: u64,
    snapshot_installs: u64,
    images_on_request: u64,
    crashes: u64,
    corruptions_detected: u64,
    fsync_failures: u64,
    disk_full_episodes: u64,
    disk_full_stops: u64,
    torn_tails: u64,
    wal_options: WalOptions,
    /// A membership operation (wipe or demotion) is under way.
    membership_busy: bool,
    /// Clock rate bounds for skew: (low, high) multipliers of the tick period.
    skew: Option<(f64, f64)>,
}

impl World {
    /// A world for `plan`, all randomness from `seed`.
    pub fn new(seed: u64, plan: Plan, full_trace: bool) -> Self {
        let mut rng = Rng::new(seed);
        let voters: Vec<NodeId> = (1..=plan.nodes as u64).collect();
        let boot = RestoreState::bootstrap(&voters);
        let wal_options = WalOptions {
            segment_bytes_max: plan.wal_segment_bytes_max,
            preallocate: plan.wal_preallocate,
        };
        let mut inv = Invariants::default();
        let nodes: Vec<SimNode> = voters
            .iter()
            .map(|&id| {
                let disk = new_disk(&mut rng);
                // The initial members' first start: the membership entry and hard state are on
                // disk before any process runs, as a bootstrap tool would leave them.
                if let Err(e) = NodeStore::bootstrap(&disk, plan.raft.group, &wal_options, &boot) {
                    inv.violations.push(format!("storage: bootstrapping node {id} failed: {e}"));
                }
                SimNode::new(id, disk)
            })
            .collect();
        let id_to_slot = voters.iter().enumerate().map(|(slot, &id)| (id, slot)).collect();
        let mut net = Net::healthy();
        if plan.faults.contains(&FaultKind::Loss) {
            net.loss = 0.01 + rng.unit() * 0.1;
        }
        if plan.faults.contains(&FaultKind::Duplicate) {
            net.duplicate = 0.01 + rng.unit() * 0.08;
        }
        if plan.faults.contains(&FaultKind::Delay) {
            net.delay_min_us = rng.range(100, 2 * MS);
            net.jitter_us = rng.range(MS, 30 * MS);
        }
        let skew = if plan.faults.contains(&FaultKind::SkewBeyond) {
            Some((0.6, 1.4))
        } else if plan.faults.contains(&FaultKind::Skew) {
            Some((0.92, 1.08))
        } else {
            None
        };
        let clients = (0..plan.clients)
            .map(|i| Client {
                process: i as u64,
                session: 1000 + i as u64,
                seq: 0,
                target: i % plan.nodes,
                op: None,
                timer_at: None,
            })
            .collect();
        let slots = plan.nodes;
        let mut w = Self {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_events: Vec::new(),
            next_node_id: plan.nodes as u64 + 1,
            heal_at: plan.fault_time,
            next_process: plan.clients as u64,
            plan,
            rng,
            nodes,
            id_to_slot,
            net,
            clients,
            next_op_id: 1,
            recorder: HistoryRecorder::new(Vec::new()),
            inv,
            trace: Trace::new(slots, full_trace),
            partition_token: 0,
            healed: false,
            leader_churn_until: 0,
            clients_stopped: false,
            recovered_after: None,
            ops_completed: 0,
            ops_info: 0,
            elections: 0,
            snapshot_installs: 0,
            images_on_request: 0,
            crashes: 0,
            corruptions_detected: 0,
            fsync_failures: 0,
            disk_full_episodes: 0,
            disk_full_stops: 0,
            torn_tails: 0,
            wal_options,
            membership_busy: false,
            skew,
        };
        for slot in 0..slots {
            if let Some((lo, hi)) = w.skew {
                w.nodes[slot].clock_rate = lo + w.rng.unit() * (hi - lo);
            }
            w.start_process(slot);
        }
        for client in 0..w.plan.clients {
            let at = w.rng.range(0, 50 * MS);
            w.schedule(at, Ev::ClientNext { client });
        }
        if w.plan.faults.iter().any(|f| f.is_episodic()) {
            let at = w.rng.range(200 * MS, SEC);
            w.schedule(at, Ev::Nemesis);
        }
        if w.skew.is_some() {
            w.schedule(SEC, Ev::Drift);
        }
        let heal_at = w.heal_at;
        w.schedule(heal_at, Ev::Heal);
        w.schedule(heal_at + w.plan.heal_time, Ev::StopClients);
        w
    }

    fn schedule(&mut self, delay: Time, ev: Ev) {
        self.seq += 1;
        let slot = match self.free_events.pop() {
            Some(slot) => {
                self.events[slot as usize] = Some(ev);
                slot
            }
            None => {
                self.events.push(Some(ev));
                (self.events.len() - 1) as u32
            }
        };
        self.queue.push(Reverse(Queued { at: self.now + delay, seq: self.seq, slot }));
    }

    fn record(&mut self, slot: usize, e: TraceEvent) {
        self.trace.record(self.now, slot, e);
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Outcome {
        let end = self.heal_at + self.plan.heal_time + 3 * SEC;
        while let Some(Reverse(q)) = self.queue.pop() {
            // A broken build can diverge without bound once safety is lost: the first
            // violation ends the run (it is reported with the events that led to it).
            if q.at > end || !self.inv.violations.is_empty() || self.trace.events() > MAX_EVENTS {
                break;
            }
            self.now = q.at;
            let Some(ev) = self.events[q.slot as usize].take() else { continue };
            self.free_events.push(q.slot);
            self.handle(ev);
        }
        if self.trace.events() > MAX_EVENTS {
            self.inv.violations.push(format!("run exceeded {MAX_EVENTS} events (livelock?)"));
        }
        self.now = end;
        self.finish()
    }

    fn finish(mut self) -> Outcome {
        // Close every operation still in flight: its outcome is unknown.
        for c in 0..self.clients.len() {
            if let Some(op) = self.clients[c].op.take() {
                self.complete(c, &op, Completion::Unknown);
            }
        }
        self.inv.check_acked();
        self.check_convergence();
        let recent = self.trace.recent_text();
        Outcome {
            violations: self.inv.violations,
            recovered_after: self.recovered_after,
            history: self.recorder.into_inner(),
            ops_completed: self.ops_completed,
            ops_info: self.ops_info,
            events: self.trace.events(),
            digest: self.trace.digest(),
            trace_text: self.trace.text().map(str::to_owned),
            recent,
            end_time: self.now,
            elections: self.elections,
            snapshot_installs: self.snapshot_installs,
            images_on_request: self.images_on_request,
            lazy_images: self.plan.lazy_images,
            crashes: self.crashes,
            corruptions_detected: self.corruptions_detected,
            fsync_failures: self.fsync_failures,
            disk_full_episodes: self.disk_full_episodes,
            disk_full_stops: self.disk_full_stops,
            torn_tails: self.torn_tails,
        }
    }

    /// After healing, every running member holds the same state machine.
    fn check_convergence(&mut self) {
        let Some(leader) = self.leader_slot() else {
            self.inv.violations.push("liveness: no leader at the end of the heal phase".into());
            return;
        };
        let Some(lr) = self.nodes[leader].raft.as_ref() else { return };
        let members = lr.conf_state().all_members();
        let reference = self.nodes[leader].kv.clone();
        for id in members {
            let Some(&slot) = self.id_to_slot.get(&id) else { continue };
            let n = &self.nodes[slot];
            if n.status != Status::Up {
                continue;
            }
            if n.kv.applied == reference.applied && n.kv.map != reference.map {
                self.inv.violations.push(format!(
                    "convergence: node {id} and the leader applied through {} yet differ",
                    n.kv.applied
                ));
            }
        }
    }

    fn leader_slot(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.status == Status::Up)
            .filter_map(|(s, n)| {
                n.raft.as_ref().filter(|r| r.role() == Role::Leader).map(|r| (r.term(), s))
            })
            .max()
            .map(|(_, s)| s)
    }

    // ----- events --------------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) {
        // Events for a paused machine wait for it (its disk and the network do not).
        if let Some(slot) = self.event_slot(&ev)
            && self.nodes[slot].status == Status::Paused
        {
            if let Ev::Tick { incarnation, .. } = ev {
                if incarnation == self.nodes[slot].incarnation {
                    self.nodes[slot].missed_ticks += 1;
                    let period = self.tick_period(slot);
                    self.schedule(period, ev);
                }
                return;
            }
            self.nodes[slot].held.push(ev);
            return;
        }
        match ev {
            Ev::Tick { slot, incarnation } => {
                if self.nodes[slot].incarnation != incarnation
                    || self.nodes[slot].status != Status::Up
                {
                    return;
                }
                let period = self.tick_period(slot);
                self.schedule(period, Ev::Tick { slot, incarnation });
                if let Some(r) = self.nodes[slot].raft.as_mut() {
                    r.tick();
                }
                self.record(slot, TraceEvent::Tick);
                self.drive(slot);
            }
            Ev::Deliver(m) => {
                let Some(&slot) = self.id_to_slot.get(&m.to) else { return };
                if self.nodes[slot].status != Status::Up || self.nodes[slot].id != m.to {
                    return;
                }
                self.record(
                    slot,
                    TraceEvent::Deliver { from: m.from, kind: m.body.kind(), term: m.term },
                );
                if let Some(r) = self.nodes[slot].raft.as_mut() {
                    r.step(m);
                }
                self.drive(slot);
            }
            Ev::ImageReady { slot, incarnation, index, data } => {
                let n = &mut self.nodes[slot];
                if n.incarnation != incarnation || n.status != Status::Up {
                    return;
                }
                n.image_pending = false;
                // Refused if the log moved past `index` meanwhile (a newer compaction or a
                // snapshot from another leader); Raft asks again if a follower still waits.
                if self.compact_with(slot, index, data, true) {
                    self.images_on_request += 1;
                }
                self.drive(slot);
            }
            Ev::Fsync { slot, incarnation } => {
                let n = &mut self.nodes[slot];
                if n.incarnation != incarnation || n.status != Status::Up {
                    return;
                }
                n.fsync_scheduled = false;
                // Group commit: one WAL sync covers every ready logged since the previous one.
                let Some(store) = n.store.as_mut() else { return };
                if let Err(e) = store.sync() {
                    self.storage_failed(slot, e);
                    return;
                }
                let n = &mut self.nodes[slot];
                let (marker, after) = n.take_synced();
                if let (Some((i, t)), Some(r)) = (marker, n.raft.as_mut()) {
                    r.on_persisted(i, t);
                    self.record(slot, TraceEvent::Persisted { index: i });
                }
                for m in after {
                    self.send(slot, m);
                }
                self.start_fsync(slot);
                self.drive(slot);
            }
            Ev::Arrive { slot, client, op_id, req } => {
                if self.nodes[slot].status != Status::Up {
                    return;
                }
                self.serve(slot, client, op_id, req);
                self.drive(slot);
            }
            Ev::Respond { client, op_id, resp } => self.on_response(client, op_id, resp),
            Ev::AttemptTimeout { client } => self.on_attempt_timer(client),
            Ev::ClientNext { client } => self.next_op(client),
            Ev::Nemesis => self.nemesis(),
            Ev::EndPartition { token } => {
                if token == self.partition_token {
                    self.net.clear_partitions();
                    self.record(0, TraceEvent::Nemesis("partition healed".into()));
                }
            }
            Ev::Flap { token, a, b } => {
                if token == self.partition_token && !self.healed {
                    if self.net.connected(a, b) {
                        self.net.block(a, b);
                        self.net.block(b, a);
                    } else {
                        self.net.unblock(a, b);
                        self.net.unblock(b, a);
                    }
                    let d = self.rng.range(20 * MS, 200 * MS);
                    self.schedule(d, Ev::Flap { token, a, b });
                }
            }
            Ev::CrashLeader { slot, term } => {
                let still_leading = self.nodes[slot]
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.term() == term);
                if still_leading && self.nodes[slot].status == Status::Up && !self.healed {
                    self.crash(slot);
                    let down = self.rng.range(20 * MS, 500 * MS);
                    self.schedule(down, Ev::Restart { slot });
                }
            }
            Ev::Restart { slot } => {
                if self.nodes[slot].status == Status::Down {
                    self.start_process(slot);
                }
            }
            Ev::DiskSpace { slot } => self.disk_space_back(slot),
            Ev::Resume { slot } => self.resume(slot),
            Ev::Drift => {
                if let (Some((lo, hi)), false) = (self.skew, self.healed) {
                    for slot in 0..self.nodes.len() {
                        let step = (self.rng.unit() - 0.5) * 0.04;
                        let n = &mut self.nodes[slot];
                        n.clock_rate = (n.clock_rate + step).clamp(lo, hi);
                    }
                    self.schedule(SEC, Ev::Drift);
                }
            }
            Ev::WipeStep { slot, step, new_id } => self.wipe_step(slot, step, new_id),
            Ev::Promote { slot, id } => self.promote(slot, id),
            Ev::Heal => self.heal(),
            Ev::StopClients => self.clients_stopped = true,
        }
    }

    fn event_slot(&self, ev: &Ev) -> Option<usize> {
        match ev {
            Ev::Tick { slot, .. }
            | Ev::Fsync { slot, .. }
            | Ev::ImageReady { slot, .. }
            | Ev::Arrive { slot, .. } => Some(*slot),
            Ev::Deliver(m) => self.id_to_slot.get(&m.to).copied(),
            _ => None,
        }
    }

    fn tick_period(&self, slot: usize) -> Time {
        (TICK as f64 * self.nodes[slot].clock_rate) as Time
    }

    // ----- processes ------------------------------------------------------------------------

    /// Starts the machine's process: opens the WAL and snapshot files, recovers, runs Raft.
    fn start_process(&mut self, slot: usize) {
        if self.nodes[slot].corrupt {
            // It refused once already; only a wipe brings the machine back.
            return;
        }
        let group = self.plan.raft.group;
        let id = self.nodes[slot].id;
        let opened = match NodeStore::open(&self.nodes[slot].disk, group, &self.wal_options) {
            Ok(opened) => opened,
            Err(e) => {
                self.start_refused(slot, e);
                return;
            }
        };
        let Opened { store, state, torn_tail } = opened;
        if let Some(t) = torn_tail {
            self.torn_tails += 1;
            self.record(
                slot,
                TraceEvent::Nemesis(format!(
                    "WAL recovery cut a torn tail: {} bytes at byte {} of {}{}",
                    t.bytes_dropped,
                    t.offset,
                    t.path.display(),
                    if t.segment_removed { " (segment removed)" } else { "" }
                )),
            );
        }
        if let Some((path, offset)) = self.nodes[slot].flipped.take() {
            self.inv.violations.push(format!(
                "storage: node {id} started on a disk with a flipped bit in byte {offset} of {}",
                path.display()
            ));
        }
        let kv = match (&state.snapshot, &state.snapshot_data) {
            (Some(meta), Some(data)) => match crate::kv::KvState::restore(data) {
                Some(kv) => kv,
                None => {
                    self.inv.violations.push(format!(
                        "storage: node {id} recovered snapshot {}@t{} whose data does not decode",
                        meta.index, meta.term
                    ));
                    return;
                }
            },
            _ => Default::default(),
        };
        let mut state = state;
        if self.plan.lazy_images {
            // The file stands for the durable store; Raft itself restarts with no image.
            state.snapshot_data = None;
        }
        let mut cfg = self.plan.raft.clone();
        cfg.id = id;
        let seed = self.rng.next_u64();
        let n = &mut self.nodes[slot];
        match Raft::new(cfg, state, seed) {
            Ok(r) => {
                n.raft = Some(r);
                n.store = Some(store);
                n.kv = kv;
                n.status = Status::Up;
                n.commit_seen = 0;
                n.image_pending = false;
            }
            Err(e) => {
                let msg = format!("node {id} cannot restart from its disk: {e}");
                self.inv.violations.push(msg);
                return;
            }
        }
        let incarnation = self.nodes[slot].incarnation;
        let first = self.rng.range(0, TICK);
        self.schedule(first, Ev::Tick { slot, incarnation });
        self.record(slot, TraceEvent::Nemesis(format!("process started (node {id})")));
        self.drive(slot);
    }

    /// The process could not open its storage. A corruption error is the expected answer to a
    /// flipped bit (the machine then waits to be wiped); a full disk or an injected fsync
    /// failure is retried later; anything else is a storage or simulator bug.
    fn start_refused(&mut self, slot: usize, e: StoreError) {
        let id = self.nodes[slot].id;
        self.record(slot, TraceEvent::Nemesis(format!("process refused to start: {e}")));
        match e {
            StoreError::Corrupt { path, offset, message } => {
                // Stays down either way: a corrupt log must never be served.
                self.nodes[slot].corrupt = true;
                match self.nodes[slot].flipped.take() {
                    Some((flipped_path, flipped_at)) => {
                        self.corruptions_detected += 1;
                        if flipped_path != path || offset > flipped_at {
                            self.inv.violations.push(format!(
                                "storage: node {id} reports corruption in {} at byte {offset}, \
                                 but the flipped bit is in byte {flipped_at} of {}",
                                path.display(),
                                flipped_path.display()
                            ));
                        }
                    }
                    None => self.inv.violations.push(format!(
                        "storage: node {id} cannot recover its WAL after a plain crash: {message}"
                    )),
                }
            }
            StoreError::DiskFull(_) if self.nodes[slot].disk_full => {
                // The end of the episode restarts it.
            }
            StoreError::Failed(m) if self.injected_sync_failure(slot, &m) => {
                self.fsync_failures += 1;
                let retry = self.rng.range(300 * MS, SEC);
                self.schedule(retry, Ev::Restart { slot });
            }
            e => self.inv.violations.push(format!("storage: node {id} cannot restart: {e}")),
        }
    }

    /// True if `message` is the failure of the sync this machine was told to fail (which is
    /// then used up).
    fn injected_sync_failure(&mut self, slot: usize, message: &str) -> bool {
        let n = &mut self.nodes[slot];
        if n.sync_fault_armed && message.contains("simulated fsync failure") {
            n.sync_fault_armed = false;
            return true;
        }
        false
    }

    /// The running process hit a storage error: it stops at once (crash-stop), so nothing that
    /// was not durable is ever acknowledged, and restarts later from what is on disk. Only
    /// injected faults may cause this; any other error is a finding.
    fn storage_failed(&mut self, slot: usize, e: StoreError) {
        let id = self.nodes[slot].id;
        let restart = match &e {
            StoreError::DiskFull(_) if self.nodes[slot].disk_full => {
                self.disk_full_stops += 1;
                // The end of the episode restarts it.
                false
            }
            StoreError::Failed(m) if self.injected_sync_failure(slot, m) => {
                self.fsync_failures += 1;
                true
            }
            _ => {
                self.inv.violations.push(format!("storage: node {id} failed unexpectedly: {e}"));
                true
            }
        };
        self.nodes[slot].stop_process();
        self.record(slot, TraceEvent::Nemesis(format!("process stopped: {e}")));
        if restart {
            let after = self.rng.range(300 * MS, 3 * SEC);
            self.schedule(after, Ev::Restart { slot });
        }
    }

    /// A disk-full episode ends: space is back, and a process it stopped starts again.
    fn disk_space_back(&mut self, slot: usize) {
        let n = &mut self.nodes[slot];
        if !n.disk_full {
            return;
        }
        n.disk.set_full(false);
        n.disk_full = false;
        self.record(slot, TraceEvent::Nemesis("disk space is back".into()));
        if self.nodes[slot].status == Status::Down {
            self.start_process(slot);
        }
    }

    /// The machine loses power: the process is gone and the disk keeps what was fsynced
    /// (`SimDisk::crash`: of the unsynced writes a random prefix survives, the last possibly
    /// torn). With `mid_sync`, the crash may strike while the group fsync is under way, so
    /// part of the WAL batch reaches the disk and may be torn.
    fn crash(&mut self, slot: usize) {
        self.crash_machine(slot, true);
    }

    fn crash_machine(&mut self, slot: usize, mid_sync: bool) {
        if self.nodes[slot].status == Status::Down {
            return;
        }
        self.crashes += 1;
        let (store, lost) = self.nodes[slot].stop_process();
        let _ = lost; // their clients time out, as real clients would
        if let Some(store) = store
            && mid_sync
            && store.has_unsynced()
            && self.rng.chance(0.5)
        {
            let budget = self.rng.range(0, 6);
            store.sync_until_power_off(budget);
        }
        let n = &mut self.nodes[slot];
        n.disk.crash();
        // A crash clears an armed sync failure (SimDisk::crash does).
        n.sync_fault_armed = false;
        self.record(slot, TraceEvent::Nemesis("crashed".into()));
    }

    fn resume(&mut self, slot: usize) {
        if self.nodes[slot].status != Status::Paused {
            return;
        }
        self.nodes[slot].status = Status::Up;
        self.record(slot, TraceEvent::Nemesis("resumed".into()));
        // Time passed while stopped: the ticks come first, then whatever arrived meanwhile.
        let missed = std::mem::take(&mut self.nodes[slot].missed_ticks);
        if let Some(r) = self.nodes[slot].raft.as_mut() {
            for _ in 0..missed.min(10_000) {
                r.tick();
            }
        }
        self.drive(slot);
        let held = std::mem::take(&mut self.nodes[slot].held);
        for ev in held {
            self.handle(ev);
        }
    }

    /// Drains the replica's readies: send, persist, apply, answer.
    fn drive(&mut self, slot: usize) {
        loop {
            let n = &mut self.nodes[slot];
            let Some(r) = n.raft.as_mut() else { return };
            if !r.has_ready() {
                break;
            }
            let id = r.id();
            let rd = r.ready();
            if let Some(ss) = rd.soft_state
                && ss.role == Role::Leader
            {
                self.elections += 1;
                if let Some(r) = self.nodes[slot].raft.as_ref() {
                    self.inv.on_leader(id, ss.term, r);
                }
                self.record(slot, TraceEvent::Leader { term: ss.term });
                if self.now < self.leader_churn_until
                    && !self.healed
                    && !self.disk_damage_pending()
                    && self.rng.chance(0.7)
                {
                    // Mostly inside one round trip, sometimes after a few.
                    let within = *self.rng.pick(&[300, 2 * MS, 10 * MS]).unwrap_or(&MS);
                    let at = self.rng.range(0, within);
                    self.schedule(at, Ev::CrashLeader { slot, term: ss.term });
                }
            }
            if !rd.entries.is_empty() {
                let first = rd.entries[0].index;
                let prev = self.nodes[slot].raft.as_ref().and_then(|r| r.term_at(first - 1));
                self.inv.on_append(id, &rd.entries, prev);
            }
            let marker = rd.persist_marker();
            for m in rd.messages {
                self.send(slot, m);
            }
            // A moved commit index rides along with the next write (no fsync of its own);
            // with nothing else to write it goes to the WAL buffer for the next group fsync.
            let lazy_commit = match (rd.hard_state, rd.commit_index) {
                (None, Some(_)) => self.nodes[slot].raft.as_ref().map(Raft::hard_state),
                _ => None,
            };
            if rd.snapshot.is_none()
                && rd.hard_state.is_none()
                && rd.entries.is_empty()
                && rd.persisted_messages.is_empty()
            {
                if let (Some(hs), Some(store)) = (lazy_commit, self.nodes[slot].store.as_mut())
                    && let Err(e) = store.log(None, &[], Some(hs))
                {
                    self.storage_failed(slot, e);
                    return;
                }
            } else {
                // Into the WAL now (a snapshot's file is made durable at once); durable at the
                // next group fsync, which then reports the marker and releases the messages.
                let Some(store) = self.nodes[slot].store.as_mut() else { return };
                if let Err(e) =
                    store.log(rd.snapshot.as_ref(), &rd.entries, rd.hard_state.or(lazy_commit))
                {
                    self.storage_failed(slot, e);
                    return;
                }
                self.nodes[slot].unsynced.push(Unsynced { marker, after: rd.persisted_messages });
                self.start_fsync(slot);
            }
            if let Some(s) = rd.snapshot {
                self.snapshot_installs += 1;
                let n = &mut self.nodes[slot];
                n.kv = crate::kv::KvState::restore(&s.data).unwrap_or_default();
                n.kv.applied = s.meta.index;
                // Proposals covered by the snapshot: their fate here is unknown.
                let covered: Vec<LogIndex> =
                    n.proposals.range(..=s.meta.index).map(|(i, _)| *i).collect();
                for i in covered {
                    if let Some((_, w)) = self.nodes[slot].proposals.remove(&i) {
                        self.respond(w, Response::Unknown);
                    }
                }
            }
            let mut last_applied = None;
            for e in &rd.committed_entries {
                self.inv.on_apply(id, e);
                let n = &mut self.nodes[slot];
                if e.index <= n.kv.applied {
                    continue;
                }
                let result = n.kv.apply(e.index, &e.data);
                last_applied = Some(e.index);
                if let Some((term, w)) = n.proposals.remove(&e.index) {
                    let resp = match (term == e.term, result) {
                        (true, Some((_, OpResult::Done))) => {
                            self.inv.on_ack(e.index, e.term);
                            Response::Done
                        }
                        (true, Some((_, OpResult::CasFailed))) => Response::CasFailed,
                        _ => Response::Unknown,
                    };
                    self.respond(w, resp);
                }
            }
            if let Some(index) = last_applied {
                self.record(slot, TraceEvent::Applied { index });
            }
            for rs in rd.read_states {
                if let Some(w) = self.nodes[slot].reads_pending.remove(&rs.id) {
                    self.nodes[slot].reads_ready.push((rs.index, w));
                }
            }
            for (rid, _) in rd.failed_reads {
                if let Some(w) = self.nodes[slot].reads_pending.remove(&rid) {
                    self.respond(w, Response::Unknown);
                }
            }
            self.serve_ready_reads(slot);
            if rd.snapshot_wanted {
                self.take_image(slot);
            }
            self.maybe_compact(slot);
            let n = &mut self.nodes[slot];
            if let Some(r) = n.raft.as_ref() {
                let c = r.commit_index();
                let before = n.commit_seen;
                n.commit_seen = c.max(before);
                let leader = (r.role() == Role::Leader).then(|| (r.term(), r.term_at(c)));
                self.inv.on_commit(id, before, c, leader);
            }
        }
    }

    fn serve_ready_reads(&mut self, slot: usize) {
        let applied = self.nodes[slot].kv.applied;
        let n = &mut self.nodes[slot];
        if n.reads_ready.iter().all(|(i, _)| *i > applied) {
            return;
        }
        let (now, later): (Vec<_>, Vec<_>) =
            n.reads_ready.drain(..).partition(|(i, _)| *i <= applied);
        n.reads_ready = later;
        for (_, w) in now {
            let v = self.nodes[slot].kv.map.get(&w.key).copied();
            self.respond(w, Response::Read(v));
        }
    }

    /// Every `compact_every` applied entries, compacts the log. With `lazy_images` Raft gets no
    /// image (as in the node, whose store is durable by itself); the file written here stands
    /// for that durable store, which a restart recovers the state machine from.
    fn maybe_compact(&mut self, slot: usize) {
        let every = self.plan.compact_every;
        let n = &self.nodes[slot];
        if n.raft.as_ref().is_none_or(|r| n.kv.applied < r.snapshot_index() + every) {
            return;
        }
        if let Some((index, data)) = self.applied_image(slot) {
            self.compact_with(slot, index, data, !self.plan.lazy_images);
        }
    }

    /// A leader asked for an image to send a follower: take one at the applied index. As in
    /// the node, encoding runs off the loop, so it reaches Raft a little later (the log, the
    /// leadership or the process may have moved on by then).
    fn take_image(&mut self, slot: usize) {
        if self.nodes[slot].image_pending {
            return;
        }
        let Some((index, data)) = self.applied_image(slot) else { return };
        let n = &mut self.nodes[slot];
        n.image_pending = true;
        let incarnation = n.incarnation;
        let after = self.rng.range(100, 20 * MS);
        self.schedule(after, Ev::ImageReady { slot, incarnation, index, data });
    }

    /// The applied index and the state machine there, if the log can be compacted at it now
    /// (it is durable and Raft has handed out everything up to it).
    fn applied_image(&self, slot: usize) -> Option<(LogIndex, Bytes)> {
        let n = &self.nodes[slot];
        let r = n.raft.as_ref()?;
        let applied = n.kv.applied;
        (applied <= r.stable_index() && applied == r.applied_index())
            .then(|| (applied, n.kv.snapshot()))
    }

    /// Compacts the log at `index` (with `data`, the state machine there, as the image if
    /// `with_image`); the image's file is durable before the WAL logs the compaction, and the
    /// compaction record rides on the next group fsync. False if Raft refused.
    fn compact_with(
        &mut self,
        slot: usize,
        index: LogIndex,
        data: Bytes,
        with_image: bool,
    ) -> bool {
        let n = &mut self.nodes[slot];
        let Some(r) = n.raft.as_mut() else { return false };
        let compacted =
            if with_image { r.compact(index, data.clone()) } else { r.compact_log(index) };
        let Ok(meta) = compacted else { return false };
        let Some(store) = n.store.as_mut() else { return false };
        if let Err(e) = store.save_snapshot(&Snapshot { meta, data }) {
            self.storage_failed(slot, e);
            return false;
        }
        self.record(slot, TraceEvent::Compacted { index });
        self.start_fsync(slot);
        true
    }

    /// Schedules the group fsync if something waits for one and none is scheduled.
    fn start_fsync(&mut self, slot: usize) {
        let n = &mut self.nodes[slot];
        let waiting =
            !n.unsynced.is_empty() || n.store.as_ref().is_some_and(NodeStore::has_unsynced);
        if n.fsync_scheduled || n.status == Status::Down || !waiting {
            return;
        }
        n.fsync_scheduled = true;
        let incarnation = n.incarnation;
        let latency = self.rng.range(100, 2 * MS);
        self.schedule(latency, Ev::Fsync { slot, incarnation });
    }

    fn send(&mut self, from_slot: usize, m: Message) {
        let Some(&to_slot) = self.id_to_slot.get(&m.to) else { return };
        let (delays, copies) = self.net.route(&mut self.rng, from_slot, to_slot);
        if copies == 0 {
            self.record(from_slot, TraceEvent::Drop { to: m.to, kind: m.body.kind() });
            return;
        }
        if copies == 2 {
            self.schedule(delays[1], Ev::Deliver(m.clone()));
        }
        self.schedule(delays[0], Ev::Deliver(m));
    }

    // ----- clients ---------------------------------------------------------------------------

    fn serve(&mut self, slot: usize, client: usize, op_id: u64, req: Request) {
        let what = match req {
            Request::Read(_) => "read",
            Request::Command(_) => "command",
        };
        self.record(slot, TraceEvent::Request { client, what });
        let n = &mut self.nodes[slot];
        let Some(r) = n.raft.as_mut() else { return };
        let waiting = |key| Waiting { client, op_id, key };
        match req {
            Request::Read(key) => {
                let rid = n.next_read_id;
                n.next_read_id += 1;
                match r.read_index(rid) {
                    Ok(()) => {
                        n.reads_pending.insert(rid, waiting(key));
                    }
                    Err(RaftError::NotLeader { leader }) => {
                        self.respond(waiting(key), Response::NotLeader(leader))
                    }
                    Err(_) => self.respond(waiting(key), Response::Refused),
                }
            }
            Request::Command(cmd) => match r.propose(cmd.encode()) {
                Ok((index, term)) => {
                    n.proposals.insert(index, (term, waiting(0)));
                }
                Err(RaftError::NotLeader { leader }) => {
                    self.respond(waiting(0), Response::NotLeader(leader))
                }
                Err(_) => self.respond(waiting(0), Response::Refused),
            },
        }
    }

    fn respond(&mut self, w: Waiting, resp: Response) {
        let delay = self.rng.range(100, 500);
        self.schedule(delay, Ev::Respond { client: w.client, op_id: w.op_id, resp });
    }

    fn next_op(&mut self, client: usize) {
        if self.clients_stopped || self.clients[client].op.is_some() {
            return;
        }
        let key = self.rng.range(0, u64::from(self.plan.keys)) as Key;
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let value = op_id as i64;
        let roll = self.rng.unit();
        let c = &mut self.clients[client];
        let (req, f, arg) = if roll < 0.5 {
            (Request::Read(key), F::Read, Value::Null)
        } else {
            c.seq += 1;
            let (op, f, arg) = if roll < 0.8 {
                (Op::Write { key, value }, F::Write, Value::Int(value))
            } else {
                let expected = self.rng.range(0, op_id.max(1)) as i64;
                let expected = if expected == 0 { None } else { Some(expected) };
                let arg =
                    Value::List(vec![expected.map_or(Value::Null, Value::Int), Value::Int(value)]);
                (Op::Cas { key, expected, new: value }, F::Cas, arg)
            };
            (Request::Command(Command { session: c.session, seq: c.seq, op }), f, arg)
        };
        let process = self.clients[client].process;
        let key_name = format!("k{key}");
        let t = Some(self.now * 1000);
        if let Err(e) = self.recorder.invoke(process, f, Some(&key_name), arg, t) {
            self.inv.violations.push(format!("history bookkeeping: {e}"));
        }
        let deadline = self.now + 2 * SEC;
        self.clients[client].op = Some(ClientOp {
            op_id,
            attempt: 0,
            req,
            deadline,
            attempt_timeout_at: 0,
            maybe_applied: false,
        });
        // Reads go anywhere (followers forward them); commands to the believed leader.
        if matches!(req, Request::Read(_)) && self.rng.chance(0.5) {
            self.clients[client].target = self.rng.range(0, self.nodes.len() as u64) as usize;
        }
        self.attempt(client);
    }

    fn attempt(&mut self, client: usize) {
        let Some(op) = self.clients[client].op.as_mut() else { return };
        op.attempt += 1;
        op.attempt_timeout_at = self.now + 300 * MS;
        let (op_id, req) = (op.op_id, op.req);
        let slot = self.clients[client].target;
        let delay = self.rng.range(100, 500);
        if self.nodes[slot].status != Status::Down {
            self.schedule(delay, Ev::Arrive { slot, client, op_id, req });
        }
        // A queued timer fires no later than this attempt's timeout and re-arms itself then.
        if self.clients[client].timer_at.is_none() {
            self.clients[client].timer_at = Some(self.now + 300 * MS);
            self.schedule(300 * MS, Ev::AttemptTimeout { client });
        }
    }

    fn retarget(&mut self, client: usize, hint: Option<NodeId>) {
        let slot = match hint.and_then(|id| self.id_to_slot.get(&id).copied()) {
            Some(s) if s != self.clients[client].target => s,
            _ => {
                (self.clients[client].target
                    + 1
                    + self.rng.range(0, self.nodes.len() as u64 - 1) as usize)
                    % self.nodes.len()
            }
        };
        self.clients[client].target = slot;
    }

    fn on_response(&mut self, client: usize, op_id: u64, resp: Response) {
        let Some(op) = self.clients[client].op.clone() else { return };
        if op.op_id != op_id {
            return;
        }
        match resp {
            Response::Read(v) => {
                self.finish_op(client, Completion::Ok(v.map_or(Value::Null, Value::Int)))
            }
            Response::Done => {
                let v = match op.req {
                    Request::Command(Command { op: Op::Write { value, .. }, .. }) => {
                        Value::Int(value)
                    }
                    Request::Command(Command { op: Op::Cas { expected, new, .. }, .. }) => {
                        Value::List(vec![expected.map_or(Value::Null, Value::Int), Value::Int(new)])
                    }
                    Request::Read(_) => Value::Null,
                };
                self.finish_op(client, Completion::Ok(v));
            }
            Response::CasFailed => self.finish_op(client, Completion::Fail),
            Response::NotLeader(hint) => self.retry(client, hint, false),
            Response::Refused => self.retry(client, None, false),
            Response::Unknown => self.retry(client, None, true),
        }
    }

    /// The client's timer fired: the current attempt timed out, or the timer re-arms for it.
    fn on_attempt_timer(&mut self, client: usize) {
        let now = self.now;
        let c = &mut self.clients[client];
        c.timer_at = None;
        let Some(op) = c.op.as_ref() else { return };
        if op.attempt_timeout_at <= now {
            self.retry(client, None, true);
        } else {
            let at = op.attempt_timeout_at;
            c.timer_at = Some(at);
            self.schedule(at - now, Ev::AttemptTimeout { client });
        }
    }

    fn retry(&mut self, client: usize, hint: Option<NodeId>, maybe_applied: bool) {
        let now = self.now;
        let Some(op) = self.clients[client].op.as_mut() else { return };
        op.maybe_applied |= maybe_applied && matches!(op.req, Request::Command(_));
        if now >= op.deadline {
            let completion = if op.maybe_applied { Completion::Unknown } else { Completion::Fail };
            self.finish_op(client, completion);
            return;
        }
        self.retarget(client, hint);
        self.attempt(client);
    }

    fn finish_op(&mut self, client: usize, completion: Completion) {
        let Some(op) = self.clients[client].op.take() else { return };
        self.complete(client, &op, completion);
        let think = self.rng.range(0, 5 * MS);
        self.schedule(think, Ev::ClientNext { client });
    }

    fn complete(&mut self, client: usize, op: &ClientOp, completion: Completion) {
        let process = self.clients[client].process;
        let t = Some(self.now * 1000);
        let result = match completion {
            Completion::Ok(v) => {
                self.ops_completed += 1;
                if self.healed
                    && self.recovered_after.is_none()
                    && matches!(op.req, Request::Command(_))
                    && op.deadline >= self.heal_at + 2 * SEC
                {
                    self.recovered_after = Some(self.now - self.heal_at);
                }
                self.recorder.ok(process, v, t)
            }
            Completion::Fail => {
                self.ops_completed += 1;
                self.recorder.fail(process, Value::Null, t)
            }
            Completion::Unknown => {
                self.ops_info += 1;
                let r = self.recorder.info(process, Value::Null, t);
                // A process whose last operation is unknown never issues another.
                self.clients[client].process = self.next_process;
                self.next_process += 1;
                r
            }
        };
        if let Err(e) = result {
            self.inv.violations.push(format!("history bookkeeping: {e}"));
        }
    }

    // ----- nemesis --------------------------------------------------------------------------

    fn episodic(&self) -> Vec<FaultKind> {
        self.plan.faults.iter().copied().filter(|f| f.is_episodic()).collect()
    }

    fn nemesis(&mut self) {
        if self.healed {
            return;
        }
        self.repair_corrupt_machine();
        let kinds = self.episodic();
        let Some(&kind) = self.rng.pick(&kinds) else { return };
        let n = self.nodes.len();
        let slots: Vec<usize> = (0..n).collect();
        let duration = self.rng.range(300 * MS, 3 * SEC);
        let label = kind.name().to_string();
        match kind {
            FaultKind::Partition => {
                let mut s = slots.clone();
                self.rng.shuffle(&mut s);
                let cut = self.rng.range(1, n as u64) as usize;
                self.new_partition(&[s[..cut].to_vec(), s[cut..].to_vec()], duration);
            }
            FaultKind::IsolateLeader => {
                if let Some(l) = self.leader_slot() {
                    let rest: Vec<usize> = slots.iter().copied().filter(|&s| s != l).collect();
                    self.new_partition(&[vec![l], rest], duration);
                }
            }
            FaultKind::Ring => {
                self.new_token(duration);
                for a in 0..n {
                    for b in 0..n {
                        let dist = (a + n - b) % n;
                        if dist > 1 && dist < n - 1 {
                            self.net.block(a, b);
                        }
                    }
                }
                if n == 3 {
                    // A ring of three is complete; use a line instead (0 - 1 - 2).
                    self.net.block(0, 2);
                    self.net.block(2, 0);
                }
            }
            FaultKind::Bridge => {
                let mut s = slots.clone();
                self.rng.shuffle(&mut s);
                let half = (n - 1) / 2;
                let (a, b) = (s[..half].to_vec(), s[half + 1..].to_vec());
                self.new_partition(&[a, b], duration);
            }
            FaultKind::OneWay => {
                self.new_token(duration);
                let from = self.rng.range(0, n as u64) as usize;
                for to in 0..n {
                    if to != from && self.rng.chance(0.7) {
                        self.net.block(from, to);
                    }
                }
            }
            FaultKind::Flap => {
                let token = self.new_token(duration);
                let a = self.rng.range(0, n as u64) as usize;
                let b = (a + 1 + self.rng.range(0, n as u64 - 1) as usize) % n;
                self.schedule(0, Ev::Flap { token, a, b });
            }
            FaultKind::Crash => {
                if !self.disk_damage_pending() {
                    let slot = self.rng.range(0, n as u64) as usize;
                    self.crash(slot);
                    self.schedule(duration, Ev::Restart { slot });
                }
            }
            FaultKind::LeaderCrash => {
                // Start the churn with the current leader; each next one may follow it.
                self.leader_churn_until = self.now + duration;
                if let Some(l) = self.leader_slot()
                    && !self.disk_damage_pending()
                {
                    let term = self.nodes[l].raft.as_ref().map_or(0, Raft::term);
                    self.schedule(0, Ev::CrashLeader { slot: l, term });
                }
            }
            FaultKind::Bitflip => self.flip_a_bit(duration),
            FaultKind::FsyncFail if !self.disk_damage_pending() => {
                let slot = self.rng.range(0, n as u64) as usize;
                let node = &mut self.nodes[slot];
                node.disk.fail_next_sync();
                node.sync_fault_armed = true;
                self.record(slot, TraceEvent::Nemesis("the next fsync will fail".into()));
            }
            FaultKind::DiskFull if !self.disk_damage_pending() => {
                let slot = self.rng.range(0, n as u64) as usize;
                if !self.nodes[slot].disk_full {
                    let node = &mut self.nodes[slot];
                    node.disk.set_full(true);
                    node.disk_full = true;
                    self.disk_full_episodes += 1;
                    self.record(slot, TraceEvent::Nemesis("disk full".into()));
                    self.schedule(duration, Ev::DiskSpace { slot });
                }
            }
            FaultKind::Pause => {
                let slot = self.rng.range(0, n as u64) as usize;
                if self.nodes[slot].status == Status::Up {
                    self.nodes[slot].status = Status::Paused;
                    self.record(slot, TraceEvent::Nemesis("paused".into()));
                    self.schedule(duration, Ev::Resume { slot });
                }
            }
            FaultKind::Transfer => {
                if let Some(l) = self.leader_slot() {
                    let voters = self.nodes[l]
                        .raft
                        .as_ref()
                        .map(|r| r.conf_state().voters.clone())
                        .unwrap_or_default();
                    if let Some(&to) = self.rng.pick(&voters) {
                        if let Some(r) = self.nodes[l].raft.as_mut() {
                            let _ = r.transfer_leader(to);
                        }
                        self.drive(l);
                    }
                }
            }
            FaultKind::Wipe => {
                if !self.membership_busy && !self.disk_damage_pending() {
                    let slot = self.rng.range(0, n as u64) as usize;
                    let new_id = self.next_node_id;
                    self.next_node_id += 1;
                    self.membership_busy = true;
                    self.schedule(0, Ev::WipeStep { slot, step: 0, new_id });
                }
            }
            FaultKind::Membership => {
                if !self.membership_busy && !self.disk_damage_pending() {
                    let slot = self.rng.range(0, n as u64) as usize;
                    let id = self.nodes[slot].id;
                    if self.propose_change(ConfChangeStep::AddLearner(id)) {
                        self.membership_busy = true;
                        self.schedule(duration, Ev::Promote { slot, id });
                    }
                }
            }
            FaultKind::FsyncFail | FaultKind::DiskFull => {}
            FaultKind::Loss
            | FaultKind::Delay
            | FaultKind::Duplicate
            | FaultKind::Skew
            | FaultKind::SkewBeyond => {}
        }
        self.record(0, TraceEvent::Nemesis(format!("nemesis: {label}")));
        let next = self.rng.range(100 * MS, SEC);
        self.schedule(next, Ev::Nemesis);
    }

    /// A machine has a flipped bit or refused to start on one: it is lost until a wipe
    /// replaces it. Meanwhile no other membership operation starts (shrinking the voters while
    /// one of them can never come back could leave no quorum), and no other process is
    /// stopped: a restarted replica recovers its commit index only from its snapshot and its
    /// last term or vote change, so it can forget a committed membership change, and with one
    /// voter gone for good the survivors might then find no quorum they know of.
    fn disk_damage_pending(&self) -> bool {
        self.nodes.iter().any(|n| n.corrupt || n.flipped.is_some())
    }

    /// True if every machine runs and agrees with the leader on a plain membership (no joint
    /// configuration, no learners), with no disk fault pending: the state in which losing
    /// one machine for good leaves the others a quorum they all know of.
    fn cluster_settled(&self) -> bool {
        let Some(conf) = self.leader_conf() else { return false };
        if conf.is_joint() || !conf.learners.is_empty() || !conf.learners_next.is_empty() {
            return false;
        }
        self.nodes.iter().all(|n| {
            n.status == Status::Up
                && !n.disk_full
                && !n.sync_fault_armed
                && n.raft.as_ref().is_some_and(|r| *r.conf_state() == conf)
        })
    }

    /// Flips one bit in a durable WAL record of a running machine, then crashes it; the
    /// restart must refuse with a corruption error. At most one damaged machine at a time,
    /// and only from a settled cluster, so the rest always hold a quorum.
    fn flip_a_bit(&mut self, restart_after: Time) {
        if self.membership_busy || self.disk_damage_pending() || !self.cluster_settled() {
            return;
        }
        let slot = self.rng.range(0, self.nodes.len() as u64) as usize;
        if self.nodes[slot].status != Status::Up {
            return;
        }
        // A running process's segment files hold only synced bytes (the WAL writes a batch
        // and fsyncs it in one call), so every byte after a segment header lies in a durable
        // record. The crash must not tear a batch in flight: a torn tail after the damaged
        // record would make it look like part of the tear.
        self.crash_machine(slot, false);
        let files: Vec<(std::path::PathBuf, u64)> = segment_files(&self.nodes[slot].disk)
            .into_iter()
            .filter(|(_, len)| *len > SEGMENT_HEADER_BYTES as u64)
            .collect();
        let Some((path, len)) = self.rng.pick(&files).cloned() else {
            self.inv.violations.push(format!("storage: slot {slot} has no WAL segment to damage"));
            return;
        };
        let offset = self.rng.range(SEGMENT_HEADER_BYTES as u64, len);
        let bit = self.rng.range(0, 8) as u8;
        if let Err(e) = self.nodes[slot].disk.flip_bit(&path, offset, bit) {
            self.inv.violations.push(format!("storage: flipping a bit failed: {e}"));
            return;
        }
        self.record(
            slot,
            TraceEvent::Nemesis(format!(
                "bit {bit} of byte {offset} of {} flipped",
                path.display()
            )),
        );
        self.nodes[slot].flipped = Some((path, offset));
        self.schedule(restart_after, Ev::Restart { slot });
    }

    /// Starts the wipe of a machine that refused to start on a corrupt disk: it is removed,
    /// given a blank disk and re-added under a new id, so the cluster heals.
    fn repair_corrupt_machine(&mut self) {
        if self.membership_busy {
            return;
        }
        let Some(slot) = self.nodes.iter().position(|n| n.corrupt) else { return };
        let new_id = self.next_node_id;
        self.next_node_id += 1;
        self.membership_busy = true;
        self.record(slot, TraceEvent::Nemesis("repair: the corrupt machine will be wiped".into()));
        self.schedule(0, Ev::WipeStep { slot, step: 0, new_id });
    }

    fn new_token(&mut self, duration: Time) -> u64 {
        self.net.clear_partitions();
        self.partition_token += 1;
        let token = self.partition_token;
        self.schedule(duration, Ev::EndPartition { token });
        token
    }

    fn new_partition(&mut self, groups: &[Vec<usize>], duration: Time) {
        self.new_token(duration);
        self.net.partition(groups);
    }

    /// Proposes a one-step membership change at the current leader, if any.
    fn propose_change(&mut self, step: ConfChangeStep) -> bool {
        let Some(l) = self.leader_slot() else { return false };
        let ok = self.nodes[l].raft.as_mut().is_some_and(|r| {
            r.propose_conf_change(ConfChange { steps: vec![step], ..Default::default() }).is_ok()
        });
        self.drive(l);
        ok
    }

    fn leader_conf(&self) -> Option<quorumkv_core::ConfState> {
        let l = self.leader_slot()?;
        self.nodes[l].raft.as_ref().map(|r| r.conf_state().clone())
    }

    /// Remove the machine's node, wipe the disk, re-add under a new id as a learner, promote.
    fn wipe_step(&mut self, slot: usize, step: u8, new_id: NodeId) {
        let retry = 300 * MS;
        let old_id = self.nodes[slot].id;
        match step {
            0 => {
                let voters = self.leader_conf().map_or(0, |c| c.voters.len());
                if voters < 3 || self.healed {
                    self.membership_busy = false;
                    return;
                }
                let next =
                    if self.propose_change(ConfChangeStep::RemoveNode(old_id)) { 1 } else { 0 };
                if next == 0 && self.rng.chance(0.3) {
                    self.membership_busy = false;
                    return;
                }
                self.schedule(retry, Ev::WipeStep { slot, step: next, new_id });
            }
            1 => {
                // Wait until the leader no longer counts the old node, then wipe the machine.
                match self.leader_conf() {
                    Some(c) if !c.all_members().contains(&old_id) => {
                        self.crash(slot);
                        self.id_to_slot.remove(&old_id);
                        let disk = new_disk(&mut self.rng);
                        let n = &mut self.nodes[slot];
                        n.id = new_id;
                        // A new, blank disk: every disk fault of the old one goes with it.
                        n.disk = disk;
                        n.flipped = None;
                        n.corrupt = false;
                        n.sync_fault_armed = false;
                        n.disk_full = false;
                        self.id_to_slot.insert(new_id, slot);
                        self.record(
                            slot,
                            TraceEvent::Nemesis(format!(
                                "wiped; node {old_id} becomes node {new_id}"
                            )),
                        );
                        self.start_process(slot);
                        self.schedule(0, Ev::WipeStep { slot, step: 2, new_id });
                    }
                    _ => self.schedule(retry, Ev::WipeStep { slot, step: 1, new_id }),
                }
            }
            2 => {
                if self.propose_change(ConfChangeStep::AddLearner(new_id)) {
                    let d = self.rng.range(300 * MS, 2 * SEC);
                    self.schedule(d, Ev::Promote { slot, id: new_id });
                } else {
                    self.schedule(retry, Ev::WipeStep { slot, step: 2, new_id });
                }
            }
            _ => {}
        }
    }

    fn promote(&mut self, slot: usize, id: NodeId) {
        if self.nodes[slot].id != id {
            self.membership_busy = false;
            return;
        }
        let is_voter = self.leader_conf().is_some_and(|c| c.voters.contains(&id) && !c.is_joint());
        if is_voter {
            self.membership_busy = false;
            return;
        }
        self.propose_change(ConfChangeStep::AddVoter(id));
        self.schedule(300 * MS, Ev::Promote { slot, id });
    }

    fn heal(&mut self) {
        self.healed = true;
        self.net.heal();
        self.partition_token += 1;
        for slot in 0..self.nodes.len() {
            self.nodes[slot].clock_rate = 1.0;
            if self.nodes[slot].disk_full {
                self.nodes[slot].disk.set_full(false);
                self.nodes[slot].disk_full = false;
            }
            match self.nodes[slot].status {
                Status::Down => self.start_process(slot),
                Status::Paused => self.resume(slot),
                Status::Up => {}
            }
        }
        self.record(0, TraceEvent::Nemesis("heal: all faults removed".into()));
    }
}

enum Completion {
    Ok(Value),
    Fail,
    Unknown,
}

/// A blank simulated disk whose random choices (what a crash keeps, how a write tears) come
/// from the world's generator, so the run stays reproducible from its seed. Torn writes may
/// also leave zero-filled sectors, as file systems that extend the size first can.
fn new_disk(rng: &mut Rng) -> SimDisk {
    let disk = SimDisk::new(rng.next_u64());
    disk.set_zero_filled_tears(true);
    disk
}

/// Draws a run's plan from its seed.
pub fn plan(
    rng: &mut Rng,
    nodes: Option<usize>,
    allowed: Option<&[FaultKind]>,
    fault_time: Time,
) -> Plan {
    let nodes = nodes.unwrap_or(if rng.chance(0.5) { 3 } else { 5 });
    let faults = crate::faults::pick_mix(rng, allowed);
    let mut raft = Config::new(1, 1);
    raft.pre_vote = rng.chance(0.8);
    raft.max_entries_per_msg = *rng.pick(&[1usize, 4, 64, 1024]).unwrap_or(&64);
    raft.max_inflight_msgs = *rng.pick(&[1usize, 4, 256]).unwrap_or(&4);
    raft.snapshot_chunk_bytes = *rng.pick(&[64usize, 512, 1 << 16]).unwrap_or(&512);
    raft.snapshot_chunks_in_flight = rng.range(1, 5) as usize;
    raft.max_uncommitted_entries = 2_000;
    let beyond = faults.contains(&FaultKind::SkewBeyond);
    if !beyond && rng.chance(0.5) {
        raft.lease_read_max_drift_ticks = Some(2);
    }
    let lazy_images = rng.chance(0.5);
    let mut plan = Plan {
        nodes,
        clients: rng.range(3, 9) as usize,
        keys: rng.range(1, 5) as u32,
        compact_every: *rng.pick(&[10u64, 50, 300]).unwrap_or(&50),
        lazy_images,
        wal_segment_bytes_max: *rng.pick(&[4u64 << 10, 64 << 10, 1 << 20]).unwrap_or(&(64 << 10)),
        wal_preallocate: false,
        raft,
        faults,
        fault_time,
        heal_time: 10 * SEC,
    };
    // Drawn last so that the draws above, and so older seeds' plans, stay as they were.
    plan.wal_preallocate = rng.chance(0.5);
    plan
}

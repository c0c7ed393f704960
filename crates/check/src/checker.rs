//! Linearizability checking by WGL search with memoization and per-key decomposition.
//!
//! # The question
//!
//! A history is linearizable when every operation that completed with `ok` can be given a
//! single instant between its invoke and its completion, every `info` operation either an
//! instant after its invoke or none at all, such that applying the operations one by one in
//! the order of those instants to the sequential model gives every `ok` operation the
//! result it reported. `fail` operations did not happen.
//!
//! # The search
//!
//! We follow the algorithm of Wing & Gong ("Testing and verifying concurrent objects",
//! 1993) as improved by Lowe ("Testing for linearizability", 2017), the same algorithm
//! Porcupine and Knossos' `wgl` checker use:
//!
//! - The history becomes a doubly linked list of *call* and *return* entries in real-time
//!   order. A depth-first search repeatedly picks a call entry from the front of the list
//!   (an operation that may be linearized next: it was invoked before every pending
//!   return), applies it to the model, and if the model accepts it, *lifts* the call and its
//!   return out of the list and starts again from the front. Reaching a return entry means
//!   that operation's deadline has passed unlinearized: the search backtracks, unlifting the
//!   most recent choice (dancing-links style, so undo is O(1)).
//! - Lowe's improvement: a configuration is the set of linearized operations (a bitset) plus
//!   the model state. Two paths that reach the same configuration have the same future, so
//!   a configuration is explored once. This turns an exponential search into one bounded by
//!   the number of distinct configurations, which for real histories is small.
//! - `info` operations have no return entry (their return is at +∞): they may be linearized
//!   anywhere after their call. Reaching the end of the list with only `info` calls left
//!   means success: those operations never took effect.
//!
//! # P-compositionality
//!
//! Linearizability is local (Herlihy & Wing): a history of a map is linearizable iff the
//! sub-history of each key is. Following Horn & Kroening ("Faster linearizability checking
//! via P-compositionality", 2015), the model splits the history into partitions, one per
//! key, and each is searched on its own; the check stops at the first key that fails.
//!
//! # Pruning that keeps the search small
//!
//! Each rule below only skips choices that another explored path covers; the argument is
//! given where the rule is implemented. A property test compares the result with a brute
//! force search on small random histories, which is how such rules are kept honest.
//!
//! - `fail` operations are dropped, and so are `info` reads (an unknown read constrains
//!   nothing). Values are interned into small integers.
//! - `info` calls live in a list of their own and are tried only after every must-happen
//!   candidate, and only those invoked before the first pending deadline.
//! - An `info` operation whose effect (for a register: the value it writes) no remaining
//!   operation can observe is useless to apply: after it the object is in a state that
//!   nothing reads back, and only a blind write leaves such a state. The search skips it
//!   once every operation observing its effect is linearized; the partition drops it
//!   outright when nothing observes it at all. Likewise an `info` blind write is never
//!   followed directly by another blind write, which would erase it unseen.
//! - Identical operations are interchangeable: of identical `info` operations only the
//!   earliest unused one is tried, and none while an identical must-happen one could be
//!   linearized instead.
//! - A read-only operation (a read) that must happen and can take effect now is taken at
//!   once with no alternative tried: moving it earlier changes no state.
//! - A look-ahead over the next few deadlines declares a configuration dead when some
//!   pending operation needs a state (a value) that nothing invoked before its deadline
//!   can produce.
//! - Visited configurations are keyed by the must-happen operations placed and the state;
//!   the set of `info` operations used is kept beside the key, and a configuration is
//!   skipped when the same key was reached using a subset of its `info` operations (an
//!   unused `info` operation can always still be used later, or never).
//! - A cheap static check first rejects operations that no order can explain (a read of a
//!   value nobody wrote), with a precise explanation and no search.
//!
//! # Caveats
//!
//! - The visited set keys configurations by 128-bit fingerprints (Zobrist hashing of the
//!   linearized set combined with a hash of the state), not by the sets themselves. A
//!   fingerprint collision could prune an unexplored branch and so report a violation that
//!   is not one; with 128 bits the probability is below 2^-80 even for a billion
//!   configurations.
//! - The problem is NP-complete in general. The search has a budget (configurations per key
//!   and wall-clock time, see [`CheckOptions`]) and answers [`CheckOutcome::Unknown`] when it
//!   runs out, rather than running forever; the reason names the furthest point reached.
//!   Linearizable histories are usually quick: the search goes straight through. A
//!   violation deep in a long single-key history with many concurrent clients, many `info`
//!   operations and few distinct values is the expensive case, since every way of
//!   explaining the prefix must be ruled out first. Writing unique values keeps it cheap.
//! - The explanation of a violation describes the deepest point the search reached; when
//!   several independent contradictions exist it names one of them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{F, History, Operation, Position, Status, Value};
use crate::model::{
    KvModel, Model, ModelError, ModelKind, Partition, PartitionOp, RegisterModel, mix128,
};

/// Limits of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Most distinct configurations explored per key before giving up with `Unknown`.
    /// Memory is about 32 bytes per configuration.
    pub max_configs_per_key: u64,
    /// Wall-clock limit for the whole check; `None` = no limit.
    pub time_limit: Option<Duration>,
}

impl Default for CheckOptions {
    /// Ten million configurations per key (about 320 MB at worst) and five minutes.
    fn default() -> Self {
        CheckOptions { max_configs_per_key: 10_000_000, time_limit: Some(Duration::from_secs(300)) }
    }
}

/// One operation as shown in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpRef {
    /// The client process.
    pub process: u64,
    /// The function.
    pub f: String,
    /// The key (`""` for the single register).
    pub key: String,
    /// The invoke's value.
    pub value: Value,
    /// The value an `ok` completion carried (what a read returned).
    pub result: Value,
    /// How it ended.
    pub status: Status,
    /// The invoke event.
    pub invoke: Position,
    /// The completion event, if any.
    pub complete: Option<Position>,
    /// Short form such as `read → 7`, `write 3`, `cas 3 → 4`.
    pub description: String,
}

impl OpRef {
    /// Builds the report form of an operation.
    pub fn new(operation: &Operation) -> OpRef {
        OpRef {
            process: operation.process,
            f: operation.f.to_string(),
            key: operation.key.clone(),
            value: operation.value.clone(),
            result: operation.result.clone(),
            status: operation.status,
            invoke: operation.invoke,
            complete: operation.complete,
            description: describe_operation(operation),
        }
    }

    /// "invoked at line 3, completed at line 5", or the `info` / never-completed variants.
    pub fn window(&self) -> String {
        match (self.complete, self.status) {
            (None, _) => format!("invoked at {}, never completed", self.invoke),
            (Some(c), Status::Info) => {
                format!("invoked at {}, outcome unknown (info at {c})", self.invoke)
            }
            (Some(c), _) => format!("invoked at {}, completed at {c}", self.invoke),
        }
    }
}

/// `read → 7`, `write 3`, `cas 3 → 4`, `delete`, or `f value` for other functions.
pub fn describe_operation(operation: &Operation) -> String {
    let known = operation.status != Status::Info;
    match &operation.f {
        F::Read if known => format!("read → {}", operation.result),
        F::Read => "read → ?".to_owned(),
        F::Write => format!("write {}", operation.value),
        F::Cas => match &operation.value {
            Value::List(pair) if pair.len() == 2 => format!("cas {} → {}", pair[0], pair[1]),
            other => format!("cas {other}"),
        },
        F::Delete => "delete".to_owned(),
        F::Other(name) => format!("{name} {}", operation.value),
    }
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The key whose sub-history fails (`""` for the single register).
    pub key: String,
    /// Operations on that key that the search had to place (after pruning).
    pub operations_on_key: usize,
    /// The longest linearizable prefix found, in linearization order. Empty when the
    /// violation was found without searching.
    pub prefix: Vec<OpRef>,
    /// The model state after that prefix.
    pub state_after_prefix: String,
    /// The operation that could not be linearized after the prefix.
    pub stuck: OpRef,
    /// States in which the search tried the stuck operation and the model refused it.
    pub refused_in: Vec<String>,
    /// States in which the stuck operation could take effect (every such path failed later).
    pub accepted_in: Vec<String>,
    /// The operations still to be placed when the search got stuck: the stuck operation
    /// and every operation invoked before it completed that the prefix does not contain.
    pub unordered: Vec<OpRef>,
    /// One paragraph saying why, for people.
    pub explanation: String,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Some order of the operations explains every result.
    Linearizable,
    /// No order does; the violation explains the first failing key.
    NotLinearizable(Box<Violation>),
    /// The budget ran out before a verdict.
    Unknown {
        /// Which limit, on which key.
        reason: String,
    },
}

/// Counters of one check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckStats {
    /// The model's name.
    pub model: String,
    /// Operations in the history.
    pub operations: usize,
    /// Keys (partitions) in the history.
    pub keys: usize,
    /// Keys searched before the verdict (the check stops at the first failing key).
    pub keys_checked: usize,
    /// Operations placed by the search, summed over checked keys.
    pub searched_operations: usize,
    /// `fail` operations, which are dropped.
    pub dropped_fail: usize,
    /// `info` operations dropped because they cannot matter (reads; unobservable writes).
    pub dropped_info: usize,
    /// Distinct configurations explored, summed over keys.
    pub configs: u64,
    /// Wall-clock time of the check in milliseconds.
    pub elapsed_ms: u64,
}

/// A verdict with its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The verdict.
    pub outcome: CheckOutcome,
    /// The counters.
    pub stats: CheckStats,
}

/// Checks a history against one of the named models.
pub fn check_history(
    history: &History,
    kind: ModelKind,
    options: &CheckOptions,
) -> Result<CheckReport, ModelError> {
    match kind {
        ModelKind::Register => check(&RegisterModel, history, options),
        ModelKind::Kv => check(&KvModel, history, options),
    }
}

/// Checks a history against any model. Errors only when the model cannot interpret an
/// operation (unknown `f`, malformed value).
pub fn check<M: Model>(
    model: &M,
    history: &History,
    options: &CheckOptions,
) -> Result<CheckReport, ModelError> {
    let started = Instant::now();
    let deadline = options.time_limit.map(|limit| started + limit);
    let partitions = model.partition(history)?;
    let mut stats = CheckStats {
        model: model.name().to_owned(),
        operations: history.operations.len(),
        keys: partitions.len(),
        dropped_fail: history.operations.iter().filter(|o| o.status == Status::Fail).count(),
        ..CheckStats::default()
    };
    let info_total = history.operations.iter().filter(|o| o.status == Status::Info).count();
    let mut info_kept = 0;
    let mut unknown: Option<String> = None;
    let mut outcome = None;

    for partition in partitions {
        let partition = drop_unobservable_info(partition);
        info_kept += partition.ops.iter().filter(|o| o.info).count();
        stats.keys_checked += 1;
        stats.searched_operations += partition.ops.len();

        if let Some(impossible) = model.impossible(history, &partition) {
            outcome = Some(CheckOutcome::NotLinearizable(Box::new(static_violation(
                history,
                &partition,
                impossible.op,
                impossible.reason,
            ))));
            break;
        }
        if partition.ops.is_empty() {
            continue;
        }
        let mut search = Search::new(model, &partition, history);
        let mut budget =
            Budget { configs_left: options.max_configs_per_key, configs_used: 0, deadline };
        let end = search.run(&mut budget, None);
        stats.configs += budget.configs_used;
        match end {
            SearchEnd::Linearizable => {}
            SearchEnd::OutOfBudget(limit, furthest) => {
                let key = key_phrase(&partition.key);
                let mut reason = format!(
                    "{limit} on {key} after exploring {} configurations of {} operations",
                    budget.configs_used,
                    partition.ops.len()
                );
                // Where the search struggled is the best lead there is: a violation, if
                // any, is most likely there.
                if let Some((depth, stuck)) = furthest {
                    let op = OpRef::new(&history.operations[partition.ops[stuck].operation]);
                    reason.push_str(&format!(
                        "; at best {depth} operations were placed before {} ({}) could not be",
                        who(&op),
                        op.window()
                    ));
                }
                unknown.get_or_insert(reason);
                if limit == Limit::Time {
                    break;
                }
            }
            SearchEnd::Stuck(deepest) => {
                // Replay the same deterministic search, this time recording the prefix and
                // the states the stuck operation met. It explores exactly what the first
                // pass did, so it needs no budget of its own beyond that.
                let mut trace = Trace::new(deepest.depth, deepest.stuck);
                let mut replay = Budget {
                    configs_left: budget.configs_used + 1,
                    configs_used: 0,
                    deadline: None,
                };
                let _ = search.run(&mut replay, Some(&mut trace));
                outcome = Some(CheckOutcome::NotLinearizable(Box::new(
                    search.violation(&deepest, trace),
                )));
                break;
            }
        }
    }

    stats.dropped_info = info_total.saturating_sub(info_kept);
    stats.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let outcome = outcome.unwrap_or(match unknown {
        Some(reason) => CheckOutcome::Unknown { reason },
        None => CheckOutcome::Linearizable,
    });
    Ok(CheckReport { outcome, stats })
}

fn key_phrase(key: &str) -> String {
    if key.is_empty() { "the register".to_owned() } else { format!("key {key:?}") }
}

/// Drops `info` operations whose effect nothing observes, repeating because dropping one
/// may leave another without observers.
fn drop_unobservable_info<O, S>(mut partition: Partition<O, S>) -> Partition<O, S> {
    loop {
        let mut observers = vec![0_usize; partition.tokens];
        for op in &partition.ops {
            for &token in &op.observes {
                observers[token as usize] += 1;
            }
        }
        let before = partition.ops.len();
        partition
            .ops
            .retain(|op| !op.info || op.effect.is_none_or(|token| observers[token as usize] > 0));
        if partition.ops.len() == before {
            return partition;
        }
    }
}

/// A violation found by the model's static check: no search, so no prefix.
fn static_violation<O, S>(
    history: &History,
    partition: &Partition<O, S>,
    op: usize,
    reason: String,
) -> Violation {
    let stuck = OpRef::new(&history.operations[partition.ops[op].operation]);
    let explanation = format!(
        "On {}, {} ({}) cannot be linearized anywhere: {reason}.",
        key_phrase(&partition.key),
        who(&stuck),
        stuck.window()
    );
    Violation {
        key: partition.key.clone(),
        operations_on_key: partition.ops.len(),
        prefix: Vec::new(),
        state_after_prefix: String::new(),
        unordered: vec![stuck.clone()],
        stuck,
        refused_in: Vec::new(),
        accepted_in: Vec::new(),
        explanation,
    }
}

fn who(op: &OpRef) -> String {
    format!("process {}'s {}", op.process, op.description)
}

/// Which limit stopped a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limit {
    Configs,
    Time,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::Configs => "configuration limit reached",
            Limit::Time => "time limit reached",
        })
    }
}

/// What a search may still spend.
struct Budget {
    configs_left: u64,
    configs_used: u64,
    deadline: Option<Instant>,
}

impl Budget {
    fn take_config(&mut self) -> bool {
        if self.configs_left == 0 {
            return false;
        }
        self.configs_left -= 1;
        self.configs_used += 1;
        true
    }

    fn time_up(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// How a search ended.
enum SearchEnd<S> {
    Linearizable,
    Stuck(Deepest<S>),
    /// Which limit, and the deepest dead end so far (depth, stuck operation).
    OutOfBudget(Limit, Option<(usize, usize)>),
}

/// One choice on the search stack.
struct Frame<S> {
    /// The call entry linearized.
    call: u32,
    /// The state before it.
    state_before: S,
    /// The restriction flag before it.
    after_blind_info: bool,
    /// It was the only choice worth trying in its configuration, so undoing it means that
    /// configuration is dead too.
    forced: bool,
    /// The scan's deadline when it was chosen (`NIL` while scanning must-happen calls).
    deadline: u32,
}

/// The deepest dead end: how many operations were linearized, which operation's return
/// stopped the search there, and the state.
struct Deepest<S> {
    depth: usize,
    stuck: usize,
    state: S,
}

/// What the replay records about the deepest dead end.
struct Trace<S> {
    target_depth: usize,
    stuck: usize,
    refused: Vec<S>,
    accepted: Vec<S>,
    /// Prefix (linearization order) and pending operations at the deepest dead end.
    snapshot: Option<(Vec<usize>, Vec<usize>)>,
}

impl<S: PartialEq + Clone> Trace<S> {
    /// Distinct states kept per list, enough for a readable explanation.
    const STATES_MAX: usize = 16;

    fn new(target_depth: usize, stuck: usize) -> Self {
        Trace { target_depth, stuck, refused: Vec::new(), accepted: Vec::new(), snapshot: None }
    }

    fn note(list: &mut Vec<S>, state: &S) {
        if list.len() < Self::STATES_MAX && !list.contains(state) {
            list.push(state.clone());
        }
    }
}

/// Marker for "no entry".
const NIL: u32 = u32::MAX;
/// Head sentinel of the list of must-happen calls and returns.
const HEAD: u32 = 0;
/// Tail sentinel of that list.
const TAIL: u32 = 1;
/// Head sentinel of the list of `info` calls.
const INFO_HEAD: u32 = 2;
/// Tail sentinel of that list.
const INFO_TAIL: u32 = 3;

/// The entries of one partition as two index-linked lists in real-time order: calls and
/// returns of must-happen operations, and calls of `info` operations (which have no return).
/// Keeping `info` calls apart means a scan meets them only once it reached a deadline, so
/// must-happen operations are always tried first, and long-pending `info` calls are not
/// walked over at every step.
struct Entries {
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Operation (index into the partition) of each entry.
    op: Vec<u32>,
    is_call: Vec<bool>,
    /// For a call entry: its return entry, or `NIL` for an `info` operation.
    ret: Vec<u32>,
    /// Position of each entry's event in the real-time order (`usize::MAX` for sentinels).
    event: Vec<usize>,
}

impl Entries {
    /// Builds both lists, ordered by the position of each event in the history.
    fn new<O>(ops: &[PartitionOp<O>], history: &History) -> Entries {
        let mut main: Vec<(usize, u32, bool)> = Vec::with_capacity(ops.len() * 2);
        let mut info: Vec<(usize, u32, bool)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let operation = &history.operations[op.operation];
            let i = u32::try_from(i).unwrap_or(NIL);
            if op.info {
                info.push((operation.invoke.index, i, true));
                continue;
            }
            main.push((operation.invoke.index, i, true));
            if let Some(complete) = operation.complete {
                main.push((complete.index, i, false));
            }
        }
        main.sort_unstable_by_key(|e| e.0);
        info.sort_unstable_by_key(|e| e.0);
        let count = 4 + main.len() + info.len();
        let mut entries = Entries {
            next: vec![NIL; count],
            prev: vec![NIL; count],
            op: vec![NIL; count],
            is_call: vec![false; count],
            ret: vec![NIL; count],
            event: vec![usize::MAX; count],
        };
        let mut call_entry = vec![NIL; ops.len()];
        let mut slot = 4_u32;
        for (head, tail, events) in [(HEAD, TAIL, &main), (INFO_HEAD, INFO_TAIL, &info)] {
            let mut last = head;
            for &(event, op, is_call) in events {
                let entry = slot;
                slot += 1;
                let e = entry as usize;
                entries.event[e] = event;
                entries.op[e] = op;
                entries.is_call[e] = is_call;
                if is_call {
                    call_entry[op as usize] = entry;
                } else {
                    entries.ret[call_entry[op as usize] as usize] = entry;
                }
                entries.next[last as usize] = entry;
                entries.prev[e] = last;
                last = entry;
            }
            entries.next[last as usize] = tail;
            entries.prev[tail as usize] = last;
        }
        entries
    }

    fn unlink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
    }

    fn relink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = e;
        self.prev[n as usize] = e;
    }

    /// Removes a call entry and its return entry.
    fn lift(&mut self, call: u32) {
        self.unlink(call);
        let ret = self.ret[call as usize];
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Undoes `lift`; valid because lifts are undone in reverse order.
    fn unlift(&mut self, call: u32) {
        let ret = self.ret[call as usize];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// Hashes an already random 128-bit fingerprint by folding it: no need to hash again.
#[derive(Clone, Copy, Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 keys, which the visited set does not use; stay correct.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

#[derive(Clone, Copy, Default)]
struct BuildFold;

impl BuildHasher for BuildFold {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0)
    }
}

/// The `info` operations used on a path, as a bitset over the partition's `info` ops.
type UsedInfo = Box<[u64]>;

/// The used-`info` sets recorded for one configuration key, minimal under inclusion.
enum UsedSets {
    /// The common case: one set (no allocation when the partition has no `info` ops).
    One(UsedInfo),
    /// Several incomparable sets.
    Many(Vec<UsedInfo>),
}

/// True when every bit of `a` is in `b`.
fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// Explored configurations, with dominance between `info` usages.
///
/// A configuration is keyed by a fingerprint of the must-happen operations linearized, the
/// state and the restriction flag; the `info` operations used so far are kept beside it.
/// Having used fewer `info` operations is never worse: an unused one can still be used
/// later, or never, since it has no deadline. So a configuration is skipped when the same
/// key was reached with a subset of its used `info` operations.
struct Visited {
    map: HashMap<u128, UsedSets, BuildFold>,
}

impl Visited {
    fn new() -> Self {
        Visited { map: HashMap::with_hasher(BuildFold) }
    }

    /// Records a configuration; false when it is dominated by one already recorded.
    fn insert(&mut self, key: u128, used: &[u64]) -> bool {
        let sets = match self.map.entry(key) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(UsedSets::One(used.into()));
                return true;
            }
            std::collections::hash_map::Entry::Occupied(slot) => slot.into_mut(),
        };
        match sets {
            UsedSets::One(known) if is_subset(known, used) => false,
            UsedSets::One(known) if is_subset(used, known) => {
                *known = used.into();
                true
            }
            UsedSets::One(known) => {
                let known = std::mem::take(known);
                *sets = UsedSets::Many(vec![known, used.into()]);
                true
            }
            UsedSets::Many(all) => {
                if all.iter().any(|known| is_subset(known, used)) {
                    return false;
                }
                all.retain(|known| !is_subset(used, known));
                all.push(used.into());
                true
            }
        }
    }
}

/// The search over one partition.
struct Search<'a, M: Model> {
    model: &'a M,
    partition: &'a Partition<M::Op, M::State>,
    history: &'a History,
    list: Entries,
    /// Zobrist key of each operation: the bitset's fingerprint is the XOR of its members'.
    zobrist: Vec<u128>,
    /// Per relevance token: operations observing it that are not linearized yet.
    observers_left: Vec<u32>,
    /// Per operation: blind in the model's sense (see [`Model::is_blind`]).
    blind: Vec<bool>,
    /// Per operation: read-only in the model's sense (see [`Model::is_read_only`]).
    read_only: Vec<bool>,
    /// Per `info` operation: the previous `info` operation with an identical model op, or
    /// `NIL`. Such twins are interchangeable, so they are linearized in invoke order only.
    twin_before: Vec<u32>,
    /// Per operation: linearized on the current path.
    linearized: Vec<bool>,
    /// Per operation: its bit in the used-`info` bitset, or `NIL` for a must-happen op.
    info_bit: Vec<u32>,
    /// The `info` operations used on the current path.
    used: Vec<u64>,
    /// Per `info` operation: the non-`info` operations with an identical model op, in
    /// invoke order.
    ok_twins: Vec<Vec<u32>>,
    /// Per operation: the position of its invoke in the real-time order.
    invoke_event: Vec<usize>,
    /// Per token: the look-ahead generation that last saw an operation leave it.
    marks: Vec<u32>,
    /// The current look-ahead generation.
    generation: u32,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, partition: &'a Partition<M::Op, M::State>, history: &'a History) -> Self {
        let mut observers_left = vec![0_u32; partition.tokens];
        for op in &partition.ops {
            for &token in &op.observes {
                observers_left[token as usize] += 1;
            }
        }
        let mut last_twin: HashMap<&M::Op, u32> = HashMap::new();
        let twin_before = (0..partition.ops.len())
            .map(|i| {
                let op = &partition.ops[i];
                if !op.info {
                    return NIL;
                }
                last_twin.insert(&op.op, u32::try_from(i).unwrap_or(NIL)).unwrap_or(NIL)
            })
            .collect();
        let mut info_count = 0_u32;
        let info_bit = partition
            .ops
            .iter()
            .map(|op| {
                if !op.info {
                    return NIL;
                }
                info_count += 1;
                info_count - 1
            })
            .collect();
        let info_count = info_count as usize;
        let mut by_op: HashMap<&M::Op, Vec<u32>> = HashMap::new();
        for (i, op) in partition.ops.iter().enumerate() {
            if !op.info {
                by_op.entry(&op.op).or_default().push(u32::try_from(i).unwrap_or(NIL));
            }
        }
        let ok_twins =
            partition
                .ops
                .iter()
                .map(|op| {
                    if op.info {
                        by_op.get(&op.op).cloned().unwrap_or_default()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
        Search {
            model,
            partition,
            history,
            list: Entries::new(&partition.ops, history),
            // A high bit keeps these keys apart from the small integers states are mixed from.
            zobrist: (0..partition.ops.len()).map(|i| mix128((1 << 63) | i as u64)).collect(),
            observers_left,
            blind: partition.ops.iter().map(|op| model.is_blind(&op.op)).collect(),
            read_only: partition.ops.iter().map(|op| model.is_read_only(&op.op)).collect(),
            twin_before,
            linearized: vec![false; partition.ops.len()],
            used: vec![0; info_count.div_ceil(64)],
            info_bit,
            ok_twins,
            invoke_event: partition
                .ops
                .iter()
                .map(|op| history.operations[op.operation].invoke.index)
                .collect(),
            marks: vec![0; partition.tokens],
            generation: 0,
        }
    }

    /// Whether trying `op` next can lead anywhere that skipping it cannot. Every rule here
    /// only rejects choices that some other path covers:
    /// - an `info` op whose effect no unlinearized op observes is never needed;
    /// - of identical `info` ops the earliest invoked can stand in for any later one;
    /// - an `info` op is not needed while an identical op that must happen could be
    ///   linearized instead (swap the two in any linearization that uses the `info` one);
    /// - right after an `info` blind op only a non-blind op may follow, since a blind one
    ///   would erase its effect unseen (a path without the `info` op covers that).
    ///
    /// `deadline` is the real-time position of the first pending deadline.
    fn worth_trying(&self, op: usize, after_blind_info: bool, deadline: usize) -> bool {
        /// How far back to look for an identical pending operation; only a find prunes.
        const TWINS_LOOKED_AT: usize = 16;
        if after_blind_info && self.blind[op] {
            return false;
        }
        let pop = &self.partition.ops[op];
        if !pop.info {
            return true;
        }
        let twin = self.twin_before[op];
        if !(twin == NIL || self.linearized[twin as usize])
            || pop.effect.is_some_and(|token| self.observers_left[token as usize] == 0)
        {
            return false;
        }
        let twins = &self.ok_twins[op];
        if twins.is_empty() {
            return true;
        }
        // Operations invoked before the first pending deadline can be linearized now.
        let enabled = twins.partition_point(|&t| self.invoke_event[t as usize] < deadline);
        !twins[..enabled].iter().rev().take(TWINS_LOOKED_AT).any(|&t| !self.linearized[t as usize])
    }

    /// Flips `op`'s bit in the used-`info` set (no-op for must-happen operations).
    fn toggle_used(&mut self, op: usize) {
        let bit = self.info_bit[op];
        if bit != NIL {
            self.used[bit as usize / 64] ^= 1 << (bit % 64);
        }
    }

    fn linearize(&mut self, op: usize) {
        self.linearized[op] = true;
        for &token in &self.partition.ops[op].observes {
            self.observers_left[token as usize] -= 1;
        }
    }

    fn unlinearize(&mut self, op: usize) {
        self.linearized[op] = false;
        for &token in &self.partition.ops[op].observes {
            self.observers_left[token as usize] += 1;
        }
    }

    /// The depth-first search. Leaves the lists and counters as it found them unless the
    /// budget runs out.
    fn run(
        &mut self,
        budget: &mut Budget,
        mut trace: Option<&mut Trace<M::State>>,
    ) -> SearchEnd<M::State> {
        /// How often the clock is read: often enough to stop within milliseconds.
        const CLOCK_EVERY: u64 = 4096;
        /// Mixed into the fingerprint of a configuration reached by an `info` blind op, whose
        /// choices are restricted and so must not stand in for the unrestricted one.
        const AFTER_BLIND_INFO: u128 = 0x2545_f491_4f6c_dd1d_9e37_79b9_7f4a_7c15;
        let mut visited = Visited::new();
        let mut stack: Vec<Frame<M::State>> = Vec::new();
        let mut state = self.partition.init.clone();
        let mut after_blind_info = false;
        let mut bits: u128 = 0;
        visited.insert(self.model.fingerprint(&state), &self.used);
        let mut deepest: Option<Deepest<M::State>> = None;
        let mut iterations: u64 = 0;
        // The scan walks the must-happen list up to its first return entry (the deadline),
        // then the `info` calls invoked before that deadline.
        let mut entry = self.list.next[HEAD as usize];
        let mut deadline = NIL;
        if entry == TAIL {
            return SearchEnd::Linearizable;
        }

        loop {
            iterations += 1;
            if iterations.is_multiple_of(CLOCK_EVERY) && budget.time_up() {
                return SearchEnd::OutOfBudget(Limit::Time, deepest.map(|d| (d.depth, d.stuck)));
            }
            let e = entry as usize;
            if deadline == NIL && !self.list.is_call[e] {
                // The first deadline: every must-happen candidate was tried; now `info` ones.
                deadline = entry;
                entry = self.list.next[INFO_HEAD as usize];
                continue;
            }
            // The return entry at which this configuration turned out dead, if it did.
            let mut dead_end = None;
            let deadline_event =
                if deadline == NIL { usize::MAX } else { self.list.event[deadline as usize] };
            if deadline != NIL && (entry == INFO_TAIL || self.list.event[e] > deadline_event) {
                // Nothing left to try before the deadline: its operation cannot be placed.
                dead_end = Some(deadline);
            } else {
                let op = self.list.op[e] as usize;
                let mut advance = true;
                if self.worth_trying(op, after_blind_info, deadline_event) {
                    let pop = &self.partition.ops[op];
                    let next = self.model.step(&state, &pop.op);
                    if let Some(trace) = trace.as_deref_mut()
                        && op == trace.stuck
                    {
                        let list =
                            if next.is_some() { &mut trace.accepted } else { &mut trace.refused };
                        Trace::note(list, &state);
                    }
                    if let Some(next) = next {
                        // A read-only operation that must happen and can take effect now can
                        // go first in any extension of this configuration (moving it earlier
                        // changes no state): it is then the only choice worth trying here.
                        let forced = !pop.info && self.read_only[op];
                        // Must-happen operations go into the key, `info` ones into the set.
                        let next_bits = if pop.info { bits } else { bits ^ self.zobrist[op] };
                        let next_flag = pop.info && self.blind[op];
                        let flag_key = if next_flag { AFTER_BLIND_INFO } else { 0 };
                        let key = next_bits ^ flag_key ^ self.model.fingerprint(&next);
                        self.toggle_used(op);
                        let fresh = visited.insert(key, &self.used);
                        self.toggle_used(op);
                        if fresh {
                            if !budget.take_config() {
                                let furthest = deepest.map(|d| (d.depth, d.stuck));
                                return SearchEnd::OutOfBudget(Limit::Configs, furthest);
                            }
                            let state_before = std::mem::replace(&mut state, next);
                            stack.push(Frame {
                                call: entry,
                                state_before,
                                after_blind_info,
                                forced,
                                deadline,
                            });
                            after_blind_info = next_flag;
                            bits = next_bits;
                            self.toggle_used(op);
                            self.linearize(op);
                            self.list.lift(entry);
                            if self.list.next[HEAD as usize] == TAIL {
                                // Every must-happen operation is placed; the remaining `info`
                                // operations never took effect.
                                return SearchEnd::Linearizable;
                            }
                            entry = self.list.next[HEAD as usize];
                            deadline = NIL;
                            match self.unmeetable_deadline(&state) {
                                None => continue,
                                Some(ret) => {
                                    let urgent = self.list.op[ret as usize] as usize;
                                    if let Some(trace) = trace.as_deref_mut()
                                        && urgent == trace.stuck
                                    {
                                        Trace::note(&mut trace.refused, &state);
                                    }
                                    dead_end = Some(ret);
                                }
                            }
                        } else {
                            // Already explored, and so a dead end; if it was the only choice,
                            // this configuration is dead as well.
                            advance = !forced;
                        }
                    }
                }
                if advance && dead_end.is_none() {
                    entry = self.list.next[e];
                    continue;
                }
            }
            if let Some(ret) = dead_end {
                let depth = stack.len();
                if deepest.as_ref().is_none_or(|d| depth > d.depth) {
                    deepest = Some(Deepest {
                        depth,
                        stuck: self.list.op[ret as usize] as usize,
                        state: state.clone(),
                    });
                }
                if let Some(trace) = trace.as_deref_mut()
                    && trace.snapshot.is_none()
                    && depth == trace.target_depth
                {
                    let prefix = stack
                        .iter()
                        .map(|frame| self.list.op[frame.call as usize] as usize)
                        .collect();
                    trace.snapshot = Some((prefix, self.pending_before(ret)));
                }
            }
            // Undo choices until one whose configuration has alternatives left.
            loop {
                let Some(frame) = stack.pop() else {
                    let stuck = dead_end.map_or(0, |ret| self.list.op[ret as usize] as usize);
                    let depth = 0;
                    return SearchEnd::Stuck(deepest.unwrap_or(Deepest { depth, stuck, state }));
                };
                let op = self.list.op[frame.call as usize] as usize;
                self.unlinearize(op);
                self.toggle_used(op);
                if self.info_bit[op] == NIL {
                    bits ^= self.zobrist[op];
                }
                state = frame.state_before;
                after_blind_info = frame.after_blind_info;
                self.list.unlift(frame.call);
                if !frame.forced {
                    entry = self.list.next[frame.call as usize];
                    deadline = frame.deadline;
                    break;
                }
            }
        }
    }

    /// A cheap look-ahead that saves exploring every subset of a doomed window. Each of
    /// the first few pending deadlines (return entries) must be met by operations invoked
    /// before it. An operation that needs a state other than the current one needs one of
    /// those to leave that state; when none can, this configuration is dead. Returns the
    /// return entry whose deadline cannot be met.
    fn unmeetable_deadline(&mut self, state: &M::State) -> Option<u32> {
        /// How many deadlines are looked at: the first ones are the likely culprits, and
        /// each costs a walk further down the list.
        const DEADLINES_MAX: usize = 16;
        let current = self.model.state_token(state)?;
        let ops = &self.partition.ops;
        // A fresh generation clears the marks in O(1).
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.fill(0);
            self.generation = 1;
        }
        let mut deadlines = 0;
        let mut info = self.list.next[INFO_HEAD as usize];
        let mut e = self.list.next[HEAD as usize];
        while e != TAIL && deadlines < DEADLINES_MAX {
            let op = &ops[self.list.op[e as usize] as usize];
            if self.list.is_call[e as usize] {
                if let Some(token) = op.effect {
                    self.marks[token as usize] = self.generation;
                }
            } else {
                deadlines += 1;
                let event = self.list.event[e as usize];
                while info != INFO_TAIL && self.list.event[info as usize] < event {
                    if let Some(token) = ops[self.list.op[info as usize] as usize].effect {
                        self.marks[token as usize] = self.generation;
                    }
                    info = self.list.next[info as usize];
                }
                if let Some(needed) = op.needs
                    && needed != current
                    && self.marks[needed as usize] != self.generation
                {
                    return Some(e);
                }
            }
            e = self.list.next[e as usize];
        }
        None
    }

    /// Operations that could still be placed before the deadline `until`: must-happen calls
    /// before it in the list, and `info` calls invoked before it.
    fn pending_before(&self, until: u32) -> Vec<usize> {
        let mut pending = Vec::new();
        let mut e = self.list.next[HEAD as usize];
        while e != until && e != TAIL {
            if self.list.is_call[e as usize] {
                pending.push(self.list.op[e as usize] as usize);
            }
            e = self.list.next[e as usize];
        }
        let bound = self.list.event[until as usize];
        let mut e = self.list.next[INFO_HEAD as usize];
        while e != INFO_TAIL && self.list.event[e as usize] < bound {
            pending.push(self.list.op[e as usize] as usize);
            e = self.list.next[e as usize];
        }
        pending
    }

    fn op_ref(&self, op: usize) -> OpRef {
        OpRef::new(&self.history.operations[self.partition.ops[op].operation])
    }

    fn describe_states(&self, states: &[M::State]) -> Vec<String> {
        states.iter().map(|s| self.model.describe_state(self.partition, s)).collect()
    }

    fn violation(&self, deepest: &Deepest<M::State>, trace: Trace<M::State>) -> Violation {
        let (prefix, pending) = trace.snapshot.unwrap_or_default();
        let stuck = self.op_ref(deepest.stuck);
        let refused_in = self.describe_states(&trace.refused);
        let accepted_in = self.describe_states(&trace.accepted);
        let state_after_prefix = self.model.describe_state(self.partition, &deepest.state);
        let key = key_phrase(&self.partition.key);
        let mut explanation = format!(
            "On {key}, no order of the {} operations agrees with both real time and the {} model. \
             The longest linearizable prefix found places {} of them and leaves the value at {}. ",
            self.partition.ops.len(),
            self.model.name(),
            deepest.depth,
            state_after_prefix,
        );
        let who = who(&stuck);
        let window = stuck.window();
        if accepted_in.is_empty() && !refused_in.is_empty() {
            explanation.push_str(&format!(
                "Then {who} ({window}) must take effect, but over every order of the operations \
                 before and overlapping it, the value could only be {} while it was in flight, \
                 and it cannot take effect in {}.",
                join_or(&refused_in),
                if refused_in.len() == 1 { "that state" } else { "any of those states" },
            ));
        } else if !accepted_in.is_empty() {
            explanation.push_str(&format!(
                "Then {who} ({window}) can take effect only while the value is {}, and every order \
                 that lets it do so contradicts a later operation.",
                join_or(&accepted_in),
            ));
        } else {
            explanation.push_str(&format!(
                "Then {who} ({window}) must take effect before it completed, but every order that \
                 places it there contradicts another operation."
            ));
        }
        Violation {
            key: self.partition.key.clone(),
            operations_on_key: self.partition.ops.len(),
            prefix: prefix.into_iter().map(|op| self.op_ref(op)).collect(),
            state_after_prefix,
            stuck,
            refused_in,
            accepted_in,
            unordered: pending.into_iter().map(|op| self.op_ref(op)).collect(),
            explanation,
        }
    }
}

/// "3", "3 or 5", "3, 5 or 9".
fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenConfig, generate};

    /// Builds a history from lines `PROCESS TYPE F [k=KEY] [VALUE]`, VALUE being JSON; going
    /// through the real parser keeps the tests honest about the format.
    fn history(lines: &[&str]) -> History {
        let json: Vec<String> = lines
            .iter()
            .map(|line| {
                let mut parts = line.splitn(4, ' ');
                let (p, t, f) =
                    (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
                let mut rest = parts.next().unwrap_or("").trim();
                let mut key = String::new();
                if let Some(k) = rest.strip_prefix("k=") {
                    let (k, tail) = k.split_once(' ').unwrap_or((k, ""));
                    key = format!(r#","key":"{k}""#);
                    rest = tail.trim();
                }
                let value = if rest.is_empty() { "null" } else { rest };
                format!(r#"{{"process":{p},"type":"{t}","f":"{f}"{key},"value":{value}}}"#)
            })
            .collect();
        History::parse(&json.join("\n")).expect("test history is well formed")
    }

    fn outcome(kind: ModelKind, lines: &[&str]) -> CheckOutcome {
        check_history(&history(lines), kind, &CheckOptions::default()).unwrap().outcome
    }

    fn violation(kind: ModelKind, lines: &[&str]) -> Violation {
        match outcome(kind, lines) {
            CheckOutcome::NotLinearizable(v) => *v,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_linearizable(kind: ModelKind, lines: &[&str]) {
        assert_eq!(outcome(kind, lines), CheckOutcome::Linearizable);
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_linearizable(ModelKind::Register, &[]);
        assert_linearizable(
            ModelKind::Register,
            &[
                "0 invoke read",
                "0 ok read null",
                "0 invoke write 1",
                "0 ok write 1",
                "1 invoke read",
                "1 ok read 1",
                "1 invoke cas [1,2]",
                "1 ok cas [1,2]",
                "0 invoke read",
                "0 ok read 2",
            ],
        );
    }

    #[test]
    fn a_read_overlapping_a_write_may_see_either_value() {
        for seen in ["0", "1"] {
            let read = format!("1 ok read {seen}");
            assert_linearizable(
                ModelKind::Register,
                &[
                    "0 invoke write 0",
                    "0 ok write 0",
                    "0 invoke write 1",
                    "1 invoke read",
                    &read,
                    "0 ok write 1",
                ],
            );
        }
    }

    #[test]
    fn a_stale_read_is_rejected_and_explained() {
        let v = violation(
            ModelKind::Register,
            &[
                "0 invoke write 1",
                "0 ok write 1",
                "0 invoke write 2",
                "0 ok write 2",
                "1 invoke read",
                "1 ok read 1",
            ],
        );
        assert_eq!(v.stuck.description, "read → 1");
        assert_eq!(v.stuck.invoke.line, 5);
        assert_eq!(
            v.prefix.iter().map(|o| o.description.as_str()).collect::<Vec<_>>(),
            ["write 1", "write 2"]
        );
        assert_eq!(v.state_after_prefix, "2");
        assert_eq!(v.refused_in, ["2"]);
        assert!(v.accepted_in.is_empty());
        assert_eq!(v.unordered.len(), 1);
        assert!(
            v.explanation.contains(
                "process 1's read → 1 (invoked at line 5, completed at line 6) must take effect"
            ) && v.explanation.contains("the value could only be 2 while it was in flight"),
            "{}",
            v.explanation
        );
    }

    #[test]
    fn reads_can_go_back_in_time_only_if_a_write_allows_it() {
        // Two sequential reads inside one write's window: 0 then 1 is fine, 1 then 0 is not.
        let base = ["0 invoke write 0", "0 ok write 0", "0 invoke write 1"];
        let fine = [
            &base[..],
            &["1 invoke read", "1 ok read 0", "1 invoke read", "1 ok read 1", "0 ok write 1"],
        ];
        assert_linearizable(ModelKind::Register, &fine.concat());
        let back = [
            &base[..],
            &["1 invoke read", "1 ok read 1", "1 invoke read", "1 ok read 0", "0 ok write 1"],
        ];
        let v = violation(ModelKind::Register, &back.concat());
        assert_eq!(v.stuck.description, "read → 0");
        assert_eq!(v.refused_in, ["1"]);
    }

    #[test]
    fn an_info_write_that_must_have_happened_explains_a_later_read() {
        assert_linearizable(
            ModelKind::Register,
            &[
                "0 invoke write 1",
                "0 info write 1",
                "1 invoke read",
                "1 ok read 1",
                "1 invoke read",
                "1 ok read 1",
            ],
        );
        // Never completed at all: the same.
        assert_linearizable(
            ModelKind::Register,
            &["0 invoke write 1", "1 invoke read", "1 ok read 1"],
        );
    }

    #[test]
    fn an_info_write_that_must_not_have_happened_is_left_out() {
        assert_linearizable(
            ModelKind::Register,
            &[
                "1 invoke write 2",
                "1 ok write 2",
                "0 invoke write 1",
                "0 info write 1",
                "1 invoke read",
                "1 ok read 2",
                "2 invoke read",
                "2 ok read 2",
            ],
        );
    }

    #[test]
    fn an_info_write_cannot_take_effect_twice() {
        // The info write of 1 explains the first read of 1, but after the read of 2 (and no
        // later write of 1) nothing can bring 1 back.
        let v = violation(
            ModelKind::Register,
            &[
                "0 invoke write 2",
                "0 ok write 2",
                "1 invoke write 1",
                "1 info write 1",
                "2 invoke read",
                "2 ok read 1",
                "0 invoke write 2",
                "0 ok write 2",
                "2 invoke read",
                "2 ok read 1",
            ],
        );
        assert_eq!(v.stuck.invoke.line, 9);
        assert_eq!(v.refused_in, ["2"]);
    }

    #[test]
    fn an_info_write_cannot_happen_before_its_invoke() {
        let v = violation(
            ModelKind::Register,
            &["2 invoke read", "2 ok read 1", "1 invoke write 1", "1 info write 1"],
        );
        assert_eq!(v.stuck.description, "read → 1");
        assert_eq!(v.refused_in, ["null"]);
    }

    #[test]
    fn concurrent_cas_cannot_both_succeed_from_the_same_value() {
        let both = [
            "0 invoke write 0",
            "0 ok write 0",
            "1 invoke cas [0,1]",
            "2 invoke cas [0,2]",
            "1 ok cas [0,1]",
            "2 ok cas [0,2]",
        ];
        let v = violation(ModelKind::Register, &both);
        assert!(v.stuck.f == "cas", "{v:?}");
        // One succeeds, the other fails: fine.
        let mut one = both;
        one[5] = "2 fail cas [0,2]";
        assert_linearizable(ModelKind::Register, &one);
        // A chain forces the order 0→1→2.
        assert_linearizable(
            ModelKind::Register,
            &[
                "0 invoke write 0",
                "0 ok write 0",
                "2 invoke cas [1,2]",
                "1 invoke cas [0,1]",
                "1 ok cas [0,1]",
                "2 ok cas [1,2]",
                "0 invoke read",
                "0 ok read 2",
            ],
        );
    }

    #[test]
    fn an_info_cas_may_or_may_not_have_happened() {
        let prefix = ["0 invoke write 0", "0 ok write 0", "1 invoke cas [0,5]", "1 info cas [0,5]"];
        for read in ["0", "5"] {
            let r = format!("2 ok read {read}");
            assert_linearizable(
                ModelKind::Register,
                &[&prefix[..], &["2 invoke read", &r]].concat(),
            );
        }
    }

    #[test]
    fn non_unique_values_are_handled() {
        assert_linearizable(
            ModelKind::Register,
            &[
                "0 invoke write 1",
                "0 ok write 1",
                "0 invoke write 2",
                "1 invoke write 1",
                "2 invoke read",
                "2 ok read 2",
                "2 invoke read",
                "2 ok read 1",
                "0 ok write 2",
                "1 ok write 1",
                "2 invoke read",
                "2 ok read 1",
            ],
        );
        // The same values, but the read of 2 comes after both writes finished and 1 was read.
        let v = violation(
            ModelKind::Register,
            &[
                "0 invoke write 1",
                "0 ok write 1",
                "0 invoke write 2",
                "1 invoke write 1",
                "0 ok write 2",
                "1 ok write 1",
                "2 invoke read",
                "2 ok read 1",
                "2 invoke read",
                "2 ok read 2",
            ],
        );
        assert_eq!(v.stuck.invoke.line, 9);
    }

    #[test]
    fn only_one_interleaving_of_overlapping_operations_works() {
        // Writes of 1 and 2 overlap everything; the reads force 2, then 1, then (after both
        // completed) 1 again: only "write 2, read 2, write 1, read 1, read 1" works.
        let lines = [
            "0 invoke write 1",
            "1 invoke write 2",
            "2 invoke read",
            "2 ok read 2",
            "2 invoke read",
            "2 ok read 1",
            "0 ok write 1",
            "1 ok write 2",
            "3 invoke read",
            "3 ok read 1",
        ];
        assert_linearizable(ModelKind::Register, &lines);
        let mut last_two = lines;
        last_two[9] = "3 ok read 2";
        let v = violation(ModelKind::Register, &last_two);
        assert_eq!(v.stuck.invoke.line, 9);
        assert_eq!(v.refused_in, ["1"]);
        // The only order that works so far; the look-ahead sees that the last read's
        // deadline cannot be met before placing the read of 1.
        let prefix: Vec<&str> = v.prefix.iter().map(|o| o.description.as_str()).collect();
        assert_eq!(prefix, ["write 2", "read → 2", "write 1"]);
    }

    #[test]
    fn failed_operations_never_take_effect() {
        let v = violation(
            ModelKind::Register,
            &["0 invoke write 5", "0 fail write 5", "1 invoke read", "1 ok read 5"],
        );
        assert!(v.prefix.is_empty(), "found by the static check");
        assert!(
            v.explanation.contains("the only writes of that value failed"),
            "{}",
            v.explanation
        );
        let v = violation(ModelKind::Register, &["1 invoke read", "1 ok read 7"]);
        assert!(
            v.explanation.contains("returned 7, but no operation wrote that value"),
            "{}",
            v.explanation
        );
    }

    #[test]
    fn kv_keys_are_independent_and_the_failing_key_is_named() {
        let lines = [
            "0 invoke write k=a 1",
            "1 invoke write k=b 1",
            "0 ok write k=a 1",
            "1 ok write k=b 1",
            "0 invoke read k=b",
            "0 ok read k=b 1",
            "1 invoke write k=b 2",
            "1 ok write k=b 2",
            "0 invoke read k=a",
            "0 ok read k=a 1",
            "0 invoke read k=b",
            "0 ok read k=b 1",
        ];
        let v = violation(ModelKind::Kv, &lines);
        assert_eq!(v.key, "b");
        assert_eq!(v.stuck.invoke.line, 11);
        assert!(v.explanation.starts_with("On key \"b\""), "{}", v.explanation);
        // The register model refuses two keys rather than mixing them.
        assert!(
            check_history(&history(&lines), ModelKind::Register, &CheckOptions::default()).is_err()
        );
    }

    #[test]
    fn kv_delete_makes_a_key_absent() {
        let lines = [
            "0 invoke write k=a 1",
            "0 ok write k=a 1",
            "0 invoke delete k=a",
            "0 ok delete k=a",
            "1 invoke read k=a",
            "1 ok read k=a null",
            "1 invoke cas k=a [null,3]",
            "1 ok cas k=a [null,3]",
        ];
        assert_linearizable(ModelKind::Kv, &lines);
        let mut stale = lines;
        stale[5] = "1 ok read k=a 1";
        let v = violation(ModelKind::Kv, &stale);
        assert_eq!(v.refused_in, ["null"]);
    }

    #[test]
    fn an_info_delete_can_explain_an_absent_key() {
        assert_linearizable(
            ModelKind::Kv,
            &[
                "0 invoke write k=a 1",
                "0 ok write k=a 1",
                "1 invoke delete k=a",
                "2 invoke read k=a",
                "2 ok read k=a null",
            ],
        );
    }

    #[test]
    fn unknown_when_the_budget_runs_out() {
        // Many concurrent writes and a read nobody can explain in order: exhaustive search.
        let mut lines: Vec<String> = Vec::new();
        for p in 0..12 {
            lines.push(format!("{p} invoke write {p}"));
        }
        lines.push("20 invoke read".into());
        lines.push("20 ok read 3".into());
        lines.push("20 invoke read".into());
        lines.push("20 ok read 4".into());
        lines.push("20 invoke read".into());
        lines.push("20 ok read 3".into());
        for p in 0..12 {
            lines.push(format!("{p} ok write {p}"));
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let h = history(&refs);
        let tight = CheckOptions { max_configs_per_key: 100, time_limit: None };
        let report = check_history(&h, ModelKind::Register, &tight).unwrap();
        match report.outcome {
            CheckOutcome::Unknown { reason } => {
                assert!(reason.contains("configuration limit reached on the register"), "{reason}");
            }
            other => panic!("expected Unknown, got {other:?}"),
        }
        assert_eq!(report.stats.configs, 100);
        // With room to finish, the verdict is definite.
        assert!(matches!(
            check_history(&h, ModelKind::Register, &CheckOptions::default()).unwrap().outcome,
            CheckOutcome::NotLinearizable(_)
        ));
    }

    #[test]
    fn stats_count_what_was_dropped() {
        let h = history(&[
            "0 invoke write 1",
            "0 fail write 1",
            "1 invoke read",
            "1 info read",
            "2 invoke write 9",
            "3 invoke write 1",
            "3 ok write 1",
            "4 invoke read",
            "4 ok read 1",
        ]);
        let report = check_history(&h, ModelKind::Register, &CheckOptions::default()).unwrap();
        assert_eq!(report.outcome, CheckOutcome::Linearizable);
        assert_eq!(report.stats.dropped_fail, 1);
        // The info read and the unobserved info write of 9.
        assert_eq!(report.stats.dropped_info, 2);
        assert_eq!(report.stats.searched_operations, 2);
    }

    #[test]
    fn many_info_writes_stay_tractable() {
        // 40 clients crash mid-write (info) and one reader sees some of their values in an
        // order that needs each write placed just in time.
        let mut lines: Vec<String> = Vec::new();
        for p in 0..40 {
            lines.push(format!("{p} invoke write {p}"));
            lines.push(format!("{p} info write {p}"));
        }
        for v in (0..40).rev().step_by(3) {
            lines.push("100 invoke read".into());
            lines.push(format!("100 ok read {v}"));
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let report =
            check_history(&history(&refs), ModelKind::Register, &CheckOptions::default()).unwrap();
        assert_eq!(report.outcome, CheckOutcome::Linearizable);
        assert!(report.stats.configs < 1_000, "{:?}", report.stats);

        // Reading 39 again after 36 needs the single write of 39 twice: exhaustive search,
        // which must stay small too.
        lines.push("100 invoke read".into());
        lines.push("100 ok read 39".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let report =
            check_history(&history(&refs), ModelKind::Register, &CheckOptions::default()).unwrap();
        let CheckOutcome::NotLinearizable(v) = report.outcome else {
            panic!("expected a violation: {report:?}");
        };
        assert_eq!(v.stuck.description, "read → 39");
        assert!(report.stats.configs < 100_000, "{:?}", report.stats);
    }

    #[test]
    fn the_benchmark_history_is_linearizable() {
        // The shape of `benches/checker.rs`: 10,000 operations from 20 clients, 2% info.
        let shapes = [
            (0x5eed, 0, ModelKind::Register),
            (0x5eed, 4, ModelKind::Kv),
            (42, 0, ModelKind::Register),
        ];
        for (seed, keys, model) in shapes {
            let config = GenConfig {
                seed,
                operations: 10_000,
                processes: 20,
                keys,
                values: 10,
                weights: [5, 3, 2, 0],
                info_percent: 2,
                fail_percent: 2,
                timed: true,
            };
            let h = History::from_events(generate(&config)).unwrap();
            let report = check_history(&h, model, &CheckOptions::default()).unwrap();
            assert_eq!(report.outcome, CheckOutcome::Linearizable, "{model}: {:?}", report.stats);
        }
    }
}

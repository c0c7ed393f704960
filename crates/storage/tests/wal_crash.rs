//! Crash-point, fault and garbage-collection tests of the WAL over the simulated disk.
//!
//! A scripted multi-group workload runs against a reference model (a map of plain vectors).
//! The crash-point test cuts the power after every single mutating disk call the workload makes,
//! crashes the disk (seeded: unsynced writes are lost, kept, or torn), recovers, and checks the
//! recovered state is the model after some prefix of the operations that covers at least
//! everything acknowledged by a successful sync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use quorumkv_core::rng::Rng;
use quorumkv_core::{ConfState, Entry, EntryKind, GroupId, HardState, SnapshotMeta};
use quorumkv_storage::disk::{CrashMode, Disk, SimDisk};
use quorumkv_storage::wal::{Recovered, Wal, WalError, WalOp, WalOptions};

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ModelGroup {
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
}

impl ModelGroup {
    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.snapshot.as_ref().map(|s| s.index))
            .unwrap_or(0)
    }
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }
}

type Model = BTreeMap<GroupId, ModelGroup>;

fn model_apply(model: &mut Model, op: &WalOp) {
    match op {
        WalOp::Append { group, entries } => {
            let g = model.entry(*group).or_default();
            let first = entries[0].index;
            g.entries.retain(|e| e.index < first);
            g.entries.extend(entries.iter().cloned());
        }
        WalOp::HardState { group, hard_state } => {
            model.entry(*group).or_default().hard_state = Some(*hard_state);
        }
        WalOp::Compact { group, meta } => {
            let g = model.entry(*group).or_default();
            g.entries.retain(|e| e.index > meta.index);
            g.snapshot = Some(meta.clone());
        }
        WalOp::RemoveGroup { group } => {
            model.remove(group);
        }
    }
}

fn model_of(recovered: &Recovered) -> Model {
    recovered
        .groups
        .iter()
        .map(|(id, g)| {
            (
                *id,
                ModelGroup {
                    hard_state: g.hard_state,
                    snapshot: g.snapshot.clone(),
                    entries: g.entries.clone(),
                },
            )
        })
        .collect()
}

/// A deterministic workload: batches of valid operations over a few groups, with truncating
/// appends, hard states, compactions (some past the log end: snapshot installs) and removals.
fn script(seed: u64, batches: usize, groups: u64) -> Vec<Vec<WalOp>> {
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let mut out = Vec::new();
    for _ in 0..batches {
        let mut batch = Vec::new();
        for _ in 0..rng.range(1, 5) {
            let group = rng.range(1, groups + 1);
            let g = model.get(&group).cloned().unwrap_or_default();
            let (last, snap) = (g.last_index(), g.snapshot_index());
            let term = g.hard_state.map_or(1, |h| h.term);
            let op = match rng.range(0, 100) {
                0..=59 => {
                    // Mostly extend; sometimes overwrite a suffix (a Raft conflict).
                    let low = (snap + 1).max(last.saturating_sub(3)).max(1);
                    let first = if rng.chance(0.7) { last + 1 } else { rng.range(low, last + 2) };
                    let count = rng.range(1, 5);
                    let entries = (0..count)
                        .map(|i| {
                            let len = rng.range(0, 48) as usize;
                            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                            Entry {
                                index: first + i,
                                term,
                                kind: if rng.chance(0.1) {
                                    EntryKind::ConfChange
                                } else {
                                    EntryKind::Normal
                                },
                                data: Bytes::from(data),
                            }
                        })
                        .collect();
                    WalOp::Append { group, entries }
                }
                60..=79 => WalOp::HardState {
                    group,
                    hard_state: HardState {
                        term: term + rng.range(0, 2),
                        vote: if rng.chance(0.5) { Some(rng.range(1, 4)) } else { None },
                        commit: rng.range(snap, last + 1),
                    },
                },
                80..=96 => {
                    let index = if rng.chance(0.1) { last + 2 } else { rng.range(snap, last + 1) };
                    WalOp::Compact {
                        group,
                        meta: SnapshotMeta {
                            index,
                            term,
                            conf_state: ConfState {
                                voters: vec![1, 2, rng.range(3, 6)],
                                learners: if rng.chance(0.3) { vec![7] } else { vec![] },
                                ..Default::default()
                            },
                        },
                    }
                }
                _ => WalOp::RemoveGroup { group },
            };
            model_apply(&mut model, &op);
            batch.push(op);
        }
        out.push(batch);
    }
    out
}

/// The model after each prefix of the flattened script: `states[k]` = after the first k ops.
fn prefix_states(script: &[Vec<WalOp>]) -> Vec<Model> {
    let mut model = Model::new();
    let mut states = vec![model.clone()];
    for op in script.iter().flatten() {
        model_apply(&mut model, op);
        states.push(model.clone());
    }
    states
}

fn dir() -> PathBuf {
    PathBuf::from("/node/wal")
}

fn small_segments() -> WalOptions {
    WalOptions { segment_bytes_max: 1024, preallocate: false }
}

/// Small segments, each reserved in full when created: the log ends in zeros, not at the end
/// of the file.
fn reserved_segments() -> WalOptions {
    WalOptions { preallocate: true, ..small_segments() }
}

struct Outcome {
    /// Ops covered by a successful sync.
    acked: usize,
    /// Ops accepted into the buffer (acknowledged or not).
    issued: usize,
}

/// Runs the script until the first error. Counts what was acknowledged.
fn run(disk: &SimDisk, script: &[Vec<WalOp>], opts: WalOptions) -> Outcome {
    let mut out = Outcome { acked: 0, issued: 0 };
    let Ok((mut wal, _)) = Wal::open(Arc::new(disk.clone()), dir(), opts) else {
        return out;
    };
    for batch in script {
        for op in batch {
            if wal.apply(op).is_err() {
                return out;
            }
            out.issued += 1;
        }
        match wal.sync() {
            Ok(_) => out.acked = out.issued,
            Err(_) => return out,
        }
    }
    out
}

fn recover(disk: &SimDisk, opts: WalOptions) -> Result<(Wal, Recovered), WalError> {
    Wal::open(Arc::new(disk.clone()), dir(), opts)
}

/// Asserts `got` is the model after k ops for some k in `acked..=issued`; returns k.
fn assert_durable_prefix(got: &Model, states: &[Model], outcome: &Outcome, context: &str) -> usize {
    (outcome.acked..=outcome.issued).rev().find(|&k| states[k] == *got).unwrap_or_else(|| {
        panic!(
            "{context}: recovered state is not the model after any prefix of {}..={} ops\n\
                 got: {got:#?}\nexpected at least: {:#?}",
            outcome.acked, outcome.issued, states[outcome.acked]
        )
    })
}

#[test]
fn full_run_rotates_and_collects_segments() {
    full_run_rotates_and_collects_segments_with(small_segments());
    full_run_rotates_and_collects_segments_with(reserved_segments());
}

fn full_run_rotates_and_collects_segments_with(opts: WalOptions) {
    let script = script(11, 120, 4);
    let states = prefix_states(&script);
    let disk = SimDisk::new(1);
    let outcome = run(&disk, &script, opts.clone());
    assert_eq!(outcome.acked, states.len() - 1, "the script itself must be valid");
    let (mut wal, recovered) = recover(&disk, opts.clone()).expect("recover");
    assert_eq!(model_of(&recovered), states[outcome.acked]);
    assert!(recovered.torn_tail.is_none());
    wal.sync().expect("sync");
    let stats = wal.segments();
    assert!(stats.len() < 20, "old segments are collected: {stats:?}");
    assert!(*stats.first().unwrap_or(&0) > 1, "segment 1 is long gone: {stats:?}");
}

#[test]
fn crash_at_every_mutation_recovers_a_durable_prefix() {
    crash_at_every_mutation_recovers_a_durable_prefix_with(small_segments());
    crash_at_every_mutation_recovers_a_durable_prefix_with(reserved_segments());
}

fn crash_at_every_mutation_recovers_a_durable_prefix_with(opts: WalOptions) {
    let script = script(7, 60, 3);
    let states = prefix_states(&script);
    let total = {
        let disk = SimDisk::new(0);
        let outcome = run(&disk, &script, opts.clone());
        assert_eq!(outcome.acked, states.len() - 1);
        disk.stats().mutations
    };
    assert!(total > 100, "the workload should make many disk calls, made {total}");
    let mut crash_points = 0;
    for point in 0..=total {
        for variant in 0..4u64 {
            let disk = SimDisk::new(point * 31 + variant);
            // Variant 3: torn writes may also keep their length with unwritten (zero) sectors.
            disk.set_zero_filled_tears(variant == 3);
            disk.power_off_after(point);
            let outcome = run(&disk, &script, opts.clone());
            let mode = match variant {
                1 => CrashMode::LoseUnsynced,
                2 => CrashMode::KeepUnsynced,
                _ => CrashMode::Random,
            };
            disk.crash_with(mode);
            let context = format!("crash after {point} mutations, {mode:?}");
            let (mut wal, recovered) = recover(&disk, opts.clone())
                .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
            let k = assert_durable_prefix(&model_of(&recovered), &states, &outcome, &context);

            // The recovered WAL must take new writes that survive the next crash.
            let group = 99;
            wal.append(
                group,
                &[Entry {
                    index: 1,
                    term: 1,
                    kind: EntryKind::Normal,
                    data: Bytes::from_static(b"after"),
                }],
            )
            .unwrap_or_else(|e| panic!("{context}: append after recovery: {e}"));
            wal.sync().unwrap_or_else(|e| panic!("{context}: sync after recovery: {e}"));
            drop(wal);
            disk.crash_with(CrashMode::LoseUnsynced);
            let (_, again) = recover(&disk, opts.clone())
                .unwrap_or_else(|e| panic!("{context}: second recovery: {e}"));
            let mut expected = states[k].clone();
            expected.insert(
                group,
                ModelGroup {
                    entries: vec![Entry {
                        index: 1,
                        term: 1,
                        kind: EntryKind::Normal,
                        data: Bytes::from_static(b"after"),
                    }],
                    ..Default::default()
                },
            );
            assert_eq!(model_of(&again), expected, "{context}: second recovery");
            crash_points += 1;
        }
    }
    assert!(crash_points > 300);
}

#[test]
fn crash_during_recovery_is_harmless() {
    crash_during_recovery_is_harmless_with(small_segments());
    crash_during_recovery_is_harmless_with(reserved_segments());
}

fn crash_during_recovery_is_harmless_with(opts: WalOptions) {
    // Crash points inside recovery itself: torn-tail truncation, removal of an unborn segment,
    // the first segment's creation.
    let script = script(5, 30, 2);
    let states = prefix_states(&script);
    let total = {
        let disk = SimDisk::new(0);
        run(&disk, &script, opts.clone());
        disk.stats().mutations
    };
    for point in (0..=total).step_by(3) {
        for recovery_budget in 0..4u64 {
            let disk = SimDisk::new(point ^ (recovery_budget << 32));
            disk.set_zero_filled_tears(recovery_budget % 2 == 1);
            disk.power_off_after(point);
            let outcome = run(&disk, &script, opts.clone());
            disk.crash();
            disk.power_off_after(recovery_budget);
            let _ = recover(&disk, opts.clone());
            disk.crash();
            let context = format!("crash after {point}, then {recovery_budget} into recovery");
            let (_, recovered) = recover(&disk, opts.clone())
                .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
            assert_durable_prefix(&model_of(&recovered), &states, &outcome, &context);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults: fsync failure, full disk
// ---------------------------------------------------------------------------------------------

fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
    Entry { index, term, kind: EntryKind::Normal, data: Bytes::from_static(data) }
}

#[test]
fn fsync_failure_stops_the_wal_for_good() {
    let disk = SimDisk::new(3);
    let (mut wal, _) = recover(&disk, small_segments()).expect("open");
    wal.append(1, &[entry(1, 1, b"a"), entry(2, 1, b"b")]).expect("append");
    let durable = wal.sync().expect("sync");
    wal.append(1, &[entry(3, 1, b"c")]).expect("append");
    disk.fail_next_sync();
    let err = wal.sync().expect_err("the fsync fails");
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("restart the node"), "{err}");
    assert!(wal.failure().is_some());
    // Every later call is refused, even ones that would not touch the disk.
    assert!(matches!(wal.append(1, &[entry(4, 1, b"d")]), Err(WalError::Failed { .. })));
    assert!(matches!(wal.set_hard_state(1, HardState::default()), Err(WalError::Failed { .. })));
    assert!(matches!(wal.compact(1, SnapshotMeta::default()), Err(WalError::Failed { .. })));
    assert!(matches!(wal.remove_group(1), Err(WalError::Failed { .. })));
    assert!(matches!(wal.sync(), Err(WalError::Failed { .. })));
    assert_eq!(wal.durable_lsn(), durable);
    drop(wal);

    disk.crash();
    let (_, recovered) =
        recover(&disk, small_segments()).expect("recovery after the node restarts");
    let entries = &recovered.groups[&1].entries;
    assert!(entries.len() == 2 || entries.len() == 3, "{entries:?}");
    assert_eq!(entries[..2], [entry(1, 1, b"a"), entry(2, 1, b"b")]);
}

#[test]
fn disk_full_rejects_the_batch_and_keeps_everything_before() {
    let disk = SimDisk::new(4);
    let (mut wal, _) = recover(&disk, small_segments()).expect("open");
    wal.append(1, &[entry(1, 1, b"one"), entry(2, 1, b"two"), entry(3, 1, b"three")])
        .expect("append");
    wal.set_hard_state(1, HardState { term: 1, vote: Some(1), commit: 2 }).expect("hs");
    wal.sync().expect("sync");

    disk.set_full(true);
    // A batch that truncates, compacts, changes the hard state and creates a group.
    wal.append(1, &[entry(2, 2, b"TWO")]).expect("append");
    wal.compact(1, SnapshotMeta { index: 1, term: 1, conf_state: ConfState::default() })
        .expect("compact");
    wal.set_hard_state(1, HardState { term: 2, vote: None, commit: 2 }).expect("hs");
    wal.append(2, &[entry(1, 1, b"new group")]).expect("append");
    let err = wal.sync().expect_err("disk is full");
    assert!(matches!(err, WalError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("free disk space"), "{err}");
    assert_eq!(wal.stats().disk_full_rejections, 1);

    // Nothing of the rejected batch is left in memory...
    assert_eq!(wal.last_index(1), 3);
    assert_eq!(wal.snapshot_meta(1), None);
    assert_eq!(wal.hard_state(1), Some(HardState { term: 1, vote: Some(1), commit: 2 }));
    assert_eq!(wal.group_count(), 1);
    // ...and the WAL works again once there is space.
    disk.set_full(false);
    wal.append(1, &[entry(4, 1, b"four")]).expect("append after space is freed");
    wal.sync().expect("sync after space is freed");
    drop(wal);

    disk.crash_with(CrashMode::KeepUnsynced);
    let (_, recovered) = recover(&disk, small_segments()).expect("recover");
    assert_eq!(recovered.groups.len(), 1);
    let g = &recovered.groups[&1];
    assert_eq!(
        g.entries,
        vec![entry(1, 1, b"one"), entry(2, 1, b"two"), entry(3, 1, b"three"), entry(4, 1, b"four")]
    );
    assert_eq!(g.snapshot, None);
    assert_eq!(g.hard_state, Some(HardState { term: 1, vote: Some(1), commit: 2 }));
}

#[test]
fn disk_full_with_a_capacity_leaves_a_recoverable_log() {
    disk_full_with_a_capacity_leaves_a_recoverable_log_with(small_segments());
    disk_full_with_a_capacity_leaves_a_recoverable_log_with(reserved_segments());
}

fn disk_full_with_a_capacity_leaves_a_recoverable_log_with(opts: WalOptions) {
    // Fill the disk through the normal path until a batch is refused, many times over.
    let script = script(21, 80, 3);
    let disk = SimDisk::new(9);
    let (mut wal, _) = recover(&disk, opts.clone()).expect("open");
    disk.set_capacity(Some(disk.used_bytes() + 3000));
    let mut model = Model::new();
    let mut rejected = 0;
    for batch in &script {
        let mut pending = model.clone();
        for op in batch {
            // After a rejected batch the script's later ops may no longer fit the state.
            if wal.apply(op).is_ok() {
                model_apply(&mut pending, op);
            }
        }
        match wal.sync() {
            Ok(_) => model = pending,
            Err(WalError::DiskFull { .. }) => rejected += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(rejected > 0, "the capacity must be reached");
    drop(wal);
    disk.crash_with(CrashMode::Random);
    let (_, recovered) = recover(&disk, opts.clone()).expect("recovery after disk full");
    assert_eq!(model_of(&recovered), model);
}

// ---------------------------------------------------------------------------------------------
// Rotation and garbage collection
// ---------------------------------------------------------------------------------------------

fn segment_files(disk: &SimDisk, dir: &Path) -> Vec<String> {
    disk.list(dir).expect("list").into_iter().filter(|n| n.starts_with("wal-")).collect()
}

#[test]
fn rotation_and_gc_keep_every_group_state() {
    let disk = SimDisk::new(8);
    let (mut wal, _) = recover(&disk, small_segments()).expect("open");
    // Group 1 sets a hard state and a snapshot once, then stays idle: its state must survive the
    // deletion of the segments that recorded it.
    wal.set_hard_state(1, HardState { term: 5, vote: Some(2), commit: 0 }).expect("hs");
    let meta1 = SnapshotMeta {
        index: 10,
        term: 5,
        conf_state: ConfState { voters: vec![1, 2, 3], ..Default::default() },
    };
    wal.compact(1, meta1.clone()).expect("compact");
    // Group 2 keeps one old live entry for a while: it pins the first segment.
    wal.append(2, &[entry(1, 1, b"pinned")]).expect("append");
    wal.sync().expect("sync");
    let data = Bytes::from(vec![7u8; 100]);
    for i in 1..=200u64 {
        let e = Entry { index: i, term: 1, kind: EntryKind::Normal, data: data.clone() };
        wal.append(3, std::slice::from_ref(&e)).expect("append");
        wal.append(4, &[e]).expect("append");
        if i % 10 == 0 {
            wal.compact(
                3,
                SnapshotMeta { index: i - 2, term: 1, conf_state: ConfState::default() },
            )
            .expect("compact");
            wal.compact(
                4,
                SnapshotMeta { index: i - 5, term: 1, conf_state: ConfState::default() },
            )
            .expect("compact");
        }
        wal.sync().expect("sync");
    }
    assert!(wal.segments().len() > 10, "segment 1 is pinned by group 2: {:?}", wal.segments());
    assert_eq!(wal.segments()[0], 1);
    // Unpin: group 2 compacts its only entry.
    wal.compact(2, SnapshotMeta { index: 1, term: 1, conf_state: ConfState::default() })
        .expect("compact");
    wal.sync().expect("sync");
    let segments = wal.segments();
    assert!(segments.len() <= 3, "old segments deleted: {segments:?}");
    assert_eq!(segment_files(&disk, &dir()).len(), segments.len());
    assert!(wal.stats().segments_deleted > 10);
    drop(wal);

    disk.crash_with(CrashMode::LoseUnsynced);
    let (_, recovered) = recover(&disk, small_segments()).expect("recover");
    let g1 = &recovered.groups[&1];
    assert_eq!(g1.hard_state, Some(HardState { term: 5, vote: Some(2), commit: 0 }));
    assert_eq!(g1.snapshot, Some(meta1));
    assert!(g1.entries.is_empty());
    assert!(recovered.groups[&2].entries.is_empty());
    assert_eq!(recovered.groups[&2].snapshot.as_ref().map(|s| s.index), Some(1));
    let g3: Vec<u64> = recovered.groups[&3].entries.iter().map(|e| e.index).collect();
    assert_eq!(g3, (199..=200).collect::<Vec<_>>());
    let g4: Vec<u64> = recovered.groups[&4].entries.iter().map(|e| e.index).collect();
    assert_eq!(g4, (196..=200).collect::<Vec<_>>());
    assert!(recovered.groups[&4].entries.iter().all(|e| e.data == data));
}

#[test]
fn removed_groups_release_their_segments() {
    let disk = SimDisk::new(12);
    let (mut wal, _) = recover(&disk, small_segments()).expect("open");
    for i in 1..=50u64 {
        wal.append(
            7,
            &[Entry {
                index: i,
                term: 1,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![1u8; 64]),
            }],
        )
        .expect("append");
        wal.sync().expect("sync");
    }
    assert!(wal.segments().len() > 2);
    wal.remove_group(7).expect("remove");
    wal.set_hard_state(8, HardState { term: 1, vote: None, commit: 0 }).expect("hs");
    wal.sync().expect("sync");
    // The next rotation makes the remaining old segments unneeded.
    for _ in 0..20 {
        wal.set_hard_state(8, HardState { term: 1, vote: None, commit: 0 }).expect("hs");
        wal.sync().expect("sync");
    }
    assert!(wal.segments().len() <= 2, "{:?}", wal.segments());
    drop(wal);
    let (_, recovered) = recover(&disk, small_segments()).expect("recover");
    assert_eq!(recovered.groups.keys().copied().collect::<Vec<_>>(), vec![8]);
}

#[test]
fn invalid_operations_are_refused_without_writing() {
    let disk = SimDisk::new(13);
    let (mut wal, _) = recover(&disk, small_segments()).expect("open");
    wal.append(1, &[entry(1, 1, b"a"), entry(2, 1, b"b")]).expect("append");
    let gap = wal.append(1, &[entry(5, 1, b"e")]).expect_err("gap");
    assert!(matches!(gap, WalError::Invalid { group: 1, .. }), "{gap}");
    let unordered = wal.append(1, &[entry(3, 1, b"c"), entry(5, 1, b"e")]).expect_err("unordered");
    assert!(unordered.to_string().contains("not consecutive"), "{unordered}");
    assert!(wal.append(1, &[entry(0, 1, b"zero")]).is_err());
    wal.compact(1, SnapshotMeta { index: 2, term: 1, conf_state: ConfState::default() })
        .expect("compact");
    assert!(wal.append(1, &[entry(2, 1, b"b")]).is_err(), "at or below the snapshot");
    assert!(
        wal.compact(1, SnapshotMeta { index: 1, ..Default::default() }).is_err(),
        "older snapshot"
    );
    // apply_all is all or nothing.
    let before = wal.unsynced_bytes();
    let ops = vec![
        WalOp::Append { group: 1, entries: vec![entry(3, 1, b"c")] },
        WalOp::Append { group: 1, entries: vec![entry(9, 1, b"gap")] },
    ];
    assert!(wal.apply_all(&ops).is_err());
    assert_eq!(wal.unsynced_bytes(), before);
    assert_eq!(wal.last_index(1), 2);
    wal.sync().expect("sync");
}

//! WAL format tests: damaged files built byte by byte, torn tails at every offset, property
//! tests of the codec and recovery, and the checked-in version-1 fixture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use quorumkv_core::rng::Rng;
use quorumkv_core::{ConfState, Entry, EntryKind, HardState, SnapshotMeta};
use quorumkv_storage::disk::{Disk, RealDisk, SimDisk};
use quorumkv_storage::wal::codec::{self, CheckpointGroup, Record, RecordKind};
use quorumkv_storage::wal::{Lsn, Recovered, RecoveredGroup, Wal, WalError, WalOp, WalOptions};

fn dir() -> PathBuf {
    PathBuf::from("/n/wal")
}

fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
    Entry { index, term, kind: EntryKind::Normal, data: Bytes::from_static(data) }
}

type Files = BTreeMap<String, Vec<u8>>;

fn files_of(disk: &SimDisk) -> Files {
    disk.list(&dir())
        .expect("list")
        .into_iter()
        .map(|name| {
            let content = disk.file_content(&dir().join(&name)).expect("content");
            (name, content)
        })
        .collect()
}

fn disk_with(files: &Files) -> SimDisk {
    let disk = SimDisk::new(0);
    disk.create_dir_all(&dir()).expect("mkdir");
    for (name, content) in files {
        disk.put_file(&dir().join(name), content);
    }
    disk
}

fn open(disk: &SimDisk, segment_bytes_max: u64) -> Result<(Wal, Recovered), WalError> {
    Wal::open(Arc::new(disk.clone()), dir(), WalOptions { segment_bytes_max, preallocate: false })
}

/// Offsets where each record of a segment starts (after the header), and the file end.
fn record_starts(content: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut pos = codec::SEGMENT_HEADER_BYTES;
    while pos < content.len() {
        let (header, _) = codec::decode_record(&content[pos..]).expect("a valid record");
        starts.push(pos);
        pos += header.record_len();
    }
    starts
}

/// LSN of the last complete, valid record in `content` (records after the header).
fn last_complete_lsn(content: &[u8]) -> Option<Lsn> {
    let mut pos = codec::SEGMENT_HEADER_BYTES;
    let mut last = None;
    while let Some(rest) = content.get(pos..) {
        match codec::decode_record(rest) {
            Ok((header, _)) => {
                last = Some(header.lsn);
                pos += header.record_len();
            }
            Err(_) => break,
        }
    }
    last
}

/// A small log over three segments: ops and the LSN each op got.
fn small_log() -> (SimDisk, Vec<(WalOp, Lsn)>) {
    let disk = SimDisk::new(1);
    let (mut wal, _) = open(&disk, 400).expect("open");
    let ops = vec![
        vec![
            WalOp::Append { group: 1, entries: vec![entry(1, 1, b"alpha"), entry(2, 1, b"beta")] },
            WalOp::HardState {
                group: 1,
                hard_state: HardState { term: 1, vote: Some(1), commit: 1 },
            },
        ],
        vec![WalOp::Append { group: 2, entries: vec![entry(1, 3, b"x")] }],
        vec![
            WalOp::Append { group: 1, entries: vec![entry(2, 2, b"BETA"), entry(3, 2, b"gamma")] },
            WalOp::Compact {
                group: 2,
                meta: SnapshotMeta {
                    index: 1,
                    term: 3,
                    conf_state: ConfState { voters: vec![1, 2, 3], ..Default::default() },
                },
            },
        ],
        vec![WalOp::HardState {
            group: 2,
            hard_state: HardState { term: 4, vote: None, commit: 1 },
        }],
        vec![WalOp::Append { group: 3, entries: vec![entry(1, 1, b"three")] }],
        vec![WalOp::Append { group: 1, entries: vec![entry(4, 2, b"delta")] }],
        vec![WalOp::Append {
            group: 3,
            entries: vec![entry(2, 1, b"three-2"), entry(3, 1, b"three-3")],
        }],
        vec![
            WalOp::HardState {
                group: 3,
                hard_state: HardState { term: 2, vote: Some(3), commit: 2 },
            },
            WalOp::Append { group: 2, entries: vec![entry(2, 4, b"two-2")] },
            WalOp::Append { group: 1, entries: vec![entry(5, 2, b"epsilon")] },
        ],
        vec![
            WalOp::Append { group: 2, entries: vec![entry(3, 4, b"two-3")] },
            WalOp::HardState {
                group: 2,
                hard_state: HardState { term: 5, vote: Some(2), commit: 2 },
            },
        ],
    ];
    let mut out = Vec::new();
    for batch in ops {
        for op in batch {
            let lsn = wal.apply(&op).expect("apply");
            out.push((op, lsn));
        }
        wal.sync().expect("sync");
    }
    assert!(wal.segments().len() >= 3, "the log should span segments: {:?}", wal.segments());
    let last = disk.file_content(
        &dir().join(codec::segment_file_name(*wal.segments().last().expect("segment"))),
    );
    let sizes: Vec<usize> = files_of(&disk).values().map(Vec::len).collect();
    assert!(
        record_starts(&last.expect("file")).len() >= 3,
        "the newest segment should hold records: {sizes:?}"
    );
    (disk, out)
}

/// The recovered state after applying the ops with LSN at most `lsn`, built naively.
fn expected_upto(ops: &[(WalOp, Lsn)], lsn: Lsn) -> BTreeMap<u64, RecoveredGroup> {
    let mut groups: BTreeMap<u64, RecoveredGroup> = BTreeMap::new();
    for (op, op_lsn) in ops {
        if *op_lsn > lsn {
            break;
        }
        match op {
            WalOp::Append { group, entries } => {
                let g = groups.entry(*group).or_default();
                g.entries.retain(|e| e.index < entries[0].index);
                g.entries.extend(entries.iter().cloned());
            }
            WalOp::HardState { group, hard_state } => {
                groups.entry(*group).or_default().hard_state = Some(*hard_state);
            }
            WalOp::Compact { group, meta } => {
                let g = groups.entry(*group).or_default();
                g.entries.retain(|e| e.index > meta.index);
                g.snapshot = Some(meta.clone());
            }
            WalOp::RemoveGroup { group } => {
                groups.remove(group);
            }
        }
    }
    groups
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

#[test]
fn every_flipped_bit_is_reported_with_file_and_offset() {
    let (disk, _) = small_log();
    let files = files_of(&disk);
    let mut checked = 0;
    for (name, content) in &files {
        let starts = record_starts(content);
        for offset in 0..content.len() {
            let mut damaged = files.clone();
            damaged.get_mut(name).expect("file")[offset] ^= 1 << (offset % 8);
            let expected_offset = if offset < codec::SEGMENT_HEADER_BYTES {
                0
            } else {
                *starts.iter().rev().find(|&&s| s <= offset).expect("a record")
            };
            match open(&disk_with(&damaged), 400) {
                Err(WalError::Corrupt { path, offset: at, reason }) => {
                    assert_eq!(path, dir().join(name), "byte {offset}: {reason}");
                    assert_eq!(at, expected_offset as u64, "byte {offset} of {name}: {reason}");
                }
                Err(other) => panic!("byte {offset} of {name}: wrong error {other}"),
                Ok(_) => panic!("byte {offset} of {name}: damage not detected"),
            }
            checked += 1;
        }
    }
    assert!(checked > 500);
}

#[test]
fn corrupt_error_message_names_file_and_offset() {
    let (disk, _) = small_log();
    let mut files = files_of(&disk);
    let name = files.keys().next().expect("a segment").clone();
    files.get_mut(&name).expect("file")[40] ^= 0x10;
    let err = open(&disk_with(&files), 400).expect_err("corrupt");
    let text = err.to_string();
    assert!(text.contains(name.as_str()) && text.contains("at byte 32"), "{text}");
}

#[test]
fn torn_tail_at_every_offset_recovers_the_prefix() {
    let (disk, ops) = small_log();
    let files = files_of(&disk);
    let names: Vec<&String> = files.keys().collect();
    let last_name = names.last().copied().expect("segments").clone();
    let previous_lsn = last_complete_lsn(&files[names[names.len() - 2]]).expect("records");
    let last = &files[&last_name];
    let last_record = *record_starts(last).last().expect("records");
    for cut in 0..last.len() {
        let mut torn = files.clone();
        torn.get_mut(&last_name).expect("file").truncate(cut);
        let disk = disk_with(&torn);
        let (_, recovered) =
            open(&disk, 400).unwrap_or_else(|e| panic!("cut at {cut}: recovery failed: {e}"));
        let upto = last_complete_lsn(&torn[&last_name]).unwrap_or(previous_lsn);
        assert_eq!(recovered.groups, expected_upto(&ops, upto), "cut at {cut}");
        let starts = record_starts(last);
        let checkpoint_end = starts.get(1).copied().unwrap_or(last.len());
        if cut < checkpoint_end {
            // Header or checkpoint incomplete: the segment never came into being.
            let tail = recovered.torn_tail.expect("a removed segment is reported");
            assert!(tail.segment_removed, "cut at {cut}");
            // (The previous segment is full, so opening may start a new one under that name.)
        } else if starts.contains(&cut) {
            assert_eq!(recovered.torn_tail, None, "cut at {cut}: a record boundary is not torn");
        } else {
            let tail = recovered.torn_tail.expect("a torn tail is reported");
            let boundary = *starts.iter().rev().find(|&&s| s < cut).expect("a record");
            assert_eq!(tail.offset, boundary as u64, "cut at {cut}");
            assert_eq!(
                disk.file_content(&dir().join(&last_name)).map(|c| c.len()),
                Some(boundary),
                "cut at {cut}: the file is cut back"
            );
        }
        if cut >= last_record {
            assert_eq!(upto, last_complete_lsn(&last[..last_record]).expect("records"));
        }
    }
    // The untouched log recovers completely with no torn tail.
    let (_, recovered) = open(&disk_with(&files), 400).expect("open");
    assert!(recovered.torn_tail.is_none());
    assert_eq!(recovered.groups, expected_upto(&ops, Lsn::MAX));
}

#[test]
fn zeroed_tail_is_unused_or_torn_but_garbage_is_corruption() {
    let (disk, ops) = small_log();
    let files = files_of(&disk);
    let last_name = files.keys().last().expect("segments").clone();
    let len = files[&last_name].len();

    // Zeros right after the last whole record: space reserved but never written. The log
    // ends there; nothing is torn, nothing is cut, and the next append goes there.
    let mut zeros = files.clone();
    zeros.get_mut(&last_name).expect("file").extend_from_slice(&[0u8; 700]);
    let reserved = disk_with(&zeros);
    let (mut wal, recovered) = open(&reserved, 1 << 20).expect("a reserved tail is no damage");
    assert_eq!(recovered.torn_tail, None);
    assert_eq!(recovered.groups, expected_upto(&ops, Lsn::MAX));
    let path = dir().join(&last_name);
    assert_eq!(reserved.file_content(&path).map(|c| c.len()), Some(len + 700), "kept reserved");
    wal.append(7, &[entry(1, 1, b"into reserved space")]).expect("append");
    wal.sync().expect("sync");
    drop(wal);
    assert_eq!(reserved.file_content(&path).map(|c| c.len()), Some(len + 700), "written inside");
    let (_, again) = open(&reserved, 1 << 20).expect("reopen");
    assert_eq!(again.groups[&7].entries.len(), 1);
    assert_eq!(again.torn_tail, None);

    // A last record that spans a sector boundary, whose sectors from there on were never
    // written (the file length was, as some file systems allow).
    let big = SimDisk::new(2);
    let (mut wal, _) = open(&big, 1 << 20).expect("open");
    wal.append(1, &[entry(1, 1, b"kept")]).expect("append");
    wal.sync().expect("sync");
    let kept_lsn = wal.durable_lsn();
    wal.append(
        1,
        &[Entry { index: 2, term: 1, kind: EntryKind::Normal, data: Bytes::from(vec![9u8; 1500]) }],
    )
    .expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let mut unwritten = files_of(&big);
    let content = unwritten.values_mut().next().expect("one segment");
    let last_record = *record_starts(content).last().expect("records");
    let boundary = (last_record + 1).next_multiple_of(512);
    assert!(boundary < content.len());
    content[boundary..].fill(0);
    let (_, recovered) = open(&disk_with(&unwritten), 1 << 20).expect("unwritten sectors are torn");
    assert_eq!(recovered.torn_tail.map(|t| t.offset), Some(last_record as u64));
    assert_eq!(recovered.groups[&1].entries, vec![entry(1, 1, b"kept")]);
    assert_eq!(recovered.durable_lsn, kept_lsn);

    // A whole last record with a flipped bit, then reserved zeros: every sector of the record
    // holds data, so it was written and may have been acknowledged. Damage, not a tear — in
    // the payload and in the header alike.
    let last_start = *record_starts(&files[&last_name]).last().expect("records");
    for (what, at) in [("payload", len - 6), ("header", last_start + 6)] {
        let mut flipped = zeros.clone();
        flipped.get_mut(&last_name).expect("file")[at] ^= 0x10;
        match open(&disk_with(&flipped), 1 << 20) {
            Err(WalError::Corrupt { offset, .. }) => {
                assert_eq!(offset, last_start as u64, "{what}")
            }
            other => {
                panic!("{what}: expected corruption, got {:?}", other.map(|(_, r)| r.torn_tail))
            }
        }
    }

    // Non-zero bytes that are not a record cannot come from a torn append: refuse.
    let mut garbage = files.clone();
    garbage.get_mut(&last_name).expect("file").extend_from_slice(&[0xA5; 100]);
    match open(&disk_with(&garbage), 400) {
        Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, len as u64),
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn incomplete_older_segment_and_missing_segment_are_refused() {
    let (disk, _) = small_log();
    let files = files_of(&disk);
    let first = files.keys().next().expect("segments").clone();
    let mut cut = files.clone();
    let content = cut.get_mut(&first).expect("file");
    let at = *record_starts(content).last().expect("records");
    content.truncate(at + 5);
    match open(&disk_with(&cut), 400) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (dir().join(&first), at as u64));
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }

    let mut missing = files.clone();
    let middle = files.keys().nth(1).expect("three segments").clone();
    missing.remove(&middle);
    let err = open(&disk_with(&missing), 400).expect_err("missing segment");
    assert!(matches!(err, WalError::Inconsistent { .. }), "{err}");
    assert!(err.to_string().contains(&middle), "{err}");
}

#[test]
fn newer_format_version_is_refused_clearly() {
    let (disk, _) = small_log();
    let mut files = files_of(&disk);
    let content = files.values_mut().next().expect("segment");
    content[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&content[..28]);
    content[28..32].copy_from_slice(&crc.to_le_bytes());
    let err = open(&disk_with(&files), 400).expect_err("refused");
    assert!(matches!(err, WalError::UnsupportedVersion { version: 2, supported: 1, .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

fn arb_ids() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(any::<u64>(), 0..5)
}

fn arb_meta() -> impl Strategy<Value = SnapshotMeta> {
    (any::<u64>(), any::<u64>(), arb_ids(), arb_ids(), arb_ids(), arb_ids()).prop_map(
        |(index, term, voters, voters_outgoing, learners, learners_next)| SnapshotMeta {
            index,
            term,
            conf_state: ConfState { voters, voters_outgoing, learners, learners_next },
        },
    )
}

fn arb_hard_state() -> impl Strategy<Value = HardState> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, vote, commit)| HardState {
        term,
        vote: (vote != 0).then_some(vote),
        commit,
    })
}

fn arb_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            1u64..u64::MAX / 2,
            proptest::collection::vec(
                (any::<u64>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)),
                1..8
            )
        )
            .prop_map(|(first, items)| Record::Entries(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, (term, conf, data))| Entry {
                        index: first + i as u64,
                        term,
                        kind: if conf { EntryKind::ConfChange } else { EntryKind::Normal },
                        data: Bytes::from(data),
                    })
                    .collect()
            )),
        arb_hard_state().prop_map(Record::HardState),
        arb_meta().prop_map(Record::Compact),
        Just(Record::RemoveGroup),
        proptest::collection::btree_map(
            any::<u64>(),
            (
                any::<u64>(),
                proptest::option::of(arb_hard_state()),
                proptest::option::of(arb_meta())
            ),
            0..5
        )
        .prop_map(|lines| Record::Checkpoint(
            lines
                .into_iter()
                .map(|(group, (last_index, hard_state, snapshot))| CheckpointGroup {
                    group,
                    last_index,
                    hard_state,
                    snapshot
                })
                .collect()
        )),
    ]
}

fn encode(record: &Record, group: u64, lsn: Lsn, buf: &mut Vec<u8>) {
    let kind = match record {
        Record::Checkpoint(_) => RecordKind::Checkpoint,
        Record::Entries(_) => RecordKind::Entries,
        Record::HardState(_) => RecordKind::HardState,
        Record::Compact(_) => RecordKind::Compact,
        Record::RemoveGroup => RecordKind::RemoveGroup,
    };
    let start = codec::begin_record(buf, kind, group, lsn);
    match record {
        Record::Checkpoint(lines) => codec::encode_checkpoint(
            buf,
            lines.len() as u32,
            lines
                .iter()
                .map(|l| (l.group, l.last_index, l.hard_state.as_ref(), l.snapshot.as_ref())),
        ),
        Record::Entries(entries) => codec::encode_entries(buf, entries),
        Record::HardState(hs) => codec::encode_hard_state(buf, hs),
        Record::Compact(meta) => codec::encode_snapshot_meta(buf, meta),
        Record::RemoveGroup => {}
    }
    codec::finish_record(buf, start).expect("small record");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip(records in proptest::collection::vec((arb_record(), any::<u64>()), 1..6)) {
        let mut buf = Vec::new();
        for (i, (record, group)) in records.iter().enumerate() {
            encode(record, *group, i as u64 + 1, &mut buf);
        }
        let (decoded, failure) = codec::decode_all(&Bytes::from(buf));
        prop_assert_eq!(failure, None);
        prop_assert_eq!(decoded.len(), records.len());
        for (i, ((header, got), (want, group))) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(got, want);
            prop_assert_eq!(header.group, *group);
            prop_assert_eq!(header.lsn, i as u64 + 1);
        }
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let data = Bytes::from(bytes.clone());
        let _ = codec::decode_all(&data);
        let _ = codec::decode_segment_header(&bytes);
        for kind in [RecordKind::Checkpoint, RecordKind::Entries, RecordKind::HardState, RecordKind::Compact, RecordKind::RemoveGroup] {
            let _ = codec::decode_payload(kind, data.clone());
        }
        // Behind a valid header, as the newest and as an older segment: an error or a
        // recovery, never a panic.
        let mut segment = Vec::new();
        codec::encode_segment_header(&mut segment, 1);
        segment.extend_from_slice(&bytes);
        let mut files = Files::new();
        files.insert(codec::segment_file_name(1), segment.clone());
        let _ = open(&disk_with(&files), 1 << 20);
        let mut second = Vec::new();
        codec::encode_segment_header(&mut second, 2);
        files.insert(codec::segment_file_name(2), second);
        let _ = open(&disk_with(&files), 1 << 20);
    }

    // One segment: cutting records a sync made durable (which no real crash does) could remove
    // a record that garbage collection already relied on; torn_tail_at_every_offset covers
    // cuts of a newest segment that follows collected ones.
    #[test]
    fn recovery_after_random_truncation(seed in any::<u64>(), cut_fraction in 0.0f64..1.0) {
        let mut rng = Rng::new(seed);
        let disk = SimDisk::new(seed);
        let (mut wal, _) = open(&disk, 1 << 20).expect("open");
        let mut ops = Vec::new();
        let mut last = [0u64; 3];
        for _ in 0..rng.range(5, 30) {
            for _ in 0..rng.range(1, 4) {
                let group = rng.range(0, 3);
                let op = if rng.chance(0.8) {
                    let first = if rng.chance(0.8) || last[group as usize] == 0 { last[group as usize] + 1 } else { rng.range(1, last[group as usize] + 1) };
                    let count = rng.range(1, 4);
                    last[group as usize] = first + count - 1;
                    WalOp::Append { group, entries: (first..first + count).map(|i| Entry { index: i, term: seed % 5, kind: EntryKind::Normal, data: Bytes::from(vec![i as u8; (rng.range(0, 40)) as usize]) }).collect() }
                } else {
                    WalOp::HardState { group, hard_state: HardState { term: rng.range(0, 9), vote: None, commit: 0 } }
                };
                let lsn = wal.apply(&op).expect("apply");
                ops.push((op, lsn));
            }
            wal.sync().expect("sync");
        }
        drop(wal);
        let mut files = files_of(&disk);
        let names: Vec<String> = files.keys().cloned().collect();
        let last_name = names.last().expect("segments").clone();
        let previous_lsn = names.len().checked_sub(2).and_then(|i| last_complete_lsn(&files[&names[i]])).unwrap_or(0);
        let content = files.get_mut(&last_name).expect("file");
        let cut = (content.len() as f64 * cut_fraction) as usize;
        content.truncate(cut);
        let upto = last_complete_lsn(content).unwrap_or(previous_lsn);
        let (_, recovered) = open(&disk_with(&files), 1 << 20).expect("recovery");
        prop_assert_eq!(recovered.groups, expected_upto(&ops, upto));
    }
}

// ---------------------------------------------------------------------------------------------
// Version-1 fixture
// ---------------------------------------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-v1")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-wal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const FIXTURE_SEGMENT_BYTES: u64 = 256;

/// Writes the fixture's workload into `dir` with the real disk. Keep it unchanged: the
/// checked-in files were written by it, and `fixture_v1_recovers_exactly` states the result.
fn write_fixture(dir: &Path) {
    let (mut wal, _) = Wal::open(
        Arc::new(RealDisk::new()),
        dir,
        WalOptions { segment_bytes_max: FIXTURE_SEGMENT_BYTES, preallocate: false },
    )
    .expect("open");
    let batches = vec![
        vec![
            WalOp::Append {
                group: 1,
                entries: vec![entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
            },
            WalOp::HardState {
                group: 1,
                hard_state: HardState { term: 1, vote: Some(1), commit: 0 },
            },
            WalOp::Append { group: 2, entries: vec![entry(1, 1, b"x"), entry(2, 1, b"y")] },
        ],
        vec![
            WalOp::Append { group: 1, entries: vec![entry(3, 2, b"C"), entry(4, 2, b"d")] },
            WalOp::HardState {
                group: 1,
                hard_state: HardState { term: 2, vote: Some(1), commit: 2 },
            },
        ],
        vec![
            WalOp::Compact {
                group: 2,
                meta: SnapshotMeta {
                    index: 1,
                    term: 1,
                    conf_state: ConfState {
                        voters: vec![1, 2, 3],
                        learners: vec![4],
                        ..Default::default()
                    },
                },
            },
            WalOp::HardState { group: 3, hard_state: HardState { term: 7, vote: None, commit: 0 } },
        ],
        vec![
            WalOp::Append {
                group: 3,
                entries: vec![Entry {
                    index: 1,
                    term: 7,
                    kind: EntryKind::ConfChange,
                    data: Bytes::from_static(b"cc"),
                }],
            },
            WalOp::Append { group: 4, entries: vec![entry(1, 1, b"gone")] },
        ],
        vec![WalOp::RemoveGroup { group: 4 }],
        vec![WalOp::Append { group: 1, entries: vec![entry(5, 2, b"e")] }],
    ];
    for batch in &batches {
        wal.apply_all(batch).expect("apply");
        wal.sync().expect("sync");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for item in std::fs::read_dir(from).expect("read fixture dir") {
        let item = item.expect("entry");
        std::fs::copy(item.path(), to.join(item.file_name())).expect("copy");
    }
}

fn read_dir_files(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|item| {
            let item = item.expect("entry");
            (
                item.file_name().to_string_lossy().into_owned(),
                std::fs::read(item.path()).expect("read"),
            )
        })
        .collect()
}

#[test]
fn fixture_v1_recovers_exactly() {
    if std::env::var("QUORUMKV_REGEN_FIXTURES").is_ok_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(fixture_dir());
        write_fixture(&fixture_dir());
    }
    // Open a copy: opening may rotate or collect segments, and the fixture must stay as is.
    let copy = temp_dir("fixture-copy");
    copy_dir(&fixture_dir(), &copy);
    let (_, recovered) = Wal::open(
        Arc::new(RealDisk::new()),
        &copy,
        WalOptions { segment_bytes_max: FIXTURE_SEGMENT_BYTES, preallocate: false },
    )
    .expect("the version-1 fixture must open");
    let mut expected = BTreeMap::new();
    expected.insert(
        1,
        RecoveredGroup {
            hard_state: Some(HardState { term: 2, vote: Some(1), commit: 2 }),
            snapshot: None,
            entries: vec![
                entry(1, 1, b"a"),
                entry(2, 1, b"b"),
                entry(3, 2, b"C"),
                entry(4, 2, b"d"),
                entry(5, 2, b"e"),
            ],
        },
    );
    expected.insert(
        2,
        RecoveredGroup {
            hard_state: None,
            snapshot: Some(SnapshotMeta {
                index: 1,
                term: 1,
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    ..Default::default()
                },
            }),
            entries: vec![entry(2, 1, b"y")],
        },
    );
    expected.insert(
        3,
        RecoveredGroup {
            hard_state: Some(HardState { term: 7, vote: None, commit: 0 }),
            snapshot: None,
            entries: vec![Entry {
                index: 1,
                term: 7,
                kind: EntryKind::ConfChange,
                data: Bytes::from_static(b"cc"),
            }],
        },
    );
    assert_eq!(recovered.groups, expected);
    assert_eq!(recovered.torn_tail, None);
    assert_eq!(recovered.durable_lsn, FIXTURE_DURABLE_LSN);
    let _ = std::fs::remove_dir_all(&copy);

    // Today's writer must still produce exactly the version-1 bytes; if a change is meant to
    // alter the format, bump the version, keep reading version 1, and add a wal-v2 fixture.
    let fresh = temp_dir("fixture-fresh");
    write_fixture(&fresh);
    let written = read_dir_files(&fresh);
    let checked_in = read_dir_files(&fixture_dir());
    assert_eq!(written.keys().collect::<Vec<_>>(), checked_in.keys().collect::<Vec<_>>());
    assert!(written == checked_in, "the writer no longer produces the version-1 fixture bytes");
    let _ = std::fs::remove_dir_all(&fresh);
}

/// LSN of the fixture's last record.
const FIXTURE_DURABLE_LSN: Lsn = 17;

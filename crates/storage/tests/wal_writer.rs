//! Tests of the group-commit writer: concurrent submitters, all-or-nothing submissions, failure
//! propagation, shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use bytes::Bytes;
use quorumkv_core::{Entry, EntryKind, HardState};
use quorumkv_storage::disk::{CrashMode, RealDisk, SimDisk};
use quorumkv_storage::wal::{Wal, WalError, WalOp, WalOptions, WalWriter, WriterOptions};

fn dir() -> PathBuf {
    PathBuf::from("/w/wal")
}

fn append(group: u64, index: u64, data: &[u8]) -> WalOp {
    WalOp::Append {
        group,
        entries: vec![Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: Bytes::copy_from_slice(data),
        }],
    }
}

#[test]
fn concurrent_writers_are_all_durable_and_share_fsyncs() {
    let disk = SimDisk::new(1);
    let (wal, _) = Wal::open(
        Arc::new(disk.clone()),
        dir(),
        WalOptions { segment_bytes_max: 4096, preallocate: false },
    )
    .expect("open");
    let writer = Arc::new(
        WalWriter::start(wal, WriterOptions { queue_capacity: 8, ..Default::default() })
            .expect("start"),
    );
    let threads = 8u64;
    let per_thread = 200u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let mut last_lsn = 0;
                for i in 1..=per_thread {
                    let lsn = writer.write(vec![append(t, i, &i.to_le_bytes())]).expect("write");
                    assert!(lsn > last_lsn, "LSNs increase for one submitter");
                    last_lsn = lsn;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("writer thread");
    }
    let writer = Arc::into_inner(writer).expect("last handle");
    let stats = writer.stats();
    assert_eq!(stats.submissions, threads * per_thread);
    assert_eq!(stats.entries, threads * per_thread);
    assert!(stats.fsyncs <= stats.submissions);
    assert!(stats.entries_per_fsync() >= 1.0);
    let wal = writer.shutdown().expect("shutdown");
    drop(wal);

    disk.crash_with(CrashMode::LoseUnsynced);
    let (_, recovered) = Wal::open(Arc::new(disk), dir(), WalOptions::default()).expect("recover");
    for t in 0..threads {
        let entries = &recovered.groups[&t].entries;
        assert_eq!(entries.len() as u64, per_thread);
        assert!(entries.iter().enumerate().all(|(i, e)| e.index == i as u64 + 1
            && e.data[..] == (i as u64 + 1).to_le_bytes()));
    }
}

#[test]
fn submissions_complete_in_order_and_invalid_ones_alone_fail() {
    let disk = SimDisk::new(2);
    let (wal, _) = Wal::open(Arc::new(disk.clone()), dir(), WalOptions::default()).expect("open");
    let writer = WalWriter::start(wal, WriterOptions::default()).expect("start");
    let (tx, rx) = mpsc::channel();
    let submissions = vec![
        vec![append(1, 1, b"a")],
        // A gap: refused as a whole, including its valid first op.
        vec![append(2, 1, b"ok"), append(1, 5, b"gap")],
        vec![
            append(1, 2, b"b"),
            WalOp::HardState {
                group: 1,
                hard_state: HardState { term: 1, vote: Some(1), commit: 1 },
            },
        ],
        vec![],
    ];
    for (i, ops) in submissions.into_iter().enumerate() {
        let tx = tx.clone();
        writer.submit(ops, move |result| tx.send((i, result)).expect("send")).expect("submit");
    }
    let results: Vec<_> = (0..4).map(|_| rx.recv().expect("completion")).collect();
    assert_eq!(results.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2, 3], "in order");
    assert!(results[0].1.is_ok());
    assert!(matches!(results[1].1, Err(WalError::Invalid { group: 1, .. })), "{:?}", results[1].1);
    assert!(results[2].1.is_ok() && results[3].1.is_ok());
    drop(writer);

    disk.crash_with(CrashMode::LoseUnsynced);
    let (_, recovered) = Wal::open(Arc::new(disk), dir(), WalOptions::default()).expect("recover");
    assert_eq!(recovered.groups[&1].entries.len(), 2);
    assert!(!recovered.groups.contains_key(&2), "the refused submission left nothing");
    assert_eq!(recovered.groups[&1].hard_state.map(|h| h.commit), Some(1));
}

#[test]
fn fsync_failure_fails_every_later_submission() {
    let disk = SimDisk::new(3);
    let (wal, _) = Wal::open(Arc::new(disk.clone()), dir(), WalOptions::default()).expect("open");
    let writer = WalWriter::start(wal, WriterOptions::default()).expect("start");
    writer.write(vec![append(1, 1, b"a")]).expect("first write");
    disk.fail_next_sync();
    let err = writer.write(vec![append(1, 2, b"b")]).expect_err("fsync fails");
    assert!(matches!(err, WalError::Failed { .. }), "{err}");
    for i in 3..6 {
        let err = writer.write(vec![append(1, i, b"c")]).expect_err("refused");
        assert!(matches!(err, WalError::Failed { .. }), "{err}");
    }
    let wal = writer.shutdown().expect("shutdown");
    assert!(wal.failure().is_some());
}

#[test]
fn disk_full_fails_the_round_and_the_writer_goes_on() {
    let disk = SimDisk::new(4);
    let growing = WalOptions { preallocate: false, ..WalOptions::default() };
    let (wal, _) = Wal::open(Arc::new(disk.clone()), dir(), growing).expect("open");
    let writer = WalWriter::start(wal, WriterOptions::default()).expect("start");
    writer.write(vec![append(1, 1, b"a")]).expect("write");
    disk.set_full(true);
    let err = writer.write(vec![append(1, 2, b"b")]).expect_err("full");
    assert!(matches!(err, WalError::DiskFull { .. }), "{err}");
    disk.set_full(false);
    writer.write(vec![append(1, 2, b"b2")]).expect("write after space is freed");
    let stats = writer.stats();
    assert_eq!(stats.disk_full_rejections, 1);
    drop(writer);
    let (_, recovered) = Wal::open(Arc::new(disk), dir(), WalOptions::default()).expect("recover");
    let data: Vec<&[u8]> = recovered.groups[&1].entries.iter().map(|e| &e.data[..]).collect();
    assert_eq!(data, vec![&b"a"[..], &b"b2"[..]]);
}

#[test]
fn reserved_space_takes_appends_while_the_disk_is_full() {
    // A segment reserves its size when created, so a full disk refuses only the next
    // segment (rotation is postponed, not fatal), never an append that fits the reservation.
    let disk = SimDisk::new(6);
    let opts = WalOptions { segment_bytes_max: 4096, preallocate: true };
    let (wal, _) = Wal::open(Arc::new(disk.clone()), dir(), opts.clone()).expect("open");
    let writer = WalWriter::start(wal, WriterOptions::default()).expect("start");
    disk.set_full(true);
    for i in 1..=20u64 {
        writer.write(vec![append(1, i, &[i as u8; 100])]).expect("append into reserved space");
    }
    let err = (21..=200u64)
        .find_map(|i| writer.write(vec![append(1, i, &[i as u8; 100])]).err())
        .expect("the disk stays full past the reservation");
    assert!(matches!(err, WalError::DiskFull { .. }), "{err}");
    disk.set_full(false);
    drop(writer);
    let (_, recovered) = Wal::open(Arc::new(disk), dir(), opts).expect("recover");
    assert!(recovered.groups[&1].entries.len() >= 20);
}

#[test]
fn a_panicking_callback_does_not_stop_the_writer() {
    let disk = SimDisk::new(5);
    let (wal, _) = Wal::open(Arc::new(disk), dir(), WalOptions::default()).expect("open");
    let writer = WalWriter::start(wal, WriterOptions::default()).expect("start");
    writer.submit(vec![append(1, 1, b"a")], |_| panic!("callback bug")).expect("submit");
    writer.write(vec![append(1, 2, b"b")]).expect("the writer still works");
}

#[test]
fn real_disk_writer_round_trip() {
    let path = std::env::temp_dir().join(format!("qkv-wal-writer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    let (wal, recovered) = Wal::open(
        Arc::new(RealDisk::new()),
        &path,
        WalOptions { segment_bytes_max: 2048, preallocate: true },
    )
    .expect("open");
    assert!(recovered.groups.is_empty());
    let writer = WalWriter::start(wal, WriterOptions::default()).expect("start");
    for i in 1..=100u64 {
        writer.write(vec![append(9, i, &[i as u8; 50])]).expect("write");
    }
    let stats = writer.stats();
    assert_eq!(stats.fsyncs, 100);
    assert!(stats.segments_created > 1, "segments rotate: {stats:?}");
    drop(writer);
    let (wal, recovered) = Wal::open(
        Arc::new(RealDisk::new()),
        &path,
        WalOptions { segment_bytes_max: 2048, preallocate: true },
    )
    .expect("reopen");
    assert_eq!(recovered.groups[&9].entries.len(), 100);
    // The newest segment ends in space reserved at its creation: the end of the log, not a
    // torn write, and it stays reserved.
    assert_eq!(recovered.torn_tail, None);
    let newest = wal.segments().last().copied().expect("a segment");
    let newest = path.join(format!("wal-{newest:020}.log"));
    assert!(std::fs::metadata(&newest).expect("newest segment").len() >= 2048);
    assert!(wal.segments().len() > 1);
    drop(wal);
    std::fs::remove_dir_all(&path).expect("cleanup");
}

/// Callbacks run on the companion thread while more work waits and on the writer itself when
/// nothing does; either way they must run in submission order (LSN order), one at a time.
/// Bursts (the companion's case) alternate with waits for the last completion (the writer's
/// own case), from several submitters at once.
#[test]
fn completions_keep_lsn_order_whichever_thread_runs_them() {
    let disk = SimDisk::new(3);
    let (wal, _) = Wal::open(Arc::new(disk), dir(), WalOptions::default()).expect("open");
    let writer = Arc::new(WalWriter::start(wal, WriterOptions::default()).expect("start"));
    let completed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..4u64)
        .map(|group| {
            let (writer, completed) = (writer.clone(), completed.clone());
            std::thread::spawn(move || {
                let mut index = 0;
                for _burst in 0..20 {
                    let (tx, rx) = mpsc::channel();
                    for _ in 0..25 {
                        index += 1;
                        let (tx, completed) = (tx.clone(), completed.clone());
                        writer
                            .submit(vec![append(group, index, b"x")], move |r| {
                                completed.lock().unwrap().push(r.expect("durable"));
                                let _ = tx.send(());
                            })
                            .expect("submit");
                    }
                    for _ in 0..25 {
                        rx.recv().expect("completion");
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("submitter");
    }
    let lsns = completed.lock().unwrap().clone();
    assert_eq!(lsns.len(), 4 * 20 * 25);
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "completions ran out of LSN order");
}

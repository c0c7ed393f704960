//! The snapshot file store: naming, atomic appearance under crashes, garbage collection, temp
//! file clean-up, corruption reports, and the leader-to-follower file-to-file transfer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quorumkv_core::{ConfState, SnapshotMeta};
use quorumkv_storage::disk::{CrashMode, Disk, RealDisk, SimDisk};
use quorumkv_storage::mvcc::conformance::{assert_same_stores, populated_store};
use quorumkv_storage::mvcc::{MemStore, MvccStore, MvccTxn};
use quorumkv_storage::snapshot::{
    Accepted, SnapshotAssembler, SnapshotError, SnapshotFileStore, install, snapshot_of,
};

const DIR: &str = "/data/snap";

fn meta_with_term(term: u64) -> impl FnOnce(u64) -> SnapshotMeta {
    move |index| SnapshotMeta {
        index,
        term,
        conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
    }
}

/// A store whose applied index is `index`, with a little data.
fn store_at(index: u64) -> MemStore {
    let store = MemStore::new();
    for i in 1..=index {
        let mut txn = store.write_txn().expect("txn");
        txn.put(format!("k{}", i % 5).as_bytes(), &i.to_le_bytes(), 0).expect("put");
        txn.commit(i).expect("commit");
    }
    store
}

fn names(disk: &dyn Disk) -> Vec<String> {
    disk.list(Path::new(DIR)).expect("list")
}

#[test]
fn save_names_lists_and_reinstalls() {
    let disk = Arc::new(SimDisk::new(1));
    let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 2).expect("open");
    let store = populated_store(&MemStore::new);
    let info =
        files.save(&mut snapshot_of(&store, meta_with_term(4)).expect("snapshot")).expect("save");
    assert_eq!((info.index, info.term), (41, 4));
    assert_eq!(names(&*disk), vec!["snap-00000000000000000041-4.snap".to_string()]);
    assert_eq!(files.latest().expect("latest"), Some(info.clone()));
    let header = files.verify(&info).expect("verify");
    assert_eq!(header.meta.conf_state.voters, vec![1, 2, 3]);
    let copy = MemStore::new();
    install(&copy, &mut files.open_snapshot(&info).expect("open")).expect("install");
    assert_same_stores(&store, &copy);
}

#[test]
fn only_the_newest_snapshots_are_kept() {
    let disk = Arc::new(SimDisk::new(2));
    let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 2).expect("open");
    for index in [3u64, 5, 8, 13] {
        let store = store_at(index);
        files.save(&mut snapshot_of(&store, meta_with_term(1)).expect("snapshot")).expect("save");
    }
    let kept: Vec<u64> = files.list().expect("list").iter().map(|i| i.index).collect();
    assert_eq!(kept, vec![8, 13]);
    // A file that is not a snapshot is left alone.
    disk.put_file(Path::new("/data/snap/notes.txt"), b"hello");
    files.gc().expect("gc");
    assert!(names(&*disk).contains(&"notes.txt".to_string()));
    assert_eq!(files.list().expect("list").len(), 2);
}

#[test]
fn unfinished_writes_leave_no_snapshot_and_temp_files_are_cleaned() {
    let disk = Arc::new(SimDisk::new(3));
    let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 2).expect("open");
    let store = store_at(6);
    {
        let mut writer = snapshot_of(&store, meta_with_term(1)).expect("snapshot");
        let mut file = files.create(6, 1).expect("create");
        let chunk = writer.next_chunk().expect("chunk").expect("header chunk");
        quorumkv_storage::snapshot::ChunkSink::write_chunk(&mut file, chunk.offset, &chunk.data)
            .expect("write");
        // Dropped unfinished.
    }
    assert!(names(&*disk).is_empty(), "{:?}", names(&*disk));
    // A temp file left by a crash is removed on open.
    disk.put_file(Path::new("/data/snap/snap-00000000000000000009-1.snap.tmp"), b"partial");
    let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 2).expect("reopen");
    assert!(names(&*disk).is_empty());
    assert_eq!(files.latest().expect("latest"), None);
}

#[test]
fn a_power_cut_anywhere_in_a_save_keeps_the_old_snapshots_and_never_shows_half_a_new_one() {
    // Mutations of one full save, to spread cut points over it.
    let total = {
        let disk = Arc::new(SimDisk::new(4));
        let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 1).expect("open");
        files
            .save(&mut snapshot_of(&store_at(4), meta_with_term(1)).expect("snapshot"))
            .expect("save");
        let before = disk.stats().mutations;
        files
            .save(&mut snapshot_of(&store_at(7), meta_with_term(1)).expect("snapshot"))
            .expect("save");
        disk.stats().mutations - before
    };
    let mut saw_new = false;
    let mut saw_old = false;
    for cut in 0..=total {
        let disk = Arc::new(SimDisk::new(100 + cut));
        let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 1).expect("open");
        files
            .save(&mut snapshot_of(&store_at(4), meta_with_term(1)).expect("snapshot"))
            .expect("save");
        disk.power_off_after(cut);
        let result =
            files.save(&mut snapshot_of(&store_at(7), meta_with_term(1)).expect("snapshot"));
        disk.crash_with(CrashMode::Random);
        let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 1).expect("reopen");
        let list = files.list().expect("list");
        assert!(!list.is_empty(), "cut {cut}: every snapshot is gone");
        for info in &list {
            files
                .verify(info)
                .unwrap_or_else(|e| panic!("cut {cut}: a listed snapshot is damaged: {e}"));
        }
        if result.is_ok() {
            // The save reported success: the new snapshot must be there.
            assert!(list.iter().any(|i| i.index == 7), "cut {cut}: a saved snapshot vanished");
        }
        saw_new |= list.iter().any(|i| i.index == 7);
        saw_old |= list.iter().all(|i| i.index == 4);
        assert!(!names(&*disk).iter().any(|n| n.ends_with(".tmp")));
    }
    assert!(saw_new && saw_old);
}

#[test]
fn a_damaged_file_is_reported_with_its_path_and_not_installed() {
    let disk = Arc::new(SimDisk::new(5));
    let files = SnapshotFileStore::open(disk.clone(), Path::new(DIR), 2).expect("open");
    let info = files
        .save(&mut snapshot_of(&store_at(20), meta_with_term(2)).expect("snapshot"))
        .expect("save");
    let len = disk.file_content(&info.path).expect("file").len() as u64;
    disk.flip_bit(&info.path, len / 2, 3).expect("flip");
    let err = files.verify(&info).expect_err("damaged");
    match &err {
        SnapshotError::File { path, source } => {
            assert_eq!(path, &info.path);
            assert!(matches!(**source, SnapshotError::ChunkChecksum { .. }), "{source}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("snap-00000000000000000020-2.snap"));
    let target = store_at(3);
    let mut decoder = files.open_snapshot(&info).expect("header is intact");
    assert!(install(&target, &mut decoder).is_err());
    assert_eq!(target.applied_index(), 3);
}

#[test]
fn leader_file_to_follower_file_with_a_lost_chunk() {
    let leader_disk = Arc::new(SimDisk::new(6));
    let follower_disk = Arc::new(SimDisk::new(7));
    let leader_files =
        SnapshotFileStore::open(leader_disk, Path::new(DIR), 2).expect("leader files");
    let follower_files =
        SnapshotFileStore::open(follower_disk, Path::new(DIR), 2).expect("follower files");
    let store = populated_store(&MemStore::new);
    let writer = snapshot_of(&store, meta_with_term(9)).expect("snapshot").with_chunk_bytes(256);
    let info = leader_files.save(&mut { writer }).expect("save");

    let mut frames = leader_files.frames(&info).expect("frames");
    let mut asm =
        SnapshotAssembler::new(follower_files.create(info.index, info.term).expect("create"));
    let mut sent = 0;
    let mut dropped_one = false;
    while let Some(chunk) = frames.next() {
        let chunk = chunk.expect("chunk");
        sent += 1;
        if sent == 3 && !dropped_one {
            dropped_one = true;
            continue; // Lost on the wire.
        }
        match asm.accept(chunk.offset, &chunk.data) {
            Ok(Accepted::Complete) => break,
            Ok(_) => {}
            Err(SnapshotError::OutOfOrder { expected, .. }) => frames.seek(expected),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(dropped_one && asm.is_complete());
    let received = asm.into_sink().finish().expect("finish");
    assert_eq!(received.index, 41);
    let copy = MemStore::new();
    install(&copy, &mut follower_files.open_snapshot(&received).expect("open")).expect("install");
    assert_same_stores(&store, &copy);
}

#[test]
fn works_on_the_real_file_system() {
    let dir: PathBuf = std::env::temp_dir().join(format!("qkv-snapfiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = SnapshotFileStore::open(Arc::new(RealDisk::new()), &dir, 2).expect("open");
    let store = store_at(12);
    let info =
        files.save(&mut snapshot_of(&store, meta_with_term(3)).expect("snapshot")).expect("save");
    assert!(info.path.exists());
    let copy = MemStore::new();
    install(&copy, &mut files.open_snapshot(&info).expect("open")).expect("install");
    assert_same_stores(&store, &copy);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

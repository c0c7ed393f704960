//! The MVCC conformance suite, run against both backends.

mod mem {
    quorumkv_storage::mvcc_conformance_tests!(quorumkv_storage::mvcc::MemStore::new());
}

mod redb {
    use std::path::Path;
    use std::sync::Arc;

    use quorumkv_storage::disk::{Disk, SimDisk};
    use quorumkv_storage::mvcc::{CommitDurability, RedbOptions, RedbStore};

    /// A fresh store on its own simulated disk; deferred commits, as a node runs it.
    fn fresh() -> RedbStore {
        let disk = SimDisk::new(7);
        disk.create_dir_all(Path::new("/data")).expect("mkdir");
        let options = RedbOptions {
            durability: CommitDurability::Deferred { sync_every_commits: 16 },
            cache_bytes: 4 << 20,
        };
        RedbStore::open(Arc::new(disk), Path::new("/data/state.redb"), options).expect("open")
    }

    quorumkv_storage::mvcc_conformance_tests!(fresh());
}

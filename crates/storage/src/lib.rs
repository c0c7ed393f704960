//! Durable storage for quorumkv: the disk interface (real and simulated), the shared
//! write-ahead log, the MVCC state-machine store and snapshots.

pub mod disk;
pub mod mvcc;
pub mod snapshot;
pub mod wal;

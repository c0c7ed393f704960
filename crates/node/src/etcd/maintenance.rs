//! The whole of etcd's Maintenance service: status, alarms, defragment and leadership moves
//! come from [`super::ops::MaintenanceService`]; this adds the calls that read the store
//! itself — `Hash`, `HashKV` and the `Snapshot` stream. `Downgrade` stays Unimplemented
//! (there is no older storage format to go back to).
//!
//! Rules kept:
//! - `HashKV` is a CRC-32C (etcd's polynomial) over every version of every key at or below
//!   the revision, in the store image's order (key, then revision): replicas that applied
//!   the same log prefix and the same compaction give the same hash whatever their own
//!   current revision, which is what `etcdctl endpoint hashkv --cluster` compares. The
//!   response carries the compacted revision, so hashes are only compared between equal
//!   compactions, as etcd's are.
//! - `Hash` also covers the store's replicated metadata (the lease and session tables):
//!   etcd's "whole backend" hash, for tests. The member directory is left out: each node
//!   fills in addresses from its own view (its own client address, peers' as learned), so
//!   it is not the same bytes on every member.
//! - `Snapshot` streams the store's point-in-time snapshot image (the `quorumkv-storage`
//!   snapshot format, checksummed, as `docs/FORMAT.md` describes) in etcd's envelope:
//!   etcd sends its database file, a multiple of 512 bytes, then the SHA-256 of it, and
//!   etcdctl refuses a download whose length is not 32 more than a multiple of 512. So the
//!   stream is zero-padded to a multiple of 512 bytes and followed by the SHA-256 of stream
//!   and padding. A reader finds the end of the quorumkv stream at its trailer frame. The
//!   whole is spooled to a temporary file first so each message can say exactly how many
//!   bytes remain, as etcd's do; the file is removed when the stream ends. The snapshot
//!   header's term is the current term (at least that of the image's last entry) and its
//!   membership the current one.
//! - Reading the store runs on blocking threads, never on the async workers.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use quorumkv_core::{ConfState, SnapshotMeta};
use quorumkv_etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use quorumkv_etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use quorumkv_kv::EtcdError;
use quorumkv_storage::mvcc::{ImageRecord, ImageSource, MvccError, MvccStore, RedbStore};
use quorumkv_storage::snapshot::snapshot_of;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Status, async_trait};

use super::Api;
use super::ops::{self, reported_version};
use super::sha256::Sha256;

/// Bytes per snapshot message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK_BYTES: usize = 32 << 10;
/// Snapshot messages buffered ahead of a slow client.
const SNAPSHOT_BUFFER: usize = 8;

static SPOOL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The metadata entry under which the group keeps its member directory (see the module
/// rules for why `Hash` leaves it out).
const MEMBER_DIRECTORY_META: &[u8] = b"quorumkv/members";

/// What a hash covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashScope {
    /// Key versions at or below this revision (etcd's HashKV).
    KvUpTo(i64),
    /// Everything: metadata and every version (etcd's Hash).
    Everything,
}

/// The outcome of hashing a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreHash {
    /// CRC-32C of the records in scope.
    pub hash: u32,
    /// The revision hashed up to (the image's current revision for `Everything`).
    pub revision: i64,
    /// The store's compacted revision.
    pub compacted: i64,
    /// The store's current revision when the image was taken.
    pub current: i64,
}

/// Why a hash could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The revision is compacted or in the future.
    #[error("{0}")]
    Etcd(EtcdError),
    /// The store failed.
    #[error("quorumkv: reading the store: {0}")]
    Store(#[from] MvccError),
}

fn feed(h: u32, bytes: &[u8]) -> u32 {
    // Length first, so ("ab","c") and ("a","bc") hash differently.
    let h = crc32c::crc32c_append(h, &(bytes.len() as u64).to_le_bytes());
    crc32c::crc32c_append(h, bytes)
}

/// Hashes `store` (see the module rules). `KvUpTo(r)` with `r <= 0` means the current
/// revision.
pub fn hash_store<S: MvccStore + ?Sized>(
    store: &S,
    scope: HashScope,
) -> Result<StoreHash, HashError> {
    let mut image = store.image()?;
    let info = image.info();
    let upto = match scope {
        HashScope::KvUpTo(r) if r <= 0 => Some(info.revision),
        HashScope::KvUpTo(r) => Some(r),
        HashScope::Everything => None,
    };
    if let Some(r) = upto {
        if r > info.revision {
            return Err(HashError::Etcd(EtcdError::FutureRevision));
        }
        if r < info.compacted_revision {
            return Err(HashError::Etcd(EtcdError::Compacted));
        }
    }
    let mut h = 0u32;
    let mut records = Vec::new();
    loop {
        records.clear();
        let more = image.next_records(1 << 20, &mut records)?;
        for rec in &records {
            match rec {
                ImageRecord::Meta { name, value }
                    if upto.is_none() && name.as_ref() != MEMBER_DIRECTORY_META =>
                {
                    h = feed(h, b"meta");
                    h = feed(h, name);
                    h = feed(h, value);
                }
                ImageRecord::Meta { .. } => {}
                ImageRecord::Version {
                    key,
                    revision,
                    tombstone,
                    create_revision,
                    version,
                    lease,
                    value,
                } => {
                    if upto.is_some_and(|r| revision.main > r) {
                        continue;
                    }
                    h = feed(h, key);
                    h = feed(h, &revision.main.to_le_bytes());
                    h = feed(h, &revision.sub.to_le_bytes());
                    h = feed(h, &[u8::from(*tombstone)]);
                    h = feed(h, &create_revision.to_le_bytes());
                    h = feed(h, &version.to_le_bytes());
                    h = feed(h, &lease.to_le_bytes());
                    h = feed(h, value);
                }
            }
        }
        if !more {
            break;
        }
    }
    Ok(StoreHash {
        hash: h,
        revision: upto.unwrap_or(info.revision),
        compacted: info.compacted_revision,
        current: info.revision,
    })
}

/// A file removed when dropped.
struct SpoolFile(PathBuf);

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The Maintenance service.
pub struct MaintenanceService {
    base: ops::MaintenanceService,
    api: Api,
}

impl MaintenanceService {
    /// The Maintenance service over `api`.
    pub fn new(api: Api) -> Self {
        Self { base: ops::MaintenanceService::new(api.clone()), api }
    }

    async fn hash_blocking(&self, scope: HashScope) -> Result<StoreHash, Status> {
        let store = self.api.group().shared.store.clone();
        let result = tokio::task::spawn_blocking(move || hash_store(&*store, scope))
            .await
            .map_err(|e| Status::internal(format!("quorumkv: hashing stopped: {e}")))?;
        result.map_err(|e| match e {
            HashError::Etcd(etcd) => {
                Status::new(tonic::Code::from(etcd.grpc_code()), etcd.to_string())
            }
            HashError::Store(m) => Status::internal(format!("quorumkv: reading the store: {m}")),
        })
    }
}

/// Writes the store's snapshot to a spool file; returns the file and its length.
fn spool_snapshot(store: &RedbStore, meta: SnapshotMeta) -> Result<(SpoolFile, u64), String> {
    let path = std::env::temp_dir().join(format!(
        "quorumkv-snapshot-{}-{}.part",
        std::process::id(),
        SPOOL_COUNTER.fetch_add(1, Relaxed)
    ));
    let mut writer = snapshot_of(store, |index| SnapshotMeta { index, ..meta })
        .map_err(|e| format!("taking the store image: {e}"))?;
    let file =
        std::fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let spool = SpoolFile(path);
    let mut out = HashingWriter { inner: std::io::BufWriter::new(file), sha: Sha256::new() };
    let len = writer.write_all_to(&mut out).map_err(|e| format!("writing the snapshot: {e}"))?;
    let padding = (ETCD_SNAPSHOT_ALIGN - len % ETCD_SNAPSHOT_ALIGN) % ETCD_SNAPSHOT_ALIGN;
    out.write_all(&vec![0u8; padding as usize])
        .map_err(|e| format!("writing the snapshot: {e}"))?;
    let HashingWriter { mut inner, sha } = out;
    inner.write_all(&sha.finish()).map_err(|e| format!("writing the snapshot: {e}"))?;
    inner.flush().map_err(|e| format!("writing the snapshot: {e}"))?;
    Ok((spool, len + padding + 32))
}

/// etcd's snapshot body is a whole number of these; its SHA-256 follows.
const ETCD_SNAPSHOT_ALIGN: u64 = 512;

/// Writes through and hashes what it wrote.
struct HashingWriter<W: Write> {
    inner: W,
    sha: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        req: tonic::Request<AlarmRequest>,
    ) -> Result<tonic::Response<AlarmResponse>, Status> {
        self.base.alarm(req).await
    }

    async fn status(
        &self,
        req: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, Status> {
        self.base.status(req).await
    }

    async fn defragment(
        &self,
        req: tonic::Request<DefragmentRequest>,
    ) -> Result<tonic::Response<DefragmentResponse>, Status> {
        self.base.defragment(req).await
    }

    async fn move_leader(
        &self,
        req: tonic::Request<MoveLeaderRequest>,
    ) -> Result<tonic::Response<MoveLeaderResponse>, Status> {
        self.base.move_leader(req).await
    }

    async fn hash(
        &self,
        _req: tonic::Request<HashRequest>,
    ) -> Result<tonic::Response<HashResponse>, Status> {
        let h = self.hash_blocking(HashScope::Everything).await?;
        Ok(tonic::Response::new(HashResponse {
            header: Some(self.api.header(h.current)),
            hash: h.hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: tonic::Request<HashKvRequest>,
    ) -> Result<tonic::Response<HashKvResponse>, Status> {
        let h = self.hash_blocking(HashScope::KvUpTo(req.get_ref().revision)).await?;
        Ok(tonic::Response::new(HashKvResponse {
            header: Some(self.api.header(h.current)),
            hash: h.hash,
            compact_revision: h.compacted,
            hash_revision: h.revision,
        }))
    }

    async fn snapshot(
        &self,
        _req: tonic::Request<SnapshotRequest>,
    ) -> Result<tonic::Response<BoxStream<SnapshotResponse>>, Status> {
        let store = self.api.group().shared.store.clone();
        let st = self.api.group().status();
        let meta = SnapshotMeta {
            index: 0,
            term: st.term,
            conf_state: ConfState {
                voters: st.voters.clone(),
                learners: st.learners.clone(),
                ..ConfState::default()
            },
        };
        let (spool, len) = tokio::task::spawn_blocking(move || spool_snapshot(&store, meta))
            .await
            .map_err(|e| Status::internal(format!("quorumkv: snapshot stopped: {e}")))?
            .map_err(|e| Status::internal(format!("quorumkv: snapshot: {e}")))?;
        let header = self.api.header(0);
        let version = reported_version();
        let (tx, rx) = mpsc::channel(SNAPSHOT_BUFFER);
        tokio::task::spawn_blocking(move || {
            let send_err = |e: String| {
                let _ = tx.blocking_send(Err(Status::internal(format!("quorumkv: snapshot: {e}"))));
            };
            let mut file = match std::fs::File::open(&spool.0) {
                Ok(f) => f,
                Err(e) => return send_err(e.to_string()),
            };
            let mut sent = 0u64;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            while sent < len {
                let n = match file.read(&mut buf) {
                    Ok(0) => return send_err("the spool file ended early".into()),
                    Ok(n) => n,
                    Err(e) => return send_err(e.to_string()),
                };
                sent += n as u64;
                let msg = SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: len - sent,
                    blob: bytes::Bytes::copy_from_slice(&buf[..n]),
                    version: version.clone(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    // The client went away; the spool file goes with `spool`.
                    return;
                }
            }
            drop(spool);
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use quorumkv_storage::mvcc::{MemStore, MvccTxn as _};

    use super::*;

    fn put(store: &MemStore, key: &str, value: &str, index: u64) {
        let mut txn = store.write_txn().expect("txn");
        txn.put(key.as_bytes(), value.as_bytes(), 0).expect("put");
        txn.commit(index).expect("commit");
    }

    #[test]
    fn hash_kv_depends_on_history_up_to_the_revision_only() {
        let a = MemStore::new();
        let b = MemStore::new();
        for (i, (k, v)) in [("a", "1"), ("b", "2"), ("a", "3")].into_iter().enumerate() {
            put(&a, k, v, i as u64 + 1);
            put(&b, k, v, i as u64 + 1);
        }
        // `b` has moved on: the hash at a common revision stays equal.
        put(&b, "c", "4", 4);
        let at = a.current_revision();
        let ha = hash_store(&a, HashScope::KvUpTo(at)).expect("hash a");
        let hb = hash_store(&b, HashScope::KvUpTo(at)).expect("hash b");
        assert_eq!(ha.hash, hb.hash);
        assert_eq!(ha.revision, at);
        let hb_now = hash_store(&b, HashScope::KvUpTo(0)).expect("hash b now");
        assert_ne!(hb_now.hash, hb.hash, "a later write changes the current hash");
        assert_eq!(hb_now.revision, b.current_revision());
        assert!(matches!(
            hash_store(&a, HashScope::KvUpTo(at + 1)),
            Err(HashError::Etcd(EtcdError::FutureRevision))
        ));
        let mut txn = a.write_txn().expect("txn");
        txn.compact(at).expect("compact");
        txn.commit(4).expect("commit");
        assert!(matches!(
            hash_store(&a, HashScope::KvUpTo(at - 1)),
            Err(HashError::Etcd(EtcdError::Compacted))
        ));
    }
}

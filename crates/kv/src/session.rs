//! The client session table: exactly-once execution of commands (Raft dissertation §6.3).
//!
//! Rules this module keeps:
//! - A client picks a session id (non-zero, random) and numbers its commands 1, 2, 3, ...
//!   For each session the table keeps the last sequence number applied, the log index it was
//!   applied at, and the encoded answer. Session 0 means "no session": no deduplication.
//! - A command whose sequence number equals the last one is a retry: it gets the stored
//!   answer and changes nothing. A lower number is stale. An unknown session accepts only
//!   sequence number 1; anything else means the session was evicted (or never opened), and
//!   the command fails with "session expired" rather than risk running twice.
//! - A client has at most one command in flight per session: a command overtaken by a later
//!   one of the same session is answered as stale, not run.
//! - The table is bounded, deterministically, from the log alone: after every applied entry,
//!   sessions idle for more than `session_idle_entries` entries are evicted, then the least
//!   recently used ones while there are more than `max_sessions`. Both settings must be equal
//!   on every replica of a group.
//! - The table lives in the store's metadata, written in the same transaction as the data:
//!   256 buckets of (session, seq, last index) records, plus one answer entry per session.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use quorumkv_core::LogIndex;
use quorumkv_etcd_proto::internal::{CommandResponse, SessionBucket, SessionEntry, SessionReply};
use quorumkv_storage::mvcc::{MvccError, MvccStore, MvccTxn};

const SESSION_BUCKETS: usize = 256;

fn bucket_of(session: u64) -> u8 {
    (session % SESSION_BUCKETS as u64) as u8
}

fn bucket_meta_name(bucket: u8) -> Vec<u8> {
    let mut name = b"kv/session/".to_vec();
    name.push(bucket);
    name
}

fn reply_meta_name(session: u64) -> Vec<u8> {
    let mut name = b"kv/reply/".to_vec();
    name.extend_from_slice(&session.to_be_bytes());
    name
}

/// What the table says about an incoming command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionCheck {
    /// Run it.
    Fresh,
    /// Already applied: answer with the stored reply.
    Duplicate,
    /// Older than the last applied command of its session.
    Stale {
        /// The session's last applied sequence number.
        last_seq: u64,
    },
    /// Unknown session and not its first command.
    Expired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    seq: u64,
    last_index: LogIndex,
}

/// The session table in memory, mirroring the store.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    sessions: HashMap<u64, Session>,
    /// (last index, session), for eviction in apply order.
    by_index: BTreeSet<(LogIndex, u64)>,
    /// Sessions per bucket, to re-encode one bucket without a scan.
    buckets: Vec<BTreeSet<u64>>,
}

impl SessionTable {
    fn empty() -> Self {
        Self { buckets: vec![BTreeSet::new(); SESSION_BUCKETS], ..Self::default() }
    }

    /// Loads the table from the store's metadata.
    pub(crate) fn load<S: MvccStore + ?Sized>(store: &S) -> Result<Self, MvccError> {
        let mut table = Self::empty();
        for b in 0..SESSION_BUCKETS {
            let Some(raw) = store.get_meta(&bucket_meta_name(b as u8))? else {
                continue;
            };
            let bucket = SessionBucket::decode(raw).map_err(|e| {
                MvccError::Corrupt(format!("session table bucket {b} does not decode: {e}"))
            })?;
            for e in bucket.sessions {
                table.insert(e.session, Session { seq: e.seq, last_index: e.last_index });
            }
        }
        Ok(table)
    }

    fn insert(&mut self, id: u64, s: Session) {
        if let Some(old) = self.sessions.insert(id, s) {
            self.by_index.remove(&(old.last_index, id));
        }
        self.by_index.insert((s.last_index, id));
        if let Some(b) = self.buckets.get_mut(usize::from(bucket_of(id))) {
            b.insert(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(old) = self.sessions.remove(&id) {
            self.by_index.remove(&(old.last_index, id));
        }
        if let Some(b) = self.buckets.get_mut(usize::from(bucket_of(id))) {
            b.remove(&id);
        }
    }

    /// Sessions tracked.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// (last seq, last index) of a session.
    pub(crate) fn get(&self, id: u64) -> Option<(u64, LogIndex)> {
        self.sessions.get(&id).map(|s| (s.seq, s.last_index))
    }

    pub(crate) fn check(&self, id: u64, seq: u64) -> SessionCheck {
        match self.sessions.get(&id) {
            None if seq == 1 => SessionCheck::Fresh,
            None => SessionCheck::Expired,
            Some(s) if seq > s.seq => SessionCheck::Fresh,
            Some(s) if seq == s.seq => SessionCheck::Duplicate,
            Some(s) => SessionCheck::Stale { last_seq: s.seq },
        }
    }

    /// The stored reply of a session's last command, as `txn` sees it (the command may have
    /// been applied earlier in the same transaction).
    pub(crate) fn load_reply<T: MvccTxn>(txn: &T, id: u64) -> Result<CommandResponse, MvccError> {
        let raw = txn
            .get_meta(&reply_meta_name(id))?
            .ok_or_else(|| MvccError::Corrupt(format!("session {id} has no stored reply")))?;
        let reply = SessionReply::decode(raw).map_err(|e| {
            MvccError::Corrupt(format!("session {id}'s reply does not decode: {e}"))
        })?;
        reply.response.ok_or_else(|| MvccError::Corrupt(format!("session {id}'s reply is empty")))
    }

    /// Records that session `id` applied `seq` at `index` with `reply`, in memory and in
    /// `txn`.
    pub(crate) fn record<T: MvccTxn>(
        &mut self,
        txn: &mut T,
        id: u64,
        seq: u64,
        index: LogIndex,
        reply: CommandResponse,
    ) -> Result<(), MvccError> {
        self.insert(id, Session { seq, last_index: index });
        txn.set_meta(
            &reply_meta_name(id),
            &SessionReply { seq, response: Some(reply) }.encode_to_vec(),
        )?;
        self.persist_bucket(txn, bucket_of(id))
    }

    /// Evicts, as of applying `index`, the sessions idle for more than `idle_entries`
    /// entries, then the least recently used beyond `max_sessions`, in memory and in `txn`.
    /// Returns how many went.
    pub(crate) fn evict<T: MvccTxn>(
        &mut self,
        txn: &mut T,
        index: LogIndex,
        max_sessions: usize,
        idle_entries: u64,
    ) -> Result<usize, MvccError> {
        let mut gone: Vec<u64> = Vec::new();
        let mut remaining = self.sessions.len();
        for &(last_index, id) in &self.by_index {
            let idle = index.saturating_sub(last_index) > idle_entries;
            if idle || remaining > max_sessions {
                gone.push(id);
                remaining -= 1;
            } else {
                break;
            }
        }
        let mut touched = BTreeSet::new();
        for &id in &gone {
            self.remove(id);
            txn.delete_meta(&reply_meta_name(id))?;
            touched.insert(bucket_of(id));
        }
        for b in touched {
            self.persist_bucket(txn, b)?;
        }
        Ok(gone.len())
    }

    fn persist_bucket<T: MvccTxn>(&self, txn: &mut T, b: u8) -> Result<(), MvccError> {
        let ids = self.buckets.get(usize::from(b)).cloned().unwrap_or_default();
        let sessions: Vec<SessionEntry> = ids
            .into_iter()
            .filter_map(|id| {
                self.sessions.get(&id).map(|s| SessionEntry {
                    session: id,
                    seq: s.seq,
                    last_index: s.last_index,
                })
            })
            .collect();
        let name = bucket_meta_name(b);
        if sessions.is_empty() {
            txn.delete_meta(&name)
        } else {
            txn.set_meta(&name, &SessionBucket { sessions }.encode_to_vec())
        }
    }
}

//! [`StateMachine`]: what every CP replica applies, in log order, on top of an `MvccStore`.
//!
//! Rules this module keeps:
//! - Entries are applied in batches ([`StateMachine::apply_batch`]; [`StateMachine::apply`] is
//!   a batch of one): one store write transaction per batch, each entry sealed as a command of
//!   its own ([`MvccTxn::seal`]) so it gets its own revision, events and answer, and one
//!   commit with the last entry's index. Every entry counts as applied whatever happens to it:
//!   a command that fails deterministically, a retry, a stale or malformed command all still
//!   move the applied index, so a restart replays only the log suffix.
//! - Batching never changes an outcome: an entry sees the store exactly as it would after
//!   the entries before it were committed one by one (reads, compacted revision and session
//!   replies come from the transaction), and a deterministic failure undoes only its own
//!   entry's changes ([`MvccTxn::rollback_to_seal`]). Replicas may cut the log into different
//!   batches and still agree byte for byte.
//! - All state is in the store: data, leases and sessions (metadata written in the same
//!   transaction). The in-memory tables are caches rebuilt by [`StateMachine::open`] and
//!   [`StateMachine::reload`]. So a snapshot of the store is a snapshot of the state machine.
//! - Deterministic failures ([`ApplyError::Rejected`]) leave nothing behind but the applied
//!   index and the session's stored answer; fatal ones poison the state machine: every later
//!   call fails until the node restarts and reopens it (or calls [`StateMachine::reload`]).
//!   A fatal error in a batch commits none of it, while the in-memory tables have already
//!   taken the entries before it: poisoning is what keeps them from being used that way.
//! - The answers' header revision is the store revision after the command; the API layer
//!   fills in cluster id, member id and Raft term.
//!
//! Stored format (metadata entries of the MVCC store, values are protobuf messages of
//! `quorumkv.internal`; part of the on-disk and snapshot format, so add fields, never
//! renumber):
//!
//! | meta name | value |
//! |---|---|
//! | `kv/lease/` + 1 byte `b` | `LeaseBucket`: every lease whose id mod 256 is `b` (id, TTL) |
//! | `kv/session/` + 1 byte `b` | `SessionBucket`: every session whose id mod 256 is `b` (session, last seq, last index) |
//! | `kv/reply/` + session id (8 bytes, big-endian) | `SessionReply`: the last seq and its `CommandResponse` |
//!
//! A bucket with nothing in it is deleted rather than stored empty. Keys attached to a lease
//! are not stored apart: they are the keys whose latest version carries the lease id.

use std::io::Read;
use std::sync::Arc;

use quorumkv_core::LogIndex;
use quorumkv_etcd_proto::etcdserverpb::{
    LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveResponse, RangeRequest, RangeResponse,
};
use quorumkv_storage::mvcc::{Event, MvccError, MvccStore, MvccTxn};
use quorumkv_storage::snapshot::{SnapshotDecoder, SnapshotError, SnapshotHeader, install};

use crate::command::{
    Limits, MAX_TXN_OPS_DEFAULT, Response, decode_command, decode_reply, encode_reply,
};
use crate::error::{ApplyError, EtcdError};
use crate::exec::{Effect, Exec, ExecConfig, ExecError};
use crate::lease::LeaseTable;
use crate::read::{self, header};
use crate::session::{SessionCheck, SessionTable};

/// Settings of a state machine. Every field must be equal on all replicas of a group: they
/// decide what commands do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most compares and operations per list in a txn (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Smallest lease TTL, in seconds: shorter grants are raised to it (etcd derives it from
    /// the election timeout; 2 s for etcd's defaults).
    pub lease_ttl_min_secs: i64,
    /// Most client sessions kept; beyond it the least recently used go.
    pub max_sessions: usize,
    /// A session unused for more than this many applied entries goes.
    pub session_idle_entries: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_txn_ops: MAX_TXN_OPS_DEFAULT,
            lease_ttl_min_secs: 2,
            max_sessions: 10_000,
            session_idle_entries: 1_000_000,
        }
    }
}

/// A change to the lease table, for the [`crate::LeaseClock`]s of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// A lease was granted with this TTL in seconds.
    Granted {
        /// Lease id.
        id: i64,
        /// Time to live, seconds.
        ttl: i64,
    },
    /// A lease was revoked or expired; its keys are gone.
    Revoked {
        /// Lease id.
        id: i64,
    },
}

/// What applying a command gave.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandResult {
    /// The command ran now.
    Applied(Response),
    /// A retry of the session's last command: the answer it got then; nothing changed.
    Duplicate(Response),
    /// Older than the session's last command: not run, nothing changed.
    Stale {
        /// The session's last applied sequence number.
        last_seq: u64,
    },
}

/// The result of [`StateMachine::apply`] for a command that did not fail.
#[derive(Clone, Debug, PartialEq)]
pub struct ApplyOutcome {
    /// The client session of the command (0 = none).
    pub session: u64,
    /// Its sequence number.
    pub seq: u64,
    /// What happened.
    pub result: CommandResult,
    /// Store revision after the command.
    pub revision: i64,
    /// The changes it made, in order (all at `revision`), for the watch hub. A put's event
    /// carries no `prev_kv` (that would cost every put a row read): the hub reads it for the
    /// watchers that ask for it.
    pub events: Vec<Event>,
    /// Lease grants and revocations it made, for the lease clocks.
    pub lease_changes: Vec<LeaseChange>,
}

/// The etcd state machine of one CP replica.
pub struct StateMachine<S: MvccStore> {
    store: Arc<S>,
    config: Config,
    leases: LeaseTable,
    sessions: SessionTable,
    poisoned: bool,
}

impl<S: MvccStore> std::fmt::Debug for StateMachine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied_index", &self.store.applied_index())
            .field("revision", &self.store.current_revision())
            .field("leases", &self.leases.len())
            .field("sessions", &self.sessions.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl<S: MvccStore> StateMachine<S> {
    /// Opens the state machine over `store`, loading the lease and session tables from it.
    pub fn open(store: Arc<S>, config: Config) -> Result<Self, ApplyError> {
        let leases = LeaseTable::load(&*store).map_err(ApplyError::Store)?;
        let sessions = SessionTable::load(&*store).map_err(ApplyError::Store)?;
        Ok(Self { store, config, leases, sessions, poisoned: false })
    }

    /// The store (share it with readers: reads need no lock on the state machine).
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> LogIndex {
        self.store.applied_index()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.store.current_revision()
    }

    /// Applies the log entry at `index` (entries strictly in order; gaps are allowed for
    /// entries that carry no command, such as membership changes). A batch of one: see
    /// [`StateMachine::apply_batch`].
    ///
    /// `Ok` for a command that ran, a retry and a stale command; `Err(Rejected)` for a
    /// deterministic failure (also when a retried command had failed); any other `Err` is
    /// fatal.
    pub fn apply(&mut self, index: LogIndex, data: &[u8]) -> Result<ApplyOutcome, ApplyError> {
        let mut outcomes = self.apply_batch(&[(index, data)])?;
        outcomes.pop().ok_or_else(|| {
            ApplyError::Store(MvccError::Corrupt("a batch of one entry gave no outcome".into()))
        })?
    }

    /// Applies log entries in one store write transaction, committed once with the last
    /// entry's index. Indexes must increase (gaps are allowed: entries that carry no command,
    /// such as membership changes, are applied elsewhere) and start above the applied index.
    ///
    /// Returns one result per entry, in order, each exactly what [`StateMachine::apply`]
    /// would have returned for it had the entries been applied one by one: `Ok` for a command
    /// that ran, a retry and a stale command, `Err(Rejected)` for a deterministic failure
    /// (an entry with empty data, as a Raft leader's no-op has, is malformed and answered so).
    /// The outer `Err` is fatal and nothing of the batch is committed: `OutOfOrder` (a caller
    /// bug, the state machine is left as it was) or a store failure (the state machine is
    /// poisoned). Answer clients only after this returns: until then nothing is committed.
    pub fn apply_batch(
        &mut self,
        entries: &[(LogIndex, &[u8])],
    ) -> Result<Vec<Result<ApplyOutcome, ApplyError>>, ApplyError> {
        if self.poisoned {
            return Err(ApplyError::Poisoned);
        }
        let Some(&(last, _)) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut applied = self.store.applied_index();
        for &(index, _) in entries {
            if index <= applied {
                return Err(ApplyError::OutOfOrder { index, applied });
            }
            applied = index;
        }
        let result = self.apply_in_one_txn(entries, last);
        if result.is_err() {
            // The tables may hold entries whose transaction was never committed.
            self.poisoned = true;
        }
        result
    }

    fn apply_in_one_txn(
        &mut self,
        entries: &[(LogIndex, &[u8])],
        last: LogIndex,
    ) -> Result<Vec<Result<ApplyOutcome, ApplyError>>, ApplyError> {
        let store = Arc::clone(&self.store);
        let mut txn = store.write_txn().map_err(ApplyError::Store)?;
        // A put then reads no row; the watch hub reads prev_kv for the watchers that want it.
        txn.set_events_carry_prev_kv(false);
        let mut outcomes = Vec::with_capacity(entries.len());
        for &(index, data) in entries {
            match self.apply_entry(&mut txn, index, data) {
                // Dropping `txn` on the way out discards the whole batch.
                Err(e) if !e.is_deterministic() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        let commit = txn.commit(last).map_err(ApplyError::Store)?;
        debug_assert!(commit.events.is_empty(), "every entry was sealed before the commit");
        Ok(outcomes)
    }

    /// Applies one entry inside `txn` and seals it. `Err` is deterministic (the entry is
    /// answered with it) unless `is_deterministic` says otherwise (the batch must stop).
    fn apply_entry<T: MvccTxn>(
        &mut self,
        txn: &mut T,
        index: LogIndex,
        data: &[u8],
    ) -> Result<ApplyOutcome, ApplyError> {
        let cmd = match decode_command(data) {
            Ok(cmd) => cmd,
            Err(e) => {
                self.seal_nothing(txn, index)?;
                return Err(e.into());
            }
        };
        let (session, seq) = (cmd.session, cmd.seq);
        let unchanged = |revision, result| ApplyOutcome {
            session,
            seq,
            result,
            revision,
            events: Vec::new(),
            lease_changes: Vec::new(),
        };
        if session != 0 {
            match self.sessions.check(session, seq) {
                SessionCheck::Fresh => {}
                SessionCheck::Duplicate => {
                    let stored =
                        SessionTable::load_reply(&*txn, session).map_err(ApplyError::Store)?;
                    let reply = decode_reply(stored).ok_or_else(|| {
                        ApplyError::Store(MvccError::Corrupt(format!(
                            "session {session}'s stored reply is of an unknown kind"
                        )))
                    })?;
                    let revision = self.seal_nothing(txn, index)?;
                    return match reply {
                        Ok(response) => Ok(unchanged(revision, CommandResult::Duplicate(response))),
                        Err(e) => Err(e.into()),
                    };
                }
                SessionCheck::Stale { last_seq } => {
                    let revision = self.seal_nothing(txn, index)?;
                    return Ok(unchanged(revision, CommandResult::Stale { last_seq }));
                }
                SessionCheck::Expired => {
                    self.seal_nothing(txn, index)?;
                    return Err(EtcdError::SessionExpired.into());
                }
            }
        }

        // The compacted revision as this entry would see it after the earlier ones committed.
        let compacted = txn.compacted_revision();
        let exec_config = ExecConfig {
            limits: Limits { max_txn_ops: self.config.max_txn_ops },
            lease_ttl_min_secs: self.config.lease_ttl_min_secs,
        };
        let ran = match &cmd.request {
            None => Err(ExecError::Etcd(EtcdError::MalformedCommand)),
            Some(request) => {
                let mut exec = Exec::new(&mut *txn, &self.leases, exec_config, compacted);
                exec.run(index, request).map(|response| (response, exec.effects))
            }
        };
        let (result, effects) = match ran {
            Ok((response, effects)) => (Ok(response), effects),
            Err(ExecError::Etcd(e)) => {
                // Drop every change the request made; keep only the bookkeeping below.
                txn.rollback_to_seal().map_err(ApplyError::Store)?;
                (Err(e), Vec::new())
            }
            Err(ExecError::Fatal(e)) => return Err(ApplyError::Store(e)),
        };

        // From here on nothing can fail deterministically: update the tables in memory and
        // in the transaction, then seal.
        let lease_changes = self.apply_effects(txn, &effects)?;
        if session != 0 {
            self.sessions
                .record(txn, session, seq, index, encode_reply(&result))
                .map_err(ApplyError::Store)?;
        }
        self.evict_sessions(txn, index)?;
        let sealed = txn.seal().map_err(ApplyError::Store)?;
        let response = result?;
        debug_assert!(
            response.revision() == sealed.revision,
            "header revision {} but the store sealed at {}",
            response.revision(),
            sealed.revision
        );
        Ok(ApplyOutcome {
            session,
            seq,
            result: CommandResult::Applied(response),
            revision: sealed.revision,
            events: sealed.events,
            lease_changes,
        })
    }

    /// Seals an entry that changes nothing but the session table's evictions; returns the
    /// (unchanged) revision.
    fn seal_nothing<T: MvccTxn>(
        &mut self,
        txn: &mut T,
        index: LogIndex,
    ) -> Result<i64, ApplyError> {
        self.evict_sessions(txn, index)?;
        let sealed = txn.seal().map_err(ApplyError::Store)?;
        debug_assert!(sealed.events.is_empty(), "an entry that changed nothing has events");
        Ok(sealed.revision)
    }

    fn evict_sessions<T: MvccTxn>(
        &mut self,
        txn: &mut T,
        index: LogIndex,
    ) -> Result<(), ApplyError> {
        self.sessions
            .evict(txn, index, self.config.max_sessions.max(1), self.config.session_idle_entries)
            .map_err(ApplyError::Store)?;
        Ok(())
    }

    fn apply_effects<T: MvccTxn>(
        &mut self,
        txn: &mut T,
        effects: &[Effect],
    ) -> Result<Vec<LeaseChange>, ApplyError> {
        let mut changes = Vec::new();
        for effect in effects {
            match effect {
                Effect::Attach(id, key) => self.leases.attach(*id, key.clone()),
                Effect::Detach(id, key) => self.leases.detach(*id, key),
                Effect::Grant(id, ttl) => {
                    self.leases.grant(*id, *ttl);
                    self.leases.persist_bucket_of(txn, *id).map_err(ApplyError::Store)?;
                    changes.push(LeaseChange::Granted { id: *id, ttl: *ttl });
                }
                Effect::Revoke(id) => {
                    self.leases.remove(*id);
                    self.leases.persist_bucket_of(txn, *id).map_err(ApplyError::Store)?;
                    changes.push(LeaseChange::Revoked { id: *id });
                }
            }
        }
        Ok(changes)
    }

    /// Serves a range read from the store (see [`crate::read::range`]).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        read::range(&*self.store, req)
    }

    /// etcd's `LeaseTimeToLive`: `remaining_secs` comes from the leader's
    /// [`crate::LeaseClock`]. An unknown lease answers TTL -1, as etcd does.
    pub fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
        remaining_secs: i64,
    ) -> LeaseTimeToLiveResponse {
        let hdr = Some(header(self.store.current_revision()));
        match self.leases.get(id) {
            None => LeaseTimeToLiveResponse { header: hdr, id, ttl: -1, ..Default::default() },
            Some(l) => LeaseTimeToLiveResponse {
                header: hdr,
                id,
                ttl: remaining_secs.clamp(0, l.ttl),
                granted_ttl: l.ttl,
                keys: if keys { l.keys.iter().cloned().collect() } else { Vec::new() },
            },
        }
    }

    /// etcd's `LeaseLeases`: every lease id, in id order.
    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: Some(header(self.store.current_revision())),
            leases: self.leases.ids_and_ttls().map(|(id, _)| LeaseStatus { id }).collect(),
        }
    }

    /// Every lease with its TTL in seconds, in id order (to seed a [`crate::LeaseClock`]).
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.leases.ids_and_ttls().collect()
    }

    /// The keys attached to a lease, in key order; `None` for an unknown lease.
    pub fn lease_keys(&self, id: i64) -> Option<Vec<bytes::Bytes>> {
        self.leases.get(id).map(|l| l.keys.iter().cloned().collect())
    }

    /// A session's last applied sequence number and the index it was applied at.
    pub fn session(&self, id: u64) -> Option<(u64, LogIndex)> {
        self.sessions.get(id)
    }

    /// Number of sessions in the table.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Replaces the whole state with a snapshot (atomically: on error the store is as it
    /// was), then reloads the tables. Returns the snapshot's header.
    pub fn install_snapshot<R: Read>(
        &mut self,
        decoder: &mut SnapshotDecoder<R>,
    ) -> Result<SnapshotHeader, SnapshotError> {
        let header = install(&*self.store, decoder)?;
        self.reload().map_err(|e| match e {
            ApplyError::Store(m) => SnapshotError::Store(m),
            other => SnapshotError::Store(MvccError::Corrupt(other.to_string())),
        })?;
        Ok(header)
    }

    /// Reloads the lease and session tables from the store (after the store was replaced
    /// from outside) and clears a poisoned state.
    pub fn reload(&mut self) -> Result<(), ApplyError> {
        self.leases = LeaseTable::load(&*self.store).map_err(ApplyError::Store)?;
        self.sessions = SessionTable::load(&*self.store).map_err(ApplyError::Store)?;
        self.poisoned = false;
        Ok(())
    }
}

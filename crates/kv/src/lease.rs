//! Leases: the replicated lease table (part of the state machine) and [`LeaseClock`], the
//! timer a leader runs to decide when a lease has expired.
//!
//! Rules this module keeps (etcd's `lease` package model, with expiry made a log entry):
//! - The table maps a lease id to its time to live (seconds) and the keys attached to it.
//!   Ids and TTLs are stored in the MVCC store's metadata, in 256 buckets by id, so a grant
//!   or revoke rewrites one small bucket, atomically with the data. Which keys are attached
//!   is not stored twice: it is each key's `lease` field, and the table rebuilds it from the
//!   store's image when the state machine opens.
//! - A put with a lease attaches the key (an unknown lease is "requested lease not found");
//!   a put with another lease, or none, moves or detaches it; a delete detaches it.
//! - A lease dies only by a command in the log: `LeaseRevoke` from a client or `LeaseExpire`
//!   from the leader. Either deletes every attached key in one revision. So a lease never
//!   expires on one replica and lives on another.
//! - Time is the leader's business: [`LeaseClock`] holds the deadlines on the leader side
//!   (see its documentation for the guarantee and its limits). Replicas never read a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use prost::Message;
use quorumkv_etcd_proto::internal::{LeaseBucket, LeaseRecord};
use quorumkv_storage::mvcc::{ImageRecord, ImageSource, MvccError, MvccStore, MvccTxn};

/// etcd's largest lease time to live, in seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// Buckets of the stored lease table.
pub(crate) const LEASE_BUCKETS: usize = 256;

fn bucket_of(id: i64) -> u8 {
    (id as u64 % LEASE_BUCKETS as u64) as u8
}

pub(crate) fn bucket_meta_name(bucket: u8) -> Vec<u8> {
    let mut name = b"kv/lease/".to_vec();
    name.push(bucket);
    name
}

/// One lease of the replicated table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    /// Time to live in seconds, as granted (after the minimum was applied).
    pub ttl: i64,
    /// Keys attached, in key order.
    pub keys: BTreeSet<Bytes>,
}

/// The replicated lease table, in memory, mirroring the store.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
}

impl LeaseTable {
    /// Loads the table from `store`: the stored ids and TTLs, then the attached keys from the
    /// latest version of every key.
    pub(crate) fn load<S: MvccStore + ?Sized>(store: &S) -> Result<Self, MvccError> {
        let mut table = LeaseTable::default();
        for b in 0..LEASE_BUCKETS {
            let Some(raw) = store.get_meta(&bucket_meta_name(b as u8))? else {
                continue;
            };
            let bucket = LeaseBucket::decode(raw).map_err(|e| {
                MvccError::Corrupt(format!("lease table bucket {b} does not decode: {e}"))
            })?;
            for rec in bucket.leases {
                table.leases.insert(rec.id, Lease { ttl: rec.ttl, keys: BTreeSet::new() });
            }
        }
        if table.leases.is_empty() {
            return Ok(table);
        }
        let mut image = store.image()?;
        let mut records = Vec::new();
        // The latest version seen so far of the key being walked: (key, lease or 0 if deleted).
        let mut latest: Option<(Bytes, i64)> = None;
        loop {
            records.clear();
            let more = image.next_records(1 << 20, &mut records)?;
            for rec in records.drain(..) {
                let ImageRecord::Version { key, tombstone, lease, .. } = rec else {
                    continue;
                };
                if let Some((k, l)) = latest.take()
                    && k != key
                {
                    table.attach(l, k);
                }
                latest = Some((key, if tombstone { 0 } else { lease }));
            }
            if !more {
                break;
            }
        }
        if let Some((k, l)) = latest {
            table.attach(l, k);
        }
        Ok(table)
    }

    pub(crate) fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub(crate) fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }

    /// Every lease id with its TTL, in id order.
    pub(crate) fn ids_and_ttls(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l.ttl))
    }

    pub(crate) fn grant(&mut self, id: i64, ttl: i64) {
        self.leases.insert(id, Lease { ttl, keys: BTreeSet::new() });
    }

    pub(crate) fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Attaches `key` to lease `id` (nothing for id 0 or an unknown lease).
    pub(crate) fn attach(&mut self, id: i64, key: Bytes) {
        if id != 0
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.insert(key);
        }
    }

    pub(crate) fn detach(&mut self, id: i64, key: &[u8]) {
        if id != 0
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.remove(key);
        }
    }

    /// Writes the bucket that holds lease `id` into `txn`, as the table has it now.
    pub(crate) fn persist_bucket_of<T: MvccTxn>(
        &self,
        txn: &mut T,
        id: i64,
    ) -> Result<(), MvccError> {
        let b = bucket_of(id);
        let leases: Vec<LeaseRecord> = self
            .leases
            .iter()
            .filter(|(lid, _)| bucket_of(**lid) == b)
            .map(|(lid, l)| LeaseRecord { id: *lid, ttl: l.ttl })
            .collect();
        let name = bucket_meta_name(b);
        if leases.is_empty() {
            txn.delete_meta(&name)
        } else {
            txn.set_meta(&name, &LeaseBucket { leases }.encode_to_vec())
        }
    }
}

/// Settings of a [`LeaseClock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseClockConfig {
    /// Extra time every lease gets when this node becomes leader, on top of its full TTL:
    /// time for holders to find the new leader. etcd uses about an election timeout.
    pub leader_grace_ms: u64,
    /// How long an expiry, once reported by [`LeaseClock::expired`], waits before it is
    /// reported again (the `LeaseExpire` proposal may have been lost).
    pub expire_retry_ms: u64,
}

impl Default for LeaseClockConfig {
    fn default() -> Self {
        Self { leader_grace_ms: 2_000, expire_retry_ms: 3_000 }
    }
}

/// Why a keep-alive was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeepAliveError {
    /// This node is not the leader: forward the keep-alive to the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The lease does not exist, or has expired and its `LeaseExpire` is on its way: the
    /// keep-alive answers TTL 0 and the holder must grant a new lease.
    #[error("etcdserver: requested lease not found")]
    NotFound,
}

#[derive(Clone, Copy, Debug)]
struct Timer {
    ttl_ms: u64,
    deadline_ms: u64,
    /// Set once `expired` reported the lease: no keep-alive revives it.
    expiring: bool,
}

/// The leader's lease timer: deadlines, keep-alives, and the list of leases to expire.
///
/// The caller passes the time as milliseconds of a monotonic clock (`now_ms`); the clock
/// never reads one itself, so it runs the same under the simulator. Every replica keeps a
/// `LeaseClock` fed from the applied [`crate::LeaseChange`]s, so a new leader knows every
/// lease; only the leader's deadlines mean anything.
///
/// **The guarantee.** A lease is reported expired only by the leader, only once its
/// deadline has passed on the leader's clock, and the deadline is at least the lease's TTL
/// after the later of (a) the last keep-alive this leader accepted and (b) the moment this
/// node became leader plus [`LeaseClockConfig::leader_grace_ms`]. So a holder that renews
/// at least once per TTL with the current leader keeps its lease; after a leader change it
/// has a full TTL (plus the grace) to reach the new leader. The keys go when the
/// `LeaseExpire` command the leader proposes is applied, at the same log position on every
/// replica.
///
/// **The limits.** A lease can outlive its TTL: by the grace after each leader change, by
/// the time the `LeaseExpire` entry takes to commit, and indefinitely while there is no
/// leader. A holder must not take "my TTL has not run out on my clock" as proof that it
/// still holds the lease: clocks drift, a keep-alive answered by a deposed leader means
/// nothing (the node runtime should only answer keep-alives while it knows it leads), and a
/// `LeaseRevoke` from anyone ends the lease at once. Use the key's revision in a txn compare
/// to fence writes, as etcd's lock recipes do.
#[derive(Debug, Default)]
pub struct LeaseClock {
    config: LeaseClockConfig,
    timers: HashMap<i64, Timer>,
    /// (deadline, id) for every lease, for `expired` without a scan.
    queue: BTreeSet<(u64, i64)>,
    leader: bool,
}

impl LeaseClock {
    /// A clock with no leases, not leading.
    pub fn new(config: LeaseClockConfig) -> Self {
        Self { config, ..Self::default() }
    }

    /// True while this node leads.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Leases tracked.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// True if no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    fn set_deadline(&mut self, id: i64, deadline_ms: u64) {
        if let Some(t) = self.timers.get_mut(&id) {
            self.queue.remove(&(t.deadline_ms, id));
            t.deadline_ms = deadline_ms;
            self.queue.insert((deadline_ms, id));
        }
    }

    /// A lease was granted (applied): its deadline is `now_ms` + TTL.
    pub fn on_grant(&mut self, id: i64, ttl_secs: i64, now_ms: u64) {
        self.on_revoke(id);
        let ttl_ms = u64::try_from(ttl_secs).unwrap_or(0).saturating_mul(1000);
        let deadline_ms = now_ms.saturating_add(ttl_ms);
        self.timers.insert(id, Timer { ttl_ms, deadline_ms, expiring: false });
        self.queue.insert((deadline_ms, id));
    }

    /// A lease was revoked or expired (applied): forget it.
    pub fn on_revoke(&mut self, id: i64) {
        if let Some(t) = self.timers.remove(&id) {
            self.queue.remove(&(t.deadline_ms, id));
        }
    }

    /// Applies the lease changes of one applied command.
    pub fn on_changes(&mut self, changes: &[crate::LeaseChange], now_ms: u64) {
        for c in changes {
            match *c {
                crate::LeaseChange::Granted { id, ttl } => self.on_grant(id, ttl, now_ms),
                crate::LeaseChange::Revoked { id } => self.on_revoke(id),
            }
        }
    }

    /// Makes the tracked set equal to `leases` (id, TTL seconds), e.g. after a restart or a
    /// snapshot install: new ones get a full TTL from `now_ms`, gone ones are dropped, the
    /// others keep their deadline.
    pub fn sync_with(&mut self, leases: impl IntoIterator<Item = (i64, i64)>, now_ms: u64) {
        let wanted: HashMap<i64, i64> = leases.into_iter().collect();
        let gone: Vec<i64> =
            self.timers.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in gone {
            self.on_revoke(id);
        }
        for (id, ttl) in wanted {
            if !self.timers.contains_key(&id) {
                self.on_grant(id, ttl, now_ms);
            }
        }
    }

    /// This node became leader: every lease gets its full TTL plus the grace from `now_ms`,
    /// and earlier expiry reports are forgotten (this leader decides afresh).
    pub fn on_become_leader(&mut self, now_ms: u64) {
        self.leader = true;
        let ids: Vec<(i64, u64)> = self.timers.iter().map(|(id, t)| (*id, t.ttl_ms)).collect();
        for (id, ttl_ms) in ids {
            let deadline =
                now_ms.saturating_add(ttl_ms).saturating_add(self.config.leader_grace_ms);
            self.set_deadline(id, deadline);
            if let Some(t) = self.timers.get_mut(&id) {
                t.expiring = false;
            }
        }
    }

    /// This node stopped leading: it reports no expiry and accepts no keep-alive.
    pub fn on_step_down(&mut self) {
        self.leader = false;
    }

    /// Renews a lease: its deadline becomes `now_ms` + TTL. Returns the TTL in seconds, as
    /// etcd's keep-alive response carries it.
    pub fn keep_alive(&mut self, id: i64, now_ms: u64) -> Result<i64, KeepAliveError> {
        if !self.leader {
            return Err(KeepAliveError::NotLeader);
        }
        let t = match self.timers.get(&id) {
            Some(t) if !t.expiring => *t,
            _ => return Err(KeepAliveError::NotFound),
        };
        self.set_deadline(id, now_ms.saturating_add(t.ttl_ms));
        Ok(i64::try_from(t.ttl_ms / 1000).unwrap_or(i64::MAX))
    }

    /// Whole seconds left before the lease's deadline (0 once passed), for
    /// `LeaseTimeToLive`; `None` for an unknown lease.
    pub fn remaining_secs(&self, id: i64, now_ms: u64) -> Option<i64> {
        let t = self.timers.get(&id)?;
        Some(i64::try_from(t.deadline_ms.saturating_sub(now_ms) / 1000).unwrap_or(i64::MAX))
    }

    /// Leases whose deadline has passed, at most `max` of them, for the leader to propose in
    /// one `LeaseExpire`. Empty unless leading. A reported lease is reported again only after
    /// [`LeaseClockConfig::expire_retry_ms`], in case the proposal was lost; it leaves the
    /// clock when its expiry is applied ([`LeaseClock::on_revoke`]).
    pub fn expired(&mut self, now_ms: u64, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        if !self.leader {
            return out;
        }
        while out.len() < max {
            let Some(&(deadline, id)) = self.queue.first() else {
                break;
            };
            if deadline > now_ms {
                break;
            }
            if let Some(t) = self.timers.get_mut(&id) {
                t.expiring = true;
            }
            self.set_deadline(id, now_ms.saturating_add(self.config.expire_retry_ms.max(1)));
            out.push(id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_expires_and_keep_alive_extends() {
        let mut c =
            LeaseClock::new(LeaseClockConfig { leader_grace_ms: 500, expire_retry_ms: 1000 });
        c.on_grant(1, 10, 0);
        c.on_grant(2, 5, 0);
        assert!(c.expired(60_000, 10).is_empty(), "a follower expires nothing");
        assert_eq!(c.keep_alive(1, 0), Err(KeepAliveError::NotLeader));
        c.on_become_leader(1_000);
        // Every lease gets its full TTL plus the grace from the moment of leadership.
        assert!(c.expired(6_499, 10).is_empty());
        assert_eq!(c.expired(6_500, 10), vec![2]);
        assert_eq!(c.keep_alive(2, 6_600), Err(KeepAliveError::NotFound), "expiring is final");
        assert!(c.expired(7_499, 10).is_empty(), "reported again only after the retry delay");
        assert_eq!(c.keep_alive(1, 10_000), Ok(10));
        assert_eq!(c.remaining_secs(1, 12_000), Some(8));
        // Lease 2's expiry was not applied yet: it is reported again; lease 1 lives on.
        assert_eq!(c.expired(19_999, 10), vec![2]);
        assert_eq!(c.expired(20_000, 10), vec![1]);
        c.on_revoke(2);
        c.on_revoke(1);
        assert!(c.is_empty());
        assert_eq!(c.keep_alive(1, 20_001), Err(KeepAliveError::NotFound));
    }

    #[test]
    fn new_leader_forgets_old_expiry_reports_and_limits_batches() {
        let mut c = LeaseClock::new(LeaseClockConfig { leader_grace_ms: 0, expire_retry_ms: 1 });
        c.on_become_leader(0);
        for id in 1..=5 {
            c.on_grant(id, 1, 0);
        }
        assert_eq!(c.expired(1_000, 3), vec![1, 2, 3]);
        c.on_step_down();
        assert!(c.expired(5_000, 10).is_empty());
        c.on_become_leader(5_000);
        assert_eq!(c.keep_alive(1, 5_000), Ok(1), "the new leader decides afresh");
        c.sync_with([(1, 1), (9, 2)], 5_000);
        assert_eq!(c.len(), 2);
        assert_eq!(c.remaining_secs(9, 5_000), Some(2));
    }
}

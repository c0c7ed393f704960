//! Errors of the state machine, split the way a replica must treat them.
//!
//! Rules this module keeps:
//! - [`EtcdError`] is a deterministic failure: every replica applying the same command fails
//!   the same way, so the error goes back to the client and the replicas stay identical. Its
//!   `Display` text is etcd's own message, byte for byte (etcd's `rpctypes` package), because
//!   etcd clients match on those strings; [`EtcdError::grpc_code`] is the status code etcd
//!   pairs with it.
//! - [`ApplyError::Store`] (I/O, corruption) and [`ApplyError::OutOfOrder`] (a caller bug) are
//!   fatal: carrying on could let replicas diverge, so the node must stop.

use quorumkv_core::LogIndex;
use quorumkv_storage::mvcc::MvccError;

/// gRPC status codes the errors map to (the numbers of the gRPC specification).
pub mod grpc_code {
    /// `INVALID_ARGUMENT`.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// `NOT_FOUND`.
    pub const NOT_FOUND: i32 = 5;
    /// `FAILED_PRECONDITION`.
    pub const FAILED_PRECONDITION: i32 = 9;
    /// `OUT_OF_RANGE`.
    pub const OUT_OF_RANGE: i32 = 11;
}

/// A deterministic failure of a command or read, reported to the client with etcd's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EtcdError {
    /// A request, compare or operation has an empty key. Give a key of at least one byte.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` / `ignore_lease` on a key that does not exist, or an empty operation in
    /// a txn. Put the key first, or fill in the operation.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value. Send one or the other.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease. Send one or the other.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A txn has more compares or operations in one list than the limit. Split it.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn writes one key twice (two puts, or a put inside a deleted range). Merge them.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The revision asked for is below the compacted revision. Read at a later revision.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is above the current revision. Read at or below it.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The lease does not exist (never granted, revoked or expired). Grant a new one.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested id exists already. Ask for another id, or 0.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The requested time to live is above the maximum ([`crate::MAX_LEASE_TTL_SECS`]).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// One transaction would make more changes than a revision can number. Split it.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The log entry does not decode as a command, or names no request: the proposer is
    /// broken or speaks a newer format. Upgrade the node that proposed it.
    #[error("quorumkv: the log entry is not a valid state-machine command")]
    MalformedCommand,
    /// The client session is unknown (never opened, or evicted from the session table) and
    /// the command is not its first (sequence numbers start at 1). Open a new session.
    #[error("quorumkv: client session expired or unknown; open a new session")]
    SessionExpired,
}

impl EtcdError {
    /// Every variant, in code order.
    pub const ALL: [EtcdError; 14] = [
        EtcdError::EmptyKey,
        EtcdError::KeyNotFound,
        EtcdError::ValueProvided,
        EtcdError::LeaseProvided,
        EtcdError::TooManyOps,
        EtcdError::DuplicateKey,
        EtcdError::Compacted,
        EtcdError::FutureRevision,
        EtcdError::LeaseNotFound,
        EtcdError::LeaseExists,
        EtcdError::LeaseTtlTooLarge,
        EtcdError::RequestTooLarge,
        EtcdError::MalformedCommand,
        EtcdError::SessionExpired,
    ];

    /// The gRPC status code etcd sends with this error.
    pub fn grpc_code(self) -> i32 {
        use grpc_code::*;
        match self {
            EtcdError::EmptyKey
            | EtcdError::KeyNotFound
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::RequestTooLarge
            | EtcdError::MalformedCommand => INVALID_ARGUMENT,
            EtcdError::Compacted | EtcdError::FutureRevision | EtcdError::LeaseTtlTooLarge => {
                OUT_OF_RANGE
            }
            EtcdError::LeaseNotFound => NOT_FOUND,
            EtcdError::LeaseExists | EtcdError::SessionExpired => FAILED_PRECONDITION,
        }
    }

    /// The stable number stored with a failed command's reply (part of the stored format).
    pub fn code(self) -> u32 {
        match self {
            EtcdError::EmptyKey => 1,
            EtcdError::KeyNotFound => 2,
            EtcdError::ValueProvided => 3,
            EtcdError::LeaseProvided => 4,
            EtcdError::TooManyOps => 5,
            EtcdError::DuplicateKey => 6,
            EtcdError::Compacted => 7,
            EtcdError::FutureRevision => 8,
            EtcdError::LeaseNotFound => 9,
            EtcdError::LeaseExists => 10,
            EtcdError::LeaseTtlTooLarge => 11,
            EtcdError::RequestTooLarge => 12,
            EtcdError::MalformedCommand => 13,
            EtcdError::SessionExpired => 14,
        }
    }

    /// The error with stored number `code`, if any.
    pub fn from_code(code: u32) -> Option<EtcdError> {
        EtcdError::ALL.into_iter().find(|e| e.code() == code)
    }
}

/// Why applying a command (or serving a read) failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Deterministic: return the error to the client. For a command, the entry still counts
    /// as applied (the store's applied index moved past it) and nothing else changed.
    #[error(transparent)]
    Rejected(#[from] EtcdError),
    /// The store failed (I/O, full disk, corruption). Fatal: stop the node; after a restart
    /// the log is replayed from the store's applied index.
    #[error("the state machine's store failed; stop this node: {0}")]
    Store(#[source] MvccError),
    /// An entry was given at or below the applied index. Fatal: the caller applies entries
    /// out of order or twice; fix the caller.
    #[error(
        "log entry {index} is at or below the applied index {applied}: entries must be \
         applied in log order, each once"
    )]
    OutOfOrder {
        /// Index given.
        index: LogIndex,
        /// Applied index of the store.
        applied: LogIndex,
    },
    /// A previous fatal error left the in-memory tables out of step with the store. Fatal:
    /// restart the node, which reloads them from the store.
    #[error(
        "the state machine stopped after a fatal error; restart the node to reload it from its \
         store"
    )]
    Poisoned,
}

impl ApplyError {
    /// True if every replica fails the same way, so the error goes back to the client; false
    /// if the node must stop.
    pub fn is_deterministic(&self) -> bool {
        matches!(self, ApplyError::Rejected(_))
    }

    /// The etcd error for the client, if this one is deterministic.
    pub fn etcd(&self) -> Option<EtcdError> {
        match self {
            ApplyError::Rejected(e) => Some(*e),
            _ => None,
        }
    }
}

impl From<MvccError> for ApplyError {
    fn from(e: MvccError) -> Self {
        match etcd_of_mvcc(&e) {
            Some(etcd) => ApplyError::Rejected(etcd),
            None => ApplyError::Store(e),
        }
    }
}

/// The etcd error a deterministic store error stands for; `None` for fatal ones.
pub(crate) fn etcd_of_mvcc(e: &MvccError) -> Option<EtcdError> {
    match e {
        MvccError::EmptyKey => Some(EtcdError::EmptyKey),
        MvccError::Compacted { .. } => Some(EtcdError::Compacted),
        MvccError::FutureRevision { .. } => Some(EtcdError::FutureRevision),
        MvccError::TooManyChanges { .. } => Some(EtcdError::RequestTooLarge),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for e in EtcdError::ALL {
            assert!(seen.insert(e.code()), "duplicate code {}", e.code());
            assert_eq!(EtcdError::from_code(e.code()), Some(e));
        }
        assert_eq!(EtcdError::from_code(0), None);
    }

    #[test]
    fn messages_are_etcds() {
        assert_eq!(
            EtcdError::Compacted.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(EtcdError::LeaseNotFound.to_string(), "etcdserver: requested lease not found");
        assert_eq!(
            EtcdError::TooManyOps.to_string(),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            EtcdError::DuplicateKey.to_string(),
            "etcdserver: duplicate key given in txn request"
        );
        assert_eq!(EtcdError::LeaseNotFound.grpc_code(), grpc_code::NOT_FOUND);
        assert_eq!(EtcdError::Compacted.grpc_code(), grpc_code::OUT_OF_RANGE);
    }

    #[test]
    fn store_errors_split_by_determinism() {
        let e: ApplyError = MvccError::Compacted { requested: 1, compacted: 5 }.into();
        assert!(e.is_deterministic());
        assert_eq!(e.etcd(), Some(EtcdError::Compacted));
        let e: ApplyError = MvccError::Corrupt("x".into()).into();
        assert!(!e.is_deterministic());
        assert_eq!(e.etcd(), None);
    }
}

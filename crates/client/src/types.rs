//! The values the client hands back, independent of the generated protobuf types.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_etcd_proto::etcdserverpb::Member;
use quorumkv_etcd_proto::mvccpb;

use crate::backoff::Backoff;

/// One key with its value and MVCC metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Number of writes to the key since it was created (1 after the first put).
    pub version: i64,
    /// Lease the key is attached to (0: none).
    pub lease: i64,
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// The answer to a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// The store revision the put created.
    pub revision: i64,
    /// The key as it was before the put, if it existed.
    pub prev: Option<KeyValue>,
}

/// The answer to a compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasResult {
    /// True if the comparison held and the new value was written.
    pub succeeded: bool,
    /// The store revision after the operation (the new write's on success).
    pub revision: i64,
    /// On failure, the key as it is (None: absent); on success, None.
    pub current: Option<KeyValue>,
}

/// The answer to a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanResult {
    /// The keys found, in key order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// True if more keys matched than were returned.
    pub more: bool,
    /// How many keys matched in all.
    pub count: i64,
    /// The store revision the scan read at.
    pub revision: i64,
}

/// Options of a scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read at this store revision (None: the latest).
    pub revision: Option<i64>,
    /// Return keys only, without values.
    pub keys_only: bool,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Written (created or updated).
    Put,
    /// Deleted (`kv` holds the key and the deletion's revision).
    Delete,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::Put => "PUT",
            EventKind::Delete => "DELETE",
        })
    }
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: the key, and `mod_revision` = the deletion's).
    pub kv: KeyValue,
    /// The key before the change, if the server sent it.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The store revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started (a ReadIndex round through
    /// the leader).
    #[default]
    Linearizable,
    /// Served by any one member from its local state at once: possibly stale, but available
    /// while that member is up even without a quorum.
    Serializable,
}

/// Tuning of a [`Client`](crate::Client).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientOptions {
    /// Time allowed to open a connection to one member.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt of one request. Above the server's own 10 s proposal
    /// timeout, so a slow write is answered "timed out" by the server first.
    pub attempt_timeout: Duration,
    /// Time allowed for a status probe of one member (leader discovery, `status`).
    pub probe_timeout: Duration,
    /// Time allowed for a whole operation, retries included.
    pub deadline: Duration,
    /// The wait between retries.
    pub backoff: Backoff,
    /// Consistency of reads unless a call says otherwise.
    pub read_consistency: ReadConsistency,
    /// A member whose applied index trails the leader's commit index by more than this many
    /// entries is reported as lagging by `status`.
    pub lag_threshold: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(12),
            probe_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(30),
            backoff: Backoff::default(),
            read_consistency: ReadConsistency::Linearizable,
            lag_threshold: 1000,
        }
    }
}

/// A member's role as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leads the group.
    Leader,
    /// A voter following a leader it knows.
    Follower,
    /// A non-voting member receiving the log.
    Learner,
    /// A voter that knows no leader (an election is under way, or it is cut off).
    Candidate,
    /// The member did not answer.
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
            Role::Candidate => "candidate",
            Role::Unknown => "unknown",
        })
    }
}

/// A member's health as the client judges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Answers, knows the leader, and has applied nearly everything committed.
    Healthy,
    /// Answers, but trails the leader's commit index by more than the lag threshold.
    Lagging,
    /// Answers, but knows no leader.
    NoLeader,
    /// Answers, but reports errors (its group stopped on a fatal error).
    Failed(String),
    /// Did not answer.
    Unreachable(String),
}

impl Health {
    /// True for [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        *self == Health::Healthy
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Lagging => f.write_str("lagging"),
            Health::NoLeader => f.write_str("no leader"),
            Health::Failed(why) => write!(f, "failed: {why}"),
            Health::Unreachable(why) => write!(f, "unreachable: {why}"),
        }
    }
}

/// One member as `status` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Member id.
    pub id: u64,
    /// Member name (empty until the member has started and announced itself).
    pub name: String,
    /// Client address (`host:port`; empty if not known yet).
    pub client_addr: String,
    /// Peer address (`host:port`).
    pub peer_addr: String,
    /// A non-voting member.
    pub is_learner: bool,
    /// The member answered the status probe.
    pub reachable: bool,
    /// The member reports itself as the leader.
    pub is_leader: bool,
    /// The member's role.
    pub role: Role,
    /// The member's current term.
    pub term: u64,
    /// The leader the member knows (0: none).
    pub leader: u64,
    /// The member's commit index.
    pub commit_index: u64,
    /// The member's applied index.
    pub applied_index: u64,
    /// Leader's commit index minus this member's applied index.
    pub lag: u64,
    /// Verdict.
    pub health: Health,
    /// The version the member reports.
    pub version: String,
    /// Bytes of the member's store on disk.
    pub db_size: i64,
}

/// A member of the cluster's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub id: u64,
    /// Name (empty until it started).
    pub name: String,
    /// Peer addresses (`host:port`).
    pub peer_addrs: Vec<String>,
    /// Client addresses (`host:port`).
    pub client_addrs: Vec<String>,
    /// A non-voting member.
    pub is_learner: bool,
}

impl From<Member> for MemberInfo {
    fn from(m: Member) -> Self {
        Self {
            id: m.id,
            name: m.name,
            peer_addrs: m.peer_ur_ls.iter().map(|u| strip_scheme(u).to_string()).collect(),
            client_addrs: m.client_ur_ls.iter().map(|u| strip_scheme(u).to_string()).collect(),
            is_learner: m.is_learner,
        }
    }
}

/// `http://host:port/` → `host:port`.
pub(crate) fn strip_scheme(url: &str) -> &str {
    url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/')
}

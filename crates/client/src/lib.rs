//! The Rust client of quorumkv.
//!
//! [`Client::connect`] takes the client addresses of some members (the etcd v3 gRPC port)
//! and connects lazily. From there:
//!
//! - **Writes** (`put`, `delete`, `cas_*`, `txn`) go to the leader, found by asking members
//!   for their status and their member list. A write that meets "not leader", "no leader",
//!   a server-side timeout or a broken connection is retried against the (new) leader with
//!   backoff, until the client's deadline. Every write carries a session id and a sequence
//!   number (`x-quorumkv-session` / `x-quorumkv-seq`), the same on every retry, so the
//!   cluster applies it exactly once even when an earlier attempt did apply and only its
//!   answer was lost.
//! - **Reads** are linearizable by default (a ReadIndex round through the leader), or
//!   serializable ([`ReadConsistency::Serializable`]): any one member answers from its
//!   local state at once, possibly stale but available without a quorum.
//! - **Watches** resume from the next undelivered revision on another member when the one
//!   serving them goes away.
//! - **Status and membership**: every member's role, term, commit and applied index, lag and
//!   health; adding, removing and promoting members; moving leadership.
//!
//! Errors ([`Error`]) say what to do, and [`Error::is_retryable`] tells whether waiting
//! might help.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorumkv_client::Error> {
//! use quorumkv_client::{Client, ClientOptions};
//! let endpoints = ["127.0.0.1:2379".to_string(), "127.0.0.1:2389".to_string()];
//! let client = Client::connect(&endpoints, ClientOptions::default())?;
//! client.put("greeting", "hello").await?;
//! let kv = client.get("greeting").await?;
//! assert_eq!(kv.map(|kv| kv.value), Some("hello".into()));
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod cluster;
mod error;
mod kv;
mod range;
mod session;
mod types;
mod watch;

pub use backoff::Backoff;
pub use client::{Client, LeaderRef};
pub use cluster::MEMBER_ID_HEADER;
pub use error::Error;
pub use range::{KeyRange, prefix_range_end};
pub use session::{SEQ_HEADER, SESSION_HEADER, WriteId};
pub use types::{
    CasResult, ClientOptions, EventKind, Health, KeyValue, MemberInfo, MemberStatus, PutResult,
    ReadConsistency, Role, ScanOptions, ScanResult, WatchEvent,
};
pub use watch::Watch;

/// The generated etcd v3 API types, for [`Client::txn`] and anything this crate does not
/// wrap.
pub use quorumkv_etcd_proto as proto;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Every call can run inside `tokio::spawn`: its future is Send (async closures and held
    /// lock guards have broken this before).
    #[test]
    fn client_futures_are_send() {
        let c = Client::connect(&["127.0.0.1:1".to_string()], ClientOptions::default())
            .expect("a valid endpoint");
        assert_send(&c);
        assert_send(&c.get("k"));
        assert_send(&c.put("k", "v"));
        assert_send(&c.put_with_id(c.new_write_id(), "k", "v"));
        assert_send(&c.delete("k"));
        assert_send(&c.cas_value("k", None, "v"));
        assert_send(&c.cas_revision("k", 0, "v"));
        let range = KeyRange::prefix("k");
        assert_send(&c.scan(&range, ScanOptions::default()));
        assert_send(&c.watch(&range, None));
        assert_send(&c.status());
        assert_send(&c.member_add("127.0.0.1:1", None, true));
        assert_send(&c.member_remove(1));
        assert_send(&c.member_promote(1));
        assert_send(&c.transfer_leader(1));
        assert_send(&c.leader());
    }
}

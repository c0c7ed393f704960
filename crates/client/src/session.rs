//! Client sessions for exactly-once writes.
//!
//! The server applies a command once per (session, seq) and accepts at most one command in
//! flight per session: a command overtaken by a later one of its session is answered as
//! stale, never run. So a client that writes from many tasks at once needs one session per
//! concurrent write. The pool hands each write a session of its own for the write's whole
//! life (retries included) and takes it back afterwards; it grows to the peak number of
//! concurrent writes. Idle sessions cost the server one table entry each, evicted in time.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::metadata::MetadataValue;

/// Metadata key carrying the client session id.
pub const SESSION_HEADER: &str = "x-quorumkv-session";
/// Metadata key carrying the sequence number within the session.
pub const SEQ_HEADER: &str = "x-quorumkv-seq";

/// The identity of one logical write: the server applies a write with a given id at most
/// once, and answers a re-sent one with the remembered result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriteId {
    /// Random, non-zero session id.
    pub session: u64,
    /// Sequence number within the session, from 1.
    pub seq: u64,
}

impl WriteId {
    /// Puts the id into a request's metadata.
    pub fn stamp<T>(&self, req: &mut tonic::Request<T>) {
        let md = req.metadata_mut();
        md.insert(SESSION_HEADER, MetadataValue::from(self.session));
        md.insert(SEQ_HEADER, MetadataValue::from(self.seq));
    }
}

/// A random non-zero u64 (std's per-process random hash keys, mixed with the time).
pub(crate) fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// One session's state on the client: the next sequence number to use.
#[derive(Debug)]
pub(crate) struct Session {
    id: u64,
    next_seq: u64,
}

impl Session {
    /// A new session: a fresh random id, numbered from 1.
    pub(crate) fn fresh() -> Self {
        Self { id: random_u64(), next_seq: 1 }
    }

    /// The id of the next write, which the session then counts as used.
    pub(crate) fn next(&mut self) -> WriteId {
        let id = WriteId { session: self.id, seq: self.next_seq };
        self.next_seq += 1;
        id
    }
}

/// Idle sessions of one client.
#[derive(Debug)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<Session>>,
}

impl SessionPool {
    /// A pool holding one session, created now.
    pub(crate) fn new() -> Self {
        Self { idle: Mutex::new(vec![Session::fresh()]) }
    }

    /// A session for one write (an idle one, or a new one).
    pub(crate) fn take(&self) -> Session {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_else(Session::fresh)
    }

    /// Returns a session after its write finished (or was abandoned: its next write simply
    /// overtakes the abandoned one, which the server then never runs).
    pub(crate) fn give_back(&self, s: Session) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// The session id a write taken now would most likely use (for diagnostics and tests).
    pub(crate) fn peek(&self) -> Option<u64> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).last().map(|s| s.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_start_at_one_and_increase() {
        let mut s = Session::fresh();
        let a = s.next();
        let b = s.next();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.session, b.session);
        assert_ne!(a.session, 0);
    }

    #[test]
    fn concurrent_writes_get_distinct_sessions_and_sessions_are_reused() {
        let pool = SessionPool::new();
        let first = pool.peek().expect("a session exists from the start");
        let a = pool.take();
        let b = pool.take();
        assert_eq!(a.id, first);
        assert_ne!(a.id, b.id);
        let (a_id, b_id) = (a.id, b.id);
        pool.give_back(a);
        pool.give_back(b);
        let again = pool.take();
        assert!(again.id == a_id || again.id == b_id);
    }

    #[test]
    fn random_ids_differ() {
        let ids: std::collections::HashSet<u64> = (0..100).map(|_| random_u64()).collect();
        assert_eq!(ids.len(), 100);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn stamp_writes_both_headers() {
        let mut req = tonic::Request::new(());
        WriteId { session: 42, seq: 7 }.stamp(&mut req);
        assert_eq!(req.metadata().get(SESSION_HEADER).and_then(|v| v.to_str().ok()), Some("42"));
        assert_eq!(req.metadata().get(SEQ_HEADER).and_then(|v| v.to_str().ok()), Some("7"));
    }
}

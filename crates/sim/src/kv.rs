//! The simulator's state machine: a map of integer registers with exactly-once client
//! sessions (dissertation §6.3).
//!
//! Every command carries the client's session id and a sequence number. The state machine
//! remembers, per session, the last sequence applied and its result: a retried command (the
//! same sequence arriving again through another leader or a duplicated message) gets the
//! remembered result and changes nothing; an older sequence is stale and is ignored.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

/// A register key (small integers; the history names them `k0`, `k1`, …).
pub type Key = u32;

/// What a client asks the state machine to do through the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Write { key: Key, value: i64 },
    /// Set `key` to `new` if it currently holds `expected` (`None` = absent).
    Cas { key: Key, expected: Option<i64>, new: i64 },
}

/// A command in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// Client session.
    pub session: u64,
    /// Sequence number within the session (starts at 1).
    pub seq: u64,
    /// The operation.
    pub op: Op,
}

/// What applying a command produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Applied (a write, or a cas whose compare held).
    Done,
    /// A cas whose compare failed: nothing changed.
    CasFailed,
    /// The session has already moved past this sequence: ignored.
    Stale,
}

impl Command {
    /// Binary encoding: session u64, seq u64, tag u8, key u32, then the values.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(40);
        b.put_u64_le(self.session);
        b.put_u64_le(self.seq);
        match self.op {
            Op::Write { key, value } => {
                b.put_u8(0);
                b.put_u32_le(key);
                b.put_i64_le(value);
            }
            Op::Cas { key, expected, new } => {
                b.put_u8(1);
                b.put_u32_le(key);
                b.put_u8(u8::from(expected.is_some()));
                b.put_i64_le(expected.unwrap_or(0));
                b.put_i64_le(new);
            }
        }
        b.freeze()
    }

    /// Decodes [`Command::encode`]; `None` on malformed input.
    pub fn decode(data: &[u8]) -> Option<Self> {
        let u64_at = |at: usize| Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?));
        let session = u64_at(0)?;
        let seq = u64_at(8)?;
        let key = u32_at(17)?;
        let op = match *data.get(16)? {
            0 if data.len() == 29 => Op::Write { key, value: u64_at(21)? as i64 },
            1 if data.len() == 38 => {
                let has = *data.get(21)? == 1;
                let expected = u64_at(22)? as i64;
                Op::Cas { key, expected: has.then_some(expected), new: u64_at(30)? as i64 }
            }
            _ => return None,
        };
        Some(Self { session, seq, op })
    }
}

/// The replicated map and the session table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    /// Register values.
    pub map: BTreeMap<Key, i64>,
    /// Per session: last sequence applied and its result.
    sessions: BTreeMap<u64, (u64, OpResult)>,
    /// Index of the last log entry applied.
    pub applied: u64,
}

impl KvState {
    /// Applies the entry at `index` (empty data is a leader's no-op). Returns the command and
    /// its result, or `None` for a no-op.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Option<(Command, OpResult)> {
        debug_assert!(index > self.applied, "apply {index} after {}", self.applied);
        self.applied = index;
        if data.is_empty() {
            return None;
        }
        // Every replica decodes the same bytes, so a malformed entry is a no-op everywhere.
        let cmd = Command::decode(data)?;
        let result = match self.sessions.get(&cmd.session) {
            Some(&(last, result)) if last == cmd.seq => result,
            Some(&(last, _)) if last > cmd.seq => OpResult::Stale,
            _ => {
                let result = self.execute(cmd.op);
                self.sessions.insert(cmd.session, (cmd.seq, result));
                result
            }
        };
        Some((cmd, result))
    }

    fn execute(&mut self, op: Op) -> OpResult {
        match op {
            Op::Write { key, value } => {
                self.map.insert(key, value);
                OpResult::Done
            }
            Op::Cas { key, expected, new } => {
                if self.map.get(&key).copied() == expected {
                    self.map.insert(key, new);
                    OpResult::Done
                } else {
                    OpResult::CasFailed
                }
            }
        }
    }

    /// Serialises the whole state (a snapshot image).
    pub fn snapshot(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u64_le(self.applied);
        b.put_u32_le(self.map.len() as u32);
        for (&k, &v) in &self.map {
            b.put_u32_le(k);
            b.put_i64_le(v);
        }
        b.put_u32_le(self.sessions.len() as u32);
        for (&s, &(seq, r)) in &self.sessions {
            b.put_u64_le(s);
            b.put_u64_le(seq);
            b.put_u8(match r {
                OpResult::Done => 0,
                OpResult::CasFailed => 1,
                OpResult::Stale => 2,
            });
        }
        b.freeze()
    }

    /// Rebuilds a state from [`KvState::snapshot`]'s image.
    pub fn restore(data: &[u8]) -> Option<Self> {
        let mut at = 0usize;
        let mut take = |n: usize| {
            let s = data.get(at..at + n)?;
            at += n;
            Some(s)
        };
        let mut st = KvState {
            applied: u64::from_le_bytes(take(8)?.try_into().ok()?),
            ..Default::default()
        };
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?);
        for _ in 0..n {
            let k = u32::from_le_bytes(take(4)?.try_into().ok()?);
            let v = i64::from_le_bytes(take(8)?.try_into().ok()?);
            st.map.insert(k, v);
        }
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?);
        for _ in 0..n {
            let s = u64::from_le_bytes(take(8)?.try_into().ok()?);
            let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
            let r = match take(1)?[0] {
                0 => OpResult::Done,
                1 => OpResult::CasFailed,
                2 => OpResult::Stale,
                _ => return None,
            };
            st.sessions.insert(s, (seq, r));
        }
        Some(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        for op in [
            Op::Write { key: 3, value: -7 },
            Op::Cas { key: 1, expected: None, new: 9 },
            Op::Cas { key: 1, expected: Some(4), new: 9 },
        ] {
            let c = Command { session: 5, seq: 11, op };
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        assert_eq!(Command::decode(b"short"), None);
        let mut bad =
            Command { session: 1, seq: 1, op: Op::Write { key: 0, value: 0 } }.encode().to_vec();
        bad[16] = 9;
        assert_eq!(Command::decode(&bad), None);
    }

    #[test]
    fn retried_command_applies_once() {
        let mut kv = KvState::default();
        let cas = Command { session: 1, seq: 1, op: Op::Cas { key: 0, expected: None, new: 5 } };
        assert_eq!(kv.apply(1, &cas.encode()).map(|r| r.1), Some(OpResult::Done));
        // The same command again (a retry through another leader): same answer, no effect.
        assert_eq!(kv.apply(2, &cas.encode()).map(|r| r.1), Some(OpResult::Done));
        assert_eq!(kv.map.get(&0), Some(&5));
        let next = Command { session: 1, seq: 2, op: Op::Write { key: 0, value: 6 } };
        kv.apply(3, &next.encode());
        assert_eq!(kv.apply(4, &cas.encode()).map(|r| r.1), Some(OpResult::Stale));
        assert_eq!(kv.map.get(&0), Some(&6));
    }

    #[test]
    fn snapshot_restores_map_and_sessions() {
        let mut kv = KvState::default();
        kv.apply(1, &Command { session: 2, seq: 1, op: Op::Write { key: 4, value: 8 } }.encode());
        kv.apply(2, &[]);
        let back = KvState::restore(&kv.snapshot()).unwrap();
        assert_eq!(back, kv);
        assert_eq!(KvState::restore(&[1, 2, 3]), None);
    }
}

//! The shared vocabulary of quorumkv.
//!
//! Every layer speaks these types: the protocol crates (Raft today; Paxos, PBFT and the
//! leaderless coordinator later) produce them, the storage crate persists them, the node
//! runtime moves them between machines. Keeping them here, free of any protocol logic, lets a
//! storage backend or a transport serve every protocol without depending on one.
//!
//! - [`types`]: node and group ids, log entries, hard state, membership, snapshot metadata.
//! - [`quorum`]: majority and joint-majority maths (commit index, vote tally).
//! - [`rng`]: a small seeded PRNG, the only source of randomness a protocol may use.

pub mod quorum;
pub mod rng;
pub mod types;

pub use types::*;

//! quorumkv's etcd-compatible replicated state machine: what every replica of a CP keyspace
//! applies, in log order, on top of an `MvccStore`, and the pieces around it that a node
//! runtime needs: reads, the leader's lease timer and the watch hub. No async runtime, no
//! clock, no I/O of its own: the caller drives it.
//!
//! - [`command`]: the log entry format (a session, a sequence number and an etcd request)
//!   and etcd's request checks.
//! - [`StateMachine`]: applies entries ([`StateMachine::apply`]) with etcd's semantics for
//!   Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke, plus the leader's LeaseExpire
//!   and a no-op; exactly-once per client session; serves ranges and lease queries.
//! - [`read`]: etcd Range semantics over the store, usable without the state machine.
//! - [`LeaseClock`]: the leader's lease deadlines and expiry decisions.
//! - [`watch`]: the watch hub.
//!
//! How a node runtime uses them (one group):
//! 1. Open the store, `StateMachine::open(store, config)`, a `WatchHub::new(sm.revision(), ..)`
//!    and a `LeaseClock` seeded with `clock.sync_with(sm.leases(), now)`.
//! 2. For each committed entry, in order: `sm.apply(index, &data)`. On `Ok(outcome)`:
//!    `hub.on_commit(&**sm.store(), outcome.revision, &outcome.events)`, `clock.on_changes(&outcome.
//!    lease_changes, now)`, answer the waiting client (if this node proposed the entry) with
//!    `outcome.result`. On `Err(e)` with `e.is_deterministic()`: answer the client with
//!    `e.etcd()` (message and gRPC code). Any other `Err`: stop the node.
//! 3. Then `hub.catch_up(&**sm.store(), budget)` and `hub.poll(max)` to hand batches to the
//!    watch streams (pause a watcher whose stream is full).
//! 4. On the leader, on every tick: `clock.expired(now, max)` → propose
//!    `Request::LeaseExpire`; keep-alives go to `clock.keep_alive(id, now)`; on becoming
//!    leader `clock.on_become_leader(now)`, on losing it `clock.on_step_down()`.
//! 5. Linearizable reads: after ReadIndex says the applied index is far enough,
//!    `read::range(&**sm.store(), &req)` from any thread.
//! 6. After installing a snapshot (`sm.install_snapshot`): `hub.reset(sm.revision())` and
//!    `clock.sync_with(sm.leases(), now)`.

#![warn(missing_docs)]

pub mod command;
pub mod error;
mod exec;
pub mod lease;
pub mod read;
mod session;
mod state_machine;
pub mod watch;

pub use command::{
    Command, Limits, MAX_TXN_OPS_DEFAULT, Request, Response, command, decode_command,
    encode_command, validate_request,
};
pub use error::{ApplyError, EtcdError};
pub use lease::{KeepAliveError, LeaseClock, LeaseClockConfig, MAX_LEASE_TTL_SECS};
pub use quorumkv_etcd_proto as proto;
pub use state_machine::{ApplyOutcome, CommandResult, Config, LeaseChange, StateMachine};
pub use watch::{WatchBatch, WatchConfig, WatchError, WatchHub, WatchId, WatchSpec};

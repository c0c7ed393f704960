//! The quorumkv node runtime: configuration, the peer transport, the Raft driver over the
//! shared write-ahead log, the etcd v3 client API, and the operations endpoints.
//!
//! - [`config`]: the TOML / environment / flag configuration.
//! - [`codec`], [`transport`]: the peer wire format and TCP transport.
//! - [`group`]: the loop that drives one Raft group (the output contract of
//!   `quorumkv-raft`, made real with the WAL writer and the etcd state machine).
//! - [`node`]: recovery and start-up of a whole node.
//! - [`etcd`]: the client port (etcd v3 gRPC).
//! - [`http`], [`metrics`]: `/livez`, `/readyz`, `/metrics`, `/status`.

pub mod codec;
pub mod config;
pub mod etcd;
pub mod group;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod ports;
pub mod transport;

pub use config::NodeConfig;
pub use node::{RunningNode, StartError, start, start_on};

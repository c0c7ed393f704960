//! The etcd v3 API for quorumkv: message types and gRPC stubs generated at build time from
//! `proto/` (our own copies of etcd's definitions, with etcd's package, service, method,
//! message and field names and numbers, so etcdctl and every etcd client work unchanged),
//! plus `quorumkv.internal`, the records the KV state machine writes to the Raft log and
//! the MVCC store.
//!
//! Rules this crate keeps:
//! - The wire format is etcd 3.4/3.5's (fields 3.6 added are present too; proto3 skips
//!   unknown fields, so older clients are unaffected). `tests/wire_format.rs` pins the
//!   encodings byte for byte.
//! - `bytes` fields are [`bytes::Bytes`]: decoding from a `Bytes` buffer shares it instead of
//!   copying.
//! - The gRPC client and server stubs (`*_client`, `*_server` modules) exist only with the
//!   `grpc` feature (on by default); the message types need only `prost`.
//! - Server traits come with default methods that answer `Unimplemented`, so a server can
//!   implement only what it supports (the Auth service, for one) and etcdctl still gets a
//!   proper gRPC status for the rest.

#![warn(missing_docs)]

/// etcd's MVCC types: `KeyValue`, `Event`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// etcd's authentication types: `User`, `Role`, `Permission`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

/// etcd's main API: the KV, Watch, Lease, Cluster, Maintenance and Auth services and their
/// messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// etcd's lock service (`Lock`, `Unlock`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// etcd's election service (`Campaign`, `Proclaim`, `Leader`, `Observe`, `Resign`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

/// quorumkv's own protobuf packages (`quorumkv.*`).
pub mod quorumkv {
    /// quorumkv's internal records: the command envelope in the Raft log, stored responses
    /// and the state machine's metadata tables.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod internal {
        include!(concat!(env!("OUT_DIR"), "/quorumkv.internal.rs"));
    }
}

pub use quorumkv::internal;

/// The encoded `google.protobuf.FileDescriptorSet` of every file above, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

pub use prost;

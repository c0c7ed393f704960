//! Histories of client operations and the checkers that judge them.
//!
//! quorumkv promises a consistency level per keyspace and proves it by recording what
//! clients saw and checking it. This crate holds both halves:
//!
//! - [`history`]: the JSON-lines history format (documented in `docs/HISTORY.md`), typed
//!   events, a validating parser with line-numbered errors, and [`HistoryRecorder`], which
//!   the simulator and the fault harness use to write histories.
//! - [`model`]: sequential specifications ([`RegisterModel`], [`KvModel`]) behind the
//!   [`Model`] trait.
//! - [`checker`]: the linearizability checker (WGL search with memoization and per-key
//!   decomposition), returning [`CheckOutcome`] with an explained [`Violation`].
//! - [`verify`]: what `quorumkv verify FILE` runs: [`verify_path`] prints a report and
//!   returns the exit code.
//! - [`generate`]: seeded synthetic histories, linearizable by construction, for tests and
//!   benchmarks.

pub mod checker;
pub mod generate;
pub mod history;
pub mod model;
pub mod verify;

pub use checker::{
    CheckOptions, CheckOutcome, CheckReport, CheckStats, OpRef, Violation, check, check_history,
};
pub use history::{
    Event, EventType, F, FormatError, FormatErrorKind, History, HistoryRecorder, Operation,
    Position, ReadError, RecordError, Status, Value,
};
pub use model::{KvModel, Model, ModelError, ModelKind, RegisterModel};
pub use verify::{
    VerifyExit, VerifyReport, verify_file, verify_history, verify_path, verify_path_with,
};

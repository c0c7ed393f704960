//! The client's errors, and how a gRPC status from the cluster is classified for retrying.

use std::time::Duration;

use tonic::{Code, Status};

/// What went wrong, in words that say what to do about it.
///
/// [`Error::is_retryable`] tells whether the same call may succeed later unchanged: the client
/// already retried such failures until its deadline, so a caller that retries again is
/// choosing to wait longer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `connect` was given no endpoint.
    #[error(
        "no endpoints given; pass at least one client address such as 127.0.0.1:2379 \
         (`quorumkv demo` listens on 127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399)"
    )]
    NoEndpoints,
    /// An endpoint is not a `host:port` address.
    #[error("bad endpoint {endpoint:?}: {reason}; write it as host:port, e.g. 127.0.0.1:2379")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        reason: String,
    },
    /// No member answered at all until the deadline.
    #[error(
        "no member of {endpoints} is reachable ({detail}); is the cluster running? \
         (`quorumkv demo` starts one)"
    )]
    Unreachable {
        /// The addresses tried, comma-separated.
        endpoints: String,
        /// The last transport error seen.
        detail: String,
    },
    /// Members answered, but none knew a leader until the deadline.
    #[error(
        "the cluster has no leader (waited {waited:?}; {detail}): a majority of its voters may \
         be down or cut off from each other; `quorumkv status` shows which members answer"
    )]
    NoLeader {
        /// How long the client waited for one.
        waited: Duration,
        /// The last answer seen.
        detail: String,
    },
    /// The call did not finish before the deadline; for a write, the outcome is unknown
    /// (it may have been applied). Re-sending the same write with the same
    /// [`WriteId`](crate::WriteId) applies it at most once.
    #[error(
        "{op} did not finish within {waited:?} ({detail}); if it was a write it may or may not \
         have been applied. The cluster may be overloaded or changing leader: retry, or give \
         the client a longer deadline"
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// How long the client tried.
        waited: Duration,
        /// The last error seen.
        detail: String,
    },
    /// The cluster answered with a definitive refusal (bad argument, size limit, missing
    /// member, precondition failed): sending the same request again fails the same way.
    #[error("the cluster refused {op}: {message}")]
    Rejected {
        /// The operation.
        op: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The server's message (etcd's wording, which etcd clients match on).
        message: String,
    },
    /// The requested revision was compacted away.
    #[error(
        "revision {requested} has been compacted{}; ask for a later revision",
        oldest_kept(*.compact_revision)
    )]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compaction point, when the server said.
        compact_revision: Option<i64>,
    },
    /// The server ended a watch for its own reason.
    #[error("the server canceled the watch: {reason}; start a new watch")]
    WatchCanceled {
        /// The server's reason.
        reason: String,
    },
    /// A member answered with something this client cannot interpret.
    #[error(
        "unexpected answer from the cluster: {detail}; is the endpoint a quorumkv client port?"
    )]
    Protocol {
        /// What was wrong.
        detail: String,
    },
}

fn oldest_kept(compact_revision: Option<i64>) -> String {
    compact_revision.map(|r| format!(" (the oldest revision kept is {r})")).unwrap_or_default()
}

impl Error {
    /// True if the same call may succeed later unchanged (the cluster was unreachable,
    /// leaderless, slow or overloaded), false if it will keep failing the same way.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::NoLeader { .. } | Error::Timeout { .. } => true,
            Error::Rejected { code, .. } => *code == Code::ResourceExhausted,
            Error::NoEndpoints
            | Error::BadEndpoint { .. }
            | Error::Compacted { .. }
            | Error::WatchCanceled { .. }
            | Error::Protocol { .. } => false,
        }
    }

    /// True if the outcome of a write that failed with this error is unknown: it may have
    /// been applied.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

/// What a failed attempt means for the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The member is not the leader, or knows none: find the leader, then retry.
    NotLeader,
    /// The member could not be reached, or the connection broke: try another member.
    Transport,
    /// The cluster did not decide in time: the request may or may not have been applied.
    /// Safe to retry for reads and for writes carrying a session.
    OutcomeUnknown,
    /// The member is overloaded: back off, then retry.
    Busy,
    /// The client session was evicted from the server's session table (or never reached
    /// it): the command was not applied; open a new session and retry at once.
    SessionExpired,
    /// A definitive answer: retrying changes nothing.
    Final,
}

/// Classifies a status returned by a member (or by the local transport).
pub(crate) fn classify(status: &Status) -> Disposition {
    let message = status.message();
    match status.code() {
        Code::Unavailable => {
            if message.contains("not leader") || message.contains("no leader") {
                Disposition::NotLeader
            } else if message.contains("request timed out") {
                Disposition::OutcomeUnknown
            } else {
                // Connection refused, forwarding to a dead leader, a node stopping, a leader
                // whose address is not known yet: all transient, all worth another member.
                Disposition::Transport
            }
        }
        Code::ResourceExhausted if message.contains("too many requests") => Disposition::Busy,
        Code::FailedPrecondition if message.contains("session expired") => {
            Disposition::SessionExpired
        }
        Code::DeadlineExceeded => Disposition::OutcomeUnknown,
        Code::Unknown | Code::Internal | Code::Cancelled | Code::Aborted
            if is_transport_message(message) =>
        {
            Disposition::Transport
        }
        _ => Disposition::Final,
    }
}

/// Messages with which tonic and hyper report a broken or failed connection under codes
/// that servers use for real errors too.
fn is_transport_message(message: &str) -> bool {
    const HINTS: [&str; 8] = [
        "transport error",
        "h2 protocol error",
        "connection",
        "broken pipe",
        "operation was canceled",
        "Timeout expired",
        "error trying to connect",
        "stream no longer needed",
    ];
    HINTS.iter().any(|h| message.contains(h))
}

/// A short, single-line rendering of a status for error details.
pub(crate) fn describe(status: &Status) -> String {
    let message = status.message();
    let mut text =
        if message.is_empty() { format!("{:?}", status.code()) } else { message.to_string() };
    // A local transport failure says only "tcp connect error"; its innermost cause (say,
    // "Connection refused") is what tells the user what is wrong.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut innermost = None;
    while let Some(c) = cause {
        innermost = Some(c);
        cause = c.source();
    }
    if let Some(c) = innermost {
        let c = c.to_string();
        if !c.is_empty() && !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

/// The final error for a definitive status.
pub(crate) fn rejected(op: &'static str, status: &Status) -> Error {
    Error::Rejected { op, code: status.code(), message: describe(status) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_changes_are_redirects() {
        for m in ["etcdserver: not leader", "etcdserver: no leader"] {
            assert_eq!(classify(&Status::unavailable(m)), Disposition::NotLeader, "{m}");
        }
    }

    #[test]
    fn server_timeouts_leave_the_outcome_unknown() {
        assert_eq!(
            classify(&Status::unavailable("etcdserver: request timed out")),
            Disposition::OutcomeUnknown
        );
        assert_eq!(classify(&Status::deadline_exceeded("slow")), Disposition::OutcomeUnknown);
    }

    #[test]
    fn connection_failures_are_transport() {
        for s in [
            Status::unavailable("tcp connect error"),
            Status::unavailable("quorumkv: node stopped: shutting down"),
            Status::unknown("transport error"),
            Status::unknown("h2 protocol error: error reading a body from connection"),
            Status::cancelled("operation was canceled"),
            Status::internal("connection reset"),
        ] {
            assert_eq!(classify(&s), Disposition::Transport, "{s:?}");
        }
    }

    #[test]
    fn overload_and_session_expiry_are_recognised() {
        assert_eq!(
            classify(&Status::resource_exhausted("etcdserver: too many requests")),
            Disposition::Busy
        );
        assert_eq!(
            classify(&Status::failed_precondition(
                "quorumkv: client session expired or unknown; open a new session"
            )),
            Disposition::SessionExpired
        );
    }

    #[test]
    fn definitive_answers_are_final() {
        for s in [
            Status::invalid_argument("quorumkv: key of 5000 bytes exceeds the limit"),
            Status::resource_exhausted("message too large"),
            Status::not_found("etcdserver: member not found"),
            Status::failed_precondition("etcdserver: Peer URLs already exists"),
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            Status::unknown("something the server said"),
        ] {
            assert_eq!(classify(&s), Disposition::Final, "{s:?}");
        }
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        let d = Duration::from_secs(1);
        assert!(Error::Unreachable { endpoints: "a".into(), detail: "x".into() }.is_retryable());
        assert!(Error::NoLeader { waited: d, detail: "x".into() }.is_retryable());
        assert!(Error::Timeout { op: "put", waited: d, detail: "x".into() }.is_retryable());
        assert!(
            Error::Rejected { op: "put", code: Code::ResourceExhausted, message: "busy".into() }
                .is_retryable()
        );
        assert!(
            !Error::Rejected { op: "put", code: Code::InvalidArgument, message: "big".into() }
                .is_retryable()
        );
        assert!(!Error::NoEndpoints.is_retryable());
        assert!(!Error::Compacted { requested: 1, compact_revision: Some(5) }.is_retryable());
        assert!(Error::Timeout { op: "put", waited: d, detail: "x".into() }.is_outcome_unknown());
        assert!(!Error::NoLeader { waited: d, detail: "x".into() }.is_outcome_unknown());
    }

    #[test]
    fn unreachable_says_how_to_start_a_cluster() {
        let e = Error::Unreachable {
            endpoints: "127.0.0.1:2379".into(),
            detail: "connection refused".into(),
        };
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:2379"), "{text}");
        assert!(text.contains("quorumkv demo"), "{text}");
    }
}

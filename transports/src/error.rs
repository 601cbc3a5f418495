//! The transports crate's one error type. Every message is lowercase and names the operation and
//! the key (or the store), so a log line alone says what failed where.
//!
//! Invariants:
//! 1. `kind()` is the only thing a caller branches on. `Retry` means "the same request may be sent
//!    again"; it never means "it did not happen": a conditional PUT that failed with a `Retry` kind
//!    may still have been applied, which is why the retry decorator resolves such writes by
//!    reading the object back (DESIGN.md §3, "Ambiguous writes").
//! 2. Losing a create-if-absent or CAS race is *not* an error: it is an outcome
//!    (`Created::Exists`, `Swapped::Mismatch`). `Conflict` errors are the provider's other 409s,
//!    which are never retried.

use std::fmt;
use std::time::Duration;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Transient (5xx, 429, throttling, connection reset, timeout): send the same request again.
    Retry,
    /// The object does not exist.
    NotFound,
    /// The store refused because of concurrent activity in a way that retrying will not fix.
    Conflict,
    /// The request itself is wrong (bad key, bad range, bad URL): a bug or a misconfiguration.
    Invalid,
    /// The store is unusable (auth, missing bucket, broken conditional writes, local I/O): stop.
    Fatal,
    /// A write whose outcome is unknown and could not be resolved: the caller must stop and
    /// re-establish the truth by reading (fail-stop on ambiguity).
    Indeterminate,
}

/// The operation an error came from, named as in messages (`put-if-absent seg/…: …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    PutIfAbsent,
    PutIfMatch,
    Put,
    Get,
    GetRange,
    Head,
    List,
    Delete,
    Connect,
    SelfTest,
}

impl Op {
    /// Every data-plane operation, in a fixed order (used by metering and fault rules).
    pub const DATA: [Op; 8] = [
        Op::PutIfAbsent,
        Op::PutIfMatch,
        Op::Put,
        Op::Get,
        Op::GetRange,
        Op::Head,
        Op::List,
        Op::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::PutIfAbsent => "put-if-absent",
            Op::PutIfMatch => "put-if-match",
            Op::Put => "put",
            Op::Get => "get",
            Op::GetRange => "get-range",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Connect => "connect",
            Op::SelfTest => "self-test",
        }
    }

    /// True for the two writes whose success depends on a precondition.
    pub fn is_conditional(self) -> bool {
        matches!(self, Op::PutIfAbsent | Op::PutIfMatch)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op} {key}: not found")]
    NotFound { op: Op, key: String },

    #[error("{op} {key}: transient failure, safe to resend: {detail}")]
    Transient { op: Op, key: String, detail: String },

    #[error("{op} {key}: no answer within {after:?}")]
    Timeout {
        op: Op,
        key: String,
        after: Duration,
    },

    #[error("{op} {key}: conflict: {detail}")]
    Conflict { op: Op, key: String, detail: String },

    #[error("{op} {key}: invalid request: {detail}")]
    Invalid { op: Op, key: String, detail: String },

    #[error("{op} {key}: range {range} not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable {
        op: Op,
        key: String,
        range: String,
        size: String,
    },

    #[error("bucket url {url:?}: {reason}")]
    Url { url: String, reason: String },

    #[error("{op} {key}: {detail}")]
    Fatal { op: Op, key: String, detail: String },

    #[error("{op} {key}: local file {path}: {source}")]
    Io {
        op: Op,
        key: String,
        path: String,
        source: std::io::Error,
    },

    #[error("{op} {key}: outcome unknown after {attempts} attempts: {detail}")]
    Indeterminate {
        op: Op,
        key: String,
        attempts: u32,
        detail: String,
    },

    #[error("{op} {key}: gave up after {attempts} attempts in {elapsed:?}: {last}")]
    GaveUp {
        op: Op,
        key: String,
        attempts: u32,
        elapsed: Duration,
        last: Box<Error>,
    },

    #[error("store {store} refused: {primitive} is broken: {detail}")]
    Refused {
        store: String,
        primitive: String,
        detail: String,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Transient { .. } | Error::Timeout { .. } => ErrorKind::Retry,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Invalid { .. } | Error::RangeNotSatisfiable { .. } | Error::Url { .. } => {
                ErrorKind::Invalid
            }
            Error::Fatal { .. } | Error::Io { .. } | Error::Refused { .. } => ErrorKind::Fatal,
            Error::Indeterminate { .. } => ErrorKind::Indeterminate,
            // Giving up on an idempotent request leaves nothing ambiguous: the caller may try
            // again later, so the kind of the last attempt stands.
            Error::GaveUp { last, .. } => last.kind(),
        }
    }

    pub fn transient(op: Op, key: &str, detail: impl fmt::Display) -> Error {
        Error::Transient {
            op,
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }

    pub fn invalid(op: Op, key: &str, detail: impl fmt::Display) -> Error {
        Error::Invalid {
            op,
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }

    pub fn fatal(op: Op, key: &str, detail: impl fmt::Display) -> Error {
        Error::Fatal {
            op,
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }

    pub fn conflict(op: Op, key: &str, detail: impl fmt::Display) -> Error {
        Error::Conflict {
            op,
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }

    pub fn not_found(op: Op, key: &str) -> Error {
        Error::NotFound {
            op,
            key: key.to_owned(),
        }
    }

    pub fn io(op: Op, key: &str, path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            op,
            key: key.to_owned(),
            path: path.display().to_string(),
            source,
        }
    }

    /// Maps an HTTP status from any provider to an error of the right kind. Callers handle
    /// 404, 412 and 416 themselves before falling back to this.
    pub fn from_status(op: Op, key: &str, status: u16, detail: impl fmt::Display) -> Error {
        let detail = format!("http {status}: {detail}");
        match status {
            408 | 429 | 500..=599 => Error::transient(op, key, detail),
            404 => Error::not_found(op, key),
            409 => Error::conflict(op, key, detail),
            400 | 405 | 411 | 413 | 414 | 416 => Error::invalid(op, key, detail),
            _ => Error::fatal(op, key, detail),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    // Proves each HTTP status class maps to the kind the retry decorator relies on.
    #[test]
    fn status_mapping_matches_kinds() {
        let kind = |s| Error::from_status(Op::Put, "k", s, "x").kind();
        assert_eq!(kind(503), ErrorKind::Retry);
        assert_eq!(kind(500), ErrorKind::Retry);
        assert_eq!(kind(429), ErrorKind::Retry);
        assert_eq!(kind(409), ErrorKind::Conflict);
        assert_eq!(kind(404), ErrorKind::NotFound);
        assert_eq!(kind(400), ErrorKind::Invalid);
        assert_eq!(kind(403), ErrorKind::Fatal);
    }

    // Proves messages are lowercase and name the operation and the key.
    #[test]
    fn messages_name_operation_and_key() {
        let e = Error::transient(Op::PutIfAbsent, "db/seg/1", "http 503: slow down");
        assert_eq!(
            e.to_string(),
            "put-if-absent db/seg/1: transient failure, safe to resend: http 503: slow down"
        );
        let gave_up = Error::GaveUp {
            op: Op::Get,
            key: "k".into(),
            attempts: 3,
            elapsed: Duration::from_millis(5),
            last: Box::new(e),
        };
        assert_eq!(gave_up.kind(), ErrorKind::Retry);
    }
}

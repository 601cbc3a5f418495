//! The server's one error type: what front-ends tell clients. Each variant has a stable
//! [`Error::code`] that front-ends put in their replies (HTTP `{"error": {"code"}}`, a RESP
//! error) and a message that names the key, the LSN or the role involved and what to do.

use std::time::Duration;

use hadal_engine::Lsn;

use crate::error::ErrorKind;
use crate::server::backend::Role;

/// Why a server operation failed. Each variant has a stable [`Error::code`] that front-ends
/// put in their replies (HTTP `{"error": {"code"}}`, a RESP error prefix) and a message that
/// names the key, the LSN or the role involved and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A write reached a replica.
    #[error(
        "this server is a read-only {role} of {bucket}: send writes to the writer (the `hadal serve` process of that bucket)"
    )]
    ReadOnly {
        /// This server's role.
        role: Role,
        /// The bucket the replica follows.
        bucket: String,
    },
    /// A read asked for an LSN this server has not applied within the wait allowed.
    #[error(
        "this {role} has applied lsn {current}, not yet lsn {wanted}, after waiting {waited:?}; retry, or read from the writer"
    )]
    Behind {
        /// This server's role.
        role: Role,
        /// The `min_lsn` asked for.
        wanted: Lsn,
        /// The newest LSN this server can read at.
        current: Lsn,
        /// How long the read waited.
        waited: Duration,
    },
    /// An assertion of the caller's batch did not hold; nothing was written.
    #[error("{message}")]
    AssertionFailed {
        /// Which assertion (0-based, in the order given) failed.
        index: usize,
        /// The engine's description: which key, what was expected.
        message: String,
    },
    /// An atomic closure found its keys changed by other writes on every attempt.
    #[error(
        "the keys of this read-modify-write changed under it {attempts} times in a row; retry later"
    )]
    Contended {
        /// How many times the closure ran.
        attempts: usize,
    },
    /// Another writer took the bucket over: this writer accepts no more writes, and the write
    /// was not acknowledged as durable.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Whether the write reached the bucket could not be established.
    #[error("the outcome of this write is unknown: {0}")]
    Indeterminate(String),
    /// The request is wrong (key too long, bad argument): fix it.
    #[error("{0}")]
    Invalid(String),
    /// The snapshot a read was at was replaced (a replica re-bootstrapped from a newer
    /// snapshot) on every attempt: retry.
    #[error("{0}")]
    Retry(String),
    /// The server cannot serve this now (starting, shutting down, its shipper or follower
    /// stopped, the bucket failing): retry later or elsewhere.
    #[error("{0}")]
    Unavailable(String),
    /// The local copy or the bucket is damaged, or the operating system failed.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A stable machine-readable code: `read_only`, `behind`, `assertion_failed`,
    /// `contended`, `fenced`, `indeterminate`, `invalid`, `retry`, `unavailable`, `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::ReadOnly { .. } => "read_only",
            Error::Behind { .. } => "behind",
            Error::AssertionFailed { .. } => "assertion_failed",
            Error::Contended { .. } => "contended",
            Error::Fenced(_) => "fenced",
            Error::Indeterminate(_) => "indeterminate",
            Error::Invalid(_) => "invalid",
            Error::Retry(_) => "retry",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// Maps a facade error by its kind, keeping its message.
    fn from_facade(e: crate::Error) -> Error {
        let e = match e {
            crate::Error::Engine(engine) => return Error::from(engine),
            other => other,
        };
        let message = e.to_string();
        match e.kind() {
            ErrorKind::Fenced => Error::Fenced(message),
            ErrorKind::Indeterminate => Error::Indeterminate(message),
            ErrorKind::Invalid => Error::Invalid(message),
            ErrorKind::Retry => Error::Retry(message),
            ErrorKind::Closed | ErrorKind::Bucket | ErrorKind::Busy => Error::Unavailable(message),
            _ => Error::Internal(message),
        }
    }
}

impl From<hadal_engine::Error> for Error {
    fn from(e: hadal_engine::Error) -> Error {
        use hadal_engine::ErrorKind as K;
        match e {
            hadal_engine::Error::AssertionFailed { index, detail } => Error::AssertionFailed {
                index,
                message: format!("assertion {index} failed: {detail}"),
            },
            other => {
                let message = other.to_string();
                match other.kind() {
                    K::Invalid => Error::Invalid(message),
                    K::Retry => Error::Retry(message),
                    K::Closed | K::Busy => Error::Unavailable(message),
                    _ => Error::Internal(message),
                }
            }
        }
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Error {
        Error::from_facade(e)
    }
}

/// What server operations return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable() {
        // Proves the codes front-ends put in replies, which clients match on.
        assert_eq!(Error::Fenced("x".into()).code(), "fenced");
        let e: Error = hadal_engine::Error::AssertionFailed {
            index: 2,
            detail: "key \"a\" in table default exists".into(),
        }
        .into();
        assert_eq!(e.code(), "assertion_failed");
        assert!(e.to_string().contains("assertion 2 failed"));
        let ro = Error::ReadOnly {
            role: Role::Replica,
            bucket: "file:///b".into(),
        };
        assert_eq!(ro.code(), "read_only");
        assert!(ro.to_string().contains("replica"));
    }
}

//! The shipper's one error type. `kind()` tells the caller what to do.

use hadal_format::{Epoch, Lsn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Another writer took over: this one has stopped for good. Nothing after its fence was
    /// acknowledged. Reopen to become the writer again (which fences the other one).
    Fenced,
    /// The local folder's history differs from the bucket's: it must be restored from the
    /// bucket (its unshipped commits are discarded).
    Diverged,
    /// Whether a write reached the bucket could not be established in time.
    Indeterminate,
    /// The bucket failed or refused (after retries).
    Bucket,
    /// An object in the bucket or the local engine is damaged.
    Corrupt,
    /// A bad request or configuration.
    Invalid,
    /// The shipper is shut down.
    Closed,
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "fenced: writer epoch {ours:?} was superseded ({detail}); this writer accepts no more writes"
    )]
    Fenced { ours: Epoch, detail: String },
    #[error(
        "the local folder (lsn {local_lsn:?}) diverged from the bucket (lsn {bucket_lsn:?}): {detail}"
    )]
    Diverged {
        local_lsn: Lsn,
        bucket_lsn: Lsn,
        detail: String,
    },
    #[error("indeterminate: {0}")]
    Indeterminate(String),
    #[error("bucket: {0}")]
    Bucket(String),
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("closed: {0}")]
    Closed(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Fenced { .. } => ErrorKind::Fenced,
            Error::Diverged { .. } => ErrorKind::Diverged,
            Error::Indeterminate(_) => ErrorKind::Indeterminate,
            Error::Bucket(_) => ErrorKind::Bucket,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Closed(_) => ErrorKind::Closed,
        }
    }
}

impl From<hadal_transports::Error> for Error {
    fn from(e: hadal_transports::Error) -> Self {
        match e.kind() {
            hadal_transports::ErrorKind::Indeterminate => Error::Indeterminate(e.to_string()),
            _ => Error::Bucket(e.to_string()),
        }
    }
}

impl From<hadal_replica::Error> for Error {
    fn from(e: hadal_replica::Error) -> Self {
        match e.kind() {
            hadal_replica::ErrorKind::Corrupt => Error::Corrupt(e.to_string()),
            hadal_replica::ErrorKind::Invalid => Error::Invalid(e.to_string()),
            _ => Error::Bucket(e.to_string()),
        }
    }
}

impl From<hadal_engine::Error> for Error {
    fn from(e: hadal_engine::Error) -> Self {
        match e.kind() {
            hadal_engine::ErrorKind::Corrupt => Error::Corrupt(e.to_string()),
            hadal_engine::ErrorKind::Invalid => Error::Invalid(e.to_string()),
            _ => Error::Closed(e.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The engine's one error type. Messages are lowercase and name the object and the operation;
//! `kind()` tells the caller what to do about it.

use std::io;

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bytes on disk are not what was written: restore from a replica or the bucket.
    Corrupt,
    /// The request itself is wrong (key too long, unknown table, bad option): fix the request.
    Invalid,
    /// The database refuses work: closed, or poisoned by an earlier I/O failure. Reopen it.
    Closed,
    /// The operating system reported an I/O error.
    Io,
    /// An assertion of a batch did not hold; nothing was written.
    Conflict,
    /// Another process holds the data folder.
    Busy,
    /// The read snapshot is gone (a replica replaced its image to catch up): begin a new read.
    Retry,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("i/o error during {op} on {object}: {source}")]
    Io {
        op: &'static str,
        object: String,
        source: io::Error,
    },
    #[error(
        "corrupt {object}: {detail}; the local copy cannot be trusted, restore it from the bucket or a replica"
    )]
    Corrupt { object: String, detail: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("database closed: {0}")]
    Closed(String),
    #[error("assertion {index} failed: {detail}")]
    AssertionFailed { index: usize, detail: String },
    #[error("data folder {0} is in use by another process (its lock file is held)")]
    Busy(String),
    #[error(
        "the image this read was at (lsn {lsn:?}) was replaced by a newer one from a snapshot (the replica fell behind the bucket's garbage collection); begin a new read"
    )]
    ImageReplaced { lsn: hadal_format::Lsn },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Closed(_) => ErrorKind::Closed,
            Error::AssertionFailed { .. } => ErrorKind::Conflict,
            Error::Busy(_) => ErrorKind::Busy,
            Error::ImageReplaced { .. } => ErrorKind::Retry,
        }
    }

    pub(crate) fn io(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op,
            object: object.into(),
            source,
        }
    }

    pub(crate) fn corrupt(object: impl Into<String>, detail: impl ToString) -> Self {
        Error::Corrupt {
            object: object.into(),
            detail: detail.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

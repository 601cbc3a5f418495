//! The replica crate's one error type. Every message about an object names its bucket key.

use hadal_format::FormatError;

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An object in the bucket is damaged or the log's links do not hold: nothing was written
    /// locally; investigate the named object.
    Corrupt,
    /// The request cannot be met (no such database, target beyond the log, output exists).
    Invalid,
    /// The bucket failed; retrying later may help.
    Bucket,
    /// The local engine failed.
    Engine,
    /// A replica has not applied the LSN a read asked for within the wait allowed.
    Behind,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("corrupt object {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("bucket error: {0}")]
    Bucket(#[from] hadal_transports::Error),
    #[error("local engine error: {0}")]
    Engine(#[from] hadal_engine::Error),
    #[error(
        "the replica has applied lsn {applied:?}, not yet {wanted:?}, after waiting {waited:?}; retry, or read from the writer"
    )]
    Behind {
        wanted: hadal_format::Lsn,
        applied: hadal_format::Lsn,
        waited: std::time::Duration,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::Bucket(_) => ErrorKind::Bucket,
            Error::Engine(e) if e.kind() == hadal_engine::ErrorKind::Corrupt => ErrorKind::Corrupt,
            Error::Engine(_) => ErrorKind::Engine,
            Error::Behind { .. } => ErrorKind::Behind,
        }
    }

    pub(crate) fn corrupt(key: impl Into<String>, detail: impl ToString) -> Self {
        Error::Corrupt {
            key: key.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn format(key: impl Into<String>, e: FormatError) -> Self {
        Error::corrupt(key, e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

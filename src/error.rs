//! The facade's one error type. Messages are lowercase and name the folder, the bucket or the
//! operation; [`Error::kind`] tells the caller what to do about it.

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Another writer took over the bucket: this database accepts no more writes, and nothing
    /// committed after the takeover was acknowledged as durable. Reopen to take over again.
    Fenced,
    /// An assertion of a batch did not hold; nothing was written.
    Conflict,
    /// The request or the configuration is wrong (bad key, folder bound to another bucket, a
    /// folder whose history is not the bucket's): fix the call.
    Invalid,
    /// The database refuses the operation: closed, opened read-only, or its shipper stopped.
    Closed,
    /// Bytes on disk or in the bucket are not what was written.
    Corrupt,
    /// The bucket failed or refused (after retries); retrying later may help.
    Bucket,
    /// Whether a write reached the bucket could not be established.
    Indeterminate,
    /// The operating system reported an I/O error.
    Io,
    /// Another process holds the data folder.
    Busy,
    /// The read's snapshot is gone (the local image was replaced by a newer one from the
    /// bucket, as a replica behind GC re-bootstraps): begin a new read and retry.
    Retry,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "data folder {dir} is bound to bucket {bucket}: writing to it without that bucket would fork the database's history; open it with that bucket to write (reads work without it)"
    )]
    BucketRequired { dir: String, bucket: String },
    #[error(
        "data folder {dir} is bound to bucket {bound}, not {given}: a folder holds one database; use another folder for {given}"
    )]
    WrongBucket {
        dir: String,
        bound: String,
        given: String,
    },
    #[error(
        "data folder {dir} holds a database (lsn {local_lsn}) whose history is not the one in bucket {bucket} (lsn {bucket_lsn}): refusing to bind it ({detail}); open it without a bucket, or use an empty folder"
    )]
    ForeignHistory {
        dir: String,
        bucket: String,
        local_lsn: u64,
        bucket_lsn: u64,
        detail: String,
    },
    #[error("data folder {0} holds no Hadal database")]
    NoDatabase(String),
    /// The call does not fit this database (for example a snapshot without a bucket).
    #[error("{0}")]
    Invalid(String),
    #[error("read-only: {0}")]
    ReadOnly(String),
    #[error("closed: {0}")]
    Closed(String),
    #[error("opening bucket {url}: {source}")]
    Bucket {
        url: String,
        source: Box<hadal_transports::Error>,
    },
    #[error("restoring {dir} from {bucket}: {source}")]
    Restore {
        dir: String,
        bucket: String,
        source: Box<hadal_replica::Error>,
    },
    #[error("i/o error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] hadal_engine::Error),
    #[error(transparent)]
    Shipper(#[from] hadal_shipper::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BucketRequired { .. }
            | Error::WrongBucket { .. }
            | Error::ForeignHistory { .. }
            | Error::NoDatabase(_)
            | Error::Invalid(_) => ErrorKind::Invalid,
            Error::ReadOnly(_) | Error::Closed(_) => ErrorKind::Closed,
            Error::Bucket { source, .. } => match source.kind() {
                hadal_transports::ErrorKind::Indeterminate => ErrorKind::Indeterminate,
                hadal_transports::ErrorKind::Invalid => ErrorKind::Invalid,
                _ => ErrorKind::Bucket,
            },
            Error::Restore { source, .. } => match source.kind() {
                hadal_replica::ErrorKind::Corrupt => ErrorKind::Corrupt,
                hadal_replica::ErrorKind::Invalid => ErrorKind::Invalid,
                hadal_replica::ErrorKind::Bucket => ErrorKind::Bucket,
                _ => ErrorKind::Io,
            },
            Error::Io { .. } => ErrorKind::Io,
            Error::Engine(e) => match e.kind() {
                hadal_engine::ErrorKind::Corrupt => ErrorKind::Corrupt,
                hadal_engine::ErrorKind::Invalid => ErrorKind::Invalid,
                hadal_engine::ErrorKind::Conflict => ErrorKind::Conflict,
                hadal_engine::ErrorKind::Busy => ErrorKind::Busy,
                hadal_engine::ErrorKind::Io => ErrorKind::Io,
                hadal_engine::ErrorKind::Retry => ErrorKind::Retry,
                _ => ErrorKind::Closed,
            },
            Error::Shipper(e) => match e.kind() {
                hadal_shipper::ErrorKind::Fenced => ErrorKind::Fenced,
                hadal_shipper::ErrorKind::Diverged | hadal_shipper::ErrorKind::Invalid => {
                    ErrorKind::Invalid
                }
                hadal_shipper::ErrorKind::Indeterminate => ErrorKind::Indeterminate,
                hadal_shipper::ErrorKind::Corrupt => ErrorKind::Corrupt,
                hadal_shipper::ErrorKind::Closed => ErrorKind::Closed,
                _ => ErrorKind::Bucket,
            },
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_image_is_a_retry_not_a_closed_database() {
        // Proves a read whose image was replaced tells the caller to retry, not that the
        // database is closed.
        let e = Error::Engine(hadal_engine::Error::ImageReplaced {
            lsn: hadal_engine::Lsn::new(3),
        });
        assert_eq!(e.kind(), ErrorKind::Retry);
    }
}

//! Hadal's follower side: reading a database's log from its bucket with every link verified
//! (`log.rs`), and restoring it to its head, an LSN or a time (`restore.rs`). Following and
//! branches build on these.

#![forbid(unsafe_code)]

mod error;
pub mod log;
pub mod restore;

pub use error::{Error, ErrorKind, Result};
pub use log::{BucketLog, ChainCursor, ManifestAt, SegmentAt, first_missing};
pub use restore::{Progress, Restored, Target, restore, restore_into};

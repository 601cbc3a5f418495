//! Hadal's follower side: reading a database's log from its bucket with every link verified
//! (`log.rs`), restoring it to its head, an LSN or a time (`restore.rs`), following it as a read
//! replica (`follow.rs`), and verifying its whole history (`verify.rs`).

#![forbid(unsafe_code)]

mod error;
pub mod follow;
pub mod log;
pub mod restore;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
pub use follow::{FollowOptions, FollowState, Follower, Lag};
pub use log::{BucketLog, ChainCursor, ManifestAt, SegmentAt, first_missing};
pub use restore::{Progress, Restored, Target, restore, restore_into};
pub use verify::{VerifyReport, verify};

//! Hadal's follower side: reading a database's log from its bucket with every link verified
//! (`log.rs`), restoring it to its head, an LSN or a time (`restore.rs`), following it as a read
//! replica (`follow.rs`), and verifying its whole history (`verify.rs`).

#![forbid(unsafe_code)]

pub mod branch;
mod error;
pub mod follow;
pub mod log;
pub mod restore;
pub mod verify;

pub use branch::{ResolvedPoint, resolve_point, restorable};
pub use error::{Error, ErrorKind, Result};
pub use follow::{FollowOptions, FollowState, Follower, Lag};
pub use log::{BucketLog, ChainCursor, ManifestAt, SegmentAt, first_missing};
pub use restore::{BranchPoint, Progress, Restored, Target, open_parent, restore, restore_into};
pub use verify::{VerifyReport, verify};

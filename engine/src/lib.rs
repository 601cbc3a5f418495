//! Hadal's local engine: a crash-safe B+Tree over a page WAL.
//!
//! Start reading at [`Database`] (`db.rs`): open and recovery, the writer slot, group commit,
//! the shipping hooks. Then `txn.rs` (read and write transactions), `btree/` (the tree),
//! `pager.rs` (snapshot reads, cache, checkpoint), `wal.rs` (the log) and `storage.rs` (the only
//! seam to files). The byte layouts and the crash argument are in `docs/design/engine.md`.

#![forbid(unsafe_code)]

mod batch;
mod btree;
mod clock;
mod db;
mod error;
pub mod integrity;
mod pager;
mod pages;
mod storage;
mod txn;
mod wal;

pub use batch::{Assertion, Batch, Op};
pub use btree::Entry;
pub use clock::{Clock, ManualClock, SystemClock};
pub use db::{
    Commit, CommitHook, Database, Durability, ImageHeader, Info, Loader, MAIN_FILE_NAME, Options,
    WAL_FILE_NAME,
};
pub use error::{Error, ErrorKind, Result};
pub use hadal_format::{Lsn, PageNo, StateChecksum};
pub use storage::{FaultPlan, FileStorage, MemStorage, Storage};
pub use txn::{DEFAULT_TABLE, Range, ReadTxn, Table, WriteTxn};

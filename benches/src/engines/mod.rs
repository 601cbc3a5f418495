//! The engines under test behind one narrow trait, so the harness runs the same loops against
//! each and the only difference between two timings is the engine.
//!
//! Every implementation commits durably (fsync or fdatasync before `commit` returns) with the
//! engine's default settings, reads through one snapshot per workload, and returns a [`Tally`]
//! the harness checks against the data.

use std::ops::Range;
use std::path::Path;

use anyhow::Result;

use crate::workload::{Dataset, Tally};

mod hadal;
mod lmdb;
mod redb;

pub use self::hadal::Hadal;
pub use self::lmdb::Lmdb;
pub use self::redb::Redb;

/// One embedded key-value engine, opened on a fresh folder.
pub trait Engine: Sized {
    /// The name in the table, the JSON and `--only`.
    const NAME: &'static str;

    /// Creates a database in the empty folder `dir`.
    fn open(dir: &Path) -> Result<Self>;

    /// Inserts the pairs `pairs` of `data` in one transaction and commits it durably.
    fn commit(&mut self, data: &Dataset, pairs: Range<usize>) -> Result<()>;

    /// Point-reads the key of every index in `order`, in that order, in one read transaction.
    fn get_all(&self, data: &Dataset, order: &[u32]) -> Result<Tally>;

    /// For every index in `starts`, reads up to `len` entries in key order from that key on,
    /// all in one read transaction.
    fn scan_all(&self, data: &Dataset, starts: &[u32], len: usize) -> Result<Tally>;
}

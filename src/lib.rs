//! Hadal as a library: [`Database`], the async embedded facade over the local engine and the
//! shipper that makes a bucket the database's durable home.
//!
//! ```no_run
//! # async fn demo() -> hadal::Result<()> {
//! let db = hadal::Database::open(
//!     hadal::Options::new("./hadal-data").bucket("file:///var/lib/hadal-bucket"),
//! )
//! .await?;
//! let handle = db.put("user:1", "alice").await?; // committed locally
//! handle.durable().await?; // in the bucket: safe to acknowledge
//! assert_eq!(db.get("user:1").await?.as_deref(), Some(&b"alice"[..]));
//! db.close().await?; // ships the rest, releases the folder
//! # Ok(()) }
//! ```
//!
//! Files: `database.rs` (the facade), `takeover.rs` (opening a folder as a bucket's writer,
//! with diverged-folder recovery), `binding.rs` (which bucket a folder belongs to), `gate.rs`
//! (how write handles learn of durability), `error.rs`; `server/` (the HTTP server and the
//! role-agnostic backend that `hadal serve` and `hadal replica` run).

#![forbid(unsafe_code)]

mod binding;
mod committer;
mod database;
mod error;
mod gate;
pub mod server;
mod takeover;

pub use binding::{BINDING_FILE_NAME, normalize as normalize_bucket_url};
pub use bytes::Bytes;
pub use database::{Database, Durability, Options, Scan, WriteHandle};
pub use error::{Error, ErrorKind, Result};
pub use hadal_engine::{Assertion, Batch, DEFAULT_TABLE, Entry, Lsn, ReadTxn};
pub use hadal_format::Epoch;
pub use hadal_shipper::MetricsSnapshot;

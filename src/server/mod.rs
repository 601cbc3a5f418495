//! The Hadal server: `hadal serve` (the writer) and `hadal replica` (a read-only follower)
//! behind one set of front-ends.
//!
//! - `backend.rs`: [`Backend`], the role-agnostic operations every front-end calls (reads at an
//!   LSN, scans with a resume cursor, batches with assertions, atomic read-modify-write, TTL,
//!   key count, info).
//! - `error.rs`: [`Error`], whose codes front-ends map to their protocol.
//!
//! A front-end is a thin adapter over [`Backend`]: the HTTP API, and the Redis protocol (RESP)
//! that plugs in the same way.

pub mod backend;
pub mod error;

pub use backend::{
    Backend, Change, Committed, Error, Info, LagInfo, Plan, Read, Reads, ReplicaOptions, Result,
    Role, ScanPage, ScanRequest, Ttl,
};

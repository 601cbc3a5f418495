//! The Hadal server: `hadal serve` (the writer) and `hadal replica` (a read-only follower)
//! behind one set of front-ends.
//!
//! - `backend.rs`: [`Backend`], the role-agnostic operations every front-end calls (reads at an
//!   LSN, scans with a resume cursor, batches with assertions, atomic read-modify-write, TTL,
//!   key count, info).
//! - `error.rs`: [`Error`], whose codes front-ends map to their protocol.
//! - `config.rs`: settings from flags, `HADAL_*` variables and a TOML file, layered and checked
//!   (including the rule that a non-loopback listener needs API keys).
//! - `auth.rs`: API keys (stored as SHA-256 hashes) and the roles `reader`, `writer`, `admin`.
//! - `http/`: the HTTP API (axum) and its OpenAPI document.
//! - `resp/`: the Redis protocol (RESP2/RESP3) front-end.
//! - `metrics.rs`: the Prometheus text exposition.
//! - `run.rs`: a server's life: listen, open the backend, serve, shut down within the grace.
//!
//! A front-end is a thin adapter over [`Backend`]: the HTTP API and the Redis protocol both
//! parse their requests, call [`Backend`] and turn its answers and [`Error`]s into replies.

pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod resp;
pub mod run;

pub use backend::{
    Backend, Change, Committed, Error, Info, LagInfo, Pending, PendingCommit, Plan, Read, Reads,
    ReplicaOptions, Result, Role, ScanPage, ScanRequest, Ttl,
};
pub use config::{Layer, LogFormat, ServerConfig};
pub use run::{run, shutdown_signal};

//! Hadal's conformance crate: the `Bucket` contract suite (`run_suite`), the deliberately broken
//! buckets that prove it has teeth, the `hadal bucket check` report, and harnesses that start
//! real object-store servers (moto, Azurite) on loopback for the integration tests.
//!
//! "Test the primitive, not the docs": every transport, including the in-memory and local-folder
//! ones, must pass the same suite before anything above it relies on create-if-absent or CAS.

#![forbid(unsafe_code)]

pub mod broken;
pub mod check;
pub mod prefixed;
pub mod servers;
pub mod suite;

pub use crate::broken::{BrokenBucket, Flaw};
pub use crate::check::{CHECK_PREFIX, CheckReport, CheckRow, bucket_check};
pub use crate::prefixed::PrefixedBucket;
pub use crate::suite::{CASES, CaseResult, SuiteOptions, SuiteReport, run_suite};

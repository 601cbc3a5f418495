//! Hadal's transports: the narrow `Bucket` trait through which everything reaches an object
//! store, its implementations chosen by URL, and the decorators that make stores retry,
//! misbehave on purpose, or count what they cost. Bytes only: this crate never learns what an
//! LSN, a segment or a manifest is (DESIGN.md §1, §3).
//!
//! | URL | implementation | create-if-absent | CAS |
//! |---|---|---|---|
//! | `memory://NAME` | [`MemoryBucket`] | map under a mutex | random version tag |
//! | `file:///PATH` | [`FileBucket`] | `link(2)` of a staged, fsynced file | `flock` + rename |
//! | `s3://BUCKET/PREFIX` | `s3::S3Bucket` (feature `s3`) | `If-None-Match: *` | `If-Match: ETag` |
//! | `gs://BUCKET/PREFIX` | `gcs::GcsBucket` (feature `gcs`) | `ifGenerationMatch=0` | generation |
//! | `az://CONTAINER/PREFIX` | `azure::AzureBucket` (feature `azure`) | `If-None-Match: *` | `If-Match` |
//!
//! Decorators: [`RetryingBucket`], [`FaultyBucket`], [`MeteredBucket`].

#![forbid(unsafe_code)]

mod bucket;
mod error;
mod faults;
mod file;
mod memory;
mod metering;
mod paging;
mod retry;
mod self_test;
mod url;

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcs")]
pub mod gcs;
#[cfg(feature = "s3")]
pub mod s3;

pub use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, DynBucket, KEY_BYTES_MAX, LIST_PAGE_KEYS, ListStream,
    NONCE_METADATA_KEY, Nonce, Object, ObjectInfo, Swapped, Version, list_all, list_some,
    validate_key,
};
pub use crate::error::{Error, ErrorKind, Op, Result};
pub use crate::faults::{Fault, FaultConfig, FaultEvent, FaultRule, FaultyBucket};
pub use crate::file::FileBucket;
pub use crate::memory::MemoryBucket;
pub use crate::metering::{
    BillingClass, CostEstimate, CostModel, Meter, MeteredBucket, Provider, Usage, billing_class,
};
pub use crate::paging::{checked, paginate};
pub use crate::retry::{RetryPolicy, RetryingBucket};
pub use crate::self_test::{Check, SELF_TEST_PREFIX, SelfTestReport, self_test, self_test_report};
pub use crate::url::{BucketUrl, open};
/// Implementors of `Bucket` outside this crate use the same macro.
pub use async_trait::async_trait;

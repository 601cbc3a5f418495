//! The `Bucket` trait: the only seam through which Hadal touches an object store. It moves bytes
//! under string keys and knows nothing of LSNs, segments or manifests.
//!
//! Contract (proven for every implementation by `hadal-conformance`):
//! 1. `put_if_absent` is atomic: of any number of concurrent creates of one key, exactly one
//!    answers `Created`; every other answers `Exists`. A key that was deleted may be created again.
//! 2. `put_if_match` is atomic compare-and-swap on the opaque `Version` returned by the last write
//!    or read; a missing object or any other version answers `Mismatch`.
//! 3. A successful write is visible to every later `get`, `head` and `list` (read-after-write).
//! 4. `list` yields keys in strictly increasing byte order, only those starting with `prefix` and
//!    greater than `start_after`, across as many provider pages as it takes.
//! 5. Conditional writes carry a caller-chosen `Nonce`, stored as object metadata where the store
//!    has it; callers also put it in the body. "Is the object there ours?" is therefore always
//!    answerable by reading it back (`Object::is_ours`), which is how ambiguous writes resolve.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Op, Result};

/// The metadata entry under which conditional writes store their nonce.
/// An underscore, not a hyphen: Azure metadata names must be C# identifiers.
pub const NONCE_METADATA_KEY: &str = "hadal_nonce";

/// Keys longer than this are refused before any request (S3's and GCS's limit is 1,024 bytes;
/// a prefix is added in front of ours, so we leave it room).
pub const KEY_BYTES_MAX: usize = 768;

/// The most keys any implementation returns in one provider request; S3 and GCS cap a page at
/// 1,000, so pagination is exercised by every listing past that.
pub const LIST_PAGE_KEYS: usize = 1000;

/// A unique tag for one write attempt (128 random bits). Its hex form goes into metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nonce(u128);

impl Nonce {
    pub fn random() -> Nonce {
        Nonce(rand::random::<u128>())
    }

    pub const fn from_u128(value: u128) -> Nonce {
        Nonce(value)
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }

    pub fn parse(text: &str) -> Option<Nonce> {
        if text.len() != 32 {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(Nonce)
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// An opaque object version: an ETag on S3 and Azure, a generation on GCS, a random tag on the
/// local stores. Only ever compared for equality and passed back to `put_if_match`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    pub fn new(text: impl Into<String>) -> Version {
        Version(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to a create-if-absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created(Version),
    Exists,
}

/// The answer to a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swapped {
    Swapped(Version),
    Mismatch,
}

/// What `head` and `list` know about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size_bytes: u64,
    /// `None` only in listings from stores that do not report versions there.
    pub version: Option<Version>,
}

/// A whole object as `get` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub bytes: Bytes,
    pub version: Version,
    pub metadata: BTreeMap<String, String>,
}

impl Object {
    pub fn nonce(&self) -> Option<Nonce> {
        self.metadata
            .get(NONCE_METADATA_KEY)
            .and_then(|n| Nonce::parse(n))
    }

    /// True when this object is the one a write of `body` tagged `nonce` put there: by the
    /// nonce where the store keeps metadata, else by the bytes (which carry the nonce too).
    pub fn is_ours(&self, nonce: Nonce, body: &[u8]) -> bool {
        match self.nonce() {
            Some(stored) => stored == nonce && self.bytes.as_ref() == body,
            None => self.bytes.as_ref() == body,
        }
    }
}

/// A byte range for `get_range`, with HTTP `Range` semantics: a range that starts inside the
/// object but ends past it is cut at the end; one that starts at or past the end is
/// unsatisfiable (so is any range of an empty object); a suffix longer than the object is the
/// whole object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `start..end`, end exclusive; `start < end`.
    Bounded { start: u64, end: u64 },
    /// From `start` to the end.
    From { start: u64 },
    /// The last `len` bytes; `len > 0`.
    Suffix { len: u64 },
}

impl ByteRange {
    /// The `Range` header value (`bytes=0-99`, `bytes=100-`, `bytes=-10`).
    pub fn to_http(self) -> String {
        match self {
            ByteRange::Bounded { start, end } => format!("bytes={start}-{}", end - 1),
            ByteRange::From { start } => format!("bytes={start}-"),
            ByteRange::Suffix { len } => format!("bytes=-{len}"),
        }
    }

    /// Rejects ranges that are malformed whatever the object (`start >= end`, empty suffix).
    pub fn validate(self, op: Op, key: &str) -> Result<()> {
        let ok = match self {
            ByteRange::Bounded { start, end } => start < end,
            ByteRange::From { .. } => true,
            ByteRange::Suffix { len } => len > 0,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                op,
                key,
                format!("malformed range {}", self.to_http()),
            ))
        }
    }

    /// Resolves the range against an object of `size` bytes, as a server would.
    pub fn resolve(self, op: Op, key: &str, size: u64) -> Result<std::ops::Range<u64>> {
        self.validate(op, key)?;
        let range = match self {
            ByteRange::Bounded { start, end } => start..end.min(size),
            ByteRange::From { start } => start..size,
            ByteRange::Suffix { len } => size.saturating_sub(len)..size,
        };
        if range.start >= size {
            return Err(Error::RangeNotSatisfiable {
                op,
                key: key.to_owned(),
                range: self.to_http(),
                size: size.to_string(),
            });
        }
        Ok(range)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_http())
    }
}

/// Optional primitives beyond the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Server-side concatenation of objects (GCS compose).
    pub compose: bool,
    /// Appending to an existing object (S3 Express One Zone, GCS appendable objects).
    pub append: bool,
    /// User metadata on objects (where conditional writes also store their nonce).
    pub user_metadata: bool,
}

pub type ListStream<'a> = BoxStream<'a, Result<ObjectInfo>>;

/// An object store, reduced to what Hadal's bucket protocol needs (DESIGN.md §3).
#[async_trait]
pub trait Bucket: Send + Sync + fmt::Debug {
    /// The store's URL (without credentials), used to name it in errors and reports.
    fn name(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// Create `key` only if no object has that key.
    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created>;

    /// Replace `key` only if its current version is `expected`.
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped>;

    /// Write `key` unconditionally (unique names only: snapshot parts, scratch objects).
    async fn put(&self, key: &str, body: Bytes) -> Result<Version>;

    /// The whole object, or `None` if there is none.
    async fn get(&self, key: &str) -> Result<Option<Object>>;

    /// Part of an object; a missing object is an error of kind `NotFound`.
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes>;

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// Keys starting with `prefix` and greater than `start_after`, in byte order.
    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_>;

    /// Remove `key`; removing a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// A shared, dynamically chosen bucket, as `open` returns it.
pub type DynBucket = Arc<dyn Bucket>;

#[async_trait]
impl<B: Bucket + ?Sized> Bucket for Arc<B> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        (**self).put_if_absent(key, body, nonce).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        (**self).put_if_match(key, body, expected, nonce).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        (**self).put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        (**self).get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        (**self).get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        (**self).head(key).await
    }
    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        (**self).list(prefix, start_after)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key).await
    }
}

/// Collects a whole listing (tests, the CLI, cold starts; never the steady state, see F12).
pub async fn list_all(
    bucket: &dyn Bucket,
    prefix: &str,
    start_after: Option<&str>,
) -> Result<Vec<ObjectInfo>> {
    bucket.list(prefix, start_after).try_collect().await
}

/// Lists at most `limit` keys.
pub async fn list_some(
    bucket: &dyn Bucket,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<Vec<ObjectInfo>> {
    bucket
        .list(prefix, start_after)
        .take(limit)
        .try_collect()
        .await
}

/// Refuses keys no store can hold the same way: empty, too long, absolute, with empty or dot
/// components, backslashes or control characters.
pub fn validate_key(op: Op, key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        Some("key is empty")
    } else if key.len() > KEY_BYTES_MAX {
        Some("key is longer than KEY_BYTES_MAX")
    } else if key.starts_with('/') || key.ends_with('/') {
        Some("key starts or ends with '/'")
    } else if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("key has an empty, '.' or '..' component")
    } else if key.chars().any(|c| c.is_control() || c == '\\') {
        Some("key has a control character or a backslash")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::invalid(op, key, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves range resolution follows HTTP semantics on the edges the suite checks.
    #[test]
    fn ranges_resolve_like_http() {
        let r = |range: ByteRange, size| range.resolve(Op::GetRange, "k", size);
        assert_eq!(
            r(ByteRange::Bounded { start: 2, end: 5 }, 10).ok(),
            Some(2..5)
        );
        assert_eq!(
            r(ByteRange::Bounded { start: 8, end: 50 }, 10).ok(),
            Some(8..10)
        );
        assert!(r(ByteRange::Bounded { start: 10, end: 11 }, 10).is_err());
        assert_eq!(r(ByteRange::Suffix { len: 3 }, 10).ok(), Some(7..10));
        assert_eq!(r(ByteRange::Suffix { len: 30 }, 10).ok(), Some(0..10));
        assert!(r(ByteRange::Suffix { len: 0 }, 10).is_err());
        assert!(r(ByteRange::From { start: 0 }, 0).is_err());
        assert!(r(ByteRange::Bounded { start: 5, end: 5 }, 10).is_err());
        assert_eq!(
            ByteRange::Bounded { start: 0, end: 100 }.to_http(),
            "bytes=0-99"
        );
    }

    // Proves nonces round-trip through their metadata form and keys are validated.
    #[test]
    fn nonces_and_keys() {
        let n = Nonce::from_u128(0xdead_beef);
        assert_eq!(Nonce::parse(&n.to_string()), Some(n));
        assert_eq!(Nonce::parse("xyz"), None);
        assert!(validate_key(Op::Put, "db/seg/00000000000000000001").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a\\b", "a\nb"] {
            assert!(validate_key(Op::Put, bad).is_err(), "{bad:?} accepted");
        }
    }
}

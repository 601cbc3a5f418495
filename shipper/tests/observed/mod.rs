//! Bucket decorators that watch the shipper from below, at the store: what it sees is what the
//! bucket holds, not what the shipper believes.
//!
//! - [`SegmentLedger`] records, in order, the moment the wrapped store first *confirmed* that a
//!   segment is there: a create of it answered `Created`, or a create of its key answered
//!   `Exists` (the object was there before that answer). A committer takes a
//!   [`SegmentLedger::mark`] right after its commit was acknowledged;
//!   [`SegmentLedger::check_acknowledged`] then proves the segment holding that LSN had been
//!   confirmed *before* the mark and is still readable in the store with the same LSN range. A
//!   create still in flight at the acknowledgement, or a late write that lands after it, is
//!   confirmed only afterwards, so an acknowledgement that ran ahead of its segment is caught,
//!   not excused by the object turning up later.
//! - [`InFlight`] counts segment creates that are running at the same moment; the shipper must
//!   never have more than one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hadal_format::Lsn;
use hadal_format::segment::{SegmentHeader, SegmentKind};
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, DynBucket, ListStream, Nonce, Object, ObjectInfo,
    Result, Swapped, Version, async_trait,
};
use parking_lot::Mutex;

fn is_segment(key: &str) -> bool {
    key.starts_with(hadal_format::keys::SEGMENT_PREFIX)
}

/// One segment as the store first confirmed it.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub key: String,
    pub kind: SegmentKind,
    pub lsn_first: Lsn,
    pub lsn_last: Lsn,
}

/// Records, in order, the first confirmation of every segment key by the wrapped store.
#[derive(Debug)]
pub struct SegmentLedger {
    inner: DynBucket,
    confirmed: Mutex<Vec<Confirmed>>,
}

impl SegmentLedger {
    pub fn new(inner: DynBucket) -> SegmentLedger {
        SegmentLedger {
            inner,
            confirmed: Mutex::new(Vec::new()),
        }
    }

    /// A position in the confirmation order: segments at positions below it were confirmed
    /// before it was taken.
    pub fn mark(&self) -> usize {
        self.confirmed.lock().len()
    }

    pub fn confirmed(&self) -> Vec<Confirmed> {
        self.confirmed.lock().clone()
    }

    /// `Ok` if a commit segment holding `lsn` was confirmed before `mark` and the store still holds
    /// it; otherwise why not.
    pub async fn check_acknowledged(
        &self,
        lsn: Lsn,
        mark: usize,
    ) -> std::result::Result<(), String> {
        let found = {
            let confirmed = self.confirmed.lock();
            confirmed[..mark.min(confirmed.len())]
                .iter()
                .find(|s| s.kind == SegmentKind::Commits && s.lsn_first <= lsn && lsn <= s.lsn_last)
                .cloned()
        };
        let Some(segment) = found else {
            let late = self.confirmed.lock().iter().position(|s| {
                s.kind == SegmentKind::Commits && s.lsn_first <= lsn && lsn <= s.lsn_last
            });
            return Err(match late {
                Some(at) => format!(
                    "lsn {} was acknowledged before the store confirmed its segment (confirmed \
                     at position {at}, acknowledged at {mark})",
                    lsn.get()
                ),
                None => format!("lsn {} was acknowledged but no segment holds it", lsn.get()),
            });
        };
        let object = self
            .inner
            .get(&segment.key)
            .await
            .map_err(|e| format!("reading {} back: {e}", segment.key))?
            .ok_or_else(|| {
                format!(
                    "{} was confirmed but the store no longer holds it",
                    segment.key
                )
            })?;
        let (header, _) = SegmentHeader::decode(&object.bytes)
            .map_err(|e| format!("{} does not decode: {e}", segment.key))?;
        if (header.lsn_first, header.lsn_last) != (segment.lsn_first, segment.lsn_last) {
            return Err(format!("{} changed after it was confirmed", segment.key));
        }
        Ok(())
    }
}

#[async_trait]
impl Bucket for SegmentLedger {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        let created = self.inner.put_if_absent(key, body.clone(), nonce).await?;
        if is_segment(key) {
            // Either answer proves an object is at the key now. Whose it is (the range it holds)
            // is taken from the bytes sent here and checked against the stored object by
            // `check_acknowledged`. The shipper encoded these bytes itself; bytes that do not
            // decode are a bug there.
            let (header, _) = SegmentHeader::decode(&body).expect("a segment the shipper sealed");
            let mut confirmed = self.confirmed.lock();
            if !confirmed.iter().any(|s| s.key == key) {
                confirmed.push(Confirmed {
                    key: key.to_owned(),
                    kind: header.kind,
                    lsn_first: header.lsn_first,
                    lsn_last: header.lsn_last,
                });
            }
        }
        Ok(created)
    }
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        self.inner.put_if_match(key, body, expected, nonce).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        self.inner.list(prefix, start_after)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

/// Counts segment creates running at once.
#[derive(Debug)]
pub struct InFlight {
    inner: DynBucket,
    now: AtomicU64,
    max: AtomicU64,
    calls: AtomicU64,
}

/// Leaves the in-flight count when the call ends, also when its future is dropped (a retry
/// layer abandoning an attempt at its timeout).
struct Leave<'a>(&'a AtomicU64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InFlight {
    pub fn new(inner: DynBucket) -> Arc<InFlight> {
        Arc::new(InFlight {
            inner,
            now: AtomicU64::new(0),
            max: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        })
    }

    /// The most segment creates ever running at the same moment.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }

    /// Segment creates so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Bucket for InFlight {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        if !is_segment(key) {
            return self.inner.put_if_absent(key, body, nonce).await;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let running = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        let _leave = Leave(&self.now);
        self.max.fetch_max(running, Ordering::SeqCst);
        self.inner.put_if_absent(key, body, nonce).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        self.inner.put_if_match(key, body, expected, nonce).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        self.inner.list(prefix, start_after)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

//! The metering decorator and the per-provider cost model. Object stores bill per request class
//! and per byte, and throttle per prefix and per object name; this counts what a workload does
//! and turns it into dollars and rate-limit warnings (F12: an idle database must not pay for
//! polling).
//!
//! Billing classes: A = writes and listings (PUT, LIST: create-if-absent, CAS, put, one per
//! listing page of up to 1,000 keys), B = reads (GET, HEAD, range GET). DELETE is free on all
//! four providers. Prices are list prices for the standard/hot tier in one reference region
//! (see `docs/design/transports.md` for sources); they are estimates, not invoices.
//!
//! Invariant: metering never changes behaviour: every call is forwarded unchanged and counted
//! once, whatever its outcome (providers bill failed requests too).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, LIST_PAGE_KEYS, ListStream, Nonce, Object,
    ObjectInfo, Swapped, Version,
};
use crate::error::{Op, Result};

/// A provider's billing class for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingClass {
    A,
    B,
    Free,
}

pub fn billing_class(op: Op) -> BillingClass {
    match op {
        Op::PutIfAbsent | Op::PutIfMatch | Op::Put | Op::List => BillingClass::A,
        Op::Get | Op::GetRange | Op::Head => BillingClass::B,
        Op::Delete | Op::Connect | Op::SelfTest => BillingClass::Free,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    S3,
    Gcs,
    R2,
    Azure,
}

/// Prices and published rate limits of one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    pub provider: Provider,
    /// What the numbers below are for (tier, region, date read).
    pub basis: &'static str,
    pub class_a_usd_per_million: f64,
    pub class_b_usd_per_million: f64,
    pub storage_usd_per_gb_month: f64,
    /// Egress to the internet; traffic inside the region is free on all four.
    pub egress_usd_per_gb: f64,
    /// Sustained writes per second to one prefix (or bucket/account) before throttling.
    pub prefix_writes_per_s_max: u64,
    pub prefix_reads_per_s_max: u64,
    /// Sustained writes per second to one object name (`None`: no published limit).
    pub object_writes_per_s_max: Option<u64>,
}

impl CostModel {
    pub fn for_provider(provider: Provider) -> CostModel {
        match provider {
            Provider::S3 => CostModel {
                provider,
                basis: "S3 Standard, us-east-1, list prices",
                class_a_usd_per_million: 5.00,
                class_b_usd_per_million: 0.40,
                storage_usd_per_gb_month: 0.023,
                egress_usd_per_gb: 0.09,
                prefix_writes_per_s_max: 3_500,
                prefix_reads_per_s_max: 5_500,
                object_writes_per_s_max: None,
            },
            Provider::Gcs => CostModel {
                provider,
                basis: "GCS Standard, regional (us-central1), list prices",
                class_a_usd_per_million: 5.00,
                class_b_usd_per_million: 0.40,
                storage_usd_per_gb_month: 0.020,
                egress_usd_per_gb: 0.12,
                prefix_writes_per_s_max: 1_000,
                prefix_reads_per_s_max: 5_000,
                object_writes_per_s_max: Some(1),
            },
            Provider::R2 => CostModel {
                provider,
                basis: "Cloudflare R2 Standard, list prices",
                class_a_usd_per_million: 4.50,
                class_b_usd_per_million: 0.36,
                storage_usd_per_gb_month: 0.015,
                egress_usd_per_gb: 0.0,
                prefix_writes_per_s_max: 1_000,
                prefix_reads_per_s_max: 5_000,
                object_writes_per_s_max: Some(1),
            },
            Provider::Azure => CostModel {
                provider,
                basis: "Azure Blob Hot LRS, East US, list prices",
                class_a_usd_per_million: 6.50,
                class_b_usd_per_million: 0.50,
                storage_usd_per_gb_month: 0.0208,
                egress_usd_per_gb: 0.087,
                prefix_writes_per_s_max: 20_000,
                prefix_reads_per_s_max: 20_000,
                object_writes_per_s_max: None,
            },
        }
    }

    /// Dollars for the requests and egress in `usage`, plus the rate limits it would hit.
    pub fn estimate(&self, usage: &Usage) -> CostEstimate {
        let class_a_usd = usage.class_a as f64 * self.class_a_usd_per_million / 1e6;
        let class_b_usd = usage.class_b as f64 * self.class_b_usd_per_million / 1e6;
        let egress_usd = usage.bytes_out as f64 / GB * self.egress_usd_per_gb;
        let mut warnings = Vec::new();
        if usage.peak_writes_per_s > self.prefix_writes_per_s_max {
            warnings.push(format!(
                "peak of {} writes/s exceeds {:?}'s {} writes/s per prefix",
                usage.peak_writes_per_s, self.provider, self.prefix_writes_per_s_max
            ));
        }
        if usage.peak_reads_per_s > self.prefix_reads_per_s_max {
            warnings.push(format!(
                "peak of {} reads/s exceeds {:?}'s {} reads/s per prefix",
                usage.peak_reads_per_s, self.provider, self.prefix_reads_per_s_max
            ));
        }
        if self.object_writes_per_s_max.is_some() && usage.same_object_rewrites_within_1s > 0 {
            warnings.push(format!(
                "{} writes hit an object name written less than a second before: {:?} throttles \
                 to about one write per second per object name",
                usage.same_object_rewrites_within_1s, self.provider
            ));
        }
        CostEstimate {
            class_a_usd,
            class_b_usd,
            egress_usd,
            total_usd: class_a_usd + class_b_usd + egress_usd,
            warnings,
        }
    }

    /// Dollars per month to keep `bytes` stored.
    pub fn storage_usd_per_month(&self, bytes: u64) -> f64 {
        bytes as f64 / GB * self.storage_usd_per_gb_month
    }
}

const GB: f64 = 1_073_741_824.0;

#[derive(Debug, Clone, PartialEq)]
pub struct CostEstimate {
    pub class_a_usd: f64,
    pub class_b_usd: f64,
    pub egress_usd: f64,
    pub total_usd: f64,
    pub warnings: Vec<String>,
}

/// Counts since the meter was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Provider requests per operation (a listing counts one per page).
    pub requests: BTreeMap<Op, u64>,
    pub class_a: u64,
    pub class_b: u64,
    /// Bytes sent to the store (bodies of writes).
    pub bytes_in: u64,
    /// Bytes received from the store (bodies of reads).
    pub bytes_out: u64,
    /// Writes to a key that had been written less than a second before.
    pub same_object_rewrites_within_1s: u64,
    pub peak_writes_per_s: u64,
    pub peak_reads_per_s: u64,
}

/// Keys remembered for the per-object rate check; older ones are forgotten (a miss only makes
/// the check lenient, never wrong in the other direction).
const RECENT_WRITES_MAX: usize = 10_000;

#[derive(Debug)]
struct MeterState {
    usage: Usage,
    recent_writes: HashMap<String, Instant>,
    window_start: Option<Instant>,
    window_writes: u64,
    window_reads: u64,
}

/// Shared counters; clone the `Arc` to read usage while the bucket is in use.
#[derive(Debug)]
pub struct Meter {
    state: Mutex<MeterState>,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            state: Mutex::new(MeterState {
                usage: Usage::default(),
                recent_writes: HashMap::new(),
                window_start: None,
                window_writes: 0,
                window_reads: 0,
            }),
        }
    }
}

impl Meter {
    pub fn usage(&self) -> Usage {
        self.state.lock().usage.clone()
    }

    fn record(&self, op: Op, key: &str, requests: u64, bytes_in: u64, bytes_out: u64) {
        let now = Instant::now();
        let mut state = self.state.lock();
        let class = billing_class(op);
        let s = &mut *state;
        *s.usage.requests.entry(op).or_default() += requests;
        s.usage.bytes_in += bytes_in;
        s.usage.bytes_out += bytes_out;
        match class {
            BillingClass::A => s.usage.class_a += requests,
            BillingClass::B => s.usage.class_b += requests,
            BillingClass::Free => {}
        }
        let one_second = std::time::Duration::from_secs(1);
        if s.window_start
            .is_none_or(|start| now.duration_since(start) >= one_second)
        {
            s.window_start = Some(now);
            s.window_writes = 0;
            s.window_reads = 0;
        }
        let is_write = matches!(op, Op::PutIfAbsent | Op::PutIfMatch | Op::Put | Op::Delete);
        if is_write {
            s.window_writes += requests;
            s.usage.peak_writes_per_s = s.usage.peak_writes_per_s.max(s.window_writes);
            if s.recent_writes.len() >= RECENT_WRITES_MAX {
                s.recent_writes.clear();
            }
            if let Some(last) = s.recent_writes.insert(key.to_owned(), now)
                && now.duration_since(last) < one_second
            {
                s.usage.same_object_rewrites_within_1s += 1;
            }
        } else if class == BillingClass::B {
            s.window_reads += requests;
            s.usage.peak_reads_per_s = s.usage.peak_reads_per_s.max(s.window_reads);
        }
    }
}

#[derive(Debug, Clone)]
pub struct MeteredBucket<B> {
    inner: B,
    meter: Arc<Meter>,
}

impl<B: Bucket> MeteredBucket<B> {
    pub fn new(inner: B) -> MeteredBucket<B> {
        MeteredBucket {
            inner,
            meter: Arc::new(Meter::default()),
        }
    }

    pub fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }

    pub fn usage(&self) -> Usage {
        self.meter.usage()
    }
}

#[async_trait]
impl<B: Bucket> Bucket for MeteredBucket<B> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        self.meter
            .record(Op::PutIfAbsent, key, 1, body.len() as u64, 0);
        self.inner.put_if_absent(key, body, nonce).await
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        self.meter
            .record(Op::PutIfMatch, key, 1, body.len() as u64, 0);
        self.inner.put_if_match(key, body, expected, nonce).await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        self.meter.record(Op::Put, key, 1, body.len() as u64, 0);
        self.inner.put(key, body).await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let object = self.inner.get(key).await;
        let bytes = object
            .as_ref()
            .ok()
            .and_then(|o| o.as_ref())
            .map_or(0, |o| o.bytes.len());
        self.meter.record(Op::Get, key, 1, 0, bytes as u64);
        object
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let bytes = self.inner.get_range(key, range).await;
        let len = bytes.as_ref().map_or(0, |b| b.len());
        self.meter.record(Op::GetRange, key, 1, 0, len as u64);
        bytes
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.meter.record(Op::Head, key, 1, 0, 0);
        self.inner.head(key).await
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        // A provider bills one request per page: one for the first (even if empty), one more
        // per LIST_PAGE_KEYS keys after that.
        self.meter.record(Op::List, prefix, 1, 0, 0);
        let meter = self.meter.clone();
        let listing = self.inner.list(prefix, start_after);
        let prefix = prefix.to_owned();
        let mut seen = 0usize;
        listing
            .inspect(move |item| {
                if item.is_ok() {
                    seen += 1;
                    if seen > 1 && (seen - 1).is_multiple_of(LIST_PAGE_KEYS) {
                        meter.record(Op::List, &prefix, 1, 0, 0);
                    }
                }
            })
            .boxed()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.meter.record(Op::Delete, key, 1, 0, 0);
        self.inner.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBucket;
    use crate::bucket::list_all;

    // Proves requests land in the right billing class, listings count per page, and the cost
    // model turns a million class-A requests into the provider's price.
    #[tokio::test]
    async fn counts_classes_pages_and_dollars() {
        let bucket = MeteredBucket::new(MemoryBucket::new());
        for i in 0..1500 {
            bucket
                .put(&format!("k/{i:05}"), Bytes::from_static(b"abc"))
                .await
                .expect("put");
        }
        bucket.get("k/00001").await.expect("get");
        bucket.head("k/00001").await.expect("head");
        bucket.delete("k/00001").await.expect("delete");
        assert_eq!(
            list_all(&bucket, "k/", None).await.expect("list").len(),
            1499
        );
        let usage = bucket.usage();
        assert_eq!(usage.requests.get(&Op::List), Some(&2));
        assert_eq!(usage.class_a, 1502);
        assert_eq!(usage.class_b, 2);
        assert_eq!((usage.bytes_in, usage.bytes_out), (4500, 3));

        let million = Usage {
            class_a: 1_000_000,
            ..Usage::default()
        };
        let s3 = CostModel::for_provider(Provider::S3).estimate(&million);
        assert!((s3.total_usd - 5.0).abs() < 1e-9);
        let r2 = CostModel::for_provider(Provider::R2);
        assert_eq!(
            r2.estimate(&Usage {
                bytes_out: 1 << 40,
                ..Usage::default()
            })
            .egress_usd,
            0.0
        );
    }

    // Proves rewriting one object name within a second is flagged for GCS but not for S3.
    #[tokio::test]
    async fn per_object_rate_limit_is_flagged() {
        let bucket = MeteredBucket::new(MemoryBucket::new());
        for _ in 0..3 {
            bucket
                .put("gc/manifest.boundary", Bytes::from_static(b"x"))
                .await
                .expect("put");
        }
        let usage = bucket.usage();
        assert_eq!(usage.same_object_rewrites_within_1s, 2);
        assert_eq!(
            CostModel::for_provider(Provider::Gcs)
                .estimate(&usage)
                .warnings
                .len(),
            1
        );
        assert!(
            CostModel::for_provider(Provider::S3)
                .estimate(&usage)
                .warnings
                .is_empty()
        );
    }
}

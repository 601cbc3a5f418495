//! Shipper metrics: what was uploaded, how often, how fast, and what background GC collected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hadal_format::Epoch;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Upload latencies above this (in microseconds) are recorded as this.
const LATENCY_US_MAX: u64 = 600_000_000;

#[derive(Debug)]
pub struct Metrics {
    segments: AtomicU64,
    bytes: AtomicU64,
    commits: AtomicU64,
    puts: AtomicU64,
    epoch: AtomicU64,
    lsn_durable: AtomicU64,
    snapshots: AtomicU64,
    snapshot_bytes: AtomicU64,
    snapshot_parts_done: AtomicU64,
    snapshot_parts_total: AtomicU64,
    gc_runs: AtomicU64,
    gc_deleted: AtomicU64,
    gc_errors: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

/// A point-in-time copy of the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub segments_uploaded: u64,
    pub bytes_uploaded: u64,
    pub commits_shipped: u64,
    /// PUT requests for segments, retries included.
    pub segment_puts: u64,
    pub epoch: u64,
    pub upload_p50: Duration,
    pub upload_p99: Duration,
    /// Newest LSN committed locally.
    pub lsn_committed: u64,
    /// Newest LSN whose segment is in the bucket.
    pub lsn_durable: u64,
    pub snapshots_published: u64,
    pub snapshot_bytes_uploaded: u64,
    /// Parts uploaded of the snapshot being taken (or of the last one taken).
    pub snapshot_parts_done: u64,
    /// Parts of the snapshot being taken (or of the last one); 0 before the first.
    pub snapshot_parts_total: u64,
    /// Background GC passes that completed.
    pub gc_runs: u64,
    /// Objects those passes deleted.
    pub gc_deleted: u64,
    /// Background GC passes that failed (each is logged).
    pub gc_errors: u64,
}

impl MetricsSnapshot {
    /// Segment PUTs per shipped commit (below 1 when group commit batches several).
    pub fn puts_per_commit(&self) -> f64 {
        if self.commits_shipped == 0 {
            0.0
        } else {
            self.segment_puts as f64 / self.commits_shipped as f64
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            segments: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            puts: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            lsn_durable: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            snapshot_parts_done: AtomicU64::new(0),
            snapshot_parts_total: AtomicU64::new(0),
            gc_runs: AtomicU64::new(0),
            gc_deleted: AtomicU64::new(0),
            gc_errors: AtomicU64::new(0),
            latency_us: Mutex::new(
                Histogram::new_with_max(LATENCY_US_MAX, 3)
                    .expect("valid histogram bounds: 3 significant digits"),
            ),
        }
    }
}

impl Metrics {
    pub(crate) fn record_upload(
        &self,
        latency: Duration,
        bytes: usize,
        commits: usize,
        lsn_last: hadal_format::Lsn,
    ) {
        self.lsn_durable
            .fetch_max(lsn_last.get(), Ordering::Relaxed);
        self.segments.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.commits.fetch_add(commits as u64, Ordering::Relaxed);
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let _ = self.latency_us.lock().record(us);
    }

    pub(crate) fn record_snapshot(&self, bytes: u64) {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.snapshot_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A snapshot of `parts` parts is being taken.
    pub(crate) fn snapshot_started(&self, parts: u64) {
        self.snapshot_parts_done.store(0, Ordering::Relaxed);
        self.snapshot_parts_total.store(parts, Ordering::Relaxed);
    }

    /// One more part of the snapshot being taken is in the bucket.
    pub(crate) fn snapshot_part_uploaded(&self) {
        self.snapshot_parts_done.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_gc(&self, deleted: u64) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.gc_deleted.fetch_add(deleted, Ordering::Relaxed);
    }

    pub(crate) fn record_gc_error(&self) {
        self.gc_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_put(&self) {
        self.puts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_epoch(&self, epoch: Epoch) {
        self.epoch.store(epoch.get(), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let h = self.latency_us.lock();
        MetricsSnapshot {
            segments_uploaded: self.segments.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes.load(Ordering::Relaxed),
            commits_shipped: self.commits.load(Ordering::Relaxed),
            segment_puts: self.puts.load(Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Relaxed),
            upload_p50: Duration::from_micros(h.value_at_quantile(0.5)),
            upload_p99: Duration::from_micros(h.value_at_quantile(0.99)),
            lsn_committed: 0,
            lsn_durable: self.lsn_durable.load(Ordering::Relaxed),
            snapshots_published: self.snapshots.load(Ordering::Relaxed),
            snapshot_bytes_uploaded: self.snapshot_bytes.load(Ordering::Relaxed),
            snapshot_parts_done: self.snapshot_parts_done.load(Ordering::Relaxed),
            snapshot_parts_total: self.snapshot_parts_total.load(Ordering::Relaxed),
            gc_runs: self.gc_runs.load(Ordering::Relaxed),
            gc_deleted: self.gc_deleted.load(Ordering::Relaxed),
            gc_errors: self.gc_errors.load(Ordering::Relaxed),
        }
    }
}

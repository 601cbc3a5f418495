//! The writer's background GC (DESIGN.md §3 "GC and retention": GC runs in the writer in the
//! background and as `hadal gc`): every `gc_interval`, one [`gc::collect`] pass over the
//! writer's bucket, with the default grace age.
//!
//! Invariants:
//! 1. Passes never overlap: one task runs them one after another, the next `gc_interval` after
//!    the previous one ended (a slow pass delays the next rather than stacking up).
//! 2. The task ends when the shipper is shut down or stops for any reason (fenced, a bucket
//!    failure): a writer that is no longer the writer does not keep collecting. A pass in
//!    progress is dropped where it is, which is safe because every step of a pass is: the
//!    manifest update and the boundary CAS are single conditional writes, and the deletes only
//!    remove what the boundary already released (the next pass, by anyone, finishes them).
//! 3. A failed pass is logged and counted (`gc_errors`), never fatal to the writer: GC is
//!    housekeeping, and the log stays restorable without it.
//!
//! The first pass runs one interval after the writer started, not at once: a short-lived writer
//! (`hadal kv put`) should not pay for listings on every start; such deployments run `hadal gc`
//! on a schedule instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hadal_engine::Clock;
use hadal_transports::DynBucket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gc::{self, GcOptions};
use crate::metrics::Metrics;
use crate::ship::Durable;

/// What the collector task needs from its shipper.
pub(crate) struct Collector {
    /// The bucket without the shipper's retry decorator (`collect` adds its own).
    pub bucket: DynBucket,
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// The shipper's shutdown signal.
    pub stop: watch::Receiver<bool>,
    /// The shipper's state: set `stopped` ends the task.
    pub durable: watch::Receiver<Durable>,
}

impl Collector {
    /// Starts the task.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let options = GcOptions::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shipper_stopped(&mut self.stop, &mut self.durable) => return,
            }
            let started = Instant::now();
            let pass = gc::collect(self.bucket.clone(), self.clock.now_ms(), &options);
            let result = tokio::select! {
                result = pass => result,
                _ = shipper_stopped(&mut self.stop, &mut self.durable) => {
                    tracing::debug!("gc: the shipper stopped; the pass in progress is dropped");
                    return;
                }
            };
            match result {
                Ok(report) => {
                    self.metrics.record_gc(report.deleted.len() as u64);
                    tracing::info!(
                        deleted = report.deleted.len(),
                        kept_fences = report.kept_fences,
                        kept_in_grace = report.kept_in_grace,
                        base_lsn = report.base.map(|b| b.0),
                        took_ms = started.elapsed().as_millis() as u64,
                        "gc: background pass done"
                    );
                }
                Err(e) => {
                    self.metrics.record_gc_error();
                    tracing::warn!(error = %e, "gc: background pass failed; retrying next interval");
                }
            }
        }
    }
}

/// Resolves once the shipper was asked to shut down or has stopped (or is gone).
async fn shipper_stopped(stop: &mut watch::Receiver<bool>, durable: &mut watch::Receiver<Durable>) {
    loop {
        if *stop.borrow_and_update() || durable.borrow_and_update().stopped.is_some() {
            return;
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { return },
            changed = durable.changed() => if changed.is_err() { return },
        }
    }
}

/// The restore-estimate source the compactor watches: the writer's [`crate::RestoreEstimate`].
pub(crate) type EstimateFn = Arc<dyn Fn() -> crate::RestoreEstimate + Send + Sync>;

/// Segments a background compaction folds at least (the CLI's default is larger: it runs when
/// asked, the writer whenever the estimate says so).
pub const BACKGROUND_COMPACT_MIN_SEGMENTS: u64 = 16;

/// The writer's background compaction (DESIGN.md §3 "Compaction for restore speed", driven by
/// the restore budget): every `check`, when the estimated replay of the log since the newest
/// snapshot reaches `after`, one [`crate::compact::compact`] pass folds the runs of segments
/// since the newest snapshot and the last run. Same lifecycle rules as [`Collector`]: passes
/// never overlap, the task ends with the shipper, failures are logged and never fatal.
///
/// Snapshots and runs split the budget: a snapshot comes once replaying would take longer than
/// downloading a new image; before that, runs keep the object count of the replay small.
pub(crate) struct Compactor {
    pub bucket: DynBucket,
    pub check: Duration,
    pub after: Duration,
    pub estimate: EstimateFn,
    pub clock: Arc<dyn Clock>,
    pub stop: watch::Receiver<bool>,
    pub durable: watch::Receiver<Durable>,
}

impl Compactor {
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let options = crate::compact::CompactOptions {
            min_segments: BACKGROUND_COMPACT_MIN_SEGMENTS,
            ..crate::compact::CompactOptions::default()
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.check) => {}
                _ = shipper_stopped(&mut self.stop, &mut self.durable) => return,
            }
            let estimate = (self.estimate)();
            if estimate.replay_s <= 0.0 || estimate.replay_s < self.after.as_secs_f64() {
                continue;
            }
            let pass = crate::compact::compact(self.bucket.clone(), self.clock.now_ms(), &options);
            let result = tokio::select! {
                result = pass => result,
                _ = shipper_stopped(&mut self.stop, &mut self.durable) => return,
            };
            match result {
                Ok(report) if !report.runs.is_empty() => tracing::info!(
                    runs = report.runs.len(),
                    segments = report.segments_folded,
                    replay_estimate_s = estimate.replay_s,
                    "compaction: background pass folded runs of segments"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "compaction: background pass failed; retrying later")
                }
            }
        }
    }
}

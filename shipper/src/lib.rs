//! Hadal's primary side: the bucket becomes the durable home.
//!
//! [`Shipper::start`] takes over the database's log (`takeover.rs`: epoch CAS, fence, replay or
//! reconcile), then runs the upload loop (`ship.rs`) that turns the engine's commits into
//! segments, one conditional create per segment, at most one in flight. A commit is durable in
//! the bucket exactly when its segment's create succeeded; [`Shipper::wait_durable`] is the
//! output gate for `strict` mode.
//!
//! Beside it, the collector (`collector.rs`) runs GC passes (`gc.rs`) every `gc_interval` until
//! the shipper stops.
//!
//! The engine must be opened with `retain_unshipped` (so its WAL keeps what is not shipped yet)
//! and with [`commit_hook`] (so commits wake the shipper).

#![forbid(unsafe_code)]

pub mod branch;
mod collector;
pub mod compact;
mod error;
pub mod gc;
mod manifest;
mod metrics;
mod ship;
mod snapshot;
mod takeover;

use std::sync::Arc;
use std::time::Duration;

use hadal_engine::{CommitHook, Database};
use hadal_format::manifest::SnapshotRef;
use hadal_format::{Epoch, Lsn};
use hadal_replica::BucketLog;
use hadal_transports::DynBucket;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use error::{Error, ErrorKind, Result};
pub use metrics::{Metrics, MetricsSnapshot};
pub use ship::Mode;
pub use snapshot::{PARALLEL_PART_UPLOADS, RestoreEstimate, SNAPSHOT_PART_BYTES, SinceSnapshot};

/// Default restore budget: a restore should take about a minute at most.
pub const RESTORE_BUDGET_DEFAULT: Duration = Duration::from_secs(60);
/// Default interval between the writer's background GC passes: often enough that the bucket
/// tracks the retention window (7 days by default) closely, rarely enough that the listings a
/// pass makes cost nothing noticeable.
pub const GC_INTERVAL_DEFAULT: Duration = Duration::from_secs(3600);
pub use takeover::{FENCE_ATTEMPTS_MAX, Position, take_over};

/// Settings of a shipper.
#[derive(Debug, Clone)]
pub struct ShipperOptions {
    pub mode: Mode,
    /// In `local` and `async` modes: how often pending commits are shipped.
    pub interval: Duration,
    /// While idle, how often the manifest is read to learn of a takeover.
    pub manifest_poll: Duration,
    /// How long a restore may take, by estimate, before a snapshot is taken (DESIGN.md §3
    /// "Snapshots and restore budget"). See `snapshot.rs` for the rule.
    pub restore_budget: Duration,
    /// How long one segment upload may go without a definite answer (timeouts, 5xx, lost
    /// responses) before the writer gives up with `Indeterminate` and stops.
    pub upload_deadline: Duration,
    /// In `strict` mode, how long an upload that follows straight on the previous one waits
    /// for more commits to join it (group commit under a closed loop of committers).
    pub linger: Duration,
    /// How often the writer runs a GC pass in the background (`gc::collect` with the default
    /// grace age; the first one interval after start); `None` leaves GC to `hadal gc`.
    pub gc_interval: Option<Duration>,
    /// How often the writer checks whether to compact (`compact.rs`); `None` leaves compaction
    /// to `hadal compact`.
    pub compact_check: Option<Duration>,
    /// Compact once the estimated replay of the log since the newest snapshot reaches this
    /// (default: a quarter of the restore budget).
    pub compact_after: Duration,
}

impl Default for ShipperOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Strict,
            interval: Duration::from_secs(1),
            manifest_poll: Duration::from_secs(10),
            restore_budget: RESTORE_BUDGET_DEFAULT,
            upload_deadline: Duration::from_secs(60),
            linger: Duration::from_millis(1),
            gc_interval: Some(GC_INTERVAL_DEFAULT),
            compact_check: Some(Duration::from_secs(60)),
            compact_after: RESTORE_BUDGET_DEFAULT / 4,
        }
    }
}

/// The hook to put in the engine's `Options::on_commit`: it wakes the shipper.
pub fn commit_hook(wake: &Arc<Notify>) -> CommitHook {
    let wake = wake.clone();
    Arc::new(move |_lsn| wake.notify_one())
}

/// Every bucket call of the shipper goes through the retry decorator: transient errors are
/// resent, ambiguous conditional creates are resolved by reading back. Delays are short because
/// strict-mode commits wait on these calls.
fn with_retries(bucket: DynBucket) -> DynBucket {
    let policy = hadal_transports::RetryPolicy {
        delay_min: Duration::from_millis(10),
        delay_max: Duration::from_secs(1),
        ..hadal_transports::RetryPolicy::default()
    };
    Arc::new(hadal_transports::RetryingBucket::new(bucket, policy))
}

/// Self-test attempts when the store answers with transient errors.
const SELF_TEST_ATTEMPTS_MAX: usize = 5;

/// The conditional-write self-test (DESIGN.md §3, F11): a store that does not honour
/// create-if-absent and compare-and-swap is refused by name before anything is written.
async fn verify_conditional_writes(bucket: &DynBucket) -> Result<()> {
    let mut last = None;
    for _ in 0..SELF_TEST_ATTEMPTS_MAX {
        match hadal_transports::self_test(bucket.as_ref()).await {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    hadal_transports::ErrorKind::Retry | hadal_transports::ErrorKind::Indeterminate
                ) =>
            {
                last = Some(e);
            }
            Err(e) => return Err(Error::Bucket(format!("refusing {}: {e}", bucket.name()))),
        }
    }
    Err(Error::Bucket(format!(
        "the conditional-write self-test of {} kept failing transiently: {}",
        bucket.name(),
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// A running shipper.
#[derive(Debug)]
pub struct Shipper {
    durable: watch::Receiver<ship::Durable>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    epoch: Epoch,
    wake: Arc<Notify>,
    ship: Arc<ship::ShipLoop>,
    db: Database,
    /// The background GC task, if `gc_interval` is set.
    collector: Option<JoinHandle<()>>,
    /// The background compaction task, if `compact_check` is set.
    compactor: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Takes over the log in `bucket` and starts shipping `db`'s commits. `wake` must be the
    /// one whose [`commit_hook`] the engine was opened with.
    pub async fn start(
        db: Database,
        bucket: DynBucket,
        options: ShipperOptions,
        wake: Arc<Notify>,
    ) -> Result<Shipper> {
        let unwrapped = bucket.clone();
        let bucket = with_retries(bucket);
        verify_conditional_writes(&bucket).await?;
        let log = BucketLog::new(bucket);
        let now_ms = {
            use hadal_engine::Clock;
            hadal_engine::SystemClock.now_ms()
        };
        let position = take_over(&db, &log, now_ms).await?;
        let metrics = Arc::new(Metrics::default());
        let (stop, stop_rx) = watch::channel(false);
        let (ship, durable) = ship::ShipLoop::new(
            db.clone(),
            log,
            position,
            &options,
            wake.clone(),
            stop_rx,
            metrics.clone(),
        );
        let ship = Arc::new(ship);
        let task = tokio::spawn(ship.clone().run());
        wake.notify_one();
        let estimate: collector::EstimateFn = {
            let (ship, db) = (ship.clone(), db.clone());
            Arc::new(move || {
                let info = db.info();
                ship.budget
                    .estimate(u64::from(info.page_count) * u64::from(info.page_size))
            })
        };
        let compactor = options.compact_check.map(|check| {
            collector::Compactor {
                bucket: unwrapped.clone(),
                check,
                after: options.compact_after,
                estimate,
                clock: ship.clock.clone(),
                stop: stop.subscribe(),
                durable: durable.clone(),
            }
            .spawn()
        });
        let collector = options.gc_interval.map(|interval| {
            collector::Collector {
                bucket: unwrapped,
                interval,
                metrics: metrics.clone(),
                clock: ship.clock.clone(),
                stop: stop.subscribe(),
                durable: durable.clone(),
            }
            .spawn()
        });
        Ok(Shipper {
            durable,
            stop,
            task: Some(task),
            metrics,
            epoch: position.epoch,
            wake,
            ship,
            db,
            collector,
            compactor,
        })
    }

    /// The newest LSN whose segment is in the bucket.
    pub fn lsn_durable(&self) -> Lsn {
        self.durable.borrow().lsn
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Why the shipper stopped, if it did (fenced, shut down, or a bucket failure).
    pub fn stopped(&self) -> Option<Error> {
        self.durable.borrow().stopped.clone()
    }

    /// Waits until `lsn` is durable in the bucket. Fails with `Fenced` (or the reason the
    /// shipper stopped) if that can no longer happen.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let mut rx = self.durable.clone();
        loop {
            {
                let d = rx.borrow_and_update();
                if d.lsn >= lsn {
                    return Ok(());
                }
                if let Some(e) = &d.stopped {
                    return Err(e.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed("the shipper is gone".into()));
            }
        }
    }

    /// Wakes the upload loop (the commit hook does this on every commit).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// What was shipped so far (counters, LSNs, upload latency percentiles, epoch).
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut m = self.metrics.snapshot();
        m.lsn_committed = self.db.lsn().get();
        m.lsn_durable = self.lsn_durable().get();
        m
    }

    /// Takes a snapshot of the database as it is now, uploads it and publishes it in the
    /// manifest, regardless of the restore budget. `None` if there is nothing new to snapshot
    /// (empty, or the newest snapshot is at the current LSN) or one is being taken already.
    pub async fn snapshot_now(&self) -> Result<Option<SnapshotRef>> {
        snapshot::take(&self.ship).await
    }

    /// The restore-time estimate the snapshot trigger works from.
    pub fn restore_estimate(&self) -> RestoreEstimate {
        let info = self.db.info();
        self.ship
            .budget
            .estimate(u64::from(info.page_count) * u64::from(info.page_size))
    }

    /// Ships everything committed so far, then stops; returns once the database is no longer
    /// used by the shipper's tasks (a budget snapshot or a GC pass in progress is abandoned). A
    /// shipper that had stopped already returns the reason it stopped.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        self.wake.notify_one();
        if let Some(collector) = self.collector.take() {
            collector
                .await
                .map_err(|e| Error::Closed(format!("gc task failed: {e}")))?;
        }
        if let Some(compactor) = self.compactor.take() {
            compactor
                .await
                .map_err(|e| Error::Closed(format!("compaction task failed: {e}")))?;
        }
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|e| Error::Closed(format!("shipper task failed: {e}")))?;
        }
        self.ship.cancel_snapshot().await;
        match self.stopped() {
            Some(Error::Closed(_)) | None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// Promotes a replica to the writer (DESIGN.md §3 "Replicas"): stops following, then takes
/// over through the fencing sequence. The takeover fetches only the commits the replica has not
/// applied yet. The replica's database must have been opened with `retain_unshipped` and the
/// [`commit_hook`] of `wake`.
pub async fn promote(
    follower: hadal_replica::Follower,
    options: ShipperOptions,
    wake: Arc<Notify>,
) -> Result<(Database, Shipper)> {
    let bucket = follower.bucket().clone();
    let db = follower.stop().await;
    tracing::info!(lsn = db.lsn().get(), "promoting this replica to the writer");
    let shipper = Shipper::start(db.clone(), bucket, options, wake).await?;
    Ok((db, shipper))
}

impl Drop for Shipper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(task) = self.collector.take() {
            task.abort();
        }
        if let Some(task) = self.compactor.take() {
            task.abort();
        }
        if let Some(task) = self.ship.snapshot_task.lock().take() {
            task.abort();
        }
    }
}

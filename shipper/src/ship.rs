//! The upload loop: seal the commits after `lsn_durable` into the next segment and create it at
//! the next slot; at most one upload in flight, so commits arriving meanwhile form the next
//! segment (group commit). `lsn_durable` and the engine's `lsn_shipped` advance only after the
//! create succeeded.
//!
//! Halt on first fence: if the slot is taken by someone else's object, this writer stops for
//! good and every waiter gets `Fenced`; nothing is retried at another slot. A create whose answer
//! was lost is retried with the same bytes at the same key, and "exists" is resolved by reading
//! the object back: our nonce means success.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hadal_engine::{Commit, Database};
use hadal_format::limits::{SEGMENT_BYTES_TARGET, SEGMENT_COMMITS_MAX};
use hadal_format::segment::{Segment, SegmentCommit};
use hadal_format::{Epoch, Lsn, ObjectHash, Slot, keys};
use hadal_replica::BucketLog;
use hadal_transports::{Created, ErrorKind as BucketErrorKind, Nonce};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::snapshot::Budget;
use crate::takeover::Position;

/// How commits reach the bucket (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A commit is acknowledged once its segment is in the bucket.
    #[default]
    Strict,
    /// Acknowledged once the local WAL is fsynced; shipped every `interval`.
    Local,
    /// Acknowledged once written to the local WAL; shipped every `interval`.
    Async,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "strict" => Ok(Mode::Strict),
            "local" => Ok(Mode::Local),
            "async" => Ok(Mode::Async),
            other => Err(format!(
                "unknown durability {other:?}: use strict, local or async"
            )),
        }
    }
}

/// Delay between retries of an upload that failed transiently, doubling up to the maximum,
/// with jitter. The cap is low: strict-mode commits wait on this upload, and the transient
/// errors of real stores (409 ConditionalRequestConflict, 503 SlowDown) clear within a second.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(10);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(1);

/// Sleeps for `delay` with ±50% jitter and returns the next delay.
async fn back_off(delay: Duration) -> Duration {
    let jittered = delay.mul_f64(0.5 + rand::random::<f64>());
    tokio::time::sleep(jittered).await;
    (delay * 2).min(RETRY_DELAY_MAX)
}

/// An upload that starts within this many lingers of the previous one's end lingers.
const LINGER_WINDOW: u32 = 5;

/// What waiters see.
#[derive(Debug, Clone)]
pub(crate) struct Durable {
    pub lsn: Lsn,
    /// Set once the writer stopped: why.
    pub stopped: Option<Error>,
}

/// The writer's position in the log.
#[derive(Debug)]
pub(crate) struct LogPosition {
    pub next_slot: Slot,
    pub prev_hash: ObjectHash,
    pub lsn_durable: Lsn,
}

pub(crate) struct ShipLoop {
    pub db: Database,
    pub log: BucketLog,
    pub db_id: [u8; 16],
    pub epoch: Epoch,
    pub page_size: u32,
    pub mode: Mode,
    pub interval: Duration,
    pub manifest_poll: Duration,
    pub upload_deadline: Duration,
    pub linger: Duration,
    pub position: Mutex<LogPosition>,
    pub durable: watch::Sender<Durable>,
    pub wake: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub manifest_id: Mutex<hadal_format::ManifestId>,
    /// The restore budget and the log since the newest snapshot.
    pub budget: Budget,
    pub newest_snapshot: Mutex<Lsn>,
    /// The snapshot started by the budget, if one runs: shutdown cancels and awaits it.
    pub snapshot_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub clock: Arc<dyn hadal_engine::Clock>,
}

impl std::fmt::Debug for ShipLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipLoop")
            .field("bucket", &self.log.bucket().name())
            .field("epoch", &self.epoch)
            .field("mode", &self.mode)
            .field("position", &*self.position.lock())
            .finish_non_exhaustive()
    }
}

impl ShipLoop {
    pub fn new(
        db: Database,
        log: BucketLog,
        position: Position,
        options: &crate::ShipperOptions,
        wake: Arc<Notify>,
        stop: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<Durable>) {
        let (durable, durable_rx) = watch::channel(Durable {
            lsn: position.lsn_durable,
            stopped: None,
        });
        metrics.set_epoch(position.epoch);
        let ship = Self {
            db,
            log,
            db_id: position.db_id,
            epoch: position.epoch,
            page_size: position.page_size,
            mode: options.mode,
            interval: options.interval,
            manifest_poll: options.manifest_poll,
            upload_deadline: options.upload_deadline,
            linger: options.linger,
            position: Mutex::new(LogPosition {
                next_slot: position.next_slot,
                prev_hash: position.prev_hash,
                lsn_durable: position.lsn_durable,
            }),
            durable,
            wake,
            stop,
            metrics,
            manifest_id: Mutex::new(position.manifest_id),
            budget: Budget::new(
                options.restore_budget,
                position.fence_slot(),
                position.since_snapshot,
            ),
            newest_snapshot: Mutex::new(position.snapshot_lsn),
            snapshot_task: Mutex::new(None),
            clock: Arc::new(hadal_engine::SystemClock),
        };
        (ship, durable_rx)
    }

    fn lsn_durable(&self) -> Lsn {
        self.position.lock().lsn_durable
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn newest_snapshot_lsn(&self) -> Lsn {
        *self.newest_snapshot.lock()
    }

    pub fn set_newest_snapshot(&self, lsn: Lsn) {
        let mut newest = self.newest_snapshot.lock();
        *newest = (*newest).max(lsn);
    }

    /// Remembers a manifest this writer created, so idle polls start from it.
    pub fn note_manifest(&self, id: hadal_format::ManifestId) {
        let mut known = self.manifest_id.lock();
        *known = (*known).max(id);
    }

    /// Waits until `lsn` is durable; fails with the reason if the writer stopped first.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let mut rx = self.durable.subscribe();
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

    /// Cancels a running budget snapshot and waits until it has let go of the database.
    pub async fn cancel_snapshot(&self) {
        let task = self.snapshot_task.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Starts a snapshot in the background if the restore budget says one is due.
    fn snapshot_if_due(self: &Arc<Self>) {
        let image_bytes = u64::from(self.db.info().page_count) * u64::from(self.page_size);
        if !self.budget.due(image_bytes) {
            return;
        }
        let mut running = self.snapshot_task.lock();
        if running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let ship = self.clone();
        *running = Some(tokio::spawn(async move {
            if let Err(e) = crate::snapshot::take(&ship).await {
                tracing::warn!(error = %e, "snapshot failed; the log stays restorable without it");
            }
        }));
    }

    fn halt(&self, why: Error) {
        match &why {
            Error::Closed(_) => tracing::debug!(error = %why, "shipper stopped"),
            _ => tracing::error!(error = %why, "shipper stopped"),
        }
        self.durable.send_modify(|d| d.stopped = Some(why));
    }

    /// Runs until stopped (after shipping everything committed) or fenced.
    pub async fn run(self: Arc<Self>) {
        let mut last_upload = Instant::now();
        let mut last_poll = Instant::now();
        // When the last upload ended: an upload starting soon after it lingers.
        let mut last_done: Option<Instant> = None;
        // The last upload had to leave commits out (its segment was full): ship the rest at
        // once instead of one segment per interval, so a backlog drains at upload speed.
        let mut backlog = false;
        let mut stop = self.stop.clone();
        loop {
            let stopping = *stop.borrow();
            let pending = self.db.lsn() > self.lsn_durable();
            if !pending {
                if stopping {
                    self.halt(Error::Closed("the shipper was shut down".into()));
                    return;
                }
                if last_poll.elapsed() >= self.manifest_poll {
                    last_poll = Instant::now();
                    if let Err(e) = self.check_manifest().await {
                        return self.halt(e);
                    }
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(self.manifest_poll) => {}
                }
                continue;
            }
            if self.mode != Mode::Strict && !stopping && !backlog {
                let due = last_upload + self.interval;
                if Instant::now() < due {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
            if self.mode == Mode::Strict
                && !self.linger.is_zero()
                && last_done.is_some_and(|t| t.elapsed() < self.linger * LINGER_WINDOW)
            {
                // The commits acknowledged by the last upload are re-committing right now (a
                // closed loop of committers); without this pause the first of them would leave
                // alone and the rest wait a whole PUT, splitting the committers into two
                // alternating cohorts. A commit after a quiet spell never waits here.
                tokio::time::sleep(self.linger).await;
            }
            last_upload = Instant::now();
            let shipped = self.ship_once().await;
            last_done = Some(Instant::now());
            match shipped {
                Ok(full) => backlog = full,
                Err(e) => return self.halt(e),
            }
            if !stopping {
                self.snapshot_if_due();
            }
        }
    }

    /// Learns from the manifest whether another writer took over while we were idle.
    async fn check_manifest(&self) -> Result<()> {
        let hint = *self.manifest_id.lock();
        if let Some(latest) = self.log.latest_manifest(Some(hint)).await? {
            *self.manifest_id.lock() = latest.manifest.manifest_id();
            if latest.manifest.epoch() > self.epoch {
                return Err(Error::Fenced {
                    ours: self.epoch,
                    detail: format!("the manifest names epoch {:?}", latest.manifest.epoch()),
                });
            }
        }
        Ok(())
    }

    /// Seals the commits after `lsn_durable` into one segment and uploads it. Returns whether
    /// the segment was full (commits it had no room for are waiting).
    async fn ship_once(&self) -> Result<bool> {
        let (slot, prev_hash, after) = {
            let p = self.position.lock();
            (p.next_slot, p.prev_hash, p.lsn_durable)
        };
        let commits = self.db.commits_since(after, SEGMENT_COMMITS_MAX)?;
        let read = commits.len();
        let mut bytes = 0usize;
        let sealed: Vec<Commit> = commits
            .into_iter()
            .enumerate()
            .take_while(|(i, c)| {
                let take = *i == 0
                    || bytes + c.pages.len() * self.page_size as usize <= SEGMENT_BYTES_TARGET;
                bytes += c.pages.len() * self.page_size as usize;
                take
            })
            .map(|(_, c)| c)
            .collect();
        let Some(last) = sealed.last().map(|c| c.lsn) else {
            return Ok(false);
        };
        let commit_count = sealed.len();
        let full = commit_count < read || read == SEGMENT_COMMITS_MAX;
        let nonce = Nonce::random();
        let segment = Segment::commits(
            self.db_id,
            self.epoch,
            slot,
            nonce.as_u128().to_le_bytes(),
            prev_hash,
            self.page_size,
            sealed.into_iter().map(segment_commit).collect(),
        )
        .map_err(|e| Error::Corrupt(format!("sealing slot {slot:?}: {e}")))?;
        let (encoded, hash) = segment
            .encode()
            .map_err(|e| Error::Corrupt(format!("encoding slot {slot:?}: {e}")))?;
        let started = Instant::now();
        let size = encoded.len();
        self.upload(slot, Bytes::from(encoded), nonce).await?;
        let took = started.elapsed();
        self.metrics.record_upload(took, size, commit_count, last);
        self.budget.measure(size, took);
        self.budget.segment_uploaded(slot, last, size);
        {
            let mut p = self.position.lock();
            p.next_slot = slot.next();
            p.prev_hash = hash;
            p.lsn_durable = last;
        }
        self.db.set_lsn_shipped(last);
        self.durable.send_modify(|d| d.lsn = last);
        Ok(full)
    }

    /// Creates the segment at `slot`, retrying transient failures with the same bytes.
    async fn upload(&self, slot: Slot, body: Bytes, nonce: Nonce) -> Result<()> {
        let key = keys::segment(slot);
        let mut delay = RETRY_DELAY_MIN;
        let started = Instant::now();
        loop {
            if started.elapsed() > self.upload_deadline {
                // Whether the segment landed cannot be told: the writer gives up (DESIGN.md §3
                // "Ambiguous writes"). The next writer's takeover finds out from the bucket.
                return Err(Error::Indeterminate(format!(
                    "no definite answer for {key} within {:?}; its commits may or may not be durable",
                    self.upload_deadline
                )));
            }
            self.metrics.count_put();
            let outcome = match self
                .log
                .bucket()
                .put_if_absent(&key, body.clone(), nonce)
                .await
            {
                Ok(Created::Created(_)) => Ok(Some(true)),
                Ok(Created::Exists) => self.resolve_exists(&key, &body, nonce).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Some(true)) => return Ok(()),
                Ok(None) => {
                    // "Exists", then not found when read back (F5): ask again.
                    delay = back_off(delay).await;
                }
                Ok(Some(false)) => {
                    return Err(Error::Fenced {
                        ours: self.epoch,
                        detail: format!("{key} was created by another writer"),
                    });
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        BucketErrorKind::Retry
                            | BucketErrorKind::Indeterminate
                            | BucketErrorKind::Conflict
                    ) =>
                {
                    tracing::warn!(key, error = %e, "segment upload failed; retrying the same bytes");
                    delay = back_off(delay).await;
                }
                Err(e) => return Err(Error::Bucket(format!("uploading {key}: {e}"))),
            }
        }
    }

    /// "Exists" after our create: ours if the object carries our nonce and bytes (a retry of a
    /// create whose answer was lost), else another writer's; `None` if the read-back found
    /// nothing (a listing/read inconsistency), which settles nothing.
    async fn resolve_exists(
        &self,
        key: &str,
        body: &Bytes,
        nonce: Nonce,
    ) -> std::result::Result<Option<bool>, hadal_transports::Error> {
        Ok(self
            .log
            .bucket()
            .get(key)
            .await?
            .map(|o| o.is_ours(nonce, body)))
    }
}

fn segment_commit(c: Commit) -> SegmentCommit {
    SegmentCommit {
        lsn: c.lsn,
        time_ms: c.time_ms,
        page_count: c.page_count,
        checksum_before: c.checksum_before,
        checksum_after: c.checksum_after,
        pages: c.pages.into_iter().map(|(p, b)| (p, b.to_vec())).collect(),
    }
}

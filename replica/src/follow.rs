//! Following (DESIGN.md §3 "Replicas"): restore to the head, then tail the log by GET-next.
//!
//! The follower reads slot after slot with the same verification as a restore (`ChainCursor`:
//! slot, database id, `prev_hash`, epochs, fences, LSN and checksum continuity; `apply_commit`
//! checks every commit's `checksum_before` and `checksum_after`), so it keeps following across
//! writer takeovers: a fence is just the next link. Reads are ordinary snapshot reads of the local
//! engine, at `lsn_applied`.
//!
//! Polling adapts: while segments keep arriving, the next ones are fetched ahead in growing
//! windows (up to `FETCH_AHEAD_SEGMENTS`) with no delay; at the end of the log one GET of the
//! next slot is made per poll, the delay doubling from `poll_min` to `poll_max` while nothing
//! arrives (F12: no LIST loops, a bounded number of requests per minute when idle). Coming to the
//! end after progress, the follower checks once that the slot after the missing one is absent
//! too, so a gap is reported rather than waited on forever (F7); that check runs alongside the
//! sleep and the next poll (its answer is awaited right after that poll), so it adds no round
//! trip to the lag.
//!
//! A damaged object or a broken link stops the follower with an error naming the object; bucket
//! outages are waited out with the same backoff.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hadal_engine::{Clock, Database, Durability, Options, SystemClock};
use hadal_format::{Epoch, Lsn, Slot};
use hadal_transports::DynBucket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::log::{BucketLog, ChainCursor, SegmentAt};
use crate::restore::{FETCH_AHEAD_SEGMENTS, Stop, Target, apply_segment, restore_into};

/// How a follower polls.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The delay after the first poll that finds nothing new.
    pub poll_min: Duration,
    /// The longest delay between polls while idle.
    pub poll_max: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            poll_min: Duration::from_millis(50),
            poll_max: Duration::from_secs(1),
        }
    }
}

/// What a follower has applied, as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowState {
    /// Reads see exactly this LSN's image.
    pub lsn_applied: Lsn,
    /// Commit time of `lsn_applied` (ms since the Unix epoch; 0 for an empty database).
    pub applied_time_ms: u64,
    /// The newest LSN seen in the bucket (in segments fetched, applied or not).
    pub lsn_seen: Lsn,
    /// The writer epoch of the newest segment applied.
    pub epoch: Epoch,
    /// When a poll last found the end of the log with everything before it applied.
    pub caught_up_ms: Option<u64>,
    /// Set when the follower stopped: why (kind and message).
    pub stopped: Option<(ErrorKind, String)>,
}

/// Replication lag of a follower.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Commits seen in the bucket but not applied yet.
    pub lsns: u64,
    /// Caught up: seconds since the poll that found the end of the log (how stale reads may be).
    /// Behind: seconds since the newest applied commit was made.
    pub seconds: f64,
}

impl FollowState {
    pub fn lag(&self, now_ms: u64) -> Lag {
        let lsns = self.lsn_seen.get().saturating_sub(self.lsn_applied.get());
        let since = |t: u64| now_ms.saturating_sub(t) as f64 / 1000.0;
        let seconds = match self.caught_up_ms {
            Some(t) if lsns == 0 => since(t),
            _ => since(self.applied_time_ms),
        };
        Lag { lsns, seconds }
    }
}

/// A running follower: the local database plus the task that keeps it up to date.
#[derive(Debug)]
pub struct Follower {
    db: Database,
    bucket: DynBucket,
    state: watch::Receiver<FollowState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Follower {
    /// Opens (or creates) the local database in `dir`, brings it to the bucket's head (from the
    /// newest snapshot if the folder is empty, else from its own LSN) and starts following.
    /// `engine` is used to open the folder: pass the options a later promotion needs (the
    /// shipper's commit hook and `retain_unshipped`).
    pub async fn start(
        dir: impl AsRef<Path>,
        engine: Options,
        bucket: DynBucket,
        options: FollowOptions,
    ) -> Result<Follower> {
        let db = Database::open(dir.as_ref(), engine)?;
        Self::start_on(db, bucket, options).await
    }

    /// As [`Follower::start`], on an already open database.
    pub async fn start_on(
        db: Database,
        bucket: DynBucket,
        options: FollowOptions,
    ) -> Result<Follower> {
        let log = BucketLog::new(crate::restore::with_retries(bucket.clone()));
        let restored = restore_into(&log, &db, Target::Head, None).await?;
        tracing::info!(
            lsn = restored.lsn.get(),
            snapshot = restored.snapshot_lsn.map(|l| l.get()),
            segments = restored.segments,
            "replica restored to the head; following"
        );
        let now = SystemClock.now_ms();
        let (state_tx, state) = watch::channel(FollowState {
            lsn_applied: restored.lsn,
            applied_time_ms: restored.time_ms,
            lsn_seen: restored.lsn,
            epoch: restored.cursor.epoch,
            caught_up_ms: Some(now),
            stopped: None,
        });
        let (stop, stop_rx) = watch::channel(false);
        let tail = Tail {
            db: db.clone(),
            log,
            cursor: restored.cursor,
            options,
            state: state_tx,
            stop: stop_rx,
        };
        let task = tokio::spawn(tail.run());
        Ok(Follower {
            db,
            bucket,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The local database: read from it (`begin_read`); never write to it.
    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn bucket(&self) -> &DynBucket {
        &self.bucket
    }

    pub fn state(&self) -> FollowState {
        self.state.borrow().clone()
    }

    pub fn lag(&self) -> Lag {
        self.state().lag(SystemClock.now_ms())
    }

    /// Waits (at most `timeout`) until `lsn` is applied: read-your-writes for a client that
    /// wrote through the primary. Fails with `Behind` naming the applied LSN.
    pub async fn wait_for(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
        let mut rx = self.state.clone();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if s.lsn_applied >= lsn {
                        return Ok(());
                    }
                    if let Some((_, why)) = &s.stopped {
                        return Err(Error::Invalid(format!("the replica stopped: {why}")));
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Invalid("the replica is gone".into()));
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(Error::Behind {
                wanted: lsn,
                applied: self.state.borrow().lsn_applied,
                waited: timeout,
            }),
        }
    }

    /// Stops following and hands back the database, e.g. to promote it to the writer (the
    /// shipper's takeover then fetches only what this replica has not applied yet).
    pub async fn stop(mut self) -> Database {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.db.clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The tailing task.
struct Tail {
    db: Database,
    log: BucketLog,
    cursor: ChainCursor,
    options: FollowOptions,
    state: watch::Sender<FollowState>,
    stop: watch::Receiver<bool>,
}

/// The end-of-log check after a poll that made progress (`BucketLog::check_end`), run in a
/// task of its own alongside the sleep and the next poll, so its round trips do not delay the
/// next GET; its answer is awaited right after that poll, before anything else is decided.
/// Dropping it stops the check.
struct GapCheck(JoinHandle<Result<()>>);

impl GapCheck {
    fn start(log: &BucketLog, slot: Slot) -> GapCheck {
        let log = log.clone();
        GapCheck(tokio::spawn(async move { log.check_end(slot).await }))
    }

    async fn finish(mut self) -> Result<()> {
        (&mut self.0)
            .await
            .map_err(|e| Error::Invalid(format!("checking the end of the log: {e}")))?
    }
}

impl Drop for GapCheck {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one poll found.
enum Polled {
    /// Applied this many segments and reached no end yet.
    Progress,
    /// The next slot is empty.
    End { after_progress: bool },
}

impl Tail {
    async fn run(mut self) {
        let mut delay = self.options.poll_min;
        let mut window = 1usize;
        let mut stop = self.stop.clone();
        let mut gap_check: Option<GapCheck> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let polled = self.poll(window).await;
            if let Some(check) = gap_check.take()
                && let Err(e) = check.finish().await
            {
                return self.halt(e);
            }
            match polled {
                Ok(Polled::Progress) => {
                    window = (window * 2).min(FETCH_AHEAD_SEGMENTS);
                    delay = self.options.poll_min;
                    continue;
                }
                Ok(Polled::End { after_progress }) => {
                    if after_progress {
                        gap_check = Some(GapCheck::start(&self.log, self.cursor.slot));
                    }
                    let now = SystemClock.now_ms();
                    self.state.send_modify(|s| s.caught_up_ms = Some(now));
                    window = 1;
                }
                Err(e) if e.kind() == ErrorKind::Bucket => {
                    tracing::warn!(error = %e, "replica: the bucket failed; retrying");
                    window = 1;
                }
                Err(e) => return self.halt(e),
            }
            let sleep = delay.mul_f64(0.75 + rand::random::<f64>() * 0.5);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
            delay = (delay * 2).min(self.options.poll_max);
        }
    }

    fn halt(&self, e: Error) {
        tracing::error!(error = %e, "replica stopped following");
        let kind = e.kind();
        self.state
            .send_modify(|s| s.stopped = Some((kind, e.to_string())));
    }

    /// Fetches up to `window` slots from the cursor on (in parallel, applied in order).
    async fn poll(&mut self, window: usize) -> Result<Polled> {
        let first = self.cursor.slot.get();
        let log = &self.log;
        let mut fetches = futures::stream::iter(first..first + window as u64)
            .map(|s| log.segment(Slot::new(s)))
            .buffered(window);
        let mut applied_any = false;
        let started = Instant::now();
        while let Some(fetched) = fetches.next().await {
            let Some(at) = fetched? else {
                return Ok(Polled::End {
                    after_progress: applied_any,
                });
            };
            apply(&self.db, &mut self.cursor, &self.state, at)?;
            applied_any = true;
        }
        tracing::trace!(window, took = ?started.elapsed(), "replica applied a window");
        Ok(Polled::Progress)
    }
}

/// Applies one fetched segment and publishes the new state.
fn apply(
    db: &Database,
    cursor: &mut ChainCursor,
    state: &watch::Sender<FollowState>,
    at: SegmentAt,
) -> Result<()> {
    let last = at.segment.header.lsn_last;
    state.send_modify(|s| s.lsn_seen = s.lsn_seen.max(last));
    apply_segment(db, cursor, at, Stop::NEVER, Durability::NoSync)?;
    let r = db.begin_read();
    let (lsn, time) = (r.lsn(), r.commit_time_ms());
    let epoch = cursor.epoch;
    state.send_modify(|s| {
        s.lsn_applied = lsn;
        s.applied_time_ms = time;
        s.epoch = epoch;
    });
    Ok(())
}

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
//! too, so a gap is reported rather than waited on forever (F7).
//!
//! A damaged object or a broken link stops the follower with an error naming the object; bucket
//! outages are waited out with the same backoff.
//!
//! **Falling behind GC** (DESIGN.md §3, F4). GC moves the manifest's replay start and then
//! `gc/segment.boundary` forward before it deletes any segment at or below the boundary, so a
//! miss at a slot at or below the boundary means the log was collected past this replica (it
//! was paused, offline or slow for longer than the retention window and grace). It then
//! re-bootstraps: the newest snapshot of the latest manifest replaces the local image (the
//! engine's `install_image`; reads of the old image are refused meanwhile, never mixed) and
//! tailing continues from the snapshot's slot. A miss above the boundary followed by an existing
//! slot stays a gap: corruption, as before. A restarted replica whose LSN is older than the
//! trimmed log's start re-bootstraps the same way before it catches up.
//!
//! Telling a collected slot from the end of the log costs a GET of the boundary object, so it is
//! not asked on every idle poll (F12): only when `check_end` sees a later slot (the gap-or-GC
//! question must be answered before calling it corruption), and otherwise at most once per
//! `boundary_poll` while misses continue (the first miss after a start or a long pause is
//! checked at once, since the last check is old by then). That bounds an idle replica to one
//! GET per `poll_max` plus two requests (the boundary and the slot after the missing one) per
//! `boundary_poll`. A slot behind GC looks like the end of the log until then, so a replica
//! that fell behind notices within `boundary_poll`; one that keeps up never reads below the
//! boundary at all. The boundary only moves forward, so the highest value seen is cached and a
//! miss at or below it needs no request.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hadal_engine::{Clock, Database, Options, SystemClock};
use hadal_format::boundary::{Boundary, SEGMENT_BOUNDARY};
use hadal_format::{Epoch, Lsn, Slot, keys};
use hadal_transports::DynBucket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::log::{BucketLog, ChainCursor, SegmentAt};
use crate::restore::{
    FETCH_AHEAD_SEGMENTS, Sink, Stop, Target, apply_segment, install_snapshot, restore_into,
};

/// How a follower polls.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The delay after the first poll that finds nothing new.
    pub poll_min: Duration,
    /// The longest delay between polls while idle.
    pub poll_max: Duration,
    /// While the next slot keeps missing, how often `gc/segment.boundary` is read to learn
    /// whether GC collected the log past this replica (see the module comment).
    pub boundary_poll: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            poll_min: Duration::from_millis(50),
            poll_max: Duration::from_secs(1),
            boundary_poll: Duration::from_secs(30),
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
    /// How many times GC had collected the log past this replica, which then replaced its
    /// image with the newest snapshot.
    pub rebootstraps: u64,
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
    /// newest snapshot if the folder is empty or GC collected the log past its LSN, else from
    /// its own LSN) and starts following.
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
        let rebootstraps = u64::from(rebootstrap_if_collected(&log, &db).await?);
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
            rebootstraps,
        });
        let (stop, stop_rx) = watch::channel(false);
        let tail = Tail {
            db: db.clone(),
            log,
            cursor: restored.cursor,
            options,
            state: state_tx,
            stop: stop_rx,
            boundary: 0,
            boundary_read: None,
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

    /// The local database: read from it (`begin_read`); never write to it. A read begun before
    /// a re-bootstrap (see the module comment) fails with the engine's `ErrorKind::Retry`:
    /// begin a new one.
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
    /// The highest `gc/segment.boundary` seen (it never moves back), and when it was read.
    boundary: u64,
    boundary_read: Option<Instant>,
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
        loop {
            if *stop.borrow() {
                return;
            }
            match self.poll(window).await {
                Ok(Polled::Progress) => {
                    window = (window * 2).min(FETCH_AHEAD_SEGMENTS);
                    delay = self.options.poll_min;
                    continue;
                }
                Ok(Polled::End { after_progress }) => match self.at_end(after_progress).await {
                    Ok(AtEnd::CaughtUp) => {
                        let now = SystemClock.now_ms();
                        self.state.send_modify(|s| s.caught_up_ms = Some(now));
                        window = 1;
                    }
                    Ok(AtEnd::Rebootstrapped) => {
                        window = 1;
                        delay = self.options.poll_min;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::Bucket => {
                        tracing::warn!(error = %e, "replica: the bucket failed; retrying");
                        window = 1;
                    }
                    Err(e) => return self.halt(e),
                },
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

    /// The next slot is missing: the end of the log, a gap (corruption), or a slot GC collected
    /// past this replica (then it re-bootstraps). See the module comment for when the boundary
    /// is read.
    async fn at_end(&mut self, after_progress: bool) -> Result<AtEnd> {
        let slot = self.cursor.slot;
        if slot.get() <= self.boundary {
            return self.rebootstrap(slot).await;
        }
        let due = self
            .boundary_read
            .is_none_or(|t| t.elapsed() >= self.options.boundary_poll);
        if !after_progress && !due {
            return Ok(AtEnd::CaughtUp);
        }
        let gap = match self.log.check_end(slot).await {
            Ok(()) => None,
            Err(e) if e.kind() == ErrorKind::Corrupt => Some(e),
            Err(e) => return Err(e),
        };
        if gap.is_some() || due {
            self.boundary = self.boundary.max(read_boundary(&self.log).await?);
            self.boundary_read = Some(Instant::now());
            if slot.get() <= self.boundary {
                return self.rebootstrap(slot).await;
            }
        }
        match gap {
            Some(e) => Err(e),
            None => Ok(AtEnd::CaughtUp),
        }
    }

    /// GC collected `missing` (at or below the boundary): replaces the local image with the
    /// newest snapshot and continues from its slot.
    async fn rebootstrap(&mut self, missing: Slot) -> Result<AtEnd> {
        let from = self.db.lsn();
        let why = format!(
            "{} is gone below the gc boundary (slot {})",
            keys::segment(missing),
            self.boundary
        );
        let (snapshot_slot, cursor) =
            install_newest_snapshot(&self.log, &self.db, Some(self.cursor.db_id), &why).await?;
        self.cursor = cursor;
        let r = self.db.begin_read();
        let (lsn, time) = (r.lsn(), r.commit_time_ms());
        drop(r);
        self.state.send_modify(|s| {
            s.lsn_applied = lsn;
            s.applied_time_ms = time;
            s.lsn_seen = s.lsn_seen.max(lsn);
            s.rebootstraps += 1;
        });
        tracing::warn!(
            missing = missing.get(),
            boundary = self.boundary,
            from_lsn = from.get(),
            snapshot_lsn = lsn.get(),
            snapshot_slot = snapshot_slot.get(),
            "replica fell behind the bucket's GC: re-bootstrapped from the newest snapshot"
        );
        Ok(AtEnd::Rebootstrapped)
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

/// What a miss of the next slot turned out to be (a gap is an error).
enum AtEnd {
    CaughtUp,
    Rebootstrapped,
}

/// The value of `gc/segment.boundary`: every non-fence segment at or below it may be gone.
/// Zero while GC never ran.
async fn read_boundary(log: &BucketLog) -> Result<u64> {
    let key = keys::gc_boundary(SEGMENT_BOUNDARY);
    match log.bucket().get(&key).await? {
        None => Ok(0),
        Some(object) => Boundary::decode(&object.bytes)
            .map(|b| b.value)
            .map_err(|e| Error::format(&key, e)),
    }
}

/// Replaces `db`'s image with the newest snapshot of the latest manifest, which must be newer
/// than it (and of database `db_id`, when the caller knows it); `why` says what was collected.
/// Returns the snapshot's slot and the chain position to continue from.
async fn install_newest_snapshot(
    log: &BucketLog,
    db: &Database,
    db_id: Option<[u8; 16]>,
    why: &str,
) -> Result<(Slot, ChainCursor)> {
    let latest = log
        .latest_manifest(None)
        .await?
        .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?;
    let manifest = &latest.manifest;
    let key = keys::manifest(manifest.manifest_id());
    let manifest_db_id = manifest.db_id_bytes().map_err(|e| Error::format(&key, e))?;
    if db_id.is_some_and(|id| id != manifest_db_id) {
        return Err(Error::corrupt(
            &key,
            "it names another database than the one this replica follows",
        ));
    }
    let db_id = manifest_db_id;
    let local = db.lsn();
    let snapshot = manifest
        .snapshots
        .iter()
        .max_by_key(|s| s.lsn)
        .filter(|s| s.lsn > local.get())
        .ok_or_else(|| {
            Error::corrupt(
                &key,
                format!(
                    "{why}, but it lists no snapshot newer than this replica's lsn {}: nothing can bring the replica forward",
                    local.get()
                ),
            )
        })?;
    install_snapshot(log, &Sink::Live(db.clone()), db_id, snapshot).await?;
    let slot = Slot::new(snapshot.slot);
    let cursor = ChainCursor::within(db_id, slot, db.lsn(), db.begin_read().checksum());
    Ok((slot, cursor))
}

/// At start: a non-empty local copy whose next commit is older than the trimmed log's start
/// (GC collected it while the replica was down) is replaced by the newest snapshot first, so
/// the catch-up that follows starts from there. Returns whether that happened.
async fn rebootstrap_if_collected(log: &BucketLog, db: &Database) -> Result<bool> {
    let local = db.lsn();
    if local == Lsn::ZERO {
        return Ok(false);
    }
    let Some(latest) = log.latest_manifest(None).await? else {
        return Ok(false);
    };
    let start = latest.manifest.replay_start();
    if start.get() <= 1 {
        return Ok(false);
    }
    // A missing start segment is the catch-up's to report.
    let Some((header, _)) = log.segment_header(start).await? else {
        return Ok(false);
    };
    if header.lsn_first <= local.next() {
        return Ok(false);
    }
    let why = format!(
        "the log now starts at {} (lsn {}), after this replica's lsn {}",
        keys::segment(start),
        header.lsn_first.get(),
        local.get()
    );
    let (slot, _) = install_newest_snapshot(log, db, None, &why).await?;
    tracing::warn!(
        from_lsn = local.get(),
        snapshot_lsn = db.lsn().get(),
        snapshot_slot = slot.get(),
        "replica fell behind the bucket's GC while stopped: re-bootstrapped from the newest snapshot"
    );
    Ok(true)
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
    apply_segment(&Sink::Live(db.clone()), cursor, at, Stop::NEVER)?;
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

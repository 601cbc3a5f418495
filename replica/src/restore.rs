//! Restore: rebuild a database from its bucket alone, at its head, at an LSN or at a time
//! (DESIGN.md §3 "Restore and PITR").
//!
//! Pick the newest snapshot at or below the target and download its parts in parallel (each
//! checked against the hash the manifest records); then replay segments, fetched ahead in
//! parallel and applied in order through the engine's follower path (`apply_commit`, which
//! checks every commit's `checksum_before` and `checksum_after`), verifying every chain link;
//! stop at the target commit. Times come from the commit times inside segments, never from
//! object timestamps. The result is built in a temporary folder and renamed into place only
//! when complete, so a failed restore leaves nothing that looks like a database.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use hadal_engine::{Commit, Database, Durability, ImageHeader, Loader, Options, StateChecksum};
use hadal_format::compact::CompactedRun;
use hadal_format::manifest::{CompactionRef, SnapshotRef, parse_checksum_hex};
use hadal_format::segment::SegmentCommit;
use hadal_format::snapshot::SnapshotPart;
use hadal_format::{Lsn, ObjectHash, PageNo, Slot, keys};
use hadal_transports::DynBucket;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::log::{BucketLog, ChainCursor, ManifestAt};

/// Segments fetched ahead of the one being applied.
pub const FETCH_AHEAD_SEGMENTS: usize = 32;
/// Snapshot parts downloaded at once.
pub const PARALLEL_PART_DOWNLOADS: usize = 8;

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest commit in the bucket.
    Head,
    /// Exactly this commit.
    Lsn(Lsn),
    /// The newest commit whose commit time is at or before this (ms since the Unix epoch).
    Time(u64),
}

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub lsn: Lsn,
    pub checksum: hadal_engine::StateChecksum,
    /// Commit time of `lsn` (0 for an empty database).
    pub time_ms: u64,
    pub snapshot_lsn: Option<Lsn>,
    pub segments: u64,
    pub bytes: u64,
    /// The slot after the last segment read, and the chain position there.
    pub cursor: ChainCursor,
}

/// Progress of a restore, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub lsn: Lsn,
    pub segments: u64,
    pub bytes: u64,
}

pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

fn commit_of(c: SegmentCommit) -> Commit {
    Commit {
        lsn: c.lsn,
        time_ms: c.time_ms,
        page_count: c.page_count,
        checksum_before: c.checksum_before,
        checksum_after: c.checksum_after,
        pages: c
            .pages
            .into_iter()
            .map(|(p, b)| (p, Bytes::from(b)))
            .collect(),
    }
}

/// Where a restore puts what it reads: a live database, through the follower path and the WAL
/// (a replica, or a local copy being brought forward), or a [`Loader`] building an empty
/// database's image in one pass, straight into the main file, published only when complete.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    Live(Database),
    Load(std::sync::Arc<Mutex<Loader>>, Database),
}

impl Sink {
    /// A loader when `db` is empty, else the live path.
    pub(crate) fn for_db(db: &Database) -> Sink {
        match db.loader() {
            Ok(loader) => Sink::Load(std::sync::Arc::new(Mutex::new(loader)), db.clone()),
            Err(_) => Sink::Live(db.clone()),
        }
    }

    pub(crate) fn lsn(&self) -> Lsn {
        match self {
            Sink::Live(db) => db.lsn(),
            Sink::Load(loader, _) => loader.lock().lsn(),
        }
    }

    fn checksum(&self) -> StateChecksum {
        match self {
            Sink::Live(db) => db.begin_read().checksum(),
            Sink::Load(loader, _) => loader.lock().checksum(),
        }
    }

    fn page_size(&self) -> u32 {
        match self {
            Sink::Live(db) | Sink::Load(_, db) => db.info().page_size,
        }
    }

    /// Applies the next commit; one applied to a live database counts as shipped (it came
    /// from the bucket, so the WAL may let it go).
    fn commit(&self, commit: &Commit) -> hadal_engine::Result<()> {
        match self {
            Sink::Live(db) => {
                db.apply_commit(commit, Durability::NoSync)?;
                db.set_lsn_shipped(commit.lsn);
                Ok(())
            }
            Sink::Load(loader, _) => loader.lock().commit(commit),
        }
    }

    /// Applies a compacted run of commits. A live database checkpoints first (a snapshot
    /// reader holding the WAL makes this fail with `Invalid`).
    fn delta(
        &self,
        image: ImageHeader,
        before: StateChecksum,
        pages: &[(PageNo, Bytes)],
    ) -> hadal_engine::Result<()> {
        match self {
            Sink::Live(db) => {
                db.checkpoint()?;
                db.apply_delta(image, before, pages)
            }
            Sink::Load(loader, _) => loader.lock().delta(image, before, pages),
        }
    }

    /// Installs a whole image: see [`Database::install_image`] and [`Loader::image`].
    fn image(
        &self,
        image: ImageHeader,
        runs: impl IntoIterator<Item = hadal_engine::Result<(PageNo, Bytes)>>,
    ) -> hadal_engine::Result<()> {
        match self {
            Sink::Live(db) => db.install_image(image, runs),
            Sink::Load(loader, _) => loader.lock().image(image, runs),
        }
    }

    /// Publishes what a loader built (syncing it first); nothing to do for a live database.
    async fn finish(&self) -> Result<()> {
        if let Sink::Load(loader, _) = self {
            let loader = loader.clone();
            tokio::task::spawn_blocking(move || loader.lock().finish())
                .await
                .map_err(|e| Error::Invalid(format!("finishing the restored image: {e}")))??;
        }
        Ok(())
    }
}

/// Restores the database in `bucket` into the new folder `out`.
pub async fn restore(
    bucket: DynBucket,
    out: &Path,
    target: Target,
    progress: Option<ProgressFn<'_>>,
) -> Result<Restored> {
    if out.exists()
        && out
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Invalid(format!(
            "{} already exists and is not empty; restore into a new folder",
            out.display()
        )));
    }
    let tmp = temporary_sibling(out);
    let result = async {
        let options = Options {
            background: false,
            sweep_interval: None,
            ..Options::default()
        };
        let db = Database::open(&tmp, options)?;
        let bucket = with_retries(bucket);
        let restored = restore_into(&BucketLog::new(bucket), &db, target, progress).await?;
        // Leave a compact folder: the image in the main file, an empty WAL.
        tokio::task::spawn_blocking(move || db.checkpoint())
            .await
            .map_err(|e| Error::Invalid(format!("checkpointing the restored database: {e}")))??;
        Ok::<_, Error>(restored)
    }
    .await;
    match result {
        Ok(restored) => {
            let _ = std::fs::remove_dir(out);
            std::fs::rename(&tmp, out).map_err(|e| {
                Error::Invalid(format!(
                    "moving the restored database to {}: {e}",
                    out.display()
                ))
            })?;
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::Invalid(format!("syncing {}: {e}", parent.display())))?;
            }
            Ok(restored)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn temporary_sibling(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    out.with_file_name(format!(".{name}.restoring-{:016x}", rand::random::<u64>()))
}

/// Branches of branches deeper than this are refused (a cycle of parents would never end).
pub const BRANCH_DEPTH_MAX: usize = 32;

/// Brings `db` (empty, or at an LSN of this same history) forward to `target` from the bucket.
///
/// For a branch (a manifest naming a parent), the history up to the branch point is read from
/// the parent (recursively, for branches of branches) and then the branch's own log, unless a
/// snapshot of the branch itself covers the target. The returned cursor is in this database's
/// log, except when the target lies inside a parent's history (then it is the parent's).
pub async fn restore_into(
    log: &BucketLog,
    db: &Database,
    target: Target,
    progress: Option<ProgressFn<'_>>,
) -> Result<Restored> {
    restore_bounded(log, db, target, None, progress, 0).await
}

/// Opens the bucket a parent URL names, with the retry decorator.
pub async fn open_parent(url: &str) -> Result<BucketLog> {
    let bucket = hadal_transports::open(url)
        .await
        .map_err(|e| Error::Invalid(format!("opening the parent database {url}: {e}")))?;
    Ok(BucketLog::new(with_retries(bucket)))
}

/// As [`restore_into`], never past `lsn_cap` (a branch point, when restoring a parent's part).
fn restore_bounded<'a>(
    log: &'a BucketLog,
    db: &'a Database,
    target: Target,
    lsn_cap: Option<Lsn>,
    progress: Option<ProgressFn<'a>>,
    depth: usize,
) -> futures::future::BoxFuture<'a, Result<Restored>> {
    Box::pin(async move {
        let ManifestAt { manifest, .. } = log
            .latest_manifest(None)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?;
        let db_id = manifest
            .db_id_bytes()
            .map_err(|e| Error::format("manifest", e))?;
        let stop = Stop::of(target, lsn_cap);
        let parent = match &manifest.parent {
            Some(p) => Some(BranchPoint::of(p)?),
            None => None,
        };
        let snapshot = match target {
            Target::Head => manifest.snapshots.iter().max_by_key(|s| s.lsn),
            Target::Lsn(l) => manifest.snapshot_at_or_below(l),
            Target::Time(t) => manifest
                .snapshots
                .iter()
                .filter(|s| s.time_ms <= t)
                .max_by_key(|s| s.lsn),
        }
        .filter(|s| lsn_cap.is_none_or(|cap| s.lsn <= cap.get()));
        let runs = if stop.time_ms.is_none() {
            manifest.compactions.as_slice()
        } else {
            // Compacted runs end at an LSN; a time target needs every commit's time.
            &[]
        };
        let mut prefetch = None;
        let mut snapshot_lsn = None;
        let mut cursor = ChainCursor::genesis(db_id);
        let (mut segments, mut bytes) = (0, 0);
        let local_lsn = db.lsn();
        let in_parent = parent
            .as_ref()
            .is_some_and(|p| local_lsn < p.lsn && !(local_lsn == Lsn::ZERO && snapshot.is_some()));
        // An empty database is built in one pass by a loader; the parent's part of a branch's
        // history is restored (and published) by the recursion below first.
        let sink = if in_parent {
            Sink::Live(db.clone())
        } else {
            Sink::for_db(db)
        };
        if let (true, Some(point)) = (in_parent, &parent) {
            // The branch's history starts in its parent's: restore that part first.
            if depth >= BRANCH_DEPTH_MAX {
                return Err(Error::Invalid(format!(
                    "{} is a branch more than {BRANCH_DEPTH_MAX} levels deep (a cycle of parents?)",
                    log.bucket().name()
                )));
            }
            let parent_log = open_parent(&point.url).await?;
            let cap = match stop.lsn {
                Some(l) if l < point.lsn => l,
                _ => point.lsn,
            };
            let parent_target = match target {
                Target::Time(t) => Target::Time(t),
                _ => Target::Lsn(cap),
            };
            let from_parent = restore_bounded(
                &parent_log,
                db,
                parent_target,
                Some(cap),
                progress,
                depth + 1,
            )
            .await?;
            if from_parent.lsn < point.lsn {
                // The target lies inside the parent's history.
                return Ok(from_parent);
            }
            // The segment at the point must be the one the branch records: read off the
            // cursor when the replay ended in it, else (a snapshot at the point, or a compacted
            // run reaching past it over fences) read its header.
            let segment_hash = if point.lsn == Lsn::ZERO {
                ObjectHash::ZERO
            } else if from_parent.cursor.slot == point.slot.next()
                && from_parent.cursor.prev_hash != ObjectHash::ZERO
            {
                from_parent.cursor.prev_hash
            } else {
                parent_log
                    .segment_header(point.slot)
                    .await?
                    .map_or(ObjectHash::ZERO, |(_, hash)| hash)
            };
            if from_parent.checksum != point.checksum || segment_hash != point.segment_hash {
                return Err(Error::corrupt(
                    format!("{}/{}", point.url, keys::segment(point.slot)),
                    format!(
                        "the parent's history at lsn {} differs from the branch point {} records",
                        point.lsn.get(),
                        log.bucket().name()
                    ),
                ));
            }
            snapshot_lsn = from_parent.snapshot_lsn;
            segments = from_parent.segments;
            bytes = from_parent.bytes;
            cursor = point.cursor(db_id);
            if manifest.replay_start_slot > 1 {
                return Err(Error::Invalid(format!(
                    "the branch {} no longer holds its log from the branch point (GC trimmed it to slot {}): {} can only be restored from its snapshots",
                    log.bucket().name(),
                    manifest.replay_start_slot,
                    describe(target)
                )));
            }
        } else if local_lsn == Lsn::ZERO {
            if let Some(snap) = snapshot {
                // Fetch the segments after the snapshot while it downloads and installs.
                let first = Slot::new(snap.slot);
                prefetch = Some(Prefetch::start(log, first, next_run_slot(runs, first)));
                install_snapshot(log, &sink, db_id, snap).await?;
                snapshot_lsn = Some(Lsn::new(snap.lsn));
                cursor = ChainCursor::within(
                    db_id,
                    Slot::new(snap.slot),
                    Lsn::new(snap.lsn),
                    sink.checksum(),
                );
            } else if manifest.replay_start_slot > 1 {
                return Err(before_oldest(log, &manifest, target));
            } else if let Some(point) = &parent {
                cursor = point.cursor(db_id);
            } else {
                cursor.slot = manifest.replay_start();
            }
        } else {
            // Continue a local copy: find the slot holding its next commit.
            let local = db.begin_read();
            let slot = find_slot_of(log, local.lsn(), manifest.replay_start()).await?;
            cursor = match &parent {
                Some(point) if slot.get() <= 1 => point.cursor(db_id),
                _ => ChainCursor::within(db_id, slot, local.lsn(), local.checksum()),
            };
        }
        let (s, b) = replay(log, &sink, &mut cursor, stop, runs, prefetch, progress).await?;
        sink.finish().await?;
        segments += s;
        bytes += b;
        let r = db.begin_read();
        if let Some(l) = stop.lsn
            && r.lsn() != l
            && !matches!(target, Target::Time(_))
        {
            return Err(Error::Invalid(format!(
                "lsn {} is beyond the end of the log of {} (lsn {})",
                l.get(),
                log.bucket().name(),
                r.lsn().get()
            )));
        }
        Ok(Restored {
            lsn: r.lsn(),
            checksum: r.checksum(),
            time_ms: r.commit_time_ms(),
            snapshot_lsn,
            segments,
            bytes,
            cursor,
        })
    })
}

/// Where a replay stops: at an LSN, before the first commit after a time, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop {
    pub lsn: Option<Lsn>,
    pub time_ms: Option<u64>,
}

impl Stop {
    pub(crate) const NEVER: Stop = Stop {
        lsn: None,
        time_ms: None,
    };

    fn of(target: Target, lsn_cap: Option<Lsn>) -> Stop {
        let (lsn, time_ms) = match target {
            Target::Head => (None, None),
            Target::Lsn(l) => (Some(l), None),
            Target::Time(t) => (None, Some(t)),
        };
        let lsn = match (lsn, lsn_cap) {
            (Some(l), Some(c)) => Some(l.min(c)),
            (l, c) => l.or(c),
        };
        Stop { lsn, time_ms }
    }
}

/// A manifest's `parent`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchPoint {
    pub url: String,
    pub lsn: Lsn,
    pub slot: Slot,
    pub segment_hash: ObjectHash,
    pub checksum: hadal_engine::StateChecksum,
}

impl BranchPoint {
    pub fn of(p: &hadal_format::manifest::Parent) -> Result<BranchPoint> {
        let bad = |detail: String| Error::corrupt("manifest", format!("its parent: {detail}"));
        Ok(BranchPoint {
            url: p.url.clone(),
            lsn: Lsn::new(p.lsn),
            slot: Slot::new(p.slot),
            segment_hash: ObjectHash::from_hex(&p.segment_hash).ok_or_else(|| {
                bad(format!(
                    "segment_hash {:?} is not hex SHA-256",
                    p.segment_hash
                ))
            })?,
            checksum: parse_checksum_hex(&p.checksum).map_err(|e| bad(e.to_string()))?,
        })
    }

    /// The chain position before the branch's slot 1: its fence continues the parent's segment
    /// at the branch point.
    pub fn cursor(&self, db_id: [u8; 16]) -> ChainCursor {
        ChainCursor {
            db_id,
            slot: Slot::new(1),
            prev_hash: self.segment_hash,
            epoch: hadal_format::Epoch::ZERO,
            lsn: self.lsn,
            checksum: self.checksum,
        }
    }
}

fn before_oldest(
    log: &BucketLog,
    manifest: &hadal_format::manifest::Manifest,
    target: Target,
) -> Error {
    // GC trimmed the log: without a snapshot at or below it, the target is gone.
    let oldest = manifest.snapshots.iter().min_by_key(|s| s.lsn);
    Error::Invalid(match oldest {
        Some(o) => format!(
            "{} is before the oldest restorable point, lsn {} committed at {} (the retention window is {}); restore a later point",
            describe(target),
            o.lsn,
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(o.time_ms)
            ),
            humantime::format_duration(std::time::Duration::from_millis(manifest.retention_ms)),
        ),
        None => format!(
            "the log of {} starts at slot {} and no snapshot covers {}",
            log.bucket().name(),
            manifest.replay_start_slot,
            describe(target)
        ),
    })
}

fn describe(target: Target) -> String {
    match target {
        Target::Head => "the head".into(),
        Target::Lsn(l) => format!("lsn {}", l.get()),
        Target::Time(t) => format!(
            "time {}",
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(t)
            )
        ),
    }
}

/// Downloads a snapshot's parts in parallel and installs the image into `db`: an empty one,
/// or (a follower re-bootstrapping, see `follow.rs`) one whose image is older.
///
/// Each part is decoded and checked (its hash against the manifest's, its header against the
/// snapshot) on the blocking pool as soon as it arrives, so parts decode in parallel with each
/// other and with the downloads; the decoded parts are handed in page order to
/// `install_image`, which runs on the blocking pool too and writes each part's pages with one
/// call while later parts are still arriving. `install_image` verifies every page and the state
/// checksum before it writes the superblock, so a failure anywhere installs nothing.
pub(crate) async fn install_snapshot(
    log: &BucketLog,
    sink: &Sink,
    db_id: [u8; 16],
    snap: &SnapshotRef,
) -> Result<()> {
    let image = ImageHeader {
        lsn: Lsn::new(snap.lsn),
        page_count: snap.page_count,
        checksum: parse_checksum_hex(&snap.checksum).map_err(|e| Error::format("manifest", e))?,
        time_ms: snap.time_ms,
    };
    let page_size = sink.page_size();
    let (runs, mut received) = tokio::sync::mpsc::channel::<(PageNo, Bytes)>(INSTALL_QUEUE_PARTS);
    let installer = {
        let sink = sink.clone();
        tokio::task::spawn_blocking(move || {
            sink.image(
                image,
                std::iter::from_fn(move || received.blocking_recv().map(Ok)),
            )
        })
    };
    let feed = async {
        // Owned values in the futures: this runs inside boxed (`Send`) restores of branches.
        let mut parts = futures::stream::iter(snap.parts.clone())
            .map(|part_ref| fetch_part(log.bucket().clone(), part_ref, db_id, snap.lsn, page_size))
            .buffered(PARALLEL_PART_DOWNLOADS);
        while let Some(part) = parts.next().await {
            let part = part?;
            if runs
                .send((part.first_page, Bytes::from(part.pages)))
                .await
                .is_err()
            {
                // The installer stopped early: its own error says why.
                break;
            }
        }
        Ok::<_, Error>(())
    };
    let fed = feed.await;
    // Without more parts the installer finishes (short of pages if the feed failed: then it
    // fails without writing a superblock, and the feed's error is the one to report).
    drop(runs);
    let installed = installer
        .await
        .map_err(|e| Error::Invalid(format!("installing the snapshot {}: {e}", snap.dir)))?;
    fed?;
    installed.map_err(|e| match e.kind() {
        hadal_engine::ErrorKind::Corrupt => Error::corrupt(&snap.dir, e),
        _ => Error::Engine(e),
    })
}

/// Decoded snapshot parts queued for the installer beyond the ones being downloaded.
const INSTALL_QUEUE_PARTS: usize = 2;

/// Downloads one snapshot part and decodes and checks it on the blocking pool.
async fn fetch_part(
    bucket: DynBucket,
    part_ref: hadal_format::manifest::PartRef,
    db_id: [u8; 16],
    snap_lsn: u64,
    page_size: u32,
) -> Result<SnapshotPart> {
    let object = bucket
        .get(&part_ref.key)
        .await?
        .ok_or_else(|| Error::corrupt(&part_ref.key, "listed in the manifest but missing"))?;
    let key = part_ref.key.clone();
    tokio::task::spawn_blocking(move || {
        let (part, hash) =
            SnapshotPart::decode(&object.bytes).map_err(|e| Error::format(&part_ref.key, e))?;
        if Some(hash) != ObjectHash::from_hex(&part_ref.sha256) {
            return Err(Error::corrupt(
                &part_ref.key,
                "its hash differs from the one the manifest records",
            ));
        }
        if part.db_id != db_id
            || part.lsn.get() != snap_lsn
            || part.first_page.get() != part_ref.first_page
        {
            return Err(Error::corrupt(
                &part_ref.key,
                "it belongs to another snapshot",
            ));
        }
        if part.page_size != page_size {
            return Err(Error::corrupt(
                &part_ref.key,
                format!(
                    "its pages are {} bytes where the local database's are {page_size}",
                    part.page_size
                ),
            ));
        }
        Ok(part)
    })
    .await
    .map_err(|e| Error::Invalid(format!("decoding {key}: {e}")))?
}

/// The first slot whose segment reaches past `lsn` (so holds commit `lsn + 1`), by binary
/// search over segment headers between `start` and the frontier; the frontier if none does.
pub(crate) async fn find_slot_of(log: &BucketLog, lsn: Lsn, start: Slot) -> Result<Slot> {
    let frontier = log
        .frontier(Slot::new(start.get().saturating_sub(1)))
        .await?;
    let (mut lo, mut hi) = (start.get(), frontier.get());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let slot = Slot::new(mid);
        let (header, _) = log.segment_header(slot).await?.ok_or_else(|| {
            Error::corrupt(
                hadal_format::keys::segment(slot),
                "missing below the frontier",
            )
        })?;
        if header.lsn_last > lsn {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Slot::new(lo))
}

/// The first slot after `slot` where a compacted run starts: where a replay of segments from
/// `slot` pauses to look for a run.
fn next_run_slot(runs: &[CompactionRef], slot: Slot) -> Option<u64> {
    runs.iter()
        .map(|r| r.slot_first)
        .filter(|s| *s > slot.get())
        .min()
}

/// Applies segments from the cursor on until the target or the end of the log. `prefetch` is
/// segments already being fetched (see [`replay_segments`]).
async fn replay(
    log: &BucketLog,
    sink: &Sink,
    cursor: &mut ChainCursor,
    stop: Stop,
    runs: &[CompactionRef],
    mut prefetch: Option<Prefetch>,
    progress: Option<ProgressFn<'_>>,
) -> Result<(u64, u64)> {
    let (mut segments, mut bytes) = (0u64, 0u64);
    loop {
        let lsn = sink.lsn();
        if stop.lsn.is_some_and(|l| lsn >= l) {
            return Ok((segments, bytes));
        }
        // A compacted run that starts here and ends at or before the target replaces its
        // segments; the longest one wins.
        let run = runs
            .iter()
            .filter(|r| {
                r.slot_first == cursor.slot.get()
                    && r.lsn_first == lsn.get() + 1
                    && stop.lsn.is_none_or(|l| r.lsn_last <= l.get())
            })
            .max_by_key(|r| r.lsn_last);
        if let Some(run) = run
            && let Some(read) = apply_compacted(log, sink, cursor, run).await?
        {
            segments += run.slot_last - run.slot_first + 1;
            bytes += read;
            if let Some(report) = progress {
                report(Progress {
                    lsn: sink.lsn(),
                    segments,
                    bytes,
                });
            }
            continue;
        }
        let next_run = next_run_slot(runs, cursor.slot);
        let (s, b, more) = replay_segments(
            log,
            sink,
            cursor,
            stop,
            next_run,
            prefetch.take(),
            progress,
            segments,
            bytes,
        )
        .await?;
        segments = s;
        bytes = b;
        if !more {
            return Ok((segments, bytes));
        }
    }
}

/// Segments fetched ahead by a task of their own, in slot order, from `first` up to `until`
/// (exclusive) or the first missing slot: fetching (and decoding, see `BucketLog::segment`)
/// goes on while the caller installs a snapshot or applies the segments before. Dropping it
/// stops the task and its requests.
#[derive(Debug)]
pub(crate) struct Prefetch {
    first: Slot,
    until: Option<u64>,
    fetched: tokio::sync::mpsc::Receiver<Result<Option<crate::log::SegmentAt>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Fetched segments waiting to be applied, beyond the `FETCH_AHEAD_SEGMENTS` in flight.
const PREFETCH_QUEUE_SEGMENTS: usize = 8;

impl Prefetch {
    pub(crate) fn start(log: &BucketLog, first: Slot, until: Option<u64>) -> Prefetch {
        let log = log.clone();
        let (send, fetched) = tokio::sync::mpsc::channel(PREFETCH_QUEUE_SEGMENTS);
        let task = tokio::spawn(async move {
            let mut fetches = futures::stream::iter(first.get()..until.unwrap_or(u64::MAX))
                .map(|s| {
                    let log = log.clone();
                    async move { log.segment(Slot::new(s)).await }
                })
                .buffered(FETCH_AHEAD_SEGMENTS);
            while let Some(fetched) = fetches.next().await {
                let last = !matches!(fetched, Ok(Some(_)));
                if send.send(fetched).await.is_err() || last {
                    return;
                }
            }
        });
        Prefetch {
            first,
            until,
            fetched,
            task,
        }
    }

    /// The next slot's segment, `None` at its end; `None` also after `until`.
    async fn next(&mut self) -> Option<Result<Option<crate::log::SegmentAt>>> {
        self.fetched.recv().await
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies segments from the cursor on, until the target, the end of the log, or the slot
/// `until` (exclusive). Returns the running totals and whether to go on (the slot `until` was
/// reached). `prefetch`, if it was started at the cursor for the same range, is used instead of
/// starting another. Segments are applied on the blocking pool, while the prefetch goes on.
#[allow(clippy::too_many_arguments)]
async fn replay_segments(
    log: &BucketLog,
    sink: &Sink,
    cursor: &mut ChainCursor,
    stop: Stop,
    until: Option<u64>,
    prefetch: Option<Prefetch>,
    progress: Option<ProgressFn<'_>>,
    mut segments: u64,
    mut bytes: u64,
) -> Result<(u64, u64, bool)> {
    let mut fetches = match prefetch {
        Some(p) if p.first == cursor.slot && p.until == until => p,
        _ => Prefetch::start(log, cursor.slot, until),
    };
    while let Some(fetched) = fetches.next().await {
        let Some(at) = fetched? else {
            // Stop the fetches still in flight first: a store serving one connection at a time
            // (moto) then answers the check at once.
            drop(fetches);
            log.check_end(cursor.slot).await?;
            return Ok((segments, bytes, false));
        };
        segments += 1;
        bytes += at.bytes as u64;
        let reached = {
            let (sink, mut moved) = (sink.clone(), *cursor);
            let (reached, moved) = tokio::task::spawn_blocking(move || {
                apply_segment(&sink, &mut moved, at, stop).map(|reached| (reached, moved))
            })
            .await
            .map_err(|e| Error::Invalid(format!("applying a segment: {e}")))??;
            *cursor = moved;
            reached
        };
        if reached {
            return Ok((segments, bytes, false));
        }
        if let Some(report) = progress {
            report(Progress {
                lsn: sink.lsn(),
                segments,
                bytes,
            });
        }
    }
    Ok((segments, bytes, until.is_some()))
}

/// Applies a compacted run in place of its segments and moves the cursor past them. Returns
/// the bytes read, or `None` when the local database cannot take it now (a snapshot reader
/// holds the WAL, so it cannot be checkpointed): then the segments are replayed instead.
async fn apply_compacted(
    log: &BucketLog,
    sink: &Sink,
    cursor: &mut ChainCursor,
    run: &CompactionRef,
) -> Result<Option<u64>> {
    let object = log
        .bucket()
        .get(&run.key)
        .await?
        .ok_or_else(|| Error::corrupt(&run.key, "named by the manifest but missing"))?;
    let (compacted, hash) =
        CompactedRun::decode(&object.bytes).map_err(|e| Error::format(&run.key, e))?;
    let bad = |detail: &str| Err(Error::corrupt(&run.key, detail));
    if Some(hash) != ObjectHash::from_hex(&run.sha256) {
        return bad("its hash differs from the one the manifest records");
    }
    let before =
        parse_checksum_hex(&run.checksum_before).map_err(|e| Error::format("manifest", e))?;
    let after =
        parse_checksum_hex(&run.checksum_after).map_err(|e| Error::format("manifest", e))?;
    let last_hash = ObjectHash::from_hex(&run.last_segment_hash).ok_or_else(|| {
        Error::corrupt(
            "manifest",
            "a compaction's last_segment_hash is not hex SHA-256",
        )
    })?;
    if compacted.db_id != cursor.db_id
        || compacted.lsn_first.get() != run.lsn_first
        || compacted.lsn_last.get() != run.lsn_last
        || compacted.slot_first.get() != run.slot_first
        || compacted.slot_last.get() != run.slot_last
        || compacted.checksum_before != before
        || compacted.checksum_after != after
    {
        return bad("its header differs from the manifest's record of it");
    }
    if before != cursor.checksum {
        return bad("its checksum_before differs from the state the log reached");
    }
    let pages: Vec<(PageNo, Bytes)> = compacted
        .pages
        .into_iter()
        .map(|(p, image)| (p, Bytes::from(image)))
        .collect();
    let image = ImageHeader {
        lsn: compacted.lsn_last,
        page_count: compacted.page_count,
        checksum: after,
        time_ms: compacted.time_ms,
    };
    match sink.delta(image, before, &pages) {
        Ok(()) => {}
        Err(e) if e.kind() == hadal_engine::ErrorKind::Invalid => {
            tracing::debug!(key = run.key, error = %e, "replaying the segments of a compacted run instead");
            return Ok(None);
        }
        Err(e) if e.kind() == hadal_engine::ErrorKind::Corrupt => {
            return Err(Error::corrupt(&run.key, e));
        }
        Err(e) => return Err(Error::Engine(e)),
    }
    *cursor = ChainCursor {
        db_id: cursor.db_id,
        slot: Slot::new(run.slot_last + 1),
        prev_hash: last_hash,
        epoch: hadal_format::Epoch::new(run.epoch),
        lsn: compacted.lsn_last,
        checksum: after,
    };
    Ok(Some(object.bytes.len() as u64))
}

/// Verifies that `at` continues the chain at `cursor` and applies its commits past the local
/// LSN through the follower path, stopping at `target`. Returns whether the target was reached.
/// Applied commits came from the bucket, so they count as shipped (the WAL may let them go).
pub(crate) fn apply_segment(
    sink: &Sink,
    cursor: &mut ChainCursor,
    at: crate::log::SegmentAt,
    stop: Stop,
) -> Result<bool> {
    let key = || hadal_format::keys::segment(at.segment.header.slot);
    cursor.advance(&at.segment.header, at.hash)?;
    let mut reached = false;
    for c in at.segment.commits {
        if c.lsn <= sink.lsn() {
            continue;
        }
        if stop.time_ms.is_some_and(|t| c.time_ms > t) {
            reached = true;
            break;
        }
        let lsn = c.lsn;
        sink.commit(&commit_of(c)).map_err(|e| match e.kind() {
            hadal_engine::ErrorKind::Corrupt => Error::corrupt(key(), e),
            _ => Error::Engine(e),
        })?;
        if stop.lsn.is_some_and(|l| lsn >= l) {
            reached = true;
            break;
        }
    }
    Ok(reached)
}

/// Restores and followers read through the retry decorator, with short delays.
pub(crate) fn with_retries(bucket: DynBucket) -> DynBucket {
    let policy = hadal_transports::RetryPolicy {
        delay_min: std::time::Duration::from_millis(10),
        ..hadal_transports::RetryPolicy::default()
    };
    std::sync::Arc::new(hadal_transports::RetryingBucket::new(bucket, policy))
}

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
use hadal_engine::{Commit, Database, Durability, ImageHeader, Options};
use hadal_format::manifest::{SnapshotRef, parse_checksum_hex};
use hadal_format::segment::SegmentCommit;
use hadal_format::snapshot::SnapshotPart;
use hadal_format::{Lsn, ObjectHash, PageNo, Slot};
use hadal_transports::DynBucket;

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
        db.checkpoint()?;
        drop(db);
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

/// Brings `db` (empty, or at an LSN of this same history) forward to `target` from the bucket.
pub async fn restore_into(
    log: &BucketLog,
    db: &Database,
    target: Target,
    progress: Option<ProgressFn<'_>>,
) -> Result<Restored> {
    let ManifestAt { manifest, .. } = log
        .latest_manifest(None)
        .await?
        .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?;
    let db_id = manifest
        .db_id_bytes()
        .map_err(|e| Error::format("manifest", e))?;
    let snapshot = match target {
        Target::Head => manifest.snapshots.iter().max_by_key(|s| s.lsn),
        Target::Lsn(l) => manifest.snapshot_at_or_below(l),
        Target::Time(t) => manifest
            .snapshots
            .iter()
            .filter(|s| s.time_ms <= t)
            .max_by_key(|s| s.lsn),
    };
    let mut snapshot_lsn = None;
    let mut cursor = ChainCursor::genesis(db_id);
    if db.lsn() == Lsn::ZERO {
        if let Some(snap) = snapshot {
            install_snapshot(log, db, db_id, snap).await?;
            snapshot_lsn = Some(Lsn::new(snap.lsn));
            cursor = ChainCursor::within(
                db_id,
                Slot::new(snap.slot),
                Lsn::new(snap.lsn),
                db.begin_read().checksum(),
            );
        } else if manifest.replay_start_slot > 1 {
            // GC trimmed the log: without a snapshot at or below it, the target is gone.
            let oldest = manifest.snapshots.iter().min_by_key(|s| s.lsn);
            return Err(Error::Invalid(match oldest {
                Some(o) => format!(
                    "{} is before the oldest restorable point, lsn {} committed at {} (the retention window is {}); restore a later point",
                    describe(target),
                    o.lsn,
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(o.time_ms)
                    ),
                    humantime::format_duration(std::time::Duration::from_millis(
                        manifest.retention_ms
                    )),
                ),
                None => format!(
                    "the log of {} starts at slot {} and no snapshot covers {}",
                    log.bucket().name(),
                    manifest.replay_start_slot,
                    describe(target)
                ),
            }));
        } else {
            cursor.slot = manifest.replay_start();
        }
    } else {
        // Continue a local copy: find the slot holding its next commit.
        let local = db.begin_read();
        let slot = find_slot_of(log, local.lsn(), manifest.replay_start()).await?;
        cursor = ChainCursor::within(db_id, slot, local.lsn(), local.checksum());
    }
    let (segments, bytes) = replay(log, db, &mut cursor, target, progress).await?;
    let r = db.begin_read();
    if let Target::Lsn(l) = target
        && r.lsn() != l
    {
        return Err(Error::Invalid(format!(
            "lsn {} is beyond the end of the log (lsn {})",
            l.get(),
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
pub(crate) async fn install_snapshot(
    log: &BucketLog,
    db: &Database,
    db_id: [u8; 16],
    snap: &SnapshotRef,
) -> Result<()> {
    let bucket = log.bucket();
    // Owned part references: a closure over borrowed ones makes this future not provably
    // `Send`, and the follower awaits it inside its spawned task.
    let parts: Vec<SnapshotPart> = futures::stream::iter(snap.parts.iter().cloned())
        .map(|part_ref| async move {
            let object = bucket.get(&part_ref.key).await?.ok_or_else(|| {
                Error::corrupt(&part_ref.key, "listed in the manifest but missing")
            })?;
            let (part, hash) =
                SnapshotPart::decode(&object.bytes).map_err(|e| Error::format(&part_ref.key, e))?;
            if Some(hash) != ObjectHash::from_hex(&part_ref.sha256) {
                return Err(Error::corrupt(
                    &part_ref.key,
                    "its hash differs from the one the manifest records",
                ));
            }
            if part.db_id != db_id
                || part.lsn.get() != snap.lsn
                || part.first_page.get() != part_ref.first_page
            {
                return Err(Error::corrupt(
                    &part_ref.key,
                    "it belongs to another snapshot",
                ));
            }
            Ok(part)
        })
        .buffered(PARALLEL_PART_DOWNLOADS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let image = ImageHeader {
        lsn: Lsn::new(snap.lsn),
        page_count: snap.page_count,
        checksum: parse_checksum_hex(&snap.checksum).map_err(|e| Error::format("manifest", e))?,
        time_ms: snap.time_ms,
    };
    let pages = parts.iter().flat_map(|part| {
        let page_size = part.page_size as usize;
        part.pages
            .chunks_exact(page_size)
            .enumerate()
            .map(move |(i, page)| {
                Ok((
                    PageNo::new(part.first_page.get() + i as u32),
                    Bytes::copy_from_slice(page),
                ))
            })
    });
    db.install_image(image, pages).map_err(|e| match e.kind() {
        hadal_engine::ErrorKind::Corrupt => Error::corrupt(&snap.dir, e),
        _ => Error::Engine(e),
    })
}

/// The first slot whose segment reaches past `lsn` (so holds commit `lsn + 1`), by binary
/// search over segment headers between `start` and the frontier; the frontier if none does.
async fn find_slot_of(log: &BucketLog, lsn: Lsn, start: Slot) -> Result<Slot> {
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

/// Applies segments from the cursor on until the target or the end of the log.
async fn replay(
    log: &BucketLog,
    db: &Database,
    cursor: &mut ChainCursor,
    target: Target,
    progress: Option<ProgressFn<'_>>,
) -> Result<(u64, u64)> {
    if matches!(target, Target::Lsn(l) if db.lsn() >= l) {
        return Ok((0, 0));
    }
    let first = cursor.slot.get();
    let mut fetches = futures::stream::iter(first..)
        .map(|s| log.segment(Slot::new(s)))
        .buffered(FETCH_AHEAD_SEGMENTS);
    let (mut segments, mut bytes) = (0u64, 0u64);
    while let Some(fetched) = fetches.next().await {
        let Some(at) = fetched? else {
            // Drop the fetches still parked ahead first: a store serving one connection at a
            // time (moto) would otherwise wait on a request that is never driven.
            drop(fetches);
            log.check_end(cursor.slot).await?;
            break;
        };
        segments += 1;
        bytes += at.bytes as u64;
        if apply_segment(db, cursor, at, Some(target), Durability::NoSync)? {
            return Ok((segments, bytes));
        }
        if let Some(report) = progress {
            report(Progress {
                lsn: db.lsn(),
                segments,
                bytes,
            });
        }
    }
    Ok((segments, bytes))
}

/// Verifies that `at` continues the chain at `cursor` and applies its commits past the local
/// LSN through the follower path, stopping at `target`. Returns whether the target was reached.
/// Applied commits came from the bucket, so they count as shipped (the WAL may let them go).
pub(crate) fn apply_segment(
    db: &Database,
    cursor: &mut ChainCursor,
    at: crate::log::SegmentAt,
    target: Option<Target>,
    durability: Durability,
) -> Result<bool> {
    let key = || hadal_format::keys::segment(at.segment.header.slot);
    cursor.advance(&at.segment.header, at.hash)?;
    let mut reached = false;
    for c in at.segment.commits {
        if c.lsn <= db.lsn() {
            continue;
        }
        if let Some(Target::Time(t)) = target
            && c.time_ms > t
        {
            reached = true;
            break;
        }
        let lsn = c.lsn;
        db.apply_commit(&commit_of(c), durability)
            .map_err(|e| match e.kind() {
                hadal_engine::ErrorKind::Corrupt => Error::corrupt(key(), e),
                _ => Error::Engine(e),
            })?;
        db.set_lsn_shipped(lsn);
        if matches!(target, Some(Target::Lsn(l)) if lsn >= l) {
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

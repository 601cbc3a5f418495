//! Takeover: becoming the writer (DESIGN.md §3 "Writer epochs and fencing", steps 1–4), and
//! restart reconciliation of an existing local folder.
//!
//! 1. Read the latest manifest (create manifest 1 for a new database).
//! 2. Manifest CAS: `writer_epoch += 1`.
//! 3. Find the segment frontier and create a header-only fence there with the new epoch,
//!    chained to the previous slot. If the slot is taken: re-read the manifest; if a newer epoch
//!    exists we are fenced already, else the frontier moved (the old writer's last upload), so
//!    move on and retry.
//! 4. Bring the local engine to the fence's LSN (restore or catch up), or, if the local folder is
//!    ahead with the same history, keep its unshipped commits to ship after the fence; if it
//!    diverged, report it (the caller restores from the bucket and says so loudly).

use bytes::Bytes;
use hadal_engine::Database;
use hadal_format::manifest::Manifest;
use hadal_format::segment::Segment;
use hadal_format::{Epoch, Lsn, ObjectHash, Slot, StateChecksum, keys};
use hadal_replica::{BucketLog, Target, restore_into};
use hadal_transports::Nonce;

use crate::error::{Error, Result};
use crate::manifest;
use crate::snapshot::SinceSnapshot;

/// Fence attempts before giving up against a busy incumbent (F6): each failed attempt means
/// the old writer uploaded another segment meanwhile.
pub const FENCE_ATTEMPTS_MAX: usize = 64;

/// Where the new writer stands after its fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub db_id: [u8; 16],
    pub epoch: Epoch,
    pub page_size: u32,
    /// The slot after the fence: where the next segment goes.
    pub next_slot: Slot,
    /// The fence's hash: the next segment's `prev_hash`.
    pub prev_hash: ObjectHash,
    /// The last LSN in the bucket (the fence's), now durable.
    pub lsn_durable: Lsn,
    pub manifest_id: hadal_format::ManifestId,
    /// The newest published snapshot's LSN (zero if none).
    pub snapshot_lsn: Lsn,
    /// The log since that snapshot, for the restore budget.
    pub since_snapshot: SinceSnapshot,
}

impl Position {
    /// The fence's slot and LSN.
    pub fn fence_slot(&self) -> (Slot, Lsn) {
        (
            self.next_slot.prev().unwrap_or(Slot::ZERO),
            self.lsn_durable,
        )
    }
}

/// A segment's size when nothing better is known: small single-commit segments dominate.
const SEGMENT_BYTES_GUESS: u64 = 16 * 1024;

/// The end of the log before a fence.
struct Tail {
    hash: ObjectHash,
    lsn: Lsn,
    checksum: StateChecksum,
}

/// The end of the log before `slot`; before slot 1 of a branch, its branch point in the parent.
async fn tail_before(log: &BucketLog, slot: Slot, m: &Manifest) -> Result<Tail> {
    let Some(prev) = slot.prev().filter(|p| *p != Slot::ZERO) else {
        if let Some(parent) = &m.parent {
            let point = hadal_replica::BranchPoint::of(parent)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            return Ok(Tail {
                hash: point.segment_hash,
                lsn: point.lsn,
                checksum: point.checksum,
            });
        }
        return Ok(Tail {
            hash: ObjectHash::ZERO,
            lsn: Lsn::ZERO,
            checksum: StateChecksum::EMPTY,
        });
    };
    let (header, hash) = log.segment_header(prev).await?.ok_or_else(|| {
        Error::Corrupt(format!(
            "{} is missing below the frontier",
            keys::segment(prev)
        ))
    })?;
    Ok(Tail {
        hash,
        lsn: header.lsn_last,
        checksum: header.checksum_last,
    })
}

/// Becomes the writer of the database in `log`, bringing `db` up to date.
pub async fn take_over(db: &Database, log: &BucketLog, now_ms: u64) -> Result<Position> {
    let page_size = db.info().page_size;
    let latest = match log.latest_manifest(None).await? {
        Some(m) => m,
        None => {
            let mut first = Manifest::first(db.info().db_id, page_size, now_ms);
            match manifest::create(log, &mut first).await? {
                Some(m) => m,
                None => log
                    .latest_manifest(None)
                    .await?
                    .ok_or_else(|| Error::Bucket("manifest 1 vanished".into()))?,
            }
        }
    };
    if latest.manifest.page_size != page_size {
        return Err(Error::Invalid(format!(
            "the bucket's database uses {}-byte pages but the local folder {page_size}-byte pages",
            latest.manifest.page_size
        )));
    }
    let db_id = latest
        .manifest
        .db_id_bytes()
        .map_err(|e| Error::Corrupt(format!("manifest: {e}")))?;
    let bumped = manifest::update(log, now_ms, |m| {
        m.writer_epoch += 1;
        Ok(())
    })
    .await?;
    let epoch = bumped.manifest.epoch();
    // The newest snapshot's slot is known to exist: probe the frontier from there.
    let newest = bumped.manifest.snapshots.iter().max_by_key(|s| s.lsn);
    let known = newest.map_or(bumped.manifest.replay_start_slot.saturating_sub(1), |s| {
        s.slot
    });
    let mut frontier = log.frontier(Slot::new(known)).await?;
    for _ in 0..FENCE_ATTEMPTS_MAX {
        let tail = tail_before(log, frontier, &bumped.manifest).await?;
        let nonce = Nonce::random();
        let fence = Segment::fence(
            db_id,
            epoch,
            frontier,
            nonce.as_u128().to_le_bytes(),
            tail.hash,
            page_size,
            tail.lsn,
            tail.checksum,
        );
        let (bytes, hash) = fence
            .encode()
            .map_err(|e| Error::Invalid(format!("encoding fence: {e}")))?;
        let key = keys::segment(frontier);
        let ours = manifest::create_resolved(log, &key, Bytes::from(bytes), nonce).await?;
        if ours {
            tracing::info!(
                epoch = epoch.get(),
                slot = frontier.get(),
                lsn = tail.lsn.get(),
                "fenced the log: this process is the writer"
            );
            reconcile(db, log, tail.lsn, tail.checksum).await?;
            return Ok(Position {
                db_id,
                epoch,
                page_size,
                next_slot: frontier.next(),
                prev_hash: hash,
                lsn_durable: tail.lsn,
                manifest_id: bumped.manifest.manifest_id(),
                snapshot_lsn: Lsn::new(newest.map_or(0, |s| s.lsn)),
                since_snapshot: SinceSnapshot {
                    segments: frontier.get().saturating_sub(known),
                    segment_bytes_guess: SEGMENT_BYTES_GUESS,
                    snapshot: newest
                        .map(|s| (s.parts.iter().map(|p| p.bytes).sum(), s.parts.len() as u64)),
                },
            });
        }
        let now = log
            .latest_manifest(Some(bumped.manifest.manifest_id()))
            .await?;
        if let Some(m) = now.filter(|m| m.manifest.epoch() > epoch) {
            return Err(Error::Fenced {
                ours: epoch,
                detail: format!(
                    "epoch {:?} took over while we were fencing",
                    m.manifest.epoch()
                ),
            });
        }
        frontier = log.frontier(frontier).await?;
    }
    Err(Error::Bucket(format!(
        "could not fence the log after {FENCE_ATTEMPTS_MAX} attempts: the previous writer keeps uploading"
    )))
}

/// Brings the local engine to the fence at `lsn` (state `checksum`), or checks that the local
/// commits past it continue the same history.
async fn reconcile(
    db: &Database,
    log: &BucketLog,
    lsn: Lsn,
    checksum: StateChecksum,
) -> Result<()> {
    let local = db.begin_read();
    if local.lsn() == lsn && local.checksum() != checksum {
        return Err(Error::Diverged {
            local_lsn: lsn,
            bucket_lsn: lsn,
            detail: format!(
                "at the same lsn the local state checksum is {:?}, the bucket's {checksum:?}",
                local.checksum()
            ),
        });
    }
    if local.lsn() <= lsn {
        let behind = lsn.get() - local.lsn().get();
        if behind > 0 {
            tracing::info!(
                local = local.lsn().get(),
                bucket = lsn.get(),
                "catching the local folder up from the bucket"
            );
        }
        drop(local);
        return match restore_into(log, db, Target::Lsn(lsn), None).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == hadal_replica::ErrorKind::Corrupt && db.lsn() < lsn => {
                Err(Error::Diverged {
                    local_lsn: db.lsn(),
                    bucket_lsn: lsn,
                    detail: e.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        };
    }
    // The local folder is ahead: its commit lsn+1 must start from the bucket's state at lsn.
    let next = db.commits_since(lsn, 1).unwrap_or_default();
    match next.first() {
        Some(c) if c.checksum_before == checksum => {
            tracing::info!(
                bucket = lsn.get(),
                local = local.lsn().get(),
                "the local folder holds unshipped commits of the same history: shipping them after the fence"
            );
            Ok(())
        }
        _ => Err(Error::Diverged {
            local_lsn: local.lsn(),
            bucket_lsn: lsn,
            detail: "the local commits after the bucket's last one start from another state".into(),
        }),
    }
}

//! Branch points (DESIGN.md §3 "Branches"): resolving "this database at an LSN or a time" to
//! what a branch's manifest 1 records about its parent, and checking that a point is still
//! restorable (so a pin on it protects something real).
//!
//! A point always names the segment that holds its commit, never a fence after it: restoring the
//! parent up to the point ends inside that segment, whose hash the branch's chain continues. A
//! point at or before a branch's own branch point lies in that branch's parent: it resolves to
//! the parent (recursively), so the new branch pins the database that really holds the history.

use futures::StreamExt;
use futures::future::BoxFuture;
use hadal_format::manifest::{Manifest, Parent, checksum_hex};
use hadal_format::{Lsn, ObjectHash, Slot, StateChecksum, keys};

use crate::error::{Error, Result};
use crate::log::BucketLog;
use crate::restore::{
    BRANCH_DEPTH_MAX, BranchPoint, FETCH_AHEAD_SEGMENTS, Target, find_slot_of, open_parent,
};

/// A resolved branch point: the database that holds it (`parent.url`) and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPoint {
    pub parent: Parent,
    /// Commit time of `parent.lsn` (0 for the empty database).
    pub time_ms: u64,
}

/// Whether a restore of `lsn` in the database `m` describes can start: a snapshot at or below
/// it, or the whole log kept (`replay_start_slot` 1). Restorable points of a branch at or
/// below its branch point are its parent's to answer.
pub fn restorable(m: &Manifest, lsn: Lsn) -> bool {
    m.replay_start_slot <= 1 || m.snapshot_at_or_below(lsn).is_some()
}

/// Resolves `target` in the database at `url` (read through `log`) to a branch point.
pub fn resolve_point<'a>(
    log: &'a BucketLog,
    url: &'a str,
    target: Target,
) -> BoxFuture<'a, Result<ResolvedPoint>> {
    resolve_capped(log, url.to_owned(), target, None, 0)
}

fn resolve_capped<'a>(
    log: &'a BucketLog,
    url: String,
    target: Target,
    cap: Option<Lsn>,
    depth: usize,
) -> BoxFuture<'a, Result<ResolvedPoint>> {
    Box::pin(async move {
        let latest = log
            .latest_manifest(None)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no database in {url}")))?;
        let m = latest.manifest;
        let own = m.parent.as_ref().map(BranchPoint::of).transpose()?;
        let floor = own.as_ref().map_or(Lsn::ZERO, |p| p.lsn);
        // The newest commit of this log (or the branch point, or zero, when it has none).
        let known = m
            .snapshots
            .iter()
            .map(|s| s.slot)
            .max()
            .unwrap_or(m.replay_start_slot.saturating_sub(1));
        let frontier = log.frontier(Slot::new(known)).await?;
        let head = match frontier.prev().filter(|s| *s != Slot::ZERO) {
            Some(last) => {
                log.segment_header(last)
                    .await?
                    .ok_or_else(|| {
                        Error::corrupt(keys::segment(last), "missing below the frontier")
                    })?
                    .0
                    .lsn_last
            }
            None => floor,
        };
        let head = cap.map_or(head, |c| head.min(c));
        let found = match target {
            Target::Head => Some(head),
            Target::Lsn(l) if l > head => {
                return Err(Error::Invalid(format!(
                    "lsn {} is beyond the end of {url} (lsn {})",
                    l.get(),
                    head.get()
                )));
            }
            Target::Lsn(l) => Some(l),
            Target::Time(t) => {
                return resolve_time(log, url, &m, own, t, head, frontier, depth).await;
            }
        };
        let lsn = found.unwrap_or(Lsn::ZERO);
        if let Some(point) = own.filter(|p| lsn <= p.lsn) {
            return in_parent(point, Target::Lsn(lsn), depth).await;
        }
        if lsn == Lsn::ZERO {
            return Ok(empty_point(url));
        }
        if !restorable(&m, lsn) {
            return Err(before_oldest(&url, &m, lsn));
        }
        let slot = find_slot_of(log, Lsn::new(lsn.get() - 1), m.replay_start()).await?;
        let (header, hash) = log
            .segment_header(slot)
            .await?
            .ok_or_else(|| Error::corrupt(keys::segment(slot), "missing below the frontier"))?;
        let commit = header
            .commits
            .iter()
            .find(|c| c.lsn == lsn)
            .ok_or_else(|| before_oldest(&url, &m, lsn))?;
        Ok(ResolvedPoint {
            parent: Parent {
                url,
                lsn: lsn.get(),
                slot: slot.get(),
                segment_hash: hash.to_hex(),
                checksum: checksum_hex(commit.checksum_after),
            },
            time_ms: commit.time_ms,
        })
    })
}

fn in_parent(
    point: BranchPoint,
    target: Target,
    depth: usize,
) -> BoxFuture<'static, Result<ResolvedPoint>> {
    Box::pin(async move {
        if depth >= BRANCH_DEPTH_MAX {
            return Err(Error::Invalid(format!(
                "branches nested more than {BRANCH_DEPTH_MAX} deep above {} (a cycle of parents?)",
                point.url
            )));
        }
        let parent_log = open_parent(&point.url).await?;
        let resolved = resolve_capped(
            &parent_log,
            point.url.clone(),
            target,
            Some(point.lsn),
            depth + 1,
        )
        .await?;
        Ok(resolved)
    })
}

fn empty_point(url: String) -> ResolvedPoint {
    ResolvedPoint {
        parent: Parent {
            url,
            lsn: 0,
            slot: 0,
            segment_hash: ObjectHash::ZERO.to_hex(),
            checksum: checksum_hex(StateChecksum::EMPTY),
        },
        time_ms: 0,
    }
}

fn before_oldest(url: &str, m: &Manifest, lsn: Lsn) -> Error {
    let oldest = m.snapshots.iter().map(|s| s.lsn).min();
    Error::Invalid(match oldest {
        Some(o) => format!(
            "lsn {} of {url} is before its oldest restorable point (lsn {o}); GC has collected its history",
            lsn.get()
        ),
        None => format!(
            "lsn {} of {url} is no longer restorable: its log starts at slot {}",
            lsn.get(),
            m.replay_start_slot
        ),
    })
}

/// The newest commit at or before time `t`, scanning segment headers forward from the newest
/// snapshot taken at or before `t` (commit times, never object timestamps).
#[allow(clippy::too_many_arguments)]
async fn resolve_time(
    log: &BucketLog,
    url: String,
    m: &Manifest,
    own: Option<BranchPoint>,
    t: u64,
    head: Lsn,
    frontier: Slot,
    depth: usize,
) -> Result<ResolvedPoint> {
    let start = m
        .snapshots
        .iter()
        .filter(|s| s.time_ms <= t && s.lsn <= head.get())
        .max_by_key(|s| s.lsn);
    if start.is_none() && m.replay_start_slot > 1 {
        return Err(Error::Invalid(format!(
            "time {} is before the oldest restorable point of {url}",
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(t)
            )
        )));
    }
    let first = start.map_or(m.replay_start_slot.max(1), |s| s.slot);
    let mut best: Option<ResolvedPoint> = None;
    let mut headers = futures::stream::iter(first..frontier.get())
        .map(|s| async move { (s, log.segment_header(Slot::new(s)).await) })
        .buffered(FETCH_AHEAD_SEGMENTS);
    'scan: while let Some((slot, fetched)) = headers.next().await {
        let (header, hash) = fetched?.ok_or_else(|| {
            Error::corrupt(keys::segment(Slot::new(slot)), "missing below the frontier")
        })?;
        for c in &header.commits {
            if c.lsn > head || c.time_ms > t {
                break 'scan;
            }
            best = Some(ResolvedPoint {
                parent: Parent {
                    url: url.clone(),
                    lsn: c.lsn.get(),
                    slot,
                    segment_hash: hash.to_hex(),
                    checksum: checksum_hex(c.checksum_after),
                },
                time_ms: c.time_ms,
            });
        }
    }
    drop(headers);
    match (best, own) {
        (Some(found), _) => Ok(found),
        (None, Some(point)) => in_parent(point, Target::Time(t), depth).await,
        (None, None) => Ok(empty_point(url)),
    }
}

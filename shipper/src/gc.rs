//! Garbage collection and retention (DESIGN.md §3 "GC and retention").
//!
//! What must stay: the latest manifest; for every point inside the retention window and every pin,
//! the newest snapshot at or below it and every segment from that snapshot's slot on; every fence;
//! every boundary object. The oldest such snapshot is the **base**. Everything older is collected,
//! in this order, so that no reader can ever need what is gone:
//!
//! 1. a manifest update moves `replay_start_slot` to the base's slot and drops the snapshot
//!    entries older than the base (restores now start at or after the base);
//! 2. `gc/segment.boundary` and `gc/manifest.boundary` advance by CAS (never back);
//! 3. deletes: non-fence segments below the base slot whose newest commit is older than the
//!    grace age (a margin for readers mid-restore, never the reason something is safe), the
//!    parts of dropped snapshots, snapshot folders no manifest names that are older than the
//!    newest published snapshot (abandoned uploads), and manifests at or below the manifest
//!    boundary (the latest few are kept for inspection).
//!
//! Without a snapshot old enough to be a base (none taken yet, or all newer than the window's
//! start), no segment is collected: every one may be needed. `dry_run` plans and reports without
//! changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use hadal_format::boundary::{Boundary, MANIFEST_BOUNDARY, SEGMENT_BOUNDARY};
use hadal_format::manifest::{Manifest, SnapshotRef};
use hadal_format::segment::SegmentKind;
use hadal_format::{Slot, keys};
use hadal_replica::BucketLog;
use hadal_transports::{Created, DynBucket, Nonce, Swapped};

use crate::error::{Error, Result};
use crate::manifest;

/// Manifests kept below the latest, for inspection and debugging.
pub const MANIFESTS_KEPT: u64 = 16;
/// Deletes issued at once.
const PARALLEL_DELETES: usize = 16;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Objects younger than this (by commit time) are kept even when unreachable.
    pub grace: Duration,
    /// Plan and report only.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// One object GC deletes (or would), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    pub key: String,
    pub reason: String,
}

/// What a GC run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The oldest snapshot every retained restore point can start from: (LSN, slot, time).
    pub base: Option<(u64, u64, u64)>,
    /// The oldest restorable commit time after this run (ms), if the log was trimmed.
    pub oldest_restorable_ms: Option<u64>,
    pub deleted: Vec<Doomed>,
    /// Kept although below the base: fences, and objects within the grace age.
    pub kept_fences: u64,
    pub kept_in_grace: u64,
    pub dry_run: bool,
}

/// Runs one GC pass over the database in `bucket`.
pub async fn collect(bucket: DynBucket, now_ms: u64, options: &GcOptions) -> Result<GcReport> {
    let log = BucketLog::new(crate::with_retries(bucket));
    let latest = log
        .latest_manifest(None)
        .await?
        .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?;
    let m = &latest.manifest;
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    let base = base_snapshot(m, now_ms).cloned();
    let grace_ms = options.grace.as_millis() as u64;
    let mut doomed: Vec<Doomed> = Vec::new();
    let mut dropped_snapshots: Vec<SnapshotRef> = Vec::new();
    if let Some(base) = &base {
        report.base = Some((base.lsn, base.slot, base.time_ms));
        report.oldest_restorable_ms = Some(base.time_ms);
        dropped_snapshots = m
            .snapshots
            .iter()
            .filter(|s| s.lsn < base.lsn)
            .cloned()
            .collect();
        for slot in m.replay_start_slot.max(1)..base.slot {
            let slot = Slot::new(slot);
            let Some((header, _)) = log.segment_header(slot).await? else {
                continue;
            };
            let newest = header.commits.last().map_or(0, |c| c.time_ms);
            if header.kind == SegmentKind::Fence {
                report.kept_fences += 1;
            } else if newest.saturating_add(grace_ms) > now_ms {
                report.kept_in_grace += 1;
            } else {
                doomed.push(Doomed {
                    key: keys::segment(slot),
                    reason: format!(
                        "before the base snapshot at lsn {} (slot {}); no restore inside the window or pin reads it",
                        base.lsn, base.slot
                    ),
                });
            }
        }
    }
    // Compacted runs that start before the base: no restore starts early enough to use them.
    let base_slot = base.as_ref().map_or(0, |b| b.slot);
    let base_lsn = base.as_ref().map_or(0, |b| b.lsn);
    let dropped_runs: Vec<String> = m
        .compactions
        .iter()
        .filter(|r| base.is_some() && r.slot_first <= base_slot)
        .map(|r| r.key.clone())
        .collect();
    for key in &dropped_runs {
        doomed.push(Doomed {
            key: key.clone(),
            reason: format!("compacted run starts before the base snapshot's slot {base_slot}"),
        });
    }
    // Compacted objects no manifest names, ending at or before the base (abandoned uploads;
    // a compactor's fresh upload always ends past the newest snapshot).
    let named_runs: BTreeSet<&str> = m.compactions.iter().map(|r| r.key.as_str()).collect();
    let mut listing = log.bucket().list(keys::COMPACT_PREFIX, None);
    while let Some(info) = listing.next().await {
        let info = info?;
        let lsn_last = info
            .key
            .strip_prefix(keys::COMPACT_PREFIX)
            .and_then(|rest| rest.split('-').nth(1))
            .and_then(|l| l.parse::<u64>().ok());
        if named_runs.contains(info.key.as_str()) || base.is_none() {
            continue;
        }
        if lsn_last.is_some_and(|l| l <= base_lsn) {
            doomed.push(Doomed {
                key: info.key.clone(),
                reason: "an abandoned compacted run (no manifest names it) before the base".into(),
            });
        }
    }
    drop(listing);
    for snap in &dropped_snapshots {
        for part in &snap.parts {
            doomed.push(Doomed {
                key: part.key.clone(),
                reason: format!("snapshot at lsn {} is older than the base", snap.lsn),
            });
        }
    }
    // Abandoned snapshot uploads: folders no manifest names, older than the newest published.
    let named: BTreeSet<&str> = m.snapshots.iter().map(|s| s.dir.as_str()).collect();
    let newest_published = m.snapshots.iter().map(|s| s.lsn).max().unwrap_or(0);
    let mut listing = log.bucket().list(keys::SNAPSHOT_PREFIX, None);
    let dropped_dirs: BTreeSet<&str> = dropped_snapshots.iter().map(|s| s.dir.as_str()).collect();
    while let Some(info) = listing.next().await {
        let info = info?;
        let Some((dir, lsn)) = snapshot_dir_of(&info.key) else {
            continue;
        };
        if named.contains(dir) || dropped_dirs.contains(dir) || lsn >= newest_published {
            continue;
        }
        doomed.push(Doomed {
            key: info.key.clone(),
            reason: format!(
                "part of an abandoned snapshot upload (lsn {lsn}, no manifest names it)"
            ),
        });
    }
    drop(listing);
    // Old manifests.
    let manifest_boundary = m.id.saturating_sub(MANIFESTS_KEPT + 1);
    let mut listing = log.bucket().list(keys::MANIFEST_PREFIX, None);
    let mut old_manifests = Vec::new();
    while let Some(info) = listing.next().await {
        let info = info?;
        if let Ok(id) = keys::parse_manifest(&info.key)
            && id.get() <= manifest_boundary
        {
            old_manifests.push(info.key);
        }
    }
    drop(listing);
    for key in old_manifests {
        doomed.push(Doomed {
            key,
            reason: format!("older than the latest {MANIFESTS_KEPT} manifests"),
        });
    }
    report.deleted = doomed;
    if options.dry_run {
        return Ok(report);
    }

    // 1. Restores start at the base from now on.
    if let Some(base) = &base
        && (m.replay_start_slot < base.slot
            || !dropped_snapshots.is_empty()
            || !dropped_runs.is_empty())
    {
        let (base_lsn, base_slot) = (base.lsn, base.slot);
        let published = manifest::update(&log, now_ms, |next| {
            // A pin added since the plan (a new branch) may need an older base: start over.
            if base_snapshot(next, now_ms).is_none_or(|b| b.lsn < base_lsn) {
                return Err(Error::Invalid(
                    "the manifest gained a pin older than the planned base while GC ran; nothing was deleted, run GC again".into(),
                ));
            }
            next.replay_start_slot = next.replay_start_slot.max(base_slot);
            next.snapshots.retain(|s| s.lsn >= base_lsn);
            next.compactions.retain(|r| r.slot_first > base_slot);
            Ok(())
        })
        .await?;
        tracing::info!(
            manifest = published.manifest.id,
            replay_start_slot = base_slot,
            "gc: restores now start at the base snapshot"
        );
    }
    // 2. Boundaries before deletes.
    if let Some(base) = &base {
        advance_boundary(&log, SEGMENT_BOUNDARY, base.slot - 1, now_ms).await?;
    }
    if manifest_boundary > 0 {
        advance_boundary(&log, MANIFEST_BOUNDARY, manifest_boundary, now_ms).await?;
    }
    // 3. Deletes.
    let bucket = log.bucket();
    // Owned keys: a closure over borrowed ones makes this future not provably `Send`, and the
    // writer runs it inside a spawned task (`collector.rs`).
    let keys: Vec<String> = report.deleted.iter().map(|d| d.key.clone()).collect();
    let results: Vec<Result<()>> = futures::stream::iter(keys)
        .map(|key| async move {
            bucket
                .delete(&key)
                .await
                .map_err(|e| Error::Bucket(format!("deleting {key}: {e}")))
        })
        .buffer_unordered(PARALLEL_DELETES)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    tracing::info!(deleted = report.deleted.len(), "gc pass done");
    Ok(report)
}

/// Sets the retention window of the database in `bucket` (a manifest update); the next GC pass
/// keeps every point inside the new window. Returns the previous window.
pub async fn set_retention(bucket: DynBucket, retention_ms: u64, now_ms: u64) -> Result<u64> {
    let log = BucketLog::new(crate::with_retries(bucket));
    let before = log
        .latest_manifest(None)
        .await?
        .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?
        .manifest
        .retention_ms;
    if before != retention_ms {
        manifest::update(&log, now_ms, |m| {
            m.retention_ms = retention_ms;
            Ok(())
        })
        .await?;
    }
    Ok(before)
}

/// The base: the oldest snapshot any retained restore point needs. `None` if some retained
/// point has no snapshot at or below it (then the whole log is needed).
pub fn base_snapshot(m: &Manifest, now_ms: u64) -> Option<&SnapshotRef> {
    let window_start = now_ms.saturating_sub(m.retention_ms);
    let by_lsn: BTreeMap<u64, &SnapshotRef> = m.snapshots.iter().map(|s| (s.lsn, s)).collect();
    let window_base = m
        .snapshots
        .iter()
        .filter(|s| s.time_ms <= window_start)
        .max_by_key(|s| s.lsn)?;
    let mut base = window_base;
    for pin in &m.pins {
        let (_, pinned) = by_lsn.range(..=pin.lsn).next_back()?;
        if pinned.lsn < base.lsn {
            base = pinned;
        }
    }
    Some(base)
}

/// `snap/<lsn>-<nonce>/part-<n>` → (`snap/<lsn>-<nonce>`, lsn).
fn snapshot_dir_of(key: &str) -> Option<(&str, u64)> {
    let rest = key.strip_prefix(keys::SNAPSHOT_PREFIX)?;
    let slash = rest.find('/')?;
    let dir = &key[..keys::SNAPSHOT_PREFIX.len() + slash];
    let lsn = rest[..slash].split('-').next()?.parse().ok()?;
    Some((dir, lsn))
}

/// Moves `gc/<name>.boundary` up to `value` (create, or CAS from the version read); never back.
async fn advance_boundary(log: &BucketLog, name: &str, value: u64, now_ms: u64) -> Result<()> {
    let key = keys::gc_boundary(name);
    for _ in 0..manifest::MANIFEST_UPDATE_ATTEMPTS_MAX {
        let body = Boundary::new(name, value, now_ms)
            .encode()
            .map_err(|e| Error::Invalid(format!("encoding {key}: {e}")))?;
        match log.bucket().get(&key).await? {
            None => {
                if let Created::Created(_) = log
                    .bucket()
                    .put_if_absent(&key, body.into(), Nonce::random())
                    .await?
                {
                    return Ok(());
                }
            }
            Some(object) => {
                let current = Boundary::decode(&object.bytes)
                    .map_err(|e| Error::Corrupt(format!("{key}: {e}")))?;
                if current.value >= value {
                    return Ok(());
                }
                if let Swapped::Swapped(_) = log
                    .bucket()
                    .put_if_match(&key, body.into(), &object.version, Nonce::random())
                    .await?
                {
                    return Ok(());
                }
            }
        }
    }
    Err(Error::Bucket(format!(
        "could not advance {key}: it kept changing under us"
    )))
}

#[cfg(test)]
mod tests {
    use hadal_format::manifest::{Pin, SnapshotRef};

    use super::*;

    fn snap(lsn: u64, time_ms: u64) -> SnapshotRef {
        SnapshotRef {
            lsn,
            slot: lsn + 1,
            checksum: "0".repeat(16),
            time_ms,
            page_count: 1,
            dir: format!("snap/{lsn}"),
            parts: Vec::new(),
        }
    }

    #[test]
    fn the_base_covers_the_window_and_every_pin() {
        // Proves the base is the newest snapshot at or before the window's start, moved back to
        // cover pins, and absent when a retained point has no snapshot below it.
        let mut m = Manifest::first([0; 16], 4096, 0);
        m.retention_ms = 100;
        m.snapshots = vec![snap(10, 1_000), snap(20, 2_000), snap(30, 3_000)];
        assert_eq!(base_snapshot(&m, 2_150).map(|s| s.lsn), Some(20));
        assert_eq!(base_snapshot(&m, 5_000).map(|s| s.lsn), Some(30));
        assert_eq!(
            base_snapshot(&m, 1_050).map(|s| s.lsn),
            None,
            "window before all"
        );
        m.pins.push(Pin {
            name: "branch".into(),
            lsn: 15,
            created_ms: 0,
        });
        assert_eq!(base_snapshot(&m, 5_000).map(|s| s.lsn), Some(10));
        m.pins.push(Pin {
            name: "early".into(),
            lsn: 5,
            created_ms: 0,
        });
        assert_eq!(
            base_snapshot(&m, 5_000).map(|s| s.lsn),
            None,
            "pin before all"
        );
    }
}

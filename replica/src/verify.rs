//! `hadal verify`: proves a bucket's history is intact, object by object (DESIGN.md §5).
//!
//! - **Manifests**: ids dense from the first present to the latest, each one's SHA-256 trailer,
//!   `prev_hash` equal to its predecessor's hash, one database id and page size, writer epochs
//!   never decreasing.
//! - **Segments**: every key under `seg/` is a slot; slots dense from the first present to the
//!   last, and the first no later than the latest manifest's `replay_start_slot`; each object's
//!   hash, its own consistency, and its link to the previous one (`ChainCursor`: `prev_hash`,
//!   epochs never decreasing with a fence first in each new epoch, LSN and per-commit checksum
//!   continuity).
//! - **Snapshots** named by the latest manifest: the slot holds the LSN; the state checksum
//!   equals the log's `checksum_after` at that LSN (or the fence's state); every part downloads,
//!   matches its recorded hash, belongs to this snapshot, the parts cover pages `0..page_count`
//!   in order, and the checksum computed from their pages equals the recorded one.
//!
//! The first failure is returned as a `Corrupt` error naming the object and what is wrong.
//! `--deep` (in the CLI) additionally restores the head and runs the engine's integrity check.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use hadal_format::compact::CompactedRun;
use hadal_format::manifest::{
    CompactionRef, Manifest, SnapshotRef, checksum_hex, parse_checksum_hex,
};
use hadal_format::segment::SegmentKind;
use hadal_format::snapshot::SnapshotPart;
use hadal_format::{Lsn, ManifestId, ObjectHash, PageNo, Slot, StateChecksum, keys};
use hadal_transports::DynBucket;

use crate::error::{Error, Result};
use crate::log::{BucketLog, ChainCursor};
use crate::restore::{BranchPoint, FETCH_AHEAD_SEGMENTS, PARALLEL_PART_DOWNLOADS, open_parent};

/// Checks a compacted run: its object matches the manifest's record (hash, LSN and slot
/// range, checksums) and the log's state at its last LSN is the one it leads to.
async fn verify_compacted(
    log: &BucketLog,
    db_id: [u8; 16],
    run: &CompactionRef,
    at_lsn: &StatesAt,
) -> Result<()> {
    let object = log
        .bucket()
        .get(&run.key)
        .await?
        .ok_or_else(|| Error::corrupt(&run.key, "named by the manifest but missing"))?;
    let (compacted, hash) =
        CompactedRun::decode(&object.bytes).map_err(|e| Error::format(&run.key, e))?;
    let fail = |detail: String| Err(Error::corrupt(&run.key, detail));
    if Some(hash) != ObjectHash::from_hex(&run.sha256) {
        return fail("its hash differs from the one the manifest records".into());
    }
    if compacted.db_id != db_id
        || compacted.lsn_first.get() != run.lsn_first
        || compacted.lsn_last.get() != run.lsn_last
        || compacted.slot_first.get() != run.slot_first
        || compacted.slot_last.get() != run.slot_last
        || checksum_hex(compacted.checksum_before) != run.checksum_before
        || checksum_hex(compacted.checksum_after) != run.checksum_after
    {
        return fail("its header differs from the manifest's record of it".into());
    }
    match at_lsn.get(&run.lsn_last) {
        Some((checksum, _)) if *checksum == compacted.checksum_after => Ok(()),
        Some((checksum, _)) => fail(format!(
            "it leads to state checksum {} but the log has {checksum} at lsn {}",
            compacted.checksum_after, run.lsn_last
        )),
        None => fail(format!("no segment holds its last lsn {}", run.lsn_last)),
    }
}

/// Checks a branch's link to its parent: the parent still pins the branch point, and its
/// segment at the point's slot has the recorded hash and holds the point's commit with the
/// recorded state checksum (or, for the empty database, the point is the genesis).
async fn verify_parent(point: &BranchPoint) -> Result<()> {
    let parent = open_parent(&point.url).await?;
    let key = || format!("{}/{}", point.url, keys::segment(point.slot));
    let latest = parent
        .latest_manifest(None)
        .await?
        .ok_or_else(|| Error::corrupt(&point.url, "the parent database has no manifest"))?;
    if !latest
        .manifest
        .pins
        .iter()
        .any(|p| p.lsn == point.lsn.get())
    {
        return Err(Error::corrupt(
            format!(
                "{}/{}",
                point.url,
                keys::manifest(latest.manifest.manifest_id())
            ),
            format!(
                "the parent no longer pins lsn {}, where this branch starts: GC may collect its history",
                point.lsn.get()
            ),
        ));
    }
    if point.lsn == Lsn::ZERO {
        return if point.segment_hash == ObjectHash::ZERO && point.checksum == StateChecksum::EMPTY {
            Ok(())
        } else {
            Err(Error::corrupt(
                &point.url,
                "a branch of the empty database names a segment",
            ))
        };
    }
    let (header, hash) = parent
        .segment_header(point.slot)
        .await?
        .ok_or_else(|| Error::corrupt(key(), "missing: it holds this branch's branch point"))?;
    if hash != point.segment_hash {
        return Err(Error::corrupt(
            key(),
            "its hash differs from the one the branch's manifest records",
        ));
    }
    match header.commits.iter().find(|c| c.lsn == point.lsn) {
        Some(c) if c.checksum_after == point.checksum => Ok(()),
        Some(_) => Err(Error::corrupt(
            key(),
            format!(
                "the state checksum at lsn {} differs from the branch's record",
                point.lsn.get()
            ),
        )),
        None => Err(Error::corrupt(
            key(),
            format!("it does not hold lsn {}, the branch point", point.lsn.get()),
        )),
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub manifests: u64,
    pub first_slot: u64,
    pub segments: u64,
    pub fences: u64,
    pub commits: u64,
    pub head_lsn: u64,
    pub head_epoch: u64,
    pub snapshots: u64,
    pub snapshot_parts: u64,
    pub bytes: u64,
    /// Compacted runs named by the latest manifest, each checked against the log.
    pub compacted_runs: u64,
    /// For a branch: the parent's URL and the branch point's LSN, both checked.
    pub parent: Option<(String, u64)>,
}

/// Progress of a verification, for a progress bar: segments checked of those listed.
pub type VerifyProgressFn<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Verifies the whole history of the database in `bucket`.
pub async fn verify(
    bucket: DynBucket,
    progress: Option<VerifyProgressFn<'_>>,
) -> Result<VerifyReport> {
    let log = BucketLog::new(crate::restore::with_retries(bucket));
    let mut report = VerifyReport::default();
    let latest = verify_manifests(&log, &mut report).await?;
    let db_id = latest
        .db_id_bytes()
        .map_err(|e| Error::format(keys::manifest(latest.manifest_id()), e))?;
    let point = match &latest.parent {
        Some(p) => Some(
            BranchPoint::of(p)
                .map_err(|e| Error::corrupt(keys::manifest(latest.manifest_id()), e))?,
        ),
        None => None,
    };
    if let Some(point) = &point {
        verify_parent(point).await?;
        report.parent = Some((point.url.clone(), point.lsn.get()));
    }
    let wanted: BTreeSet<u64> = latest
        .snapshots
        .iter()
        .map(|s| s.lsn)
        .chain(latest.compactions.iter().map(|r| r.lsn_last))
        .collect();
    let at_lsn = verify_segments(
        &log,
        &latest,
        db_id,
        point.as_ref(),
        &wanted,
        &mut report,
        progress,
    )
    .await?;
    for snap in &latest.snapshots {
        verify_snapshot(&log, &latest, db_id, snap, &at_lsn, &mut report).await?;
    }
    for run in &latest.compactions {
        verify_compacted(&log, db_id, run, &at_lsn).await?;
        report.compacted_runs += 1;
    }
    Ok(report)
}

async fn listed_keys(log: &BucketLog, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut listing = log.bucket().list(prefix, None);
    while let Some(info) = listing.next().await {
        keys.push(info?.key);
    }
    Ok(keys)
}

/// Checks every manifest and returns the latest.
async fn verify_manifests(log: &BucketLog, report: &mut VerifyReport) -> Result<Manifest> {
    let mut ids = Vec::new();
    for key in listed_keys(log, keys::MANIFEST_PREFIX).await? {
        ids.push(keys::parse_manifest(&key).map_err(|e| Error::format(&key, e))?);
    }
    ids.sort();
    let (Some(first), Some(last)) = (ids.first().copied(), ids.last().copied()) else {
        return Err(Error::Invalid(format!(
            "no database in {}: it holds no manifest",
            log.bucket().name()
        )));
    };
    if let Some(pair) = ids.windows(2).find(|w| w[1].get() != w[0].get() + 1) {
        return Err(Error::corrupt(
            keys::manifest(ManifestId::new(pair[0].get() + 1)),
            format!(
                "missing: manifests {} and {} exist around it",
                pair[0].get(),
                pair[1].get()
            ),
        ));
    }
    let mut prev: Option<(Manifest, ObjectHash)> = None;
    debug_assert!(first <= last);
    for id in first.get()..=last.get() {
        let id = ManifestId::new(id);
        let key = keys::manifest(id);
        let at = log
            .manifest(id)
            .await?
            .ok_or_else(|| Error::corrupt(&key, "listed, then missing"))?;
        if let Some((p, hash)) = &prev {
            let fail = |detail: &str| Err(Error::corrupt(&key, detail));
            if at.manifest.prev_hash.as_deref() != Some(hash.to_hex().as_str()) {
                return fail("its prev_hash does not match the previous manifest's hash");
            }
            if at.manifest.db_id != p.db_id || at.manifest.page_size != p.page_size {
                return fail("its database id or page size differs from the previous manifest");
            }
            if at.manifest.writer_epoch < p.writer_epoch {
                return fail("its writer epoch is lower than the previous manifest's");
            }
        }
        report.manifests += 1;
        prev = Some((at.manifest, at.hash));
    }
    prev.map(|(m, _)| m)
        .ok_or_else(|| Error::Invalid("no manifest could be read".into()))
}

/// Per wanted LSN: the state checksum there and the slots whose segment ends in that state
/// (the commit's segment, and a fence right after it).
type StatesAt = BTreeMap<u64, (StateChecksum, Vec<u64>)>;

/// Walks every segment in slot order; returns the state checksum and slot at each wanted LSN.
async fn verify_segments(
    log: &BucketLog,
    latest: &Manifest,
    db_id: [u8; 16],
    point: Option<&BranchPoint>,
    wanted: &BTreeSet<u64>,
    report: &mut VerifyReport,
    progress: Option<VerifyProgressFn<'_>>,
) -> Result<StatesAt> {
    let mut slots = Vec::new();
    for key in listed_keys(log, keys::SEGMENT_PREFIX).await? {
        slots.push(keys::parse_segment(&key).map_err(|e| Error::format(&key, e))?);
    }
    slots.sort();
    // Below the replay start GC keeps only fences and objects within its grace age: each must
    // still be intact, but they need not be dense.
    let start = Slot::new(latest.replay_start_slot.max(1));
    let (below, slots): (Vec<Slot>, Vec<Slot>) = slots.into_iter().partition(|s| *s < start);
    for slot in below {
        log.segment(slot)
            .await?
            .ok_or_else(|| Error::corrupt(keys::segment(slot), "listed, then missing"))?;
    }
    let mut at_lsn = BTreeMap::new();
    let (Some(first), Some(last)) = (slots.first().copied(), slots.last().copied()) else {
        return Ok(at_lsn);
    };
    if let Some(pair) = slots.windows(2).find(|w| w[1].get() != w[0].get() + 1) {
        return Err(Error::corrupt(
            keys::segment(pair[0].next()),
            format!(
                "missing, but slots {} and {} exist: the log has a gap",
                pair[0].get(),
                pair[1].get()
            ),
        ));
    }
    if first != start {
        return Err(Error::corrupt(
            keys::segment(start),
            format!(
                "missing: the manifest replays from slot {} but the log resumes at slot {}",
                start.get(),
                first.get()
            ),
        ));
    }
    report.first_slot = first.get();
    let total = last.get() - first.get() + 1;
    let mut cursor: Option<ChainCursor> = (first.get() == 1).then(|| match point {
        Some(p) => p.cursor(db_id),
        None => ChainCursor::genesis(db_id),
    });
    let mut fetches = futures::stream::iter(first.get()..=last.get())
        .map(|s| log.segment(Slot::new(s)))
        .buffered(FETCH_AHEAD_SEGMENTS);
    let mut slot = first;
    while let Some(fetched) = fetches.next().await {
        let at =
            fetched?.ok_or_else(|| Error::corrupt(keys::segment(slot), "listed, then missing"))?;
        let header = &at.segment.header;
        let cursor = cursor.get_or_insert_with(|| ChainCursor {
            // The log starts past slot 1 (collected below the replay start): its first link is
            // taken as given, everything after it is checked.
            db_id,
            slot,
            prev_hash: header.prev_hash,
            epoch: header.epoch,
            lsn: Lsn::new(header.lsn_first.get().saturating_sub(1)),
            checksum: header
                .commits
                .first()
                .map_or(header.checksum_last, |c| c.checksum_before),
        });
        cursor.advance(header, at.hash)?;
        match header.kind {
            SegmentKind::Fence => {
                report.fences += 1;
                if wanted.contains(&header.lsn_last.get()) {
                    at_lsn
                        .entry(header.lsn_last.get())
                        .or_insert((header.checksum_last, Vec::new()))
                        .1
                        .push(slot.get());
                }
            }
            SegmentKind::Commits => {
                for c in &header.commits {
                    report.commits += 1;
                    if wanted.contains(&c.lsn.get()) {
                        at_lsn
                            .entry(c.lsn.get())
                            .or_insert((c.checksum_after, Vec::new()))
                            .1
                            .push(slot.get());
                    }
                }
            }
        }
        report.segments += 1;
        report.bytes += at.bytes as u64;
        report.head_lsn = cursor.lsn.get();
        report.head_epoch = cursor.epoch.get();
        if let Some(p) = progress {
            p(report.segments, total);
        }
        slot = slot.next();
    }
    Ok(at_lsn)
}

/// Checks one snapshot against the log and its parts against their records.
async fn verify_snapshot(
    log: &BucketLog,
    latest: &Manifest,
    db_id: [u8; 16],
    snap: &SnapshotRef,
    at_lsn: &StatesAt,
    report: &mut VerifyReport,
) -> Result<()> {
    let manifest_key = keys::manifest(latest.manifest_id());
    let recorded =
        parse_checksum_hex(&snap.checksum).map_err(|e| Error::format(&manifest_key, e))?;
    let fail = |detail: String| Err(Error::corrupt(&manifest_key, detail));
    if snap.slot >= report.first_slot && report.segments > 0 {
        match at_lsn.get(&snap.lsn) {
            None => {
                return fail(format!(
                    "snapshot {} names lsn {}, which no segment holds",
                    snap.dir, snap.lsn
                ));
            }
            Some((checksum, slots)) => {
                if *checksum != recorded {
                    return fail(format!(
                        "snapshot {} records state checksum {recorded} but the log has {checksum} at lsn {}",
                        snap.dir, snap.lsn
                    ));
                }
                if !slots.contains(&snap.slot) {
                    return fail(format!(
                        "snapshot {} names slot {} but lsn {} is in slot(s) {slots:?}",
                        snap.dir, snap.slot, snap.lsn
                    ));
                }
            }
        }
    }
    let bucket = log.bucket();
    let parts: Vec<(String, SnapshotPart)> = futures::stream::iter(snap.parts.iter())
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
                || part.page_count() != part_ref.page_count
            {
                return Err(Error::corrupt(
                    &part_ref.key,
                    "it belongs to another snapshot",
                ));
            }
            Ok((part_ref.key.clone(), part))
        })
        .buffered(PARALLEL_PART_DOWNLOADS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let mut next_page = 0u32;
    let mut checksum = StateChecksum::EMPTY;
    for (key, part) in &parts {
        if part.first_page.get() != next_page {
            return Err(Error::corrupt(
                key,
                format!(
                    "starts at page {} where page {next_page} was expected",
                    part.first_page.get()
                ),
            ));
        }
        for (i, page) in part.pages.chunks_exact(part.page_size as usize).enumerate() {
            checksum.add(PageNo::new(part.first_page.get() + i as u32), page);
        }
        next_page += part.page_count();
    }
    if next_page != snap.page_count {
        return fail(format!(
            "snapshot {} has {} pages in its parts but records {}",
            snap.dir, next_page, snap.page_count
        ));
    }
    if checksum != recorded {
        return fail(format!(
            "snapshot {}: its pages give state checksum {checksum}, the manifest records {recorded}",
            snap.dir
        ));
    }
    report.snapshots += 1;
    report.snapshot_parts += parts.len() as u64;
    report.bytes += snap.parts.iter().map(|p| p.bytes).sum::<u64>();
    Ok(())
}

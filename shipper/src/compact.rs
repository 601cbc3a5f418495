//! Compaction for restore speed (DESIGN.md §3): fold a run of small segments after the newest
//! snapshot into one object holding the newest image of each page the run changed
//! (`hadal_format::compact`), and name it in the manifest. A restore to the head (or to an LSN
//! at or past the run's end) then fetches one object instead of many; exact point-in-time
//! restores inside the run still replay the original segments, which compaction never deletes.
//!
//! What triggers it is the restore budget's other half: a snapshot bounds the bytes of a
//! restore, a compacted run bounds its object count. A run is folded once it holds at least
//! `min_segments` segments; runs chain (each starts where the previous ended), so a restore
//! goes snapshot → runs → the last few segments. A run stops at `max_page_bytes` of distinct
//! pages (beyond that a new snapshot is the better tool).
//!
//! GC drops runs that start before its base snapshot (no restore can use them any more) and
//! deletes their objects, and deletes compacted objects no manifest names (abandoned uploads).

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use hadal_format::compact::CompactedRun;
use hadal_format::manifest::{CompactionRef, Manifest, checksum_hex};
use hadal_format::{Epoch, Lsn, PageNo, Slot, StateChecksum, keys};
use hadal_replica::BucketLog;
use hadal_transports::DynBucket;

use crate::error::{Error, Result};
use crate::manifest;

/// Segments fetched ahead while folding.
const FETCH_AHEAD: usize = 32;

#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Fold a run only once it holds at least this many segments.
    pub min_segments: u64,
    /// Stop a run once its distinct pages reach this many bytes.
    pub max_page_bytes: u64,
    /// Plan and report only.
    pub dry_run: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            min_segments: 64,
            max_page_bytes: 256 * 1024 * 1024,
            dry_run: false,
        }
    }
}

/// What a compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Runs published (or, in a dry run, planned).
    pub runs: Vec<CompactionRef>,
    /// Segments the runs replace on the restore path.
    pub segments_folded: u64,
    pub dry_run: bool,
}

/// Where the next run starts: after the newest run that continues from the newest snapshot,
/// else right after the newest snapshot's slot, else at the replay start.
fn next_start(m: &Manifest) -> u64 {
    let snapshot_slot = m.snapshots.iter().map(|s| s.slot).max();
    let mut start = snapshot_slot.map_or(m.replay_start_slot.max(1), |s| s + 1);
    loop {
        match m
            .compactions
            .iter()
            .filter(|r| r.slot_first == start)
            .max_by_key(|r| r.slot_last)
        {
            Some(r) => start = r.slot_last + 1,
            None => return start,
        }
    }
}

/// Folds runs of segments of the database in `bucket`, until fewer than `min_segments`
/// remain unfolded after the newest snapshot.
pub async fn compact(
    bucket: DynBucket,
    now_ms: u64,
    options: &CompactOptions,
) -> Result<CompactReport> {
    let log = BucketLog::new(crate::with_retries(bucket));
    let mut report = CompactReport {
        dry_run: options.dry_run,
        ..CompactReport::default()
    };
    let latest = log
        .latest_manifest(None)
        .await?
        .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?;
    let m = latest.manifest;
    let db_id = m
        .db_id_bytes()
        .map_err(|e| Error::Corrupt(format!("manifest: {e}")))?;
    let mut start = next_start(&m);
    let frontier = log
        .frontier(Slot::new(start.saturating_sub(1)))
        .await?
        .get();
    while frontier.saturating_sub(start) >= options.min_segments.max(1) {
        let Some(run) = fold(&log, db_id, m.page_size, start, frontier, options).await? else {
            break;
        };
        let slots = run.slot_last.get() - run.slot_first.get() + 1;
        if slots < options.min_segments {
            break;
        }
        let (bytes, hash) = run
            .encode()
            .map_err(|e| Error::Invalid(format!("encoding a compacted run: {e}")))?;
        let nonce: [u8; 16] = rand::random();
        let last = log
            .segment_header(run.slot_last)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("{} vanished", keys::segment(run.slot_last))))?;
        let r = CompactionRef {
            key: keys::compacted(run.lsn_first, run.lsn_last, &nonce),
            sha256: hash.to_hex(),
            bytes: bytes.len() as u64,
            lsn_first: run.lsn_first.get(),
            lsn_last: run.lsn_last.get(),
            slot_first: run.slot_first.get(),
            slot_last: run.slot_last.get(),
            last_segment_hash: last.1.to_hex(),
            epoch: last.0.epoch.get(),
            checksum_before: checksum_hex(run.checksum_before),
            checksum_after: checksum_hex(run.checksum_after),
            time_ms: run.time_ms,
        };
        start = run.slot_last.get() + 1;
        report.segments_folded += slots;
        if !options.dry_run {
            log.bucket().put(&r.key, Bytes::from(bytes)).await?;
            let published = r.clone();
            manifest::update(&log, now_ms, move |next| {
                if !next.compactions.iter().any(|c| c.key == published.key) {
                    next.compactions.push(published.clone());
                }
                Ok(())
            })
            .await?;
            tracing::info!(
                key = r.key,
                slots = format!("{}..={}", r.slot_first, r.slot_last),
                bytes = r.bytes,
                "compacted a run of segments for restores"
            );
        }
        report.runs.push(r);
    }
    Ok(report)
}

/// Reads slots from `start` on (below `frontier`) and folds them, up to the page budget.
async fn fold(
    log: &BucketLog,
    db_id: [u8; 16],
    page_size: u32,
    start: u64,
    frontier: u64,
    options: &CompactOptions,
) -> Result<Option<CompactedRun>> {
    let mut pages: BTreeMap<PageNo, Vec<u8>> = BTreeMap::new();
    let mut fetches = futures::stream::iter(start..frontier)
        .map(|s| log.segment(Slot::new(s)))
        .buffered(FETCH_AHEAD);
    let mut first: Option<(Lsn, StateChecksum)> = None;
    let mut last: Option<(Lsn, StateChecksum, u64, u32)> = None;
    let mut slot_last = Slot::ZERO;
    let mut epoch = Epoch::ZERO;
    let mut expected = Slot::new(start);
    while let Some(fetched) = fetches.next().await {
        let Some(at) = fetched? else {
            break;
        };
        let header = &at.segment.header;
        let key = keys::segment(header.slot);
        if header.slot != expected || header.db_id != db_id || header.epoch < epoch {
            return Err(Error::Corrupt(format!(
                "{key}: it does not continue the log (slot, database or epoch)"
            )));
        }
        expected = header.slot.next();
        epoch = header.epoch;
        for c in at.segment.commits {
            if let Some((lsn, checksum, _, _)) = last
                && (c.lsn != lsn.next() || c.checksum_before != checksum)
            {
                return Err(Error::Corrupt(format!(
                    "{key}: commit {:?} does not continue lsn {lsn:?}",
                    c.lsn
                )));
            }
            first.get_or_insert((c.lsn, c.checksum_before));
            last = Some((c.lsn, c.checksum_after, c.time_ms, c.page_count));
            for (p, image) in c.pages {
                pages.insert(p, image);
            }
        }
        slot_last = header.slot;
        if (pages.len() as u64) * page_size as u64 >= options.max_page_bytes {
            break;
        }
    }
    drop(fetches);
    let (Some((lsn_first, checksum_before)), Some((lsn_last, checksum_after, time_ms, page_count))) =
        (first, last)
    else {
        return Ok(None);
    };
    Ok(Some(CompactedRun {
        page_size,
        db_id,
        lsn_first,
        lsn_last,
        slot_first: Slot::new(start),
        slot_last,
        checksum_before,
        checksum_after,
        time_ms,
        page_count,
        pages: pages.into_iter().collect(),
    }))
}

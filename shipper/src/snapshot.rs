//! Snapshots (DESIGN.md §3 "Snapshots and restore budget"): the image at one LSN, uploaded in
//! parts from a read snapshot while commits go on, then published in a manifest.
//!
//! When to take one is a restore-time question, not a count: the shipper keeps an estimate of
//! how long a restore would spend replaying the log since the last snapshot (objects × per-object
//! latency ÷ fetch-ahead + bytes ÷ bandwidth, both measured on this bucket's uploads) and takes a
//! snapshot once that replay estimate exceeds both what is left of the restore budget after
//! downloading a snapshot, and the snapshot's own download estimate. The second bound keeps a
//! large database from being re-uploaded every few seconds: a snapshot costs at most about as
//! much transfer as the log it saves a restore from reading.
//!
//! Publishing follows the parts and the segment: a snapshot at LSN `L` is added to the manifest
//! only after every part is in the bucket and `L` is durable (its segment exists), and only while
//! this writer's epoch is the manifest's. A snapshot abandoned half-way (fenced, shut down, a
//! bucket failure) leaves unreferenced parts under a unique folder name; nothing reads them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hadal_engine::ReadTxn;
use hadal_format::manifest::{PartRef, SnapshotRef, checksum_hex};
use hadal_format::snapshot::SnapshotPart;
use hadal_format::{Lsn, PageNo, Slot, keys};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::manifest;
use crate::ship::ShipLoop;

/// Raw page bytes per snapshot part (before compression).
pub const SNAPSHOT_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded at once.
pub const PARALLEL_PART_UPLOADS: usize = 4;
/// A restore fetches this many segments ahead (the replica's `FETCH_AHEAD_SEGMENTS`).
const RESTORE_FETCH_AHEAD: f64 = hadal_replica::restore::FETCH_AHEAD_SEGMENTS as f64;
/// And downloads this many snapshot parts at once.
const RESTORE_PART_DOWNLOADS: f64 = hadal_replica::restore::PARALLEL_PART_DOWNLOADS as f64;

/// Until uploads have measured the bucket: a conservative guess of one object's round trip and
/// of bandwidth.
const LATENCY_GUESS: Duration = Duration::from_millis(50);
const BANDWIDTH_GUESS: f64 = 64.0 * 1024.0 * 1024.0;
/// Objects smaller than this measure latency; larger ones measure bandwidth.
const BANDWIDTH_SAMPLE_MIN_BYTES: usize = 1024 * 1024;
/// Weight of a new sample in the moving averages.
const EWMA_WEIGHT: f64 = 0.2;

/// What the bucket's uploads have shown about its speed.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    latency_s: f64,
    bytes_per_s: f64,
}

fn ewma(old: f64, sample: f64) -> f64 {
    old + EWMA_WEIGHT * (sample - old)
}

/// The log written since the newest snapshot, and how long a restore would take to read it.
#[derive(Debug)]
pub(crate) struct Budget {
    state: Mutex<BudgetState>,
    budget: Duration,
}

#[derive(Debug)]
struct BudgetState {
    speed: Throughput,
    /// Segments and their bytes since the newest snapshot (or since the replay start).
    segments: u64,
    bytes: u64,
    /// The newest snapshot's compressed size, or `None` before the first.
    snapshot_bytes: Option<u64>,
    snapshot_parts: u64,
    /// Recent segments: the slot holding a snapshot's LSN is looked up here.
    recent: VecDeque<Uploaded>,
    /// The LSN of the snapshot being taken: `recent` keeps every segment from the one holding it.
    taking: Option<Lsn>,
}

/// The log a new writer inherits: segments since the newest snapshot (or since the replay start
/// if there is none), and that snapshot's size in bytes and parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinceSnapshot {
    pub segments: u64,
    /// Segment sizes are not read on takeover (that would cost a GET each); this stands in.
    pub segment_bytes_guess: u64,
    pub snapshot: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Uploaded {
    slot: Slot,
    lsn_last: Lsn,
    bytes: u64,
}

/// A restore-time estimate, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestoreEstimate {
    /// Downloading the newest snapshot (or, before the first, the image as it is now).
    pub snapshot_s: f64,
    /// Replaying the segments written since.
    pub replay_s: f64,
}

impl Budget {
    /// `fence`: the slot and LSN of this writer's fence, the log's end when it took over;
    /// `since`: what the takeover found of the log since the newest snapshot.
    pub fn new(budget: Duration, fence: (Slot, Lsn), since: SinceSnapshot) -> Self {
        Self {
            state: Mutex::new(BudgetState {
                speed: Throughput {
                    latency_s: LATENCY_GUESS.as_secs_f64(),
                    bytes_per_s: BANDWIDTH_GUESS,
                },
                segments: since.segments,
                bytes: since.segments * since.segment_bytes_guess,
                snapshot_bytes: since.snapshot.map(|(bytes, _)| bytes),
                snapshot_parts: since.snapshot.map_or(0, |(_, parts)| parts),
                recent: VecDeque::from([Uploaded {
                    slot: fence.0,
                    lsn_last: fence.1,
                    bytes: 0,
                }]),
                taking: None,
            }),
            budget,
        }
    }

    /// Feeds one successful upload's size and time into the speed estimate.
    pub fn measure(&self, bytes: usize, took: Duration) {
        let mut s = self.state.lock();
        let secs = took.as_secs_f64().max(1e-6);
        if bytes >= BANDWIDTH_SAMPLE_MIN_BYTES {
            s.speed.bytes_per_s = ewma(s.speed.bytes_per_s, bytes as f64 / secs);
        } else {
            s.speed.latency_s = ewma(s.speed.latency_s, secs);
        }
    }

    /// Records a segment uploaded at `slot` ending at `lsn_last`.
    pub fn segment_uploaded(&self, slot: Slot, lsn_last: Lsn, bytes: usize) {
        let mut s = self.state.lock();
        s.segments += 1;
        s.bytes += bytes as u64;
        s.recent.push_back(Uploaded {
            slot,
            lsn_last,
            bytes: bytes as u64,
        });
        // Keep every segment from the one holding the LSN of a snapshot being taken (or a
        // future one, which is at least the newest segment's last LSN).
        let keep_from = s.taking.unwrap_or(lsn_last);
        while s.recent.len() > 1 && s.recent.get(1).is_some_and(|r| r.lsn_last < keep_from) {
            s.recent.pop_front();
        }
    }

    /// The restore-time estimate for the log as it stands; `image_bytes` stands in for the
    /// snapshot before the first one.
    pub fn estimate(&self, image_bytes: u64) -> RestoreEstimate {
        let s = self.state.lock();
        let (snap_bytes, snap_parts) = match s.snapshot_bytes {
            Some(b) => (b, s.snapshot_parts),
            None => (
                image_bytes,
                image_bytes.div_ceil(SNAPSHOT_PART_BYTES as u64).max(1),
            ),
        };
        let transfer = |objects: f64, parallel: f64, bytes: u64| {
            (objects / parallel).ceil() * s.speed.latency_s + bytes as f64 / s.speed.bytes_per_s
        };
        RestoreEstimate {
            snapshot_s: transfer(snap_parts as f64, RESTORE_PART_DOWNLOADS, snap_bytes),
            replay_s: transfer(s.segments as f64, RESTORE_FETCH_AHEAD, s.bytes),
        }
    }

    /// Whether the log since the last snapshot is due to be folded into a new one.
    pub fn due(&self, image_bytes: u64) -> bool {
        if self.state.lock().taking.is_some() {
            return false;
        }
        let e = self.estimate(image_bytes);
        let left = (self.budget.as_secs_f64() - e.snapshot_s).max(0.0);
        e.replay_s > 0.0 && e.replay_s >= left.max(e.snapshot_s)
    }

    /// Starts a snapshot: takes the read snapshot under the lock, so no upload can trim the
    /// segment holding its LSN meanwhile. `None` if one is being taken already.
    fn begin(&self, read: impl FnOnce() -> ReadTxn) -> Option<ReadTxn> {
        let mut s = self.state.lock();
        if s.taking.is_some() {
            return None;
        }
        let txn = read();
        s.taking = Some(txn.lsn());
        Some(txn)
    }

    /// The slot of the segment holding `lsn` (which must be durable by now).
    fn slot_of(&self, lsn: Lsn) -> Option<Slot> {
        let s = self.state.lock();
        s.recent.iter().find(|r| r.lsn_last >= lsn).map(|r| r.slot)
    }

    /// Ends the snapshot being taken. Once published, the log to replay is what was shipped
    /// after its LSN (segments uploaded while the parts were).
    fn end(&self, published: Option<(&SnapshotRef, u64)>) {
        let mut s = self.state.lock();
        s.taking = None;
        if let Some((snap, bytes)) = published {
            let after = s.recent.iter().filter(|r| r.lsn_last.get() > snap.lsn);
            let (segments, segment_bytes) = after.fold((0, 0), |(n, b), r| (n + 1, b + r.bytes));
            s.segments = segments;
            s.bytes = segment_bytes;
            s.snapshot_bytes = Some(bytes);
            s.snapshot_parts = snap.parts.len() as u64;
        }
        while s.recent.len() > 1 {
            s.recent.pop_front();
        }
    }
}

/// Takes a snapshot of `ship`'s database as it is now, uploads it and publishes it.
pub(crate) async fn take(ship: &Arc<ShipLoop>) -> Result<Option<SnapshotRef>> {
    let Some(read) = ship.budget.begin(|| ship.db.begin_read()) else {
        return Ok(None);
    };
    let lsn = read.lsn();
    if lsn == Lsn::ZERO || ship.newest_snapshot_lsn() >= lsn {
        ship.budget.end(None);
        return Ok(None);
    }
    let result = upload_and_publish(ship, Arc::new(read)).await;
    match &result {
        Ok((snap, bytes)) => {
            ship.budget.end(Some((snap, *bytes)));
            ship.set_newest_snapshot(Lsn::new(snap.lsn));
        }
        Err(_) => ship.budget.end(None),
    }
    result.map(|(snap, _)| Some(snap))
}

async fn upload_and_publish(
    ship: &Arc<ShipLoop>,
    read: Arc<ReadTxn>,
) -> Result<(SnapshotRef, u64)> {
    let started = Instant::now();
    let lsn = read.lsn();
    let page_count = read.page_count();
    let nonce: [u8; 16] = rand::random();
    let dir = keys::snapshot_dir(lsn, &nonce);
    let pages_per_part = (SNAPSHOT_PART_BYTES / ship.page_size as usize).max(1) as u32;
    let part_count = page_count.div_ceil(pages_per_part);
    tracing::info!(
        lsn = lsn.get(),
        pages = page_count,
        parts = part_count,
        dir,
        "taking a snapshot"
    );
    ship.metrics.snapshot_started(u64::from(part_count));
    let parts: Vec<PartRef> = futures::stream::iter(0..part_count)
        .map(|part| {
            let read = read.clone();
            let dir = dir.clone();
            async move {
                let first = part * pages_per_part;
                let count = pages_per_part.min(page_count - first);
                let (bytes, part_ref) = encode_part(
                    read,
                    ship.db_id,
                    ship.page_size,
                    &dir,
                    part,
                    PageNo::new(first),
                    count,
                )
                .await?;
                let began = Instant::now();
                let size = bytes.len();
                ship.log
                    .bucket()
                    .put(&part_ref.key, bytes)
                    .await
                    .map_err(|e| Error::Bucket(format!("uploading {}: {e}", part_ref.key)))?;
                ship.budget.measure(size, began.elapsed());
                ship.metrics.snapshot_part_uploaded();
                Ok::<_, Error>(part_ref)
            }
        })
        .buffered(PARALLEL_PART_UPLOADS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let bytes: u64 = parts.iter().map(|p| p.bytes).sum();
    // The snapshot may only name a durable LSN: wait for its segment.
    ship.wait_durable(lsn).await?;
    let slot = ship.budget.slot_of(lsn).ok_or_else(|| {
        Error::Invalid(format!(
            "lsn {} is durable but its segment is not among the recent uploads",
            lsn.get()
        ))
    })?;
    let snap = SnapshotRef {
        lsn: lsn.get(),
        slot: slot.get(),
        checksum: checksum_hex(read.checksum()),
        time_ms: read.commit_time_ms(),
        page_count,
        dir,
        parts,
    };
    drop(read);
    let epoch = ship.epoch;
    let published = manifest::update(&ship.log, ship.now_ms(), |m| {
        if m.epoch() != epoch {
            return Err(Error::Fenced {
                ours: epoch,
                detail: format!(
                    "the manifest names epoch {:?}; the snapshot is not published",
                    m.epoch()
                ),
            });
        }
        m.snapshots.push(snap.clone());
        Ok(())
    })
    .await?;
    ship.note_manifest(published.manifest.manifest_id());
    ship.metrics.record_snapshot(bytes);
    tracing::info!(
        lsn = snap.lsn,
        slot = snap.slot,
        parts = snap.parts.len(),
        bytes,
        took_ms = started.elapsed().as_millis() as u64,
        manifest = published.manifest.id,
        "published a snapshot"
    );
    Ok((snap, bytes))
}

/// Reads and compresses one part off the async runtime.
async fn encode_part(
    read: Arc<ReadTxn>,
    db_id: [u8; 16],
    page_size: u32,
    dir: &str,
    part: u32,
    first: PageNo,
    count: u32,
) -> Result<(Bytes, PartRef)> {
    let key = keys::snapshot_part(dir, part);
    let lsn = read.lsn();
    tokio::task::spawn_blocking(move || {
        let mut pages = Vec::with_capacity(count as usize * page_size as usize);
        for i in 0..count {
            let image = read.page_image(PageNo::new(first.get() + i))?;
            pages.extend_from_slice(&image);
        }
        let encoded = SnapshotPart {
            page_size,
            db_id,
            lsn,
            part,
            first_page: first,
            pages,
        }
        .encode()
        .map_err(|e| Error::Corrupt(format!("encoding {key}: {e}")))?;
        let (bytes, hash) = encoded;
        let part_ref = PartRef {
            key,
            bytes: bytes.len() as u64,
            sha256: hash.to_hex(),
            first_page: first.get(),
            page_count: count,
        };
        Ok((Bytes::from(bytes), part_ref))
    })
    .await
    .map_err(|e| Error::Closed(format!("snapshot task failed: {e}")))?
}

//! Reading one database's log from its bucket: manifests, the segment frontier, and segments
//! whose every link is verified ([`ChainCursor`]).
//!
//! Invariants checked here (DESIGN.md §5): slots are dense; each segment's `prev_hash` is its
//! predecessor's hash; epochs never decrease along slots and the first segment of a new epoch is
//! a fence; LSNs continue without gaps and each commit's `checksum_before` is the previous
//! `checksum_after`. A missing slot followed by an existing one is a gap: corruption.

use std::future::Future;

use hadal_format::manifest::Manifest;
use hadal_format::segment::{Segment, SegmentHeader, SegmentKind};
use hadal_format::{Epoch, Lsn, ManifestId, ObjectHash, Slot, StateChecksum, keys};
use hadal_transports::DynBucket;

use crate::error::{Error, Result};

/// Segments up to this size are decoded on the task that fetched them; larger ones on the
/// blocking pool (a 64 KiB segment hashes and decompresses in well under a millisecond, less
/// than a hop to another thread is worth).
pub const DECODE_INLINE_BYTES_MAX: usize = 64 * 1024;

/// A manifest with the hash of its object.
#[derive(Debug, Clone)]
pub struct ManifestAt {
    pub manifest: Manifest,
    pub hash: ObjectHash,
}

/// A verified segment with its hash and its size in the bucket.
#[derive(Debug, Clone)]
pub struct SegmentAt {
    pub segment: Segment,
    pub hash: ObjectHash,
    pub bytes: usize,
}

/// One database's objects in one bucket (the bucket is already scoped to the database prefix).
#[derive(Debug, Clone)]
pub struct BucketLog {
    bucket: DynBucket,
}

/// Returns the first missing index above `known` (an index known to exist, or 0), given that
/// existence is monotone: every index from the first existing one up to the answer exists.
/// One probe when `known + 1` is missing; else exponential steps, then binary search.
pub async fn first_missing<F, Fut>(known: u64, exists: F) -> Result<u64>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut lo = known;
    let mut step = 1u64;
    let mut hi = loop {
        let probe = lo.saturating_add(step);
        if !exists(probe).await? {
            break probe;
        }
        lo = probe;
        step = step.saturating_mul(2);
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exists(mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

impl BucketLog {
    pub fn new(bucket: DynBucket) -> Self {
        Self { bucket }
    }

    pub fn bucket(&self) -> &DynBucket {
        &self.bucket
    }

    /// Reads and verifies manifest `id`.
    pub async fn manifest(&self, id: ManifestId) -> Result<Option<ManifestAt>> {
        let key = keys::manifest(id);
        let Some(object) = self.bucket.get(&key).await? else {
            return Ok(None);
        };
        let (manifest, hash) =
            Manifest::decode(&object.bytes).map_err(|e| Error::format(&key, e))?;
        if manifest.id != id.get() {
            return Err(Error::corrupt(
                &key,
                format!("it says it is manifest {}", manifest.id),
            ));
        }
        Ok(Some(ManifestAt { manifest, hash }))
    }

    /// The newest manifest, or `None` if the bucket holds no database. `hint` is a manifest id
    /// known to exist (from an earlier read); without one, the newest manifest in the first page
    /// of one listing is the starting point (cold start only).
    ///
    /// The common case costs one round trip after the start: the starting manifest and its
    /// predecessor are read while the id after it is probed; only when that id exists (the
    /// listing or the hint was stale) does the probe go on and the newest one get read.
    pub async fn latest_manifest(&self, hint: Option<ManifestId>) -> Result<Option<ManifestAt>> {
        let start = match hint {
            Some(id) if self.bucket.head(&keys::manifest(id)).await?.is_some() => id.get(),
            _ => match self.newest_listed_manifest_id().await? {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        let bucket = &self.bucket;
        let exists = |id: u64| async move {
            Ok::<_, Error>(
                bucket
                    .head(&keys::manifest(ManifestId::new(id)))
                    .await?
                    .is_some(),
            )
        };
        let (next_exists, guessed) = futures::join!(
            exists(start.saturating_add(1)),
            self.manifest_and_predecessor(ManifestId::new(start))
        );
        let (latest, at, prev) = if next_exists? {
            let latest = ManifestId::new(first_missing(start + 1, exists).await? - 1);
            let (at, prev) = self.manifest_and_predecessor(latest).await;
            (latest, at?, prev)
        } else {
            let (at, prev) = guessed;
            (ManifestId::new(start), at?, prev)
        };
        let at = at.ok_or_else(|| {
            Error::corrupt(keys::manifest(latest), "listed or probed, then missing")
        })?;
        if let (Some(prev_hex), Some(prev)) = (&at.manifest.prev_hash, prev)
            && let Some(prev) = prev?
            && prev.hash.to_hex() != *prev_hex
        {
            return Err(Error::corrupt(
                keys::manifest(latest),
                "its prev_hash does not match its predecessor",
            ));
        }
        Ok(Some(at))
    }

    /// Reads manifest `id` and its predecessor together (the predecessor is read to check the
    /// `prev_hash` link; its result matters only when `id` names one).
    async fn manifest_and_predecessor(
        &self,
        id: ManifestId,
    ) -> (
        Result<Option<ManifestAt>>,
        Option<Result<Option<ManifestAt>>>,
    ) {
        let prev = async {
            match id.prev() {
                Some(prev) => Some(self.manifest(prev).await),
                None => None,
            }
        };
        futures::join!(self.manifest(id), prev)
    }

    /// The newest manifest id in the first page of a listing (ids are dense, so every id from
    /// the first listed one up to it exists); reading further pages would cost more round trips
    /// than the probe that follows.
    async fn newest_listed_manifest_id(&self) -> Result<Option<u64>> {
        use futures::StreamExt;
        let listing = self
            .bucket
            .list(keys::MANIFEST_PREFIX, None)
            .take(hadal_transports::LIST_PAGE_KEYS);
        futures::pin_mut!(listing);
        let mut newest = None;
        while let Some(info) = listing.next().await {
            let info = info?;
            let id = keys::parse_manifest(&info.key).map_err(|e| Error::format(&info.key, e))?;
            newest = newest.max(Some(id.get()));
        }
        Ok(newest)
    }

    /// Reads and fully verifies the segment at `slot` (its hash and its own consistency).
    pub async fn segment(&self, slot: Slot) -> Result<Option<SegmentAt>> {
        let key = keys::segment(slot);
        let Some(object) = self.bucket.get(&key).await? else {
            return Ok(None);
        };
        let (segment, hash) = if object.bytes.len() <= DECODE_INLINE_BYTES_MAX {
            Segment::decode(&object.bytes)
        } else {
            // Hashing and decompressing a large segment takes milliseconds: keep it off the
            // async worker, so segments fetched ahead decode in parallel with each other and
            // with the one being applied.
            let bytes = object.bytes.clone();
            tokio::task::spawn_blocking(move || Segment::decode(&bytes))
                .await
                .map_err(|e| Error::Invalid(format!("decoding {key}: {e}")))?
        }
        .map_err(|e| Error::format(&key, e))?;
        if segment.header.slot != slot {
            return Err(Error::corrupt(
                &key,
                format!("it says it is slot {:?}", segment.header.slot),
            ));
        }
        Ok(Some(SegmentAt {
            segment,
            hash,
            bytes: object.bytes.len(),
        }))
    }

    /// Reads the header of the segment at `slot` (the whole object is still hash-checked).
    pub async fn segment_header(&self, slot: Slot) -> Result<Option<(SegmentHeader, ObjectHash)>> {
        let key = keys::segment(slot);
        let Some(object) = self.bucket.get(&key).await? else {
            return Ok(None);
        };
        let (header, hash) =
            SegmentHeader::decode(&object.bytes).map_err(|e| Error::format(&key, e))?;
        if header.slot != slot {
            return Err(Error::corrupt(
                &key,
                format!("it says it is slot {:?}", header.slot),
            ));
        }
        Ok(Some((header, hash)))
    }

    pub async fn segment_exists(&self, slot: Slot) -> Result<bool> {
        Ok(self.bucket.head(&keys::segment(slot)).await?.is_some())
    }

    /// The first empty slot: `known` is a slot known to exist (or zero).
    pub async fn frontier(&self, known: Slot) -> Result<Slot> {
        let bucket = &self.bucket;
        let missing = first_missing(known.get(), |s| async move {
            Ok(bucket.head(&keys::segment(Slot::new(s))).await?.is_some())
        })
        .await?;
        Ok(Slot::new(missing))
    }

    /// Called when `slot` is missing while reading forward: the end of the log, unless a later
    /// slot exists, which would be a gap (F7: a restore must never silently stop short).
    ///
    /// A live writer may create `slot` and the next one between our miss and this check; it
    /// creates them strictly in order, so if the next slot exists, `slot` is asked again and only
    /// a second miss is a gap.
    pub async fn check_end(&self, slot: Slot) -> Result<()> {
        if self.segment_exists(slot.next()).await? && !self.segment_exists(slot).await? {
            return Err(Error::corrupt(
                keys::segment(slot),
                format!(
                    "missing, but slot {:?} exists: the log has a gap",
                    slot.next()
                ),
            ));
        }
        Ok(())
    }
}

/// The verified position after a segment: what the next one must continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainCursor {
    pub db_id: [u8; 16],
    /// The slot the next segment must have.
    pub slot: Slot,
    pub prev_hash: ObjectHash,
    pub epoch: Epoch,
    pub lsn: Lsn,
    pub checksum: StateChecksum,
}

impl ChainCursor {
    /// A cursor before slot 1 of an empty log.
    pub fn genesis(db_id: [u8; 16]) -> Self {
        Self {
            db_id,
            slot: Slot::new(1),
            prev_hash: ObjectHash::ZERO,
            epoch: Epoch::ZERO,
            lsn: Lsn::ZERO,
            checksum: StateChecksum::EMPTY,
        }
    }

    /// A cursor that starts at the segment in `slot`, which holds `lsn` (a snapshot's), whose
    /// state checksum is `checksum`. The link into that segment is taken on trust; everything
    /// from it on is verified.
    pub fn within(db_id: [u8; 16], slot: Slot, lsn: Lsn, checksum: StateChecksum) -> Self {
        Self {
            db_id,
            slot,
            prev_hash: ObjectHash::ZERO,
            epoch: Epoch::ZERO,
            lsn,
            checksum,
        }
    }

    /// Verifies that `header` (hashing to `hash`) continues the chain, and advances past it.
    /// The commits inside it at or below the cursor's LSN (when starting within a segment) are
    /// the caller's to skip.
    pub fn advance(&mut self, header: &SegmentHeader, hash: ObjectHash) -> Result<()> {
        let key = keys::segment(header.slot);
        let fail = |detail: String| Err(Error::corrupt(&key, detail));
        if header.slot != self.slot {
            return fail(format!(
                "slot {:?} where {:?} was expected",
                header.slot, self.slot
            ));
        }
        if header.db_id != self.db_id {
            return fail("it belongs to another database".into());
        }
        let starting_within = self.prev_hash == ObjectHash::ZERO && self.slot.get() > 1;
        if !starting_within && header.prev_hash != self.prev_hash {
            return fail("its prev_hash does not match the previous slot's object".into());
        }
        if header.epoch < self.epoch {
            return fail(format!(
                "epoch {:?} after epoch {:?}",
                header.epoch, self.epoch
            ));
        }
        if !starting_within && header.epoch > self.epoch && header.kind != SegmentKind::Fence {
            return fail(format!("epoch {:?} begins without a fence", header.epoch));
        }
        match header.kind {
            SegmentKind::Fence => {
                if !starting_within
                    && (header.lsn_last != self.lsn || header.checksum_last != self.checksum)
                {
                    return fail(format!(
                        "fence at lsn {:?} but the log is at {:?}",
                        header.lsn_last, self.lsn
                    ));
                }
            }
            SegmentKind::Commits => {
                let continues = if starting_within {
                    header.lsn_first <= self.lsn.next() && self.lsn <= header.lsn_last
                } else {
                    header.lsn_first == self.lsn.next()
                        && header
                            .commits
                            .first()
                            .is_some_and(|c| c.checksum_before == self.checksum)
                };
                if !continues {
                    return fail(format!(
                        "lsn {:?}..={:?} does not continue lsn {:?}",
                        header.lsn_first, header.lsn_last, self.lsn
                    ));
                }
            }
        }
        if starting_within && header.kind == SegmentKind::Commits {
            // The snapshot's checksum must be the state after its own commit.
            let at = header
                .commits
                .iter()
                .find(|c| c.lsn == self.lsn)
                .map(|c| c.checksum_after);
            if at.is_some_and(|c| c != self.checksum) {
                return fail("the snapshot's checksum differs from the log's at its lsn".into());
            }
        }
        self.slot = header.slot.next();
        self.prev_hash = hash;
        self.epoch = header.epoch;
        self.lsn = header.lsn_last;
        self.checksum = header.checksum_last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_written_after_the_miss_is_not_a_gap() {
        // Proves the end-of-log check tolerates a live writer: after a miss at slot 1, slots 1
        // and 2 appearing together is the log growing (found by a replica on Azurite), while
        // slot 2 without slot 1 is a gap.
        use hadal_transports::Bucket;
        let memory = std::sync::Arc::new(hadal_transports::MemoryBucket::new());
        let log = BucketLog::new(memory.clone());
        memory
            .put(
                &keys::segment(Slot::new(2)),
                bytes::Bytes::from_static(b"x"),
            )
            .await
            .expect("put");
        let err = log.check_end(Slot::new(1)).await.expect_err("a gap");
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
        memory
            .put(
                &keys::segment(Slot::new(1)),
                bytes::Bytes::from_static(b"x"),
            )
            .await
            .expect("put");
        log.check_end(Slot::new(1)).await.expect("the log grew");
    }

    #[tokio::test]
    async fn first_missing_finds_the_frontier_with_few_probes() {
        // Proves the probe returns the first missing index for every frontier and known start.
        for frontier in 1..300u64 {
            for known in [0, frontier.saturating_sub(1), frontier / 2] {
                let probes = std::sync::atomic::AtomicU64::new(0);
                let got = first_missing(known, |i| {
                    probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move { Ok(i < frontier) }
                })
                .await
                .expect("probe");
                assert_eq!(got, frontier);
                if known + 1 == frontier {
                    assert_eq!(
                        probes.into_inner(),
                        1,
                        "cached slot + GET next is one request"
                    );
                }
            }
        }
    }
}

//! The segment codec: one object of the bucket's commit log (DESIGN.md §3).
//!
//! ```text
//! 0    8  magic "HADALSEG"
//! 8    4  format version
//! 12   1  kind: 1 commits, 2 fence
//! 13   3  zero
//! 16  16  database id
//! 32   8  writer epoch
//! 40   8  slot
//! 48  16  writer nonce (fresh per upload attempt: resolves ambiguous PUTs)
//! 64   8  first LSN
//! 72   8  last LSN            (a fence carries no commits: first = last + 1)
//! 80  32  SHA-256 of the previous slot's object (zero for slot 1)
//! 112  4  page size
//! 116  4  commit count n
//! 120  8  uncompressed body bytes
//! 128  8  state checksum at the last LSN
//! 136  8  zero
//! 144 40n commit table: lsn(8) time_ms(8) page_count(4) frame_count(4)
//!         checksum_before(8) checksum_after(8)
//! …       body: one zstd frame of, per commit in order, per page in page order:
//!         page number (4) ‖ page image (page size)
//! end-32  SHA-256 of every byte before it: the segment's hash
//! ```
//!
//! Decoding verifies the hash first, so any flipped byte is reported before a field is trusted;
//! then every structural claim (LSN ranges, checksum continuity, sizes, page order) is checked.

use crate::hash::{HASH_TRAILER_BYTES, ObjectHash, verify_hashed_object};
use crate::limits::{SEGMENT_BODY_BYTES_MAX, SEGMENT_COMMITS_MAX, page_size_is_valid};
use crate::{Epoch, FormatError, Lsn, PageNo, Slot, StateChecksum, read_u32, read_u64};

pub const SEGMENT_MAGIC: &[u8; 8] = b"HADALSEG";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
const FIXED_BYTES: usize = 144;
const COMMIT_ENTRY_BYTES: usize = 40;
const HASH_BYTES: usize = HASH_TRAILER_BYTES;
/// zstd level for page frames: fast, and page images compress well at any level.
const ZSTD_LEVEL: i32 = 3;

/// What a segment carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    Commits = 1,
    /// Header only: written by a new writer at the frontier slot to end the previous epoch.
    Fence = 2,
}

/// One commit inside a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCommit {
    pub lsn: Lsn,
    pub time_ms: u64,
    pub page_count: u32,
    pub checksum_before: StateChecksum,
    pub checksum_after: StateChecksum,
    /// Sorted by page number; each a sealed page image of `page_size` bytes.
    pub pages: Vec<(PageNo, Vec<u8>)>,
}

/// Everything in a segment but its page images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub kind: SegmentKind,
    pub db_id: [u8; 16],
    pub epoch: Epoch,
    pub slot: Slot,
    pub writer_nonce: [u8; 16],
    pub lsn_first: Lsn,
    pub lsn_last: Lsn,
    pub prev_hash: ObjectHash,
    pub page_size: u32,
    /// State checksum at `lsn_last` (for a fence: of the image the fence closes).
    pub checksum_last: StateChecksum,
    /// Per commit: (lsn, time_ms, page_count, frame_count, checksum_before, checksum_after).
    pub commits: Vec<CommitSummary>,
}

/// A commit's entry in the commit table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitSummary {
    pub lsn: Lsn,
    pub time_ms: u64,
    pub page_count: u32,
    pub frame_count: u32,
    pub checksum_before: StateChecksum,
    pub checksum_after: StateChecksum,
}

/// A decoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub header: SegmentHeader,
    pub commits: Vec<SegmentCommit>,
}

fn invalid(field: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::InvalidField {
        field,
        detail: detail.into(),
    }
}

impl Segment {
    /// A segment of `commits` (non-empty, consecutive).
    #[allow(clippy::too_many_arguments)]
    pub fn commits(
        db_id: [u8; 16],
        epoch: Epoch,
        slot: Slot,
        writer_nonce: [u8; 16],
        prev_hash: ObjectHash,
        page_size: u32,
        commits: Vec<SegmentCommit>,
    ) -> Result<Self, FormatError> {
        let (Some(first), Some(last)) = (commits.first(), commits.last()) else {
            return Err(invalid(
                "commits",
                "a commits segment needs at least one commit",
            ));
        };
        let header = SegmentHeader {
            kind: SegmentKind::Commits,
            db_id,
            epoch,
            slot,
            writer_nonce,
            lsn_first: first.lsn,
            lsn_last: last.lsn,
            prev_hash,
            page_size,
            checksum_last: last.checksum_after,
            commits: commits
                .iter()
                .map(|c| CommitSummary {
                    lsn: c.lsn,
                    time_ms: c.time_ms,
                    page_count: c.page_count,
                    frame_count: c.pages.len() as u32,
                    checksum_before: c.checksum_before,
                    checksum_after: c.checksum_after,
                })
                .collect(),
        };
        let segment = Self { header, commits };
        segment.header.validate()?;
        Ok(segment)
    }

    /// A header-only fence closing the log at `lsn_last` (whose state checksum is `checksum`).
    #[allow(clippy::too_many_arguments)]
    pub fn fence(
        db_id: [u8; 16],
        epoch: Epoch,
        slot: Slot,
        writer_nonce: [u8; 16],
        prev_hash: ObjectHash,
        page_size: u32,
        lsn_last: Lsn,
        checksum: StateChecksum,
    ) -> Self {
        Self {
            header: SegmentHeader {
                kind: SegmentKind::Fence,
                db_id,
                epoch,
                slot,
                writer_nonce,
                lsn_first: lsn_last.next(),
                lsn_last,
                prev_hash,
                page_size,
                checksum_last: checksum,
                commits: Vec::new(),
            },
            commits: Vec::new(),
        }
    }

    /// Encodes the segment; returns the bytes and their hash (also the trailer).
    pub fn encode(&self) -> Result<(Vec<u8>, ObjectHash), FormatError> {
        let h = &self.header;
        let page_size = h.page_size as usize;
        let mut body = Vec::with_capacity(
            self.commits
                .iter()
                .map(|c| c.pages.len() * (4 + page_size))
                .sum(),
        );
        for c in &self.commits {
            for (page_no, image) in &c.pages {
                if image.len() != page_size {
                    return Err(invalid(
                        "page",
                        format!("page {page_no} has {} bytes, not {page_size}", image.len()),
                    ));
                }
                body.extend_from_slice(&page_no.get().to_le_bytes());
                body.extend_from_slice(image);
            }
        }
        if body.len() > SEGMENT_BODY_BYTES_MAX {
            return Err(invalid(
                "body",
                format!("{} bytes exceed the segment limit", body.len()),
            ));
        }
        let compressed = zstd::bulk::compress(&body, ZSTD_LEVEL)
            .map_err(|e| invalid("body", format!("zstd compression failed: {e}")))?;
        let mut out = Vec::with_capacity(
            FIXED_BYTES + h.commits.len() * COMMIT_ENTRY_BYTES + compressed.len() + HASH_BYTES,
        );
        out.extend_from_slice(SEGMENT_MAGIC);
        out.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        out.push(h.kind as u8);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&h.db_id);
        out.extend_from_slice(&h.epoch.get().to_le_bytes());
        out.extend_from_slice(&h.slot.get().to_le_bytes());
        out.extend_from_slice(&h.writer_nonce);
        out.extend_from_slice(&h.lsn_first.get().to_le_bytes());
        out.extend_from_slice(&h.lsn_last.get().to_le_bytes());
        out.extend_from_slice(&h.prev_hash.0);
        out.extend_from_slice(&h.page_size.to_le_bytes());
        out.extend_from_slice(&(h.commits.len() as u32).to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&h.checksum_last.get().to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        for c in &h.commits {
            out.extend_from_slice(&c.lsn.get().to_le_bytes());
            out.extend_from_slice(&c.time_ms.to_le_bytes());
            out.extend_from_slice(&c.page_count.to_le_bytes());
            out.extend_from_slice(&c.frame_count.to_le_bytes());
            out.extend_from_slice(&c.checksum_before.get().to_le_bytes());
            out.extend_from_slice(&c.checksum_after.get().to_le_bytes());
        }
        out.extend_from_slice(&compressed);
        let hash = ObjectHash::of(&out);
        out.extend_from_slice(&hash.0);
        Ok((out, hash))
    }

    /// Decodes and verifies a whole segment; returns it and its hash.
    pub fn decode(bytes: &[u8]) -> Result<(Self, ObjectHash), FormatError> {
        let (header, hash, body_at, body_raw) = decode_header_at(bytes)?;
        let compressed = &bytes[body_at..bytes.len() - HASH_BYTES];
        let body = zstd::bulk::decompress(compressed, body_raw)
            .map_err(|e| invalid("body", format!("zstd: {e}")))?;
        let page_size = header.page_size as usize;
        let frame_bytes = 4 + page_size;
        let frames: usize = header.commits.iter().map(|c| c.frame_count as usize).sum();
        if body.len() != body_raw || body.len() != frames * frame_bytes {
            return Err(invalid(
                "body",
                format!(
                    "{} bytes where {} frames need {}",
                    body.len(),
                    frames,
                    frames * frame_bytes
                ),
            ));
        }
        let mut frames_iter = body.chunks_exact(frame_bytes);
        let mut commits = Vec::with_capacity(header.commits.len());
        for c in &header.commits {
            let mut pages = Vec::with_capacity(c.frame_count as usize);
            for _ in 0..c.frame_count {
                let frame = frames_iter
                    .next()
                    .ok_or_else(|| invalid("body", "fewer frames than the commit table says"))?;
                let page_no = PageNo::new(read_u32(frame, 0)?);
                if page_no.get() >= c.page_count
                    || pages
                        .last()
                        .is_some_and(|(p, _): &(PageNo, Vec<u8>)| *p >= page_no)
                {
                    return Err(invalid(
                        "page",
                        format!(
                            "page {page_no} of lsn {:?} is out of order or beyond its page count",
                            c.lsn
                        ),
                    ));
                }
                pages.push((page_no, frame[4..].to_vec()));
            }
            commits.push(SegmentCommit {
                lsn: c.lsn,
                time_ms: c.time_ms,
                page_count: c.page_count,
                checksum_before: c.checksum_before,
                checksum_after: c.checksum_after,
                pages,
            });
        }
        Ok((Self { header, commits }, hash))
    }
}

impl SegmentHeader {
    /// Decodes and verifies the header and hash without decompressing the page images.
    pub fn decode(bytes: &[u8]) -> Result<(Self, ObjectHash), FormatError> {
        decode_header_at(bytes).map(|(h, hash, _, _)| (h, hash))
    }

    /// Checks the internal consistency of a header (LSN ranges, checksum continuity).
    pub fn validate(&self) -> Result<(), FormatError> {
        if !page_size_is_valid(self.page_size) {
            return Err(FormatError::InvalidPageSize(self.page_size));
        }
        if self.slot == Slot::ZERO {
            return Err(invalid("slot", "slots start at 1"));
        }
        match self.kind {
            SegmentKind::Fence => {
                if !self.commits.is_empty() || self.lsn_first != self.lsn_last.next() {
                    return Err(invalid("fence", "a fence carries no commits"));
                }
            }
            SegmentKind::Commits => {
                let expected = self
                    .lsn_last
                    .get()
                    .checked_sub(self.lsn_first.get())
                    .map(|d| d + 1);
                if self.commits.is_empty() || expected != Some(self.commits.len() as u64) {
                    return Err(invalid(
                        "lsn range",
                        format!(
                            "{:?}..={:?} with {} commits",
                            self.lsn_first,
                            self.lsn_last,
                            self.commits.len()
                        ),
                    ));
                }
                let mut prev: Option<&CommitSummary> = None;
                for (i, c) in self.commits.iter().enumerate() {
                    if c.lsn.get() != self.lsn_first.get() + i as u64 || c.frame_count == 0 {
                        return Err(invalid(
                            "commit table",
                            format!("entry {i} has lsn {:?} and {} frames", c.lsn, c.frame_count),
                        ));
                    }
                    if prev.is_some_and(|p| {
                        p.checksum_after != c.checksum_before || p.page_count > c.page_count
                    }) {
                        return Err(invalid(
                            "commit table",
                            format!("lsn {:?} does not continue lsn {:?}", c.lsn, c.lsn.prev()),
                        ));
                    }
                    prev = Some(c);
                }
                if prev.is_some_and(|p| p.checksum_after != self.checksum_last) {
                    return Err(invalid(
                        "checksum",
                        "the last commit's checksum differs from the header's",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn decode_header_at(
    bytes: &[u8],
) -> Result<(SegmentHeader, ObjectHash, usize, usize), FormatError> {
    let hash = verify_hashed_object(
        bytes,
        FIXED_BYTES + HASH_BYTES,
        SEGMENT_MAGIC,
        "HADALSEG",
        SEGMENT_FORMAT_VERSION,
    )?;
    let content = &bytes[..bytes.len() - HASH_BYTES];
    let kind = match bytes[12] {
        1 => SegmentKind::Commits,
        2 => SegmentKind::Fence,
        other => return Err(invalid("kind", format!("unknown segment kind {other}"))),
    };
    let take16 = |at: usize| -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&bytes[at..at + 16]);
        a
    };
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&bytes[80..112]);
    let count = read_u32(bytes, 116)? as usize;
    if count > SEGMENT_COMMITS_MAX {
        return Err(invalid(
            "commit count",
            format!("{count} exceeds {SEGMENT_COMMITS_MAX}"),
        ));
    }
    let body_raw = read_u64(bytes, 120)?;
    if body_raw > SEGMENT_BODY_BYTES_MAX as u64 {
        return Err(invalid(
            "body",
            format!("{body_raw} bytes exceed the segment limit"),
        ));
    }
    let body_at = FIXED_BYTES + count * COMMIT_ENTRY_BYTES;
    if body_at > content.len() {
        return Err(FormatError::Truncated {
            needed: body_at + HASH_BYTES,
        });
    }
    let commits = (0..count)
        .map(|i| {
            let at = FIXED_BYTES + i * COMMIT_ENTRY_BYTES;
            Ok(CommitSummary {
                lsn: Lsn::new(read_u64(bytes, at)?),
                time_ms: read_u64(bytes, at + 8)?,
                page_count: read_u32(bytes, at + 16)?,
                frame_count: read_u32(bytes, at + 20)?,
                checksum_before: StateChecksum::from_raw(read_u64(bytes, at + 24)?),
                checksum_after: StateChecksum::from_raw(read_u64(bytes, at + 32)?),
            })
        })
        .collect::<Result<Vec<_>, FormatError>>()?;
    let header = SegmentHeader {
        kind,
        db_id: take16(16),
        epoch: Epoch::new(read_u64(bytes, 32)?),
        slot: Slot::new(read_u64(bytes, 40)?),
        writer_nonce: take16(48),
        lsn_first: Lsn::new(read_u64(bytes, 64)?),
        lsn_last: Lsn::new(read_u64(bytes, 72)?),
        prev_hash: ObjectHash(prev),
        page_size: read_u32(bytes, 112)?,
        checksum_last: StateChecksum::from_raw(read_u64(bytes, 128)?),
        commits,
    };
    header.validate()?;
    Ok((header, hash, body_at, body_raw as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Segment {
        let page = |fill: u8| vec![fill; 4096];
        let c1 = SegmentCommit {
            lsn: Lsn::new(5),
            time_ms: 1000,
            page_count: 3,
            checksum_before: StateChecksum::from_raw(1),
            checksum_after: StateChecksum::from_raw(2),
            pages: vec![(PageNo::new(0), page(1)), (PageNo::new(2), page(2))],
        };
        let c2 = SegmentCommit {
            lsn: Lsn::new(6),
            time_ms: 1001,
            page_count: 4,
            checksum_before: StateChecksum::from_raw(2),
            checksum_after: StateChecksum::from_raw(3),
            pages: vec![(PageNo::new(0), page(3)), (PageNo::new(3), page(4))],
        };
        Segment::commits(
            [1; 16],
            Epoch::new(2),
            Slot::new(9),
            [7; 16],
            ObjectHash([5; 32]),
            4096,
            vec![c1, c2],
        )
        .expect("valid segment")
    }

    #[test]
    fn round_trip_and_every_flip_is_caught() {
        // Proves decode(encode(s)) == s and that any single flipped byte fails the hash.
        let seg = sample();
        let (bytes, hash) = seg.encode().expect("encode");
        assert_eq!(
            Segment::decode(&bytes).expect("decode"),
            (seg.clone(), hash)
        );
        assert_eq!(SegmentHeader::decode(&bytes).expect("header").0, seg.header);
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(Segment::decode(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn fences_and_bad_commit_tables_are_checked() {
        // Proves a fence has no commits and a discontinuous checksum chain is refused.
        let fence = Segment::fence(
            [1; 16],
            Epoch::new(3),
            Slot::new(10),
            [8; 16],
            ObjectHash::ZERO,
            4096,
            Lsn::new(6),
            StateChecksum::from_raw(3),
        );
        let (bytes, _) = fence.encode().expect("encode");
        assert_eq!(Segment::decode(&bytes).expect("decode").0, fence);
        let mut seg = sample();
        seg.commits[1].checksum_before = StateChecksum::from_raw(99);
        let broken = Segment::commits(
            [1; 16],
            Epoch::new(2),
            Slot::new(9),
            [7; 16],
            ObjectHash::ZERO,
            4096,
            seg.commits,
        );
        assert!(broken.is_err());
    }
}

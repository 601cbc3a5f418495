//! The compacted-run codec: the net effect of a run of consecutive segments, for the restore
//! path (DESIGN.md §3 "Compaction for restore speed").
//!
//! A run of small segments is folded into one object holding the newest image of every page
//! the run changed (each page once), with the state before and after the run. A restore that
//! needs the whole run applies this one object instead of its segments; point-in-time restores
//! inside the run still use the original segments, which compaction never deletes.
//!
//! ```text
//! 0    8  magic "HADALCMP"
//! 8    4  format version
//! 12   4  page size
//! 16  16  database id
//! 32   8  first LSN of the run
//! 40   8  last LSN of the run
//! 48   8  first slot
//! 56   8  last slot
//! 64   8  state checksum before the first commit
//! 72   8  state checksum after the last commit
//! 80   8  commit time of the last commit (ms)
//! 88   4  page count of the image after the run
//! 92   4  number of pages carried (n)
//! 96 4·n  their page numbers, strictly increasing
//! …       one zstd frame of the n page images, in that order
//! end-32  SHA-256 of every byte before it
//! ```
//!
//! Segment-level compose (GCS `compose`) cannot build this object: pages are deduplicated and
//! the body compressed as a whole, so the compactor always reads the run and writes the result.

use crate::hash::{HASH_TRAILER_BYTES, ObjectHash, verify_hashed_object};
use crate::limits::page_size_is_valid;
use crate::{FormatError, Lsn, PageNo, Slot, StateChecksum, read_u32, read_u64};

pub const COMPACT_MAGIC: &[u8; 8] = b"HADALCMP";
pub const COMPACT_FORMAT_VERSION: u32 = 1;
/// Pages one compacted object may carry (4 GiB of 4 KiB pages).
pub const COMPACT_PAGES_MAX: u32 = 1 << 20;
const FIXED_BYTES: usize = 96;
const ZSTD_LEVEL: i32 = 3;

/// The net effect of the commits `lsn_first..=lsn_last` held by slots `slot_first..=slot_last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactedRun {
    pub page_size: u32,
    pub db_id: [u8; 16],
    pub lsn_first: Lsn,
    pub lsn_last: Lsn,
    pub slot_first: Slot,
    pub slot_last: Slot,
    pub checksum_before: StateChecksum,
    pub checksum_after: StateChecksum,
    pub time_ms: u64,
    pub page_count: u32,
    /// The newest image of every changed page, sorted by page number.
    pub pages: Vec<(PageNo, Vec<u8>)>,
}

fn invalid(field: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::InvalidField {
        field,
        detail: detail.into(),
    }
}

impl CompactedRun {
    pub fn encode(&self) -> Result<(Vec<u8>, ObjectHash), FormatError> {
        self.check()?;
        let mut body = Vec::with_capacity(self.pages.len() * self.page_size as usize);
        for (_, image) in &self.pages {
            body.extend_from_slice(image);
        }
        let compressed = zstd::bulk::compress(&body, ZSTD_LEVEL)
            .map_err(|e| invalid("pages", format!("zstd compression failed: {e}")))?;
        let mut out = Vec::with_capacity(
            FIXED_BYTES + 4 * self.pages.len() + compressed.len() + HASH_TRAILER_BYTES,
        );
        out.extend_from_slice(COMPACT_MAGIC);
        out.extend_from_slice(&COMPACT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.db_id);
        for v in [
            self.lsn_first.get(),
            self.lsn_last.get(),
            self.slot_first.get(),
            self.slot_last.get(),
            self.checksum_before.get(),
            self.checksum_after.get(),
            self.time_ms,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.page_count.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (p, _) in &self.pages {
            out.extend_from_slice(&p.get().to_le_bytes());
        }
        out.extend_from_slice(&compressed);
        let hash = ObjectHash::of(&out);
        out.extend_from_slice(&hash.0);
        Ok((out, hash))
    }

    fn check(&self) -> Result<(), FormatError> {
        if !page_size_is_valid(self.page_size) {
            return Err(FormatError::InvalidPageSize(self.page_size));
        }
        if self.lsn_first > self.lsn_last || self.lsn_first == Lsn::ZERO {
            return Err(invalid(
                "lsn",
                format!("{:?}..={:?} is not a run", self.lsn_first, self.lsn_last),
            ));
        }
        if self.slot_first > self.slot_last || self.slot_first == Slot::ZERO {
            return Err(invalid(
                "slot",
                format!("{:?}..={:?} is not a run", self.slot_first, self.slot_last),
            ));
        }
        if self.pages.is_empty() || self.pages.len() > COMPACT_PAGES_MAX as usize {
            return Err(invalid(
                "pages",
                format!("{} pages carried", self.pages.len()),
            ));
        }
        for (i, (p, image)) in self.pages.iter().enumerate() {
            if i > 0 && self.pages[i - 1].0 >= *p {
                return Err(invalid("pages", "page numbers are not strictly increasing"));
            }
            if p.get() >= self.page_count || image.len() != self.page_size as usize {
                return Err(invalid(
                    "pages",
                    format!("page {p} is out of range or the wrong size"),
                ));
            }
        }
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<(Self, ObjectHash), FormatError> {
        let hash = verify_hashed_object(
            bytes,
            FIXED_BYTES + HASH_TRAILER_BYTES,
            COMPACT_MAGIC,
            "HADALCMP",
            COMPACT_FORMAT_VERSION,
        )?;
        let content = &bytes[..bytes.len() - HASH_TRAILER_BYTES];
        let page_size = read_u32(bytes, 12)?;
        if !page_size_is_valid(page_size) {
            return Err(FormatError::InvalidPageSize(page_size));
        }
        let n = read_u32(bytes, 92)?;
        if n == 0 || n > COMPACT_PAGES_MAX {
            return Err(invalid("pages", format!("{n} pages carried")));
        }
        let numbers_end = FIXED_BYTES + 4 * n as usize;
        if content.len() < numbers_end {
            return Err(FormatError::Truncated {
                needed: numbers_end + HASH_TRAILER_BYTES,
            });
        }
        let raw = n as usize * page_size as usize;
        let body = zstd::bulk::decompress(&content[numbers_end..], raw)
            .map_err(|e| invalid("pages", format!("zstd: {e}")))?;
        if body.len() != raw {
            return Err(invalid(
                "pages",
                format!("{} bytes where {n} pages need {raw}", body.len()),
            ));
        }
        let mut pages = Vec::with_capacity(n as usize);
        for (i, image) in body.chunks_exact(page_size as usize).enumerate() {
            let p = PageNo::new(read_u32(content, FIXED_BYTES + 4 * i)?);
            pages.push((p, image.to_vec()));
        }
        let mut db_id = [0u8; 16];
        db_id.copy_from_slice(&bytes[16..32]);
        let run = Self {
            page_size,
            db_id,
            lsn_first: Lsn::new(read_u64(bytes, 32)?),
            lsn_last: Lsn::new(read_u64(bytes, 40)?),
            slot_first: Slot::new(read_u64(bytes, 48)?),
            slot_last: Slot::new(read_u64(bytes, 56)?),
            checksum_before: StateChecksum::from_raw(read_u64(bytes, 64)?),
            checksum_after: StateChecksum::from_raw(read_u64(bytes, 72)?),
            time_ms: read_u64(bytes, 80)?,
            page_count: read_u32(bytes, 88)?,
            pages,
        };
        run.check()?;
        Ok((run, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_flips_and_bad_fields_fail() {
        // Proves compacted runs decode to what was encoded, the hash covers every byte, and
        // malformed fields are refused on both sides.
        let run = CompactedRun {
            page_size: 4096,
            db_id: [5; 16],
            lsn_first: Lsn::new(10),
            lsn_last: Lsn::new(42),
            slot_first: Slot::new(7),
            slot_last: Slot::new(30),
            checksum_before: StateChecksum::from_raw(1),
            checksum_after: StateChecksum::from_raw(2),
            time_ms: 99,
            page_count: 9,
            pages: vec![
                (PageNo::new(1), vec![1u8; 4096]),
                (PageNo::new(8), vec![8u8; 4096]),
            ],
        };
        let (bytes, hash) = run.encode().expect("encode");
        assert_eq!(
            CompactedRun::decode(&bytes).expect("decode"),
            (run.clone(), hash)
        );
        for i in (0..bytes.len()).step_by(5) {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(CompactedRun::decode(&bad).is_err(), "flip at {i}");
        }
        let mut unsorted = run.clone();
        unsorted.pages.reverse();
        assert!(unsorted.encode().is_err());
        let mut outside = run.clone();
        outside.page_count = 8;
        assert!(outside.encode().is_err());
        let mut backwards = run;
        backwards.lsn_last = Lsn::new(9);
        assert!(backwards.encode().is_err());
    }
}

//! The snapshot part codec: a run of consecutive pages of the image at one LSN.
//!
//! ```text
//! 0    8  magic "HADALSNP"
//! 8    4  format version
//! 12   4  page size
//! 16  16  database id
//! 32   8  LSN of the snapshot
//! 40   4  part index
//! 44   4  first page number
//! 48   4  page count in this part
//! 52   4  zero
//! 56   …  one zstd frame of the page images, in page order
//! end-32  SHA-256 of every byte before it
//! ```

use crate::hash::{HASH_TRAILER_BYTES, ObjectHash, verify_hashed_object};
use crate::limits::{SNAPSHOT_PART_PAGES_MAX, page_size_is_valid};
use crate::{FormatError, Lsn, PageNo, read_u32, read_u64};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"HADALSNP";
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const FIXED_BYTES: usize = 56;
const HASH_BYTES: usize = HASH_TRAILER_BYTES;
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPart {
    pub page_size: u32,
    pub db_id: [u8; 16],
    pub lsn: Lsn,
    pub part: u32,
    pub first_page: PageNo,
    /// Page images of pages `first_page..first_page + pages.len()`, concatenated.
    pub pages: Vec<u8>,
}

fn invalid(field: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::InvalidField {
        field,
        detail: detail.into(),
    }
}

impl SnapshotPart {
    pub fn page_count(&self) -> u32 {
        (self.pages.len() / self.page_size as usize) as u32
    }

    pub fn encode(&self) -> Result<(Vec<u8>, ObjectHash), FormatError> {
        if !self.pages.len().is_multiple_of(self.page_size as usize) {
            return Err(invalid("pages", "not a whole number of pages"));
        }
        let compressed = zstd::bulk::compress(&self.pages, ZSTD_LEVEL)
            .map_err(|e| invalid("pages", format!("zstd compression failed: {e}")))?;
        let mut out = Vec::with_capacity(FIXED_BYTES + compressed.len() + HASH_BYTES);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.db_id);
        out.extend_from_slice(&self.lsn.get().to_le_bytes());
        out.extend_from_slice(&self.part.to_le_bytes());
        out.extend_from_slice(&self.first_page.get().to_le_bytes());
        out.extend_from_slice(&self.page_count().to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&compressed);
        let hash = ObjectHash::of(&out);
        out.extend_from_slice(&hash.0);
        Ok((out, hash))
    }

    pub fn decode(bytes: &[u8]) -> Result<(Self, ObjectHash), FormatError> {
        let hash = verify_hashed_object(
            bytes,
            FIXED_BYTES + HASH_BYTES,
            SNAPSHOT_MAGIC,
            "HADALSNP",
            SNAPSHOT_FORMAT_VERSION,
        )?;
        let content = &bytes[..bytes.len() - HASH_BYTES];
        let page_size = read_u32(bytes, 12)?;
        if !page_size_is_valid(page_size) {
            return Err(FormatError::InvalidPageSize(page_size));
        }
        let count = read_u32(bytes, 48)?;
        if count > SNAPSHOT_PART_PAGES_MAX {
            return Err(invalid(
                "page count",
                format!("{count} exceeds {SNAPSHOT_PART_PAGES_MAX}"),
            ));
        }
        let raw = count as usize * page_size as usize;
        let pages = zstd::bulk::decompress(&content[FIXED_BYTES..], raw)
            .map_err(|e| invalid("pages", format!("zstd: {e}")))?;
        if pages.len() != raw {
            return Err(invalid(
                "pages",
                format!("{} bytes where {count} pages need {raw}", pages.len()),
            ));
        }
        let mut db_id = [0u8; 16];
        db_id.copy_from_slice(&bytes[16..32]);
        let part = Self {
            page_size,
            db_id,
            lsn: Lsn::new(read_u64(bytes, 32)?),
            part: read_u32(bytes, 40)?,
            first_page: PageNo::new(read_u32(bytes, 44)?),
            pages,
        };
        Ok((part, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_round_trips_and_flips_fail() {
        // Proves snapshot parts decode to what was encoded and the hash covers every byte.
        let part = SnapshotPart {
            page_size: 4096,
            db_id: [3; 16],
            lsn: Lsn::new(77),
            part: 2,
            first_page: PageNo::new(10),
            pages: vec![9u8; 3 * 4096],
        };
        let (bytes, hash) = part.encode().expect("encode");
        assert_eq!(SnapshotPart::decode(&bytes).expect("decode"), (part, hash));
        for i in (0..bytes.len()).step_by(3) {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(SnapshotPart::decode(&bad).is_err(), "flip at {i}");
        }
    }
}

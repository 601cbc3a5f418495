//! The superblock: local state of one data folder, outside the database image.
//!
//! Two copies live at the start of the main file, each in its own 4 KiB region. A checkpoint
//! writes the copy with the older generation, so a torn superblock write leaves the other copy
//! intact; open picks the valid copy with the highest generation.
//!
//! ```text
//! 0    8  magic "HADALSB\0"
//! 8    4  format version
//! 12   4  page size
//! 16   8  generation (incremented by every superblock write)
//! 24   8  checkpoint LSN: the main file holds the image as of this LSN
//! 32   4  page count at the checkpoint LSN
//! 36   4  reserved, zero
//! 40   8  state checksum at the checkpoint LSN
//! 48   8  commit time of the checkpoint LSN, ms since the Unix epoch
//! 56  16  database id (random, fixed at creation)
//! 72  52  reserved, zero
//! 124  4  CRC32C of bytes 0..124
//! ```

use crate::limits::{SUPERBLOCK_BYTES, page_size_is_valid};
use crate::{FormatError, Lsn, StateChecksum, read_u32, read_u64};

pub const SUPERBLOCK_MAGIC: &[u8; 8] = b"HADALSB\0";
pub const SUPERBLOCK_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub page_size: u32,
    pub generation: u64,
    pub checkpoint_lsn: Lsn,
    pub page_count: u32,
    pub checksum: StateChecksum,
    pub checkpoint_time_ms: u64,
    pub db_id: [u8; 16],
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_BYTES] {
        let mut out = [0u8; SUPERBLOCK_BYTES];
        out[0..8].copy_from_slice(SUPERBLOCK_MAGIC);
        out[8..12].copy_from_slice(&SUPERBLOCK_FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.generation.to_le_bytes());
        out[24..32].copy_from_slice(&self.checkpoint_lsn.get().to_le_bytes());
        out[32..36].copy_from_slice(&self.page_count.to_le_bytes());
        out[40..48].copy_from_slice(&self.checksum.get().to_le_bytes());
        out[48..56].copy_from_slice(&self.checkpoint_time_ms.to_le_bytes());
        out[56..72].copy_from_slice(&self.db_id);
        let crc = crc32c::crc32c(&out[0..124]);
        out[124..128].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < SUPERBLOCK_BYTES {
            return Err(FormatError::Truncated {
                needed: SUPERBLOCK_BYTES,
            });
        }
        if &bytes[0..8] != SUPERBLOCK_MAGIC {
            return Err(FormatError::BadMagic {
                expected: "HADALSB",
            });
        }
        let stored = read_u32(bytes, 124)?;
        let computed = crc32c::crc32c(&bytes[0..124]);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                stored: u64::from(stored),
                computed: u64::from(computed),
            });
        }
        let version = read_u32(bytes, 8)?;
        if version != SUPERBLOCK_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: SUPERBLOCK_FORMAT_VERSION,
            });
        }
        let page_size = read_u32(bytes, 12)?;
        if !page_size_is_valid(page_size) {
            return Err(FormatError::InvalidPageSize(page_size));
        }
        let mut db_id = [0u8; 16];
        db_id.copy_from_slice(&bytes[56..72]);
        Ok(Self {
            page_size,
            generation: read_u64(bytes, 16)?,
            checkpoint_lsn: Lsn::new(read_u64(bytes, 24)?),
            page_count: read_u32(bytes, 32)?,
            checksum: StateChecksum::from_raw(read_u64(bytes, 40)?),
            checkpoint_time_ms: read_u64(bytes, 48)?,
            db_id,
        })
    }

    /// The region (0 or 1) this generation is written to.
    pub fn region(&self) -> u64 {
        self.generation % 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_detected() {
        // Proves the superblock decodes what it encodes and no byte escapes the CRC.
        let sb = Superblock {
            page_size: 8192,
            generation: 5,
            checkpoint_lsn: Lsn::new(40),
            page_count: 12,
            checksum: StateChecksum::from_raw(0xabcdef),
            checkpoint_time_ms: 1_700_000_000_000,
            db_id: [9; 16],
        };
        let raw = sb.encode();
        assert_eq!(Superblock::decode(&raw), Ok(sb));
        for i in 0..raw.len() {
            let mut bad = raw;
            bad[i] ^= 0x80;
            assert!(Superblock::decode(&bad).is_err(), "flip at {i}");
        }
    }
}

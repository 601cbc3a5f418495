//! The WAL header and frame codecs.
//!
//! ```text
//! WAL header (64 bytes, at offset 0 of the WAL file)
//! 0   8  magic "HADALWAL"
//! 8   4  format version (u32 LE)
//! 12  4  page size
//! 16  8  salt: fresh random value at every restart, so frames of an older generation never
//!        verify in a newer one
//! 24  8  restart count
//! 32  8  base LSN: every commit in this generation is > base
//! 40  8  state checksum of the image at the base LSN
//! 48 12  reserved, zero
//! 60  4  CRC32C of bytes 0..60
//!
//! Frame (48-byte header + one page image)
//! 0   4  page number
//! 4   4  page count after commit; non-zero only in a commit frame (the last of a transaction)
//! 8   8  LSN of the transaction
//! 16  8  salt (must equal the header's)
//! 24  8  commit time, ms since the Unix epoch (commit frame only, else 0)
//! 32  8  state checksum after the commit (commit frame only, else 0)
//! 40  8  chain = xxh3_64_with_seed(header[0..40] ‖ page, seed = previous frame's chain, or the
//!        header's chain seed for the first frame)
//! ```
//!
//! The chain makes recovery "the longest valid prefix that ends in a commit frame": a torn or
//! stale frame breaks the chain and everything after it is discarded.

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::limits::{WAL_FRAME_HEADER_BYTES, WAL_HEADER_BYTES, page_size_is_valid};
use crate::{FormatError, Lsn, PageNo, StateChecksum, read_u32, read_u64};

pub const WAL_MAGIC: &[u8; 8] = b"HADALWAL";
pub const WAL_FORMAT_VERSION: u32 = 1;

/// The header of one WAL generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub page_size: u32,
    pub salt: u64,
    pub restart_count: u64,
    pub base_lsn: Lsn,
    /// State checksum at `base_lsn`: the `checksum_before` of this generation's first commit.
    pub base_checksum: StateChecksum,
}

impl WalHeader {
    pub fn encode(&self) -> [u8; WAL_HEADER_BYTES] {
        let mut out = [0u8; WAL_HEADER_BYTES];
        out[0..8].copy_from_slice(WAL_MAGIC);
        out[8..12].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.salt.to_le_bytes());
        out[24..32].copy_from_slice(&self.restart_count.to_le_bytes());
        out[32..40].copy_from_slice(&self.base_lsn.get().to_le_bytes());
        out[40..48].copy_from_slice(&self.base_checksum.get().to_le_bytes());
        let crc = crc32c::crc32c(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < WAL_HEADER_BYTES {
            return Err(FormatError::Truncated {
                needed: WAL_HEADER_BYTES,
            });
        }
        if &bytes[0..8] != WAL_MAGIC {
            return Err(FormatError::BadMagic {
                expected: "HADALWAL",
            });
        }
        let stored = read_u32(bytes, 60)?;
        let computed = crc32c::crc32c(&bytes[0..60]);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                stored: u64::from(stored),
                computed: u64::from(computed),
            });
        }
        let version = read_u32(bytes, 8)?;
        if version != WAL_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: WAL_FORMAT_VERSION,
            });
        }
        let page_size = read_u32(bytes, 12)?;
        if !page_size_is_valid(page_size) {
            return Err(FormatError::InvalidPageSize(page_size));
        }
        Ok(Self {
            page_size,
            salt: read_u64(bytes, 16)?,
            restart_count: read_u64(bytes, 24)?,
            base_lsn: Lsn::new(read_u64(bytes, 32)?),
            base_checksum: StateChecksum::from_raw(read_u64(bytes, 40)?),
        })
    }

    /// The chain value the first frame of this generation is seeded with.
    pub fn chain_seed(&self) -> u64 {
        xxh3_64(&self.encode()[0..60])
    }
}

/// What a commit frame adds to an ordinary frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Pages in the image after this commit.
    pub page_count: u32,
    /// Commit time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// State checksum of the image after this commit.
    pub checksum_after: StateChecksum,
}

/// The header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub page_no: PageNo,
    pub lsn: Lsn,
    pub salt: u64,
    /// `Some` in the last frame of a transaction.
    pub commit: Option<CommitInfo>,
    pub chain: u64,
}

impl FrameHeader {
    fn encode_fields(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.page_no.get().to_le_bytes());
        let (page_count, time_ms, checksum) = match self.commit {
            Some(c) => (c.page_count, c.time_ms, c.checksum_after.get()),
            None => (0, 0, 0),
        };
        out[4..8].copy_from_slice(&page_count.to_le_bytes());
        out[8..16].copy_from_slice(&self.lsn.get().to_le_bytes());
        out[16..24].copy_from_slice(&self.salt.to_le_bytes());
        out[24..32].copy_from_slice(&time_ms.to_le_bytes());
        out[32..40].copy_from_slice(&checksum.to_le_bytes());
    }

    /// Encodes a frame header, computing its chain from `prev_chain` and the page image.
    /// Returns the header bytes; `self.chain` is ignored and the computed chain is written.
    pub fn encode(&self, prev_chain: u64, page: &[u8]) -> [u8; WAL_FRAME_HEADER_BYTES] {
        let mut out = [0u8; WAL_FRAME_HEADER_BYTES];
        self.encode_fields(&mut out);
        let chain = chain_of(prev_chain, &out[0..40], page);
        out[40..48].copy_from_slice(&chain.to_le_bytes());
        out
    }

    /// Decodes a frame header without checking the chain (see [`FrameHeader::verify_chain`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < WAL_FRAME_HEADER_BYTES {
            return Err(FormatError::Truncated {
                needed: WAL_FRAME_HEADER_BYTES,
            });
        }
        let page_count = read_u32(bytes, 4)?;
        let commit = (page_count != 0).then(|| -> Result<CommitInfo, FormatError> {
            Ok(CommitInfo {
                page_count,
                time_ms: read_u64(bytes, 24)?,
                checksum_after: StateChecksum::from_raw(read_u64(bytes, 32)?),
            })
        });
        Ok(Self {
            page_no: PageNo::new(read_u32(bytes, 0)?),
            lsn: Lsn::new(read_u64(bytes, 8)?),
            salt: read_u64(bytes, 16)?,
            commit: commit.transpose()?,
            chain: read_u64(bytes, 40)?,
        })
    }

    /// Whether this frame continues a chain ending in `prev_chain`, given its raw header bytes
    /// and page image.
    pub fn verify_chain(raw_header: &[u8], prev_chain: u64, page: &[u8]) -> bool {
        match (raw_header.get(0..40), read_u64(raw_header, 40)) {
            (Some(fields), Ok(stored)) => chain_of(prev_chain, fields, page) == stored,
            _ => false,
        }
    }
}

fn chain_of(prev_chain: u64, fields: &[u8], page: &[u8]) -> u64 {
    let mut hasher = Xxh3::with_seed(prev_chain);
    hasher.update(fields);
    hasher.update(page);
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_flips() {
        // Proves every byte of the WAL header is covered by its CRC or magic.
        let h = WalHeader {
            page_size: 4096,
            salt: 0xfeed,
            restart_count: 3,
            base_lsn: Lsn::new(7),
            base_checksum: StateChecksum::from_raw(5),
        };
        let raw = h.encode();
        assert_eq!(WalHeader::decode(&raw), Ok(h));
        for i in 0..60 {
            let mut bad = raw;
            bad[i] ^= 1;
            assert!(WalHeader::decode(&bad).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn frame_chain_binds_previous_frame_and_page() {
        // Proves the chain changes with the previous chain value and with the page bytes.
        let page = vec![5u8; 4096];
        let f = FrameHeader {
            page_no: PageNo::new(2),
            lsn: Lsn::new(9),
            salt: 11,
            commit: Some(CommitInfo {
                page_count: 3,
                time_ms: 1000,
                checksum_after: StateChecksum::from_raw(77),
            }),
            chain: 0,
        };
        let raw = f.encode(123, &page);
        assert!(FrameHeader::verify_chain(&raw, 123, &page));
        assert!(!FrameHeader::verify_chain(&raw, 124, &page));
        let mut other = page.clone();
        other[100] ^= 1;
        assert!(!FrameHeader::verify_chain(&raw, 123, &other));
        let decoded = FrameHeader::decode(&raw).expect("valid header");
        assert_eq!(decoded.commit, f.commit);
        assert_eq!(decoded.lsn, f.lsn);
    }
}

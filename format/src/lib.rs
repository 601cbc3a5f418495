//! Hadal's formats, with no I/O: typed IDs, named limits, bucket key names, and the codecs for
//! pages, WAL frames, superblocks, segments, snapshot parts, manifests and the rolling state
//! checksum.
//!
//! Everything here is a pure function of bytes. Decoders never panic on bad input: they return
//! a [`FormatError`] that the caller wraps with the name of the object it read. Every format is
//! versioned, and `testdata/` holds golden encodings that a test decodes forever.

#![forbid(unsafe_code)]

pub mod boundary;
mod checksum;
pub mod compact;
mod error;
mod hash;
mod ids;
pub mod keys;
pub mod limits;
pub mod manifest;
pub mod page;
pub mod segment;
pub mod snapshot;
pub mod superblock;
pub mod wal;

pub use checksum::StateChecksum;
pub use error::FormatError;
pub use hash::ObjectHash;
pub use ids::{Epoch, Lsn, ManifestId, PageNo, Slot};

/// Reads a little-endian `u16` at `at`. Callers check bounds first; a short slice is a bug in the
/// caller's length check, so it is reported as an error rather than trusted.
pub fn read_u16(bytes: &[u8], at: usize) -> Result<u16, FormatError> {
    let raw = bytes
        .get(at..at + 2)
        .ok_or(FormatError::Truncated { needed: at + 2 })?;
    Ok(u16::from_le_bytes([raw[0], raw[1]]))
}

/// Reads a little-endian `u32` at `at`.
pub fn read_u32(bytes: &[u8], at: usize) -> Result<u32, FormatError> {
    let raw = bytes
        .get(at..at + 4)
        .ok_or(FormatError::Truncated { needed: at + 4 })?;
    Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

/// Reads a little-endian `u64` at `at`.
pub fn read_u64(bytes: &[u8], at: usize) -> Result<u64, FormatError> {
    let raw = bytes
        .get(at..at + 8)
        .ok_or(FormatError::Truncated { needed: at + 8 })?;
    let mut buf = [0u8; 8];
    buf.copy_from_slice(raw);
    Ok(u64::from_le_bytes(buf))
}

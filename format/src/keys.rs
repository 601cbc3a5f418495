//! Bucket key names, relative to a database's prefix (DESIGN.md §3). Numbers are 20-digit
//! zero-padded decimals so that listing order is numeric order.
//!
//! ```text
//! seg/<slot>                    commit log; create-if-absent; dense slots 1, 2, 3, …
//! manifest/<id>                 metadata log; create-if-absent; dense ids 1, 2, 3, …
//! snap/<lsn>-<nonce>/part-<n>   snapshot parts; unique names
//! gc/<name>.boundary            GC watermarks; advanced by CAS, never moved back
//! compact/<first>-<last>-<nonce> compacted runs of segments (restore speed); unique names
//! ```

use crate::{FormatError, Lsn, ManifestId, Slot};

pub const SEGMENT_PREFIX: &str = "seg/";
pub const MANIFEST_PREFIX: &str = "manifest/";
pub const SNAPSHOT_PREFIX: &str = "snap/";
pub const GC_PREFIX: &str = "gc/";
pub const COMPACT_PREFIX: &str = "compact/";

pub fn segment(slot: Slot) -> String {
    format!("{SEGMENT_PREFIX}{slot}")
}

pub fn manifest(id: ManifestId) -> String {
    format!("{MANIFEST_PREFIX}{id}")
}

/// The folder of one snapshot: unique per attempt thanks to the nonce.
pub fn snapshot_dir(lsn: Lsn, nonce: &[u8; 16]) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn}-{}", hex::encode(nonce))
}

pub fn snapshot_part(dir: &str, part: u32) -> String {
    format!("{dir}/part-{part:05}")
}

/// `compact/<lsn_first>-<lsn_last>-<nonce>`: a compacted run, named by its LSN range.
pub fn compacted(lsn_first: Lsn, lsn_last: Lsn, nonce: &[u8; 16]) -> String {
    format!(
        "{COMPACT_PREFIX}{lsn_first}-{lsn_last}-{}",
        hex::encode(nonce)
    )
}

pub fn gc_boundary(name: &str) -> String {
    format!("{GC_PREFIX}{name}.boundary")
}

fn parse_number(key: &str, prefix: &str, what: &'static str) -> Result<u64, FormatError> {
    let digits = key
        .strip_prefix(prefix)
        .ok_or_else(|| FormatError::InvalidField {
            field: what,
            detail: format!("key {key:?} does not start with {prefix:?}"),
        })?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FormatError::InvalidField {
            field: what,
            detail: format!("key {key:?} is not 20 digits"),
        });
    }
    digits.parse().map_err(|e| FormatError::InvalidField {
        field: what,
        detail: format!("{e}"),
    })
}

pub fn parse_segment(key: &str) -> Result<Slot, FormatError> {
    parse_number(key, SEGMENT_PREFIX, "segment key").map(Slot::new)
}

pub fn parse_manifest(key: &str) -> Result<ManifestId, FormatError> {
    parse_number(key, MANIFEST_PREFIX, "manifest key").map(ManifestId::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically_and_parse_back() {
        // Proves lexicographic order of keys equals numeric order and parsing inverts naming.
        assert!(segment(Slot::new(9)) < segment(Slot::new(10)));
        assert_eq!(segment(Slot::new(42)), "seg/00000000000000000042");
        assert_eq!(parse_segment(&segment(Slot::new(42))), Ok(Slot::new(42)));
        assert_eq!(
            parse_manifest(&manifest(ManifestId::new(7))),
            Ok(ManifestId::new(7))
        );
        assert!(parse_segment("seg/42").is_err());
        assert!(parse_segment("manifest/00000000000000000042").is_err());
        let dir = snapshot_dir(Lsn::new(5), &[0xab; 16]);
        assert_eq!(
            snapshot_part(&dir, 3),
            format!("snap/00000000000000000005-{}/part-00003", "ab".repeat(16))
        );
    }
}

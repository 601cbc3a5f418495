//! GC boundary objects, `gc/<name>.boundary` (DESIGN.md §3 "GC and retention"): one number per
//! kind of object, created once and then advanced only by compare-and-swap, never moved back.
//! GC advances a boundary *before* deleting anything at or below it, so a writer that created an
//! object at or below the boundary knows it recreated a deleted name (a zombie's late write) and
//! treats its create as a conflict.
//!
//! ```text
//! {"format_version":1,"name":"manifest","value":41,"updated_ms":1763900000000}
//! hadal-sha256 <hex SHA-256 of the JSON line above, including its newline>
//! ```

use serde::{Deserialize, Serialize};

use crate::FormatError;
use crate::hash::ObjectHash;

pub const BOUNDARY_FORMAT_VERSION: u32 = 1;
/// The boundary below which manifests may have been deleted.
pub const MANIFEST_BOUNDARY: &str = "manifest";
/// The boundary below which segments (other than fences) may have been deleted.
pub const SEGMENT_BOUNDARY: &str = "segment";
const TRAILER_PREFIX: &str = "hadal-sha256 ";
const BOUNDARY_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boundary {
    pub format_version: u32,
    pub name: String,
    /// Everything of this kind with an id or slot at or below this may be gone.
    pub value: u64,
    pub updated_ms: u64,
}

fn invalid(detail: impl Into<String>) -> FormatError {
    FormatError::InvalidField {
        field: "boundary",
        detail: detail.into(),
    }
}

impl Boundary {
    pub fn new(name: &str, value: u64, updated_ms: u64) -> Self {
        Self {
            format_version: BOUNDARY_FORMAT_VERSION,
            name: name.to_owned(),
            value,
            updated_ms,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = serde_json::to_vec(self).map_err(|e| invalid(format!("{e}")))?;
        out.push(b'\n');
        let hash = ObjectHash::of(&out);
        out.extend_from_slice(TRAILER_PREFIX.as_bytes());
        out.extend_from_slice(hash.to_hex().as_bytes());
        out.push(b'\n');
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > BOUNDARY_BYTES_MAX {
            return Err(invalid(format!("{} bytes is too large", bytes.len())));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        let (json, trailer) = text
            .split_once('\n')
            .ok_or_else(|| invalid("no trailer line"))?;
        let stored = trailer
            .trim_end_matches('\n')
            .strip_prefix(TRAILER_PREFIX)
            .and_then(ObjectHash::from_hex)
            .ok_or_else(|| invalid("malformed trailer line"))?;
        if ObjectHash::of(&bytes[..json.len() + 1]) != stored {
            return Err(invalid("its SHA-256 trailer does not match its JSON"));
        }
        let boundary: Boundary = serde_json::from_str(json).map_err(|e| invalid(format!("{e}")))?;
        if boundary.format_version != BOUNDARY_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: boundary.format_version,
                supported: BOUNDARY_FORMAT_VERSION,
            });
        }
        Ok(boundary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_every_flip() {
        // Proves a boundary decodes to what was encoded and any flipped bit is refused.
        let b = Boundary::new(MANIFEST_BOUNDARY, 41, 1_763_900_000_000);
        let bytes = b.encode().expect("encode");
        assert_eq!(Boundary::decode(&bytes).expect("decode"), b);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x40] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                assert!(Boundary::decode(&bad).is_err(), "flip {bit:#x} at {i}");
            }
        }
    }
}

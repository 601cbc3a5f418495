//! The manifest codec: one object of the bucket's metadata log (DESIGN.md §3).
//!
//! A manifest is pretty-printed JSON followed by one trailer line:
//!
//! ```text
//! { "format_version": 1, "db_id": "…", "id": 7, "prev_hash": "…", … }
//! hadal-sha256 <hex SHA-256 of the JSON bytes above, including their final newline>
//! ```
//!
//! The trailer makes a flipped byte anywhere detectable even in the latest manifest (which no
//! successor vouches for yet); `prev_hash` chains each manifest to the whole object of its
//! predecessor. Numbers that are 64-bit checksums travel as hex strings, since JSON readers
//! elsewhere may round large integers.

use serde::{Deserialize, Serialize};

use crate::hash::ObjectHash;
use crate::limits::MANIFEST_BYTES_MAX;
use crate::{Epoch, FormatError, Lsn, ManifestId, Slot, StateChecksum};

pub const MANIFEST_FORMAT_VERSION: u32 = 1;
const TRAILER_PREFIX: &str = "hadal-sha256 ";
/// Default retention window for point-in-time restore: 7 days.
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;

/// The metadata of one database, as of one manifest id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Hex of the 16-byte database id.
    pub db_id: String,
    pub id: u64,
    /// Hex SHA-256 of the previous manifest object; `None` for id 1.
    pub prev_hash: Option<String>,
    /// Fresh per upload attempt: tells our own object from another writer's after an
    /// ambiguous create.
    pub nonce: String,
    pub created_ms: u64,
    pub writer_epoch: u64,
    pub page_size: u32,
    /// Restore replays segments from this slot when no snapshot covers the target.
    pub replay_start_slot: u64,
    pub snapshots: Vec<SnapshotRef>,
    pub retention_ms: u64,
    pub pins: Vec<Pin>,
    pub parent: Option<Parent>,
    /// Compacted runs of segments a restore may apply instead of the segments themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compactions: Vec<CompactionRef>,
}

/// A published compacted run (`compact.rs`): the net effect of slots `slot_first..=slot_last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionRef {
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
    pub lsn_first: u64,
    pub lsn_last: u64,
    pub slot_first: u64,
    pub slot_last: u64,
    /// Hex hash of the segment at `slot_last`: the chain continues from it.
    pub last_segment_hash: String,
    /// Writer epoch of the segment at `slot_last`.
    pub epoch: u64,
    /// Hex state checksums before `lsn_first` and after `lsn_last`.
    pub checksum_before: String,
    pub checksum_after: String,
    /// Commit time of `lsn_last`.
    pub time_ms: u64,
}

/// A published snapshot: the image at `lsn`, in parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    pub lsn: u64,
    /// The slot whose segment holds `lsn`; replay continues at `slot + 1`.
    pub slot: u64,
    /// Hex of the state checksum at `lsn`.
    pub checksum: String,
    pub time_ms: u64,
    pub page_count: u32,
    /// Folder of the parts (`snap/<lsn>-<nonce>`).
    pub dir: String,
    pub parts: Vec<PartRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartRef {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    pub first_page: u32,
    pub page_count: u32,
}

/// Something that must stay restorable: a branch point or a reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub name: String,
    pub lsn: u64,
    pub created_ms: u64,
}

/// For a branch: where its history starts in its parent's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    pub url: String,
    pub lsn: u64,
    pub slot: u64,
    pub segment_hash: String,
    pub checksum: String,
}

fn invalid(field: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::InvalidField {
        field,
        detail: detail.into(),
    }
}

/// Hex form of a state checksum, as manifests carry it.
pub fn checksum_hex(c: StateChecksum) -> String {
    format!("{:016x}", c.get())
}

pub fn parse_checksum_hex(s: &str) -> Result<StateChecksum, FormatError> {
    u64::from_str_radix(s, 16)
        .map(StateChecksum::from_raw)
        .map_err(|e| invalid("checksum", format!("{s:?}: {e}")))
}

impl Manifest {
    /// Manifest 1 of a new database.
    pub fn first(db_id: [u8; 16], page_size: u32, created_ms: u64) -> Self {
        Self {
            format_version: MANIFEST_FORMAT_VERSION,
            db_id: hex::encode(db_id),
            id: 1,
            prev_hash: None,
            nonce: String::new(),
            created_ms,
            writer_epoch: 0,
            page_size,
            replay_start_slot: 1,
            snapshots: Vec::new(),
            retention_ms: RETENTION_MS_DEFAULT,
            pins: Vec::new(),
            parent: None,
            compactions: Vec::new(),
        }
    }

    /// The successor of this manifest (whose object hashed to `hash`), to be modified and
    /// created at the next id.
    pub fn successor(&self, hash: ObjectHash, created_ms: u64) -> Self {
        Self {
            id: self.id + 1,
            prev_hash: Some(hash.to_hex()),
            created_ms,
            nonce: String::new(),
            ..self.clone()
        }
    }

    pub fn manifest_id(&self) -> ManifestId {
        ManifestId::new(self.id)
    }

    pub fn epoch(&self) -> Epoch {
        Epoch::new(self.writer_epoch)
    }

    pub fn replay_start(&self) -> Slot {
        Slot::new(self.replay_start_slot)
    }

    /// The newest snapshot at or below `lsn`.
    pub fn snapshot_at_or_below(&self, lsn: Lsn) -> Option<&SnapshotRef> {
        self.snapshots
            .iter()
            .filter(|s| s.lsn <= lsn.get())
            .max_by_key(|s| s.lsn)
    }

    pub fn db_id_bytes(&self) -> Result<[u8; 16], FormatError> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(&self.db_id, &mut out)
            .map_err(|e| invalid("db_id", format!("{e}")))?;
        Ok(out)
    }

    pub fn encode(&self) -> Result<(Vec<u8>, ObjectHash), FormatError> {
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|e| invalid("manifest", format!("{e}")))?;
        json.push(b'\n');
        let body_hash = ObjectHash::of(&json);
        json.extend_from_slice(TRAILER_PREFIX.as_bytes());
        json.extend_from_slice(body_hash.to_hex().as_bytes());
        json.push(b'\n');
        let hash = ObjectHash::of(&json);
        Ok((json, hash))
    }

    /// Decodes and verifies a manifest object; returns it and the hash of the whole object.
    pub fn decode(bytes: &[u8]) -> Result<(Self, ObjectHash), FormatError> {
        if bytes.len() > MANIFEST_BYTES_MAX {
            return Err(invalid(
                "manifest",
                format!("{} bytes exceed {MANIFEST_BYTES_MAX}", bytes.len()),
            ));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| invalid("manifest", format!("not UTF-8: {e}")))?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| invalid("manifest", "no trailer line"))?;
        let (body, trailer) = text.split_at(body_end);
        let stored = trailer
            .trim_end_matches('\n')
            .strip_prefix(TRAILER_PREFIX)
            .and_then(ObjectHash::from_hex)
            .ok_or_else(|| invalid("manifest", "malformed trailer line"))?;
        if ObjectHash::of(body.as_bytes()) != stored {
            return Err(invalid(
                "hash",
                "the manifest's SHA-256 trailer does not match its JSON",
            ));
        }
        let manifest: Manifest =
            serde_json::from_str(body).map_err(|e| invalid("manifest", format!("{e}")))?;
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: manifest.format_version,
                supported: MANIFEST_FORMAT_VERSION,
            });
        }
        manifest.db_id_bytes()?;
        if manifest.id == 0 || (manifest.id == 1) != manifest.prev_hash.is_none() {
            return Err(invalid(
                "id",
                format!("manifest {} has an inconsistent predecessor", manifest.id),
            ));
        }
        Ok((manifest, ObjectHash::of(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_chain_and_flips() {
        // Proves manifests round-trip, chain to their predecessor, and any flip is refused.
        let mut m1 = Manifest::first([4; 16], 4096, 10);
        m1.nonce = "aa".into();
        let (b1, h1) = m1.encode().expect("encode");
        assert_eq!(Manifest::decode(&b1).expect("decode"), (m1.clone(), h1));
        let mut m2 = m1.successor(h1, 20);
        m2.writer_epoch = 1;
        m2.pins.push(Pin {
            name: "branch-a".into(),
            lsn: 5,
            created_ms: 20,
        });
        let (b2, _) = m2.encode().expect("encode");
        let (d2, _) = Manifest::decode(&b2).expect("decode");
        assert_eq!(d2.prev_hash.as_deref(), Some(h1.to_hex().as_str()));
        for i in 0..b2.len() {
            let mut bad = b2.clone();
            bad[i] ^= 0x01;
            assert!(
                Manifest::decode(&bad).is_err(),
                "flip at {i}: {:?}",
                String::from_utf8_lossy(&bad[i.saturating_sub(10)..(i + 10).min(bad.len())])
            );
        }
    }
}

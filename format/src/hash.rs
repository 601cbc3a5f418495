//! SHA-256 object hashes: every segment, snapshot part and manifest in the bucket carries the
//! hash of its own bytes, and segments and manifests chain to their predecessor's hash.

use sha2::{Digest, Sha256};

/// The SHA-256 of an object's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ObjectHash(pub [u8; 32]);

impl ObjectHash {
    /// The hash before the first object of a chain.
    pub const ZERO: Self = Self([0; 32]);

    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

/// Bytes of the SHA-256 trailer that ends segments and snapshot parts.
pub const HASH_TRAILER_BYTES: usize = 32;

/// Checks an object that ends in the SHA-256 of everything before it and starts with `magic`
/// and a little-endian `u32` format version equal to `version`; returns the object's hash.
/// `min_bytes` is the smallest valid object, trailer included.
pub fn verify_hashed_object(
    bytes: &[u8],
    min_bytes: usize,
    magic: &'static [u8; 8],
    magic_name: &'static str,
    version: u32,
) -> Result<ObjectHash, crate::FormatError> {
    use crate::FormatError;
    if bytes.len() < min_bytes.max(12 + HASH_TRAILER_BYTES) {
        return Err(FormatError::Truncated { needed: min_bytes });
    }
    let (content, trailer) = bytes.split_at(bytes.len() - HASH_TRAILER_BYTES);
    let hash = ObjectHash::of(content);
    if hash.0 != trailer {
        return Err(FormatError::InvalidField {
            field: "hash",
            detail: "the SHA-256 trailer does not match the object's bytes".into(),
        });
    }
    if &bytes[0..8] != magic {
        return Err(FormatError::BadMagic {
            expected: magic_name,
        });
    }
    let found = crate::read_u32(bytes, 8)?;
    if found != version {
        return Err(FormatError::UnsupportedVersion {
            found,
            supported: version,
        });
    }
    Ok(hash)
}

impl std::fmt::Debug for ObjectHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectHash({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for ObjectHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

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

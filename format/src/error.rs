//! The one error type of the format crate. Callers add the name of the object (file, offset,
//! bucket key) before showing it to a user.

/// Why a byte string is not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("truncated: needed {needed} bytes")]
    Truncated { needed: usize },
    #[error("bad magic: expected {expected:?}")]
    BadMagic { expected: &'static str },
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u64, computed: u64 },
    #[error("unknown page type tag {0}")]
    UnknownPageType(u8),
    #[error("invalid page size {0} (must be a power of two between 4096 and 65536)")]
    InvalidPageSize(u32),
    #[error("invalid field {field}: {detail}")]
    InvalidField { field: &'static str, detail: String },
}

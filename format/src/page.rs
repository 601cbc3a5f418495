//! The page codec shared by every page type.
//!
//! ```text
//! offset  size  field
//! 0       4     CRC32C over (page number, little-endian u32) ‖ bytes[4..page_size]
//! 4       1     type tag (PageType)
//! 5       11    type-specific header
//! 16      …     type-specific body
//! ```
//!
//! The page number is part of the checksum, so a page written to the wrong place (a misdirected
//! write) fails verification just like a flipped bit. An all-zero page never verifies.

use crate::{FormatError, PageNo, read_u32};

/// What a page holds. Tags are part of the format: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    /// Page 0: the root of the image (catalog root, free list, last LSN).
    Meta = 1,
    /// A B+Tree leaf: sorted cells with keys and values.
    Leaf = 2,
    /// A B+Tree branch: separator keys and child page numbers.
    Branch = 3,
    /// One link of an overflow chain carrying a large value.
    Overflow = 4,
    /// A page on the free list.
    Free = 5,
}

impl PageType {
    pub fn from_tag(tag: u8) -> Result<Self, FormatError> {
        Ok(match tag {
            1 => Self::Meta,
            2 => Self::Leaf,
            3 => Self::Branch,
            4 => Self::Overflow,
            5 => Self::Free,
            other => return Err(FormatError::UnknownPageType(other)),
        })
    }
}

/// Offset of the type tag.
pub const TYPE_OFFSET: usize = 4;

fn page_crc(page_no: PageNo, page: &[u8]) -> u32 {
    let seed = crc32c::crc32c(&page_no.get().to_le_bytes());
    crc32c::crc32c_append(seed, &page[4..])
}

/// Writes the type tag and the CRC. Call after the body is final.
pub fn seal(page_no: PageNo, page_type: PageType, page: &mut [u8]) {
    page[TYPE_OFFSET] = page_type as u8;
    let crc = page_crc(page_no, page);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Verifies the CRC of `page` as page `page_no` and returns its type.
pub fn verify(page_no: PageNo, page: &[u8]) -> Result<PageType, FormatError> {
    if page.len() < crate::limits::PAGE_SIZE_MIN as usize {
        return Err(FormatError::Truncated {
            needed: crate::limits::PAGE_SIZE_MIN as usize,
        });
    }
    let stored = read_u32(page, 0)?;
    let computed = page_crc(page_no, page);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch {
            stored: u64::from(stored),
            computed: u64::from(computed),
        });
    }
    PageType::from_tag(page[TYPE_OFFSET])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_verify_round_trips_and_detects_every_flipped_byte() {
        // Proves the CRC covers the whole page, including the tag, and binds the page number.
        let mut page = vec![7u8; 4096];
        seal(PageNo::new(3), PageType::Leaf, &mut page);
        assert_eq!(verify(PageNo::new(3), &page), Ok(PageType::Leaf));
        assert!(
            verify(PageNo::new(4), &page).is_err(),
            "misdirected write must not verify"
        );
        for i in 0..page.len() {
            let mut bad = page.clone();
            bad[i] ^= 0x40;
            assert!(
                verify(PageNo::new(3), &bad).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn zero_page_never_verifies() {
        // Proves a never-written (sparse) page is reported, not read as empty.
        assert!(verify(PageNo::new(0), &[0u8; 4096]).is_err());
        assert!(verify(PageNo::new(9), &[0u8; 4096]).is_err());
    }
}

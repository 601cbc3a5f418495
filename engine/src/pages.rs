//! Codecs of the non-tree pages: the meta page (page 0), overflow chain links and free pages.
//!
//! ```text
//! Meta page (page 0)                  Overflow page               Free page
//! 16  4  format version               8   4  next page (0 = end)  8  4  next free (0 = end)
//! 20  4  page size                    12  4  bytes in this page   …     zero
//! 24  8  LSN of the last commit       16  …  value bytes
//! 32  4  catalog root page
//! 36  4  free list head (0 = empty)
//! 40  4  free page count
//! 44  4  next table id
//! ```
//!
//! Page 0 is never free and never an overflow link, so 0 doubles as "none" in links.

use hadal_format::limits::PAGE_HEADER_BYTES;
use hadal_format::page::{PageType, seal};
use hadal_format::{Lsn, PageNo, read_u32, read_u64};

use crate::error::{Error, Result};

pub(crate) const META_FORMAT_VERSION: u32 = 1;

/// Decoded meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub page_size: u32,
    pub lsn: Lsn,
    pub catalog_root: PageNo,
    pub free_head: PageNo,
    pub free_count: u32,
    pub next_table_id: u32,
}

fn corrupt(page_no: PageNo, e: impl ToString) -> Error {
    Error::corrupt(format!("page {page_no}"), e)
}

impl Meta {
    pub fn decode(page: &[u8]) -> Result<Self> {
        let bad = |e| corrupt(PageNo::META, e);
        let version = read_u32(page, 16).map_err(bad)?;
        if version != META_FORMAT_VERSION {
            return Err(corrupt(
                PageNo::META,
                format!("unsupported meta version {version}"),
            ));
        }
        Ok(Self {
            page_size: read_u32(page, 20).map_err(bad)?,
            lsn: Lsn::new(read_u64(page, 24).map_err(bad)?),
            catalog_root: PageNo::new(read_u32(page, 32).map_err(bad)?),
            free_head: PageNo::new(read_u32(page, 36).map_err(bad)?),
            free_count: read_u32(page, 40).map_err(bad)?,
            next_table_id: read_u32(page, 44).map_err(bad)?,
        })
    }

    pub fn encode(&self, page_size: usize) -> Vec<u8> {
        let mut page = vec![0u8; page_size];
        page[16..20].copy_from_slice(&META_FORMAT_VERSION.to_le_bytes());
        page[20..24].copy_from_slice(&self.page_size.to_le_bytes());
        page[24..32].copy_from_slice(&self.lsn.get().to_le_bytes());
        page[32..36].copy_from_slice(&self.catalog_root.get().to_le_bytes());
        page[36..40].copy_from_slice(&self.free_head.get().to_le_bytes());
        page[40..44].copy_from_slice(&self.free_count.to_le_bytes());
        page[44..48].copy_from_slice(&self.next_table_id.to_le_bytes());
        seal(PageNo::META, PageType::Meta, &mut page);
        page
    }
}

/// Bytes of value an overflow page carries.
pub(crate) fn overflow_capacity(page_size: usize) -> usize {
    page_size - PAGE_HEADER_BYTES
}

pub(crate) fn encode_overflow(
    page_no: PageNo,
    next: PageNo,
    chunk: &[u8],
    page_size: usize,
) -> Vec<u8> {
    let mut page = vec![0u8; page_size];
    page[8..12].copy_from_slice(&next.get().to_le_bytes());
    page[12..16].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
    page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + chunk.len()].copy_from_slice(chunk);
    seal(page_no, PageType::Overflow, &mut page);
    page
}

/// The next link and the value bytes of an overflow page.
pub(crate) fn decode_overflow(page_no: PageNo, page: &[u8]) -> Result<(PageNo, &[u8])> {
    let next = read_u32(page, 8).map_err(|e| corrupt(page_no, e))?;
    let len = read_u32(page, 12).map_err(|e| corrupt(page_no, e))? as usize;
    let chunk = page
        .get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + len)
        .ok_or_else(|| corrupt(page_no, format!("overflow length {len} exceeds the page")))?;
    Ok((PageNo::new(next), chunk))
}

pub(crate) fn encode_free(page_no: PageNo, next: PageNo, page_size: usize) -> Vec<u8> {
    let mut page = vec![0u8; page_size];
    page[8..12].copy_from_slice(&next.get().to_le_bytes());
    seal(page_no, PageType::Free, &mut page);
    page
}

pub(crate) fn decode_free(page_no: PageNo, page: &[u8]) -> Result<PageNo> {
    read_u32(page, 8)
        .map(PageNo::new)
        .map_err(|e| corrupt(page_no, e))
}

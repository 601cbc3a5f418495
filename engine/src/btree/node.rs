//! Slotted-page encodings of B+Tree nodes.
//!
//! ```text
//! Leaf page                               Branch page
//! 0   4  CRC32C                           0   4  CRC32C
//! 4   1  type = Leaf (2)                  4   1  type = Branch (3)
//! 5   1  reserved                         5   1  reserved
//! 6   2  cell count n                     6   2  key count n
//! 8   8  reserved                         8   4  rightmost child (child n)
//! 16  2n slot array: cell offsets,        12  4  reserved
//!        in key order                     16  2n slot array, in key order
//! …      free space                       …      free space
//! …      cells, packed at the page end    …      cells: child i (4), key length (2), key
//!
//! Leaf cell
//! 0  1  flags: 1 = value in an overflow chain, 2 = has expiry
//! 1  2  key length
//! 3  4  value length (the whole value, also when it lives in an overflow chain)
//! 7  8  LSN of the write that stored this value
//! 15 8  expiry, ms since the Unix epoch (only with flag 2)
//! …     key, then the inline value or the overflow chain's first page (4)
//! ```
//!
//! Branch child `i` holds keys `k` with `key[i-1] <= k < key[i]`; the rightmost child holds
//! keys `>= key[n-1]`. Readers search the page bytes in place ([`LeafView`], [`BranchView`]);
//! a write transaction decodes a node it changes ([`LeafNode`], [`BranchNode`]) and encodes it
//! once at commit. Encoding is deterministic: the same node always gives the same bytes, which
//! keeps replica images byte-identical. Every offset read from a page is bounds-checked, so a
//! corrupt page yields an error, never a panic.

use bytes::Bytes;
use hadal_format::limits::{PAGE_HEADER_BYTES, SLOT_BYTES};
use hadal_format::{PageNo, read_u16, read_u32, read_u64};

use crate::error::{Error, Result};

const FLAG_OVERFLOW: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
const LEAF_CELL_FIXED_BYTES: usize = 15;
const BRANCH_CELL_FIXED_BYTES: usize = 6;

fn corrupt(page_no: PageNo, detail: impl ToString) -> Error {
    Error::corrupt(format!("page {page_no}"), detail)
}

fn slot(page_no: PageNo, page: &[u8], i: usize) -> Result<usize> {
    let at = PAGE_HEADER_BYTES + i * SLOT_BYTES;
    let off = read_u16(page, at).map_err(|e| corrupt(page_no, e))? as usize;
    if off < PAGE_HEADER_BYTES || off >= page.len() {
        return Err(corrupt(
            page_no,
            format!("slot {i} points at offset {off}, outside the cells"),
        ));
    }
    Ok(off)
}

fn count(page_no: PageNo, page: &[u8], cell_min: usize) -> Result<usize> {
    let n = read_u16(page, 6).map_err(|e| corrupt(page_no, e))? as usize;
    if PAGE_HEADER_BYTES + n * (SLOT_BYTES + cell_min) > page.len() {
        return Err(corrupt(
            page_no,
            format!("cell count {n} cannot fit the page"),
        ));
    }
    Ok(n)
}

/// Where a leaf cell's value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueRef<'a> {
    Inline(&'a [u8]),
    Overflow { first: PageNo, len: u32 },
}

/// One leaf cell, borrowed from its page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CellRef<'a> {
    pub key: &'a [u8],
    pub value: ValueRef<'a>,
    pub expires_ms: Option<u64>,
    pub lsn: u64,
    /// Offset of the inline value inside the page (for zero-copy slices).
    pub value_offset: usize,
}

impl CellRef<'_> {
    /// Whether the cell is invisible at `now_ms` because it expired.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
}

/// A leaf page read in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeafView<'a> {
    page_no: PageNo,
    page: &'a [u8],
    count: usize,
}

impl<'a> LeafView<'a> {
    pub fn new(page_no: PageNo, page: &'a [u8]) -> Result<Self> {
        let count = count(page_no, page, LEAF_CELL_FIXED_BYTES)?;
        Ok(Self {
            page_no,
            page,
            count,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn key(&self, i: usize) -> Result<&'a [u8]> {
        let off = slot(self.page_no, self.page, i)?;
        let flags = self.page[off];
        let key_len = read_u16(self.page, off + 1).map_err(|e| corrupt(self.page_no, e))? as usize;
        let start = off + LEAF_CELL_FIXED_BYTES + if flags & FLAG_EXPIRES != 0 { 8 } else { 0 };
        self.page
            .get(start..start + key_len)
            .ok_or_else(|| corrupt(self.page_no, format!("cell {i} key runs past the page")))
    }

    pub fn cell(&self, i: usize) -> Result<CellRef<'a>> {
        let page = self.page;
        let off = slot(self.page_no, page, i)?;
        let bad = |e: hadal_format::FormatError| corrupt(self.page_no, e);
        let flags = page[off];
        if flags & !(FLAG_OVERFLOW | FLAG_EXPIRES) != 0 {
            return Err(corrupt(
                self.page_no,
                format!("cell {i} has unknown flags {flags:#x}"),
            ));
        }
        let key_len = read_u16(page, off + 1).map_err(bad)? as usize;
        let value_len = read_u32(page, off + 3).map_err(bad)?;
        let lsn = read_u64(page, off + 7).map_err(bad)?;
        let mut at = off + LEAF_CELL_FIXED_BYTES;
        let expires_ms = if flags & FLAG_EXPIRES != 0 {
            at += 8;
            Some(read_u64(page, at - 8).map_err(bad)?)
        } else {
            None
        };
        let key = page
            .get(at..at + key_len)
            .ok_or_else(|| corrupt(self.page_no, format!("cell {i} key runs past the page")))?;
        at += key_len;
        let value = if flags & FLAG_OVERFLOW != 0 {
            let first = read_u32(page, at).map_err(bad)?;
            ValueRef::Overflow {
                first: PageNo::new(first),
                len: value_len,
            }
        } else {
            let v = page.get(at..at + value_len as usize).ok_or_else(|| {
                corrupt(self.page_no, format!("cell {i} value runs past the page"))
            })?;
            ValueRef::Inline(v)
        };
        Ok(CellRef {
            key,
            value,
            expires_ms,
            lsn,
            value_offset: at,
        })
    }

    /// `Ok(i)` if cell `i` has `key`, else `Err(i)` where it would be inserted.
    pub fn search(&self, key: &[u8]) -> Result<std::result::Result<usize, usize>> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid)?.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Ok(mid)),
            }
        }
        Ok(Err(lo))
    }
}

/// A branch page read in place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BranchView<'a> {
    page_no: PageNo,
    page: &'a [u8],
    count: usize,
}

impl<'a> BranchView<'a> {
    pub fn new(page_no: PageNo, page: &'a [u8]) -> Result<Self> {
        let count = count(page_no, page, BRANCH_CELL_FIXED_BYTES)?;
        if count == 0 {
            return Err(corrupt(page_no, "branch with no keys"));
        }
        Ok(Self {
            page_no,
            page,
            count,
        })
    }

    /// Number of keys; there is one more child.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn key(&self, i: usize) -> Result<&'a [u8]> {
        let off = slot(self.page_no, self.page, i)?;
        let key_len = read_u16(self.page, off + 4).map_err(|e| corrupt(self.page_no, e))? as usize;
        let start = off + BRANCH_CELL_FIXED_BYTES;
        self.page
            .get(start..start + key_len)
            .ok_or_else(|| corrupt(self.page_no, format!("key {i} runs past the page")))
    }

    pub fn child(&self, i: usize) -> Result<PageNo> {
        let raw = if i == self.count {
            read_u32(self.page, 8)
        } else {
            read_u32(self.page, slot(self.page_no, self.page, i)?)
        };
        raw.map(PageNo::new).map_err(|e| corrupt(self.page_no, e))
    }

    /// The index of the child whose range holds `key`.
    pub fn child_index(&self, key: &[u8]) -> Result<usize> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(mid)? <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

/// An owned leaf value. Decoded cells share the page's buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CellValue {
    Inline(Bytes),
    Overflow { first: PageNo, len: u32 },
}

/// An owned leaf cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafCell {
    pub key: Bytes,
    pub value: CellValue,
    pub expires_ms: Option<u64>,
    pub lsn: u64,
}

impl LeafCell {
    /// Encoded size including its slot.
    pub fn size(&self) -> usize {
        SLOT_BYTES
            + LEAF_CELL_FIXED_BYTES
            + if self.expires_ms.is_some() { 8 } else { 0 }
            + self.key.len()
            + match &self.value {
                CellValue::Inline(v) => v.len(),
                CellValue::Overflow { .. } => 4,
            }
    }

    /// An owned cell sharing `page`'s buffer (`c` must borrow from `page`).
    fn from_ref(page: &Bytes, c: CellRef<'_>) -> Self {
        Self {
            key: page.slice_ref(c.key),
            value: match c.value {
                ValueRef::Inline(v) => CellValue::Inline(page.slice_ref(v)),
                ValueRef::Overflow { first, len } => CellValue::Overflow { first, len },
            },
            expires_ms: c.expires_ms,
            lsn: c.lsn,
        }
    }

    fn encode_into(&self, out: &mut [u8]) {
        let mut flags = 0;
        let (value_len, inline): (u32, &[u8]) = match &self.value {
            CellValue::Inline(v) => (v.len() as u32, v),
            CellValue::Overflow { len, .. } => {
                flags |= FLAG_OVERFLOW;
                (*len, &[])
            }
        };
        if self.expires_ms.is_some() {
            flags |= FLAG_EXPIRES;
        }
        out[0] = flags;
        out[1..3].copy_from_slice(&(self.key.len() as u16).to_le_bytes());
        out[3..7].copy_from_slice(&value_len.to_le_bytes());
        out[7..15].copy_from_slice(&self.lsn.to_le_bytes());
        let mut at = LEAF_CELL_FIXED_BYTES;
        if let Some(e) = self.expires_ms {
            out[at..at + 8].copy_from_slice(&e.to_le_bytes());
            at += 8;
        }
        out[at..at + self.key.len()].copy_from_slice(&self.key);
        at += self.key.len();
        match &self.value {
            CellValue::Overflow { first, .. } => {
                out[at..at + 4].copy_from_slice(&first.get().to_le_bytes())
            }
            CellValue::Inline(_) => out[at..at + inline.len()].copy_from_slice(inline),
        }
    }
}

/// A decoded leaf being changed by a write transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeafNode {
    pub cells: Vec<LeafCell>,
}

impl LeafNode {
    pub fn decode(page_no: PageNo, page: &Bytes) -> Result<Self> {
        let view = LeafView::new(page_no, page)?;
        let cells = (0..view.len())
            .map(|i| view.cell(i).map(|c| LeafCell::from_ref(page, c)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cells })
    }

    pub fn size(&self) -> usize {
        PAGE_HEADER_BYTES + self.cells.iter().map(LeafCell::size).sum::<usize>()
    }

    pub fn search(&self, key: &[u8]) -> std::result::Result<usize, usize> {
        self.cells.binary_search_by(|c| c.key.as_ref().cmp(key))
    }

    /// Encodes into a page-sized buffer; the caller seals it. The node must fit.
    pub fn encode(&self, page_size: usize) -> Vec<u8> {
        let mut page = vec![0u8; page_size];
        page[6..8].copy_from_slice(&(self.cells.len() as u16).to_le_bytes());
        let mut end = page_size;
        for (i, cell) in self.cells.iter().enumerate() {
            let len = cell.size() - SLOT_BYTES;
            end -= len;
            cell.encode_into(&mut page[end..end + len]);
            let at = PAGE_HEADER_BYTES + i * SLOT_BYTES;
            page[at..at + 2].copy_from_slice(&(end as u16).to_le_bytes());
        }
        page
    }
}

/// A decoded branch being changed by a write transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BranchNode {
    pub keys: Vec<Bytes>,
    /// `keys.len() + 1` children.
    pub children: Vec<PageNo>,
}

/// Encoded size of one branch key with its child pointer and slot.
pub(crate) fn branch_cell_size(key: &[u8]) -> usize {
    SLOT_BYTES + BRANCH_CELL_FIXED_BYTES + key.len()
}

impl BranchNode {
    pub fn decode(page_no: PageNo, page: &Bytes) -> Result<Self> {
        let view = BranchView::new(page_no, page)?;
        let keys = (0..view.len())
            .map(|i| view.key(i).map(|k| page.slice_ref(k)))
            .collect::<Result<Vec<_>>>()?;
        let children = (0..=view.len())
            .map(|i| view.child(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { keys, children })
    }

    pub fn size(&self) -> usize {
        PAGE_HEADER_BYTES + self.keys.iter().map(|k| branch_cell_size(k)).sum::<usize>()
    }

    pub fn child_index(&self, key: &[u8]) -> usize {
        self.keys.partition_point(|k| k.as_ref() <= key)
    }

    pub fn encode(&self, page_size: usize) -> Vec<u8> {
        let mut page = vec![0u8; page_size];
        page[6..8].copy_from_slice(&(self.keys.len() as u16).to_le_bytes());
        let rightmost = self.children.last().map_or(0, |c| c.get());
        page[8..12].copy_from_slice(&rightmost.to_le_bytes());
        let mut end = page_size;
        for (i, key) in self.keys.iter().enumerate() {
            let len = branch_cell_size(key) - SLOT_BYTES;
            end -= len;
            page[end..end + 4].copy_from_slice(&self.children[i].get().to_le_bytes());
            page[end + 4..end + 6].copy_from_slice(&(key.len() as u16).to_le_bytes());
            page[end + 6..end + len].copy_from_slice(key);
            let at = PAGE_HEADER_BYTES + i * SLOT_BYTES;
            page[at..at + 2].copy_from_slice(&(end as u16).to_le_bytes());
        }
        page
    }
}

/// Chooses where to split a run of items with the given encoded sizes into two nodes that
/// each fit `capacity` bytes of items, as evenly as possible. Returns the index of the first
/// item of the right node, or `None` if no split fits.
pub(crate) fn choose_split(sizes: &[usize], capacity: usize) -> Option<usize> {
    let total: usize = sizes.iter().sum();
    let mut best: Option<(usize, usize)> = None;
    let mut left = 0;
    for (i, s) in sizes.iter().enumerate().take(sizes.len().saturating_sub(1)) {
        left += s;
        let right = total - left;
        if left <= capacity && right <= capacity {
            let imbalance = left.abs_diff(right);
            if best.is_none_or(|(_, b)| imbalance < b) {
                best = Some((i + 1, imbalance));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hadal_format::page::{PageType, seal};

    fn cell(key: &[u8], value: &[u8], expires: Option<u64>) -> LeafCell {
        LeafCell {
            key: Bytes::copy_from_slice(key),
            value: CellValue::Inline(Bytes::copy_from_slice(value)),
            expires_ms: expires,
            lsn: 7,
        }
    }

    #[test]
    fn leaf_round_trips_and_searches_in_place() {
        // Proves leaf encode/decode are inverse and byte search agrees with the decoded node.
        let node = LeafNode {
            cells: vec![
                cell(b"a", b"1", None),
                cell(b"c", b"333", Some(99)),
                LeafCell {
                    key: Bytes::from_static(b"e"),
                    value: CellValue::Overflow {
                        first: PageNo::new(5),
                        len: 100_000,
                    },
                    expires_ms: None,
                    lsn: 9,
                },
            ],
        };
        let mut page = node.encode(4096);
        seal(PageNo::new(1), PageType::Leaf, &mut page);
        let page = Bytes::from(page);
        assert_eq!(
            LeafNode::decode(PageNo::new(1), &page).expect("decode"),
            node
        );
        let view = LeafView::new(PageNo::new(1), &page).expect("view");
        assert_eq!(view.search(b"c").expect("search"), Ok(1));
        assert_eq!(view.search(b"b").expect("search"), Err(1));
        assert_eq!(view.search(b"z").expect("search"), Err(3));
        let c = view.cell(1).expect("cell");
        assert_eq!(
            (c.key, c.value, c.expires_ms),
            (&b"c"[..], ValueRef::Inline(b"333"), Some(99))
        );
    }

    #[test]
    fn branch_routes_keys_to_children() {
        // Proves child_index sends k to the child whose range [key[i-1], key[i]) holds it.
        let node = BranchNode {
            keys: vec![Bytes::from_static(b"m"), Bytes::from_static(b"t")],
            children: vec![PageNo::new(1), PageNo::new(2), PageNo::new(3)],
        };
        let page = Bytes::from(node.encode(4096));
        let view = BranchView::new(PageNo::new(4), &page).expect("view");
        for (k, want) in [(&b"a"[..], 0), (b"m", 1), (b"s", 1), (b"t", 2), (b"zz", 2)] {
            assert_eq!(view.child_index(k).expect("route"), want);
            assert_eq!(node.child_index(k), want);
        }
        assert_eq!(view.child(2).expect("child"), PageNo::new(3));
        assert_eq!(
            BranchNode::decode(PageNo::new(4), &page).expect("decode"),
            node
        );
    }

    #[test]
    fn garbage_pages_are_errors_not_panics() {
        // Proves in-place readers bounds-check every offset taken from the page.
        for fill in [0u8, 0xff, 0x41] {
            let page = vec![fill; 4096];
            if let Ok(view) = LeafView::new(PageNo::new(1), &page) {
                for i in 0..view.len() {
                    let _ = view.cell(i);
                }
                let _ = view.search(b"k");
            }
            if let Ok(view) = BranchView::new(PageNo::new(1), &page) {
                let _ = view.child_index(b"k");
                let _ = view.child(view.len());
            }
        }
    }

    #[test]
    fn split_point_fits_both_sides() {
        // Proves choose_split returns a balanced split where both halves fit.
        assert_eq!(choose_split(&[10, 10, 10, 10], 25), Some(2));
        assert_eq!(choose_split(&[30, 1, 1], 31), Some(1));
        assert_eq!(choose_split(&[30, 30], 29), None);
    }
}

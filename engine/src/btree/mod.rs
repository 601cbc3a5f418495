//! B+Tree algorithms over a [`PageSource`]. Reads work on page bytes in place; the write side
//! ([`write`]) works on nodes decoded by the write transaction.
//!
//! Invariants (checked by `check_integrity`): keys strictly increase within a node and across
//! leaves in order; every key of child `i` lies in `[key[i-1], key[i])` of its parent; all
//! leaves are at the same depth; only the root may be an empty leaf, and no branch is without keys.

pub(crate) mod node;
pub(crate) mod write;

use std::ops::Bound;

use bytes::Bytes;
use hadal_format::page::PageType;
use hadal_format::{Lsn, PageNo};

use crate::error::{Error, Result};
use crate::pages::decode_overflow;
use node::{BranchView, LeafView, ValueRef};

/// A tree deeper than this is a cycle of page pointers, not a real tree: with four cells per
/// page at minimum it would hold more than 4^32 keys.
pub(crate) const TREE_DEPTH_MAX: usize = 32;

/// Where tree code gets page images from: a read snapshot or a write transaction.
pub(crate) trait PageSource {
    /// The verified image of `page_no` in this transaction's view.
    fn page(&self, page_no: PageNo) -> Result<Bytes>;
    /// The time expiry is judged against, fixed for the transaction.
    fn now_ms(&self) -> u64;
}

pub(crate) fn page_type(page_no: PageNo, page: &[u8]) -> Result<PageType> {
    PageType::from_tag(page[hadal_format::page::TYPE_OFFSET])
        .map_err(|e| Error::corrupt(format!("page {page_no}"), e))
}

/// A stored value with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    /// Absolute expiry in ms since the Unix epoch, if the key has a TTL.
    pub expires_ms: Option<u64>,
    /// LSN of the commit that last wrote this key.
    pub lsn: Lsn,
}

/// Descends from `root` to the leaf whose range holds `key`.
pub(crate) fn find_leaf(
    src: &impl PageSource,
    root: PageNo,
    key: &[u8],
) -> Result<(PageNo, Bytes)> {
    let mut page_no = root;
    for _ in 0..TREE_DEPTH_MAX {
        let page = src.page(page_no)?;
        match page_type(page_no, &page)? {
            PageType::Leaf => return Ok((page_no, page)),
            PageType::Branch => {
                let view = BranchView::new(page_no, &page)?;
                page_no = view.child(view.child_index(key)?)?;
            }
            other => {
                return Err(Error::corrupt(
                    format!("page {page_no}"),
                    format!("{other:?} page inside a tree"),
                ));
            }
        }
    }
    Err(Error::corrupt(
        format!("tree rooted at page {root}"),
        "deeper than any real tree: pointer cycle",
    ))
}

/// Looks `key` up; expired keys are absent.
pub(crate) fn get(src: &impl PageSource, root: PageNo, key: &[u8]) -> Result<Option<Entry>> {
    let (leaf_no, page) = find_leaf(src, root, key)?;
    let view = LeafView::new(leaf_no, &page)?;
    let Ok(i) = view.search(key)? else {
        return Ok(None);
    };
    let cell = view.cell(i)?;
    if cell.is_expired(src.now_ms()) {
        return Ok(None);
    }
    Ok(Some(entry_of(src, &page, cell)?))
}

pub(crate) fn entry_of(
    src: &impl PageSource,
    page: &Bytes,
    cell: node::CellRef<'_>,
) -> Result<Entry> {
    let value = match cell.value {
        ValueRef::Inline(v) => page.slice(cell.value_offset..cell.value_offset + v.len()),
        ValueRef::Overflow { first, len } => read_overflow(src, first, len as usize)?,
    };
    Ok(Entry {
        value,
        expires_ms: cell.expires_ms,
        lsn: Lsn::new(cell.lsn),
    })
}

/// Reads a whole overflow chain of `len` bytes.
pub(crate) fn read_overflow(src: &impl PageSource, first: PageNo, len: usize) -> Result<Bytes> {
    let mut out = Vec::with_capacity(len);
    let mut page_no = first;
    while out.len() < len {
        if page_no == PageNo::META {
            return Err(Error::corrupt(
                format!("overflow chain at page {first}"),
                format!("ends after {} of {len} bytes", out.len()),
            ));
        }
        let page = src.page(page_no)?;
        if page_type(page_no, &page)? != PageType::Overflow {
            return Err(Error::corrupt(
                format!("page {page_no}"),
                "expected an overflow page",
            ));
        }
        let (next, chunk) = decode_overflow(page_no, &page)?;
        if chunk.is_empty() || out.len() + chunk.len() > len {
            return Err(Error::corrupt(
                format!("overflow chain at page {first}"),
                format!("chunk sizes do not add up to {len} bytes"),
            ));
        }
        out.extend_from_slice(chunk);
        page_no = next;
    }
    Ok(Bytes::from(out))
}

/// A position in a tree: the branch pages above and the current leaf.
#[derive(Debug)]
struct Cursor {
    /// (branch page number, image, index of the child we descended into).
    stack: Vec<(PageNo, Bytes, usize)>,
    leaf_no: PageNo,
    leaf: Bytes,
    /// Forward: next cell to yield. Reverse: one past the next cell to yield.
    pos: usize,
}

/// An iterator over a key range in either direction; expired keys are skipped. It yields
/// `(key, entry)` pairs whose key bytes borrow the leaf page (no copy).
#[derive(Debug)]
pub(crate) struct RangeIter<'s, S: PageSource> {
    src: &'s S,
    cursor: Option<Cursor>,
    error: Option<Error>,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    reverse: bool,
}

fn bound_key(b: &Bound<Vec<u8>>) -> Option<&[u8]> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k),
        Bound::Unbounded => None,
    }
}

impl<'s, S: PageSource> RangeIter<'s, S> {
    /// A range over the tree at `root` (`None`: the table does not exist, so it is empty).
    pub fn new(
        src: &'s S,
        root: Option<PageNo>,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Self {
        let mut it = Self {
            src,
            cursor: None,
            error: None,
            start,
            end,
            reverse,
        };
        if let Some(root) = root {
            match it.seek(root) {
                Ok(c) => it.cursor = Some(c),
                Err(e) => it.error = Some(e),
            }
        }
        it
    }

    /// Descends from `page_no`, always taking the child chosen by `pick` (given the branch's
    /// key count), then positions in the leaf with `place` (given the leaf).
    fn descend(
        &self,
        mut stack: Vec<(PageNo, Bytes, usize)>,
        mut page_no: PageNo,
        pick: impl Fn(&BranchView<'_>) -> Result<usize>,
        place: impl Fn(&LeafView<'_>) -> Result<usize>,
    ) -> Result<Cursor> {
        loop {
            if stack.len() > TREE_DEPTH_MAX {
                return Err(Error::corrupt(
                    format!("page {page_no}"),
                    "tree deeper than any real tree: pointer cycle",
                ));
            }
            let page = self.src.page(page_no)?;
            match page_type(page_no, &page)? {
                PageType::Leaf => {
                    let pos = place(&LeafView::new(page_no, &page)?)?;
                    return Ok(Cursor {
                        stack,
                        leaf_no: page_no,
                        leaf: page,
                        pos,
                    });
                }
                PageType::Branch => {
                    let view = BranchView::new(page_no, &page)?;
                    let idx = pick(&view)?;
                    let child = view.child(idx)?;
                    stack.push((page_no, page.clone(), idx));
                    page_no = child;
                }
                other => {
                    return Err(Error::corrupt(
                        format!("page {page_no}"),
                        format!("{other:?} page inside a tree"),
                    ));
                }
            }
        }
    }

    fn seek(&self, root: PageNo) -> Result<Cursor> {
        if self.reverse {
            let end = self.end.clone();
            self.descend(
                Vec::new(),
                root,
                |b| match bound_key(&end) {
                    Some(k) => b.child_index(k),
                    None => Ok(b.len()),
                },
                |l| match &end {
                    Bound::Included(k) => Ok(l.search(k)?.map_or_else(|i| i, |i| i + 1)),
                    Bound::Excluded(k) => Ok(l.search(k)?.unwrap_or_else(|i| i)),
                    Bound::Unbounded => Ok(l.len()),
                },
            )
        } else {
            let start = self.start.clone();
            self.descend(
                Vec::new(),
                root,
                |b| bound_key(&start).map_or(Ok(0), |k| b.child_index(k)),
                |l| match &start {
                    Bound::Included(k) => Ok(l.search(k)?.unwrap_or_else(|i| i)),
                    Bound::Excluded(k) => Ok(l.search(k)?.map_or_else(|i| i, |i| i + 1)),
                    Bound::Unbounded => Ok(0),
                },
            )
        }
    }

    /// Moves to the next (or previous) leaf. Returns false at the end of the tree.
    fn step_leaf(&mut self, mut cursor: Cursor) -> Result<Option<Cursor>> {
        while let Some((page_no, page, idx)) = cursor.stack.pop() {
            let view = BranchView::new(page_no, &page)?;
            let next = if self.reverse {
                idx.checked_sub(1)
            } else {
                (idx < view.len()).then_some(idx + 1)
            };
            if let Some(next) = next {
                let child = view.child(next)?;
                cursor.stack.push((page_no, page.clone(), next));
                let reverse = self.reverse;
                return self
                    .descend(
                        cursor.stack,
                        child,
                        |b| Ok(if reverse { b.len() } else { 0 }),
                        |l| Ok(if reverse { l.len() } else { 0 }),
                    )
                    .map(Some);
            }
        }
        Ok(None)
    }

    fn past_bound(&self, key: &[u8]) -> bool {
        if self.reverse {
            match &self.start {
                Bound::Included(s) => key < s.as_slice(),
                Bound::Excluded(s) => key <= s.as_slice(),
                Bound::Unbounded => false,
            }
        } else {
            match &self.end {
                Bound::Included(e) => key > e.as_slice(),
                Bound::Excluded(e) => key >= e.as_slice(),
                Bound::Unbounded => false,
            }
        }
    }

    fn advance(&mut self) -> Result<Option<(Bytes, Entry)>> {
        loop {
            let Some(mut cursor) = self.cursor.take() else {
                return Ok(None);
            };
            let view = LeafView::new(cursor.leaf_no, &cursor.leaf)?;
            let at = if self.reverse {
                cursor.pos.checked_sub(1)
            } else {
                (cursor.pos < view.len()).then_some(cursor.pos)
            };
            let Some(at) = at else {
                self.cursor = self.step_leaf(cursor)?;
                continue;
            };
            let cell = view.cell(at)?;
            if self.past_bound(cell.key) {
                return Ok(None);
            }
            cursor.pos = if self.reverse { at } else { at + 1 };
            if cell.is_expired(self.src.now_ms()) {
                self.cursor = Some(cursor);
                continue;
            }
            let key_start = cell.key.as_ptr() as usize - cursor.leaf.as_ptr() as usize;
            let key = cursor.leaf.slice(key_start..key_start + cell.key.len());
            let entry = entry_of(self.src, &cursor.leaf, cell)?;
            self.cursor = Some(cursor);
            return Ok(Some((key, entry)));
        }
    }
}

impl<S: PageSource> Iterator for RangeIter<'_, S> {
    type Item = Result<(Bytes, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            self.cursor = None;
            return Some(Err(e));
        }
        match self.advance() {
            Ok(item) => item.map(Ok),
            Err(e) => {
                self.cursor = None;
                Some(Err(e))
            }
        }
    }
}

/// Bounds covering exactly the keys that start with `prefix`.
pub(crate) fn prefix_bounds(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = Bound::Included(prefix.to_vec());
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < 0xff {
            upper.push(last + 1);
            return (start, Bound::Excluded(upper));
        }
    }
    (start, Bound::Unbounded)
}

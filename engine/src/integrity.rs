//! `check_integrity`: a full walk of one snapshot that reports every problem it finds.
//!
//! It checks: every page's CRC (by reading it); the meta page; every tree (catalog, user
//! tables, the expiry index) for key order, separator bounds, equal leaf depth and no empty
//! non-root node; overflow chains for length; the free list against its count; that every page
//! has exactly one owner (no leaked or doubly-owned page); and that the state checksum
//! recomputed from scratch equals the rolling one.

use std::fmt;

use hadal_format::page::PageType;
use hadal_format::{Lsn, PageNo, StateChecksum};

use crate::btree::node::{BranchView, LeafView, ValueRef};
use crate::btree::{PageSource, TREE_DEPTH_MAX, page_type};
use crate::error::Result;
use crate::pages::{self, Meta};
use crate::txn::ReadTxn;

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub lsn: Lsn,
    pub page_count: u32,
    pub tree_pages: u64,
    pub overflow_pages: u64,
    pub free_pages: u64,
    pub keys: u64,
    pub tables: u64,
    /// Empty when the database is healthy.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lsn {}, {} pages: {} tree, {} overflow, {} free; {} tables, {} keys",
            self.lsn.get(),
            self.page_count,
            self.tree_pages,
            self.overflow_pages,
            self.free_pages,
            self.tables,
            self.keys
        )?;
        if self.problems.is_empty() {
            write!(f, "ok: no problems found")
        } else {
            writeln!(f, "{} problem(s):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  - {p}")?;
            }
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Meta,
    Tree,
    Overflow,
    Free,
}

struct Walk<'t> {
    txn: &'t ReadTxn,
    owners: Vec<Option<Owner>>,
    report: Report,
}

pub(crate) fn check(txn: &ReadTxn) -> Result<Report> {
    let page_count = txn.page_count();
    let mut walk = Walk {
        txn,
        owners: vec![None; page_count as usize],
        report: Report {
            lsn: txn.lsn(),
            page_count,
            ..Report::default()
        },
    };
    if page_count == 0 {
        return Ok(walk.report);
    }
    walk.check_checksum();
    let meta = match txn.meta() {
        Ok(Some(meta)) => meta,
        Ok(None) => return Ok(walk.report),
        Err(e) => {
            walk.problem(format!("meta page: {e}"));
            return Ok(walk.report);
        }
    };
    walk.own(PageNo::META, Owner::Meta);
    walk.tree(meta.catalog_root, "catalog");
    match txn.catalog_entries(&meta) {
        Ok(entries) => {
            for (name, root) in entries {
                if !name.starts_with(b"\0") {
                    walk.report.tables += 1;
                }
                walk.tree(root, &format!("table {}", String::from_utf8_lossy(&name)));
            }
        }
        Err(e) => walk.problem(format!("catalog: {e}")),
    }
    walk.free_list(&meta);
    for (i, owner) in walk.owners.iter().enumerate() {
        if owner.is_none() {
            walk.report.problems.push(format!(
                "page {i} is leaked: no tree, chain or free list owns it"
            ));
        }
    }
    Ok(walk.report)
}

impl Walk<'_> {
    fn problem(&mut self, p: String) {
        self.report.problems.push(p);
    }

    /// Claims `page_no` for `owner`; false (and a problem) if it is out of range or taken.
    fn own(&mut self, page_no: PageNo, owner: Owner) -> bool {
        match self.owners.get_mut(page_no.get() as usize) {
            None => {
                self.problem(format!(
                    "page {page_no} is referenced but beyond the image's {} pages",
                    self.report.page_count
                ));
                false
            }
            Some(Some(prev)) => {
                let prev = *prev;
                self.problem(format!(
                    "page {page_no} is owned twice ({prev:?} and {owner:?})"
                ));
                false
            }
            Some(slot) => {
                *slot = Some(owner);
                true
            }
        }
    }

    fn check_checksum(&mut self) {
        let mut sum = StateChecksum::EMPTY;
        for p in 0..self.report.page_count {
            match self.txn.page_image(PageNo::new(p)) {
                Ok(image) => sum.add(PageNo::new(p), &image),
                Err(e) => self.problem(format!("page {p}: {e}")),
            }
        }
        if self.report.problems.is_empty() && sum != self.txn.checksum() {
            self.problem(format!(
                "state checksum recomputed from the pages is {sum:?} but the rolling one is {:?}",
                self.txn.checksum()
            ));
        }
    }

    fn tree(&mut self, root: PageNo, label: &str) {
        let mut leaf_depth = None;
        self.node(root, label, None, None, 0, true, &mut leaf_depth);
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        page_no: PageNo,
        label: &str,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        depth: usize,
        is_root: bool,
        leaf_depth: &mut Option<usize>,
    ) {
        if depth > TREE_DEPTH_MAX {
            self.problem(format!(
                "{label}: deeper than {TREE_DEPTH_MAX} levels at page {page_no} (pointer cycle)"
            ));
            return;
        }
        if !self.own(page_no, Owner::Tree) {
            return;
        }
        self.report.tree_pages += 1;
        let image = match self.txn.page(page_no) {
            Ok(image) => image,
            Err(e) => return self.problem(format!("{label}: {e}")),
        };
        let in_bounds = |k: &[u8]| lo.is_none_or(|lo| k >= lo) && hi.is_none_or(|hi| k < hi);
        match page_type(page_no, &image) {
            Ok(PageType::Leaf) => {
                if let Some(d) = *leaf_depth {
                    if d != depth {
                        self.problem(format!(
                            "{label}: leaf page {page_no} at depth {depth}, others at {d}"
                        ));
                    }
                } else {
                    *leaf_depth = Some(depth);
                }
                let view = match LeafView::new(page_no, &image) {
                    Ok(v) => v,
                    Err(e) => return self.problem(format!("{label}: {e}")),
                };
                if view.len() == 0 && !is_root {
                    self.problem(format!("{label}: empty non-root leaf at page {page_no}"));
                }
                let mut prev: Option<&[u8]> = None;
                for i in 0..view.len() {
                    let cell = match view.cell(i) {
                        Ok(c) => c,
                        Err(e) => return self.problem(format!("{label}: {e}")),
                    };
                    if prev.is_some_and(|p| p >= cell.key) || !in_bounds(cell.key) {
                        self.problem(format!(
                            "{label}: key {i} of leaf page {page_no} is out of order"
                        ));
                    }
                    prev = Some(cell.key);
                    self.report.keys +=
                        u64::from(!label.starts_with("table \0") && label != "catalog");
                    if let ValueRef::Overflow { first, len } = cell.value {
                        self.chain(first, len as usize, label);
                    }
                }
            }
            Ok(PageType::Branch) => {
                let view = match BranchView::new(page_no, &image) {
                    Ok(v) => v,
                    Err(e) => return self.problem(format!("{label}: {e}")),
                };
                let mut keys = Vec::with_capacity(view.len());
                for i in 0..view.len() {
                    match view.key(i) {
                        Ok(k) => keys.push(k.to_vec()),
                        Err(e) => return self.problem(format!("{label}: {e}")),
                    }
                }
                for i in 0..keys.len() {
                    if (i > 0 && keys[i - 1] >= keys[i]) || !in_bounds(&keys[i]) {
                        self.problem(format!(
                            "{label}: separator {i} of branch page {page_no} is out of order"
                        ));
                    }
                }
                for i in 0..=keys.len() {
                    let child = match view.child(i) {
                        Ok(c) => c,
                        Err(e) => return self.problem(format!("{label}: {e}")),
                    };
                    let child_lo = if i == 0 {
                        lo
                    } else {
                        Some(keys[i - 1].as_slice())
                    };
                    let child_hi = if i == keys.len() {
                        hi
                    } else {
                        Some(keys[i].as_slice())
                    };
                    self.node(
                        child,
                        label,
                        child_lo,
                        child_hi,
                        depth + 1,
                        false,
                        leaf_depth,
                    );
                }
            }
            Ok(other) => self.problem(format!(
                "{label}: page {page_no} is a {other:?} page inside the tree"
            )),
            Err(e) => self.problem(format!("{label}: {e}")),
        }
    }

    fn chain(&mut self, first: PageNo, len: usize, label: &str) {
        let mut page_no = first;
        let mut seen = 0usize;
        while seen < len {
            if page_no == PageNo::META || !self.own(page_no, Owner::Overflow) {
                return self.problem(format!(
                    "{label}: overflow chain at page {first} ends after {seen} of {len} bytes"
                ));
            }
            self.report.overflow_pages += 1;
            let image = match self.txn.page(page_no) {
                Ok(image) => image,
                Err(e) => return self.problem(format!("{label}: {e}")),
            };
            if page_type(page_no, &image).ok() != Some(PageType::Overflow) {
                return self.problem(format!(
                    "{label}: page {page_no} in an overflow chain is not an overflow page"
                ));
            }
            match pages::decode_overflow(page_no, &image) {
                Ok((next, chunk)) => {
                    seen += chunk.len();
                    page_no = next;
                    if chunk.is_empty() {
                        return self.problem(format!("{label}: empty overflow page {page_no}"));
                    }
                }
                Err(e) => return self.problem(format!("{label}: {e}")),
            }
        }
        if seen != len {
            self.problem(format!(
                "{label}: overflow chain at page {first} holds {seen} bytes, not {len}"
            ));
        }
    }

    fn free_list(&mut self, meta: &Meta) {
        let mut page_no = meta.free_head;
        let mut count = 0u32;
        while page_no != PageNo::META {
            if count > meta.free_count || !self.own(page_no, Owner::Free) {
                return self.problem(format!(
                    "free list is longer than its count {} or loops",
                    meta.free_count
                ));
            }
            count += 1;
            self.report.free_pages += 1;
            let image = match self.txn.page(page_no) {
                Ok(image) => image,
                Err(e) => return self.problem(format!("free list: {e}")),
            };
            if page_type(page_no, &image).ok() != Some(PageType::Free) {
                return self.problem(format!(
                    "free list links to page {page_no}, which is not free"
                ));
            }
            match pages::decode_free(page_no, &image) {
                Ok(next) => page_no = next,
                Err(e) => return self.problem(format!("free list: {e}")),
            }
        }
        if count != meta.free_count {
            self.problem(format!(
                "free list has {count} pages but the meta page counts {}",
                meta.free_count
            ));
        }
    }
}

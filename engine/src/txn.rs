//! Read and write transactions.
//!
//! A [`ReadTxn`] is a snapshot: an LSN and the image's page count, both fixed at `begin_read`.
//! Starting one is an atomic load; it never blocks the writer and the writer never blocks it.
//!
//! A [`WriteTxn`] holds the single writer slot. Its changes live in [`Pages`], a private dirty
//! set of decoded nodes over the snapshot it started from; nothing reaches the WAL until
//! `commit`, which encodes every dirty page once and appends them as one commit. Dropping a
//! write transaction aborts it: the dirty set is simply forgotten.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use hadal_format::limits::{
    KEY_BYTES_MAX, PAGE_HEADER_BYTES, SLOT_BYTES, TABLE_NAME_BYTES_MAX, VALUE_BYTES_MAX,
};
use hadal_format::page::{PageType, seal};
use hadal_format::{Lsn, PageNo, StateChecksum};
use parking_lot::MutexGuard;

use crate::btree::node::{BranchNode, CellValue, LeafCell, LeafNode};
use crate::btree::{self, Entry, PageSource, RangeIter, page_type, write};
use crate::db::{Durability, Inner, PendingCommit};
use crate::error::{Error, Result};
use crate::pager::Pager;
use crate::pages::{self, Meta};

/// The name of the table `hadal kv` and the servers use.
pub const DEFAULT_TABLE: &str = "default";
/// Internal table: expiry (8, BE) ‖ table id (4, BE) ‖ key → empty. The TTL sweeper walks it in
/// expiry order.
pub(crate) const EXPIRY_TABLE: &[u8] = b"\0expiry";
const EXPIRY_PREFIX_BYTES: usize = 12;

/// A published, immutable state of the database.
#[derive(Debug)]
pub(crate) struct Version {
    pub lsn: Lsn,
    pub page_count: u32,
    pub checksum: StateChecksum,
    pub time_ms: u64,
    /// Which image this version belongs to: it changes only when `install_image` replaces a
    /// non-empty image, and pages are read only for the current one (see `Pager::read`).
    pub image: u64,
}

/// A decoded tree node in a write transaction's dirty set.
#[derive(Debug)]
pub(crate) enum Node {
    Leaf(LeafNode),
    Branch(BranchNode),
}

#[derive(Debug)]
enum Dirty {
    Node(Node),
    /// A sealed image (overflow and free pages, the meta page).
    Raw(Bytes),
}

/// A write transaction's view of the image: its dirty pages over its base snapshot.
#[derive(Debug)]
pub(crate) struct Pages<'db> {
    pager: &'db Pager,
    base: Arc<Version>,
    now_ms: u64,
    pub meta: Meta,
    pub page_count: u32,
    dirty: HashMap<PageNo, Dirty>,
    /// Encodings of dirty nodes, memoized for reads and dropped when the node changes.
    encoded: RefCell<HashMap<PageNo, Bytes>>,
}

fn corrupt_page(page_no: PageNo, detail: impl ToString) -> Error {
    Error::corrupt(format!("page {page_no}"), detail)
}

impl PageSource for Pages<'_> {
    fn page(&self, page_no: PageNo) -> Result<Bytes> {
        if page_no.get() >= self.page_count {
            return Err(corrupt_page(
                page_no,
                format!("beyond the image's {} pages", self.page_count),
            ));
        }
        match self.dirty.get(&page_no) {
            Some(Dirty::Raw(image)) => Ok(image.clone()),
            Some(Dirty::Node(node)) => {
                if let Some(image) = self.encoded.borrow().get(&page_no) {
                    return Ok(image.clone());
                }
                let image = encode_node(page_no, node, self.page_size());
                self.encoded.borrow_mut().insert(page_no, image.clone());
                Ok(image)
            }
            None => self.pager.read(
                page_no,
                self.base.lsn,
                self.base.page_count,
                self.base.image,
            ),
        }
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

fn encode_node(page_no: PageNo, node: &Node, page_size: usize) -> Bytes {
    let (mut image, page_type) = match node {
        Node::Leaf(leaf) => (leaf.encode(page_size), PageType::Leaf),
        Node::Branch(branch) => (branch.encode(page_size), PageType::Branch),
    };
    seal(page_no, page_type, &mut image);
    Bytes::from(image)
}

impl<'db> Pages<'db> {
    pub fn page_size(&self) -> usize {
        self.pager.page_size
    }

    pub fn dirty_branch(&self, page_no: PageNo) -> Option<&BranchNode> {
        match self.dirty.get(&page_no) {
            Some(Dirty::Node(Node::Branch(b))) => Some(b),
            _ => None,
        }
    }

    pub fn dirty_leaf(&self, page_no: PageNo) -> Option<&LeafNode> {
        match self.dirty.get(&page_no) {
            Some(Dirty::Node(Node::Leaf(l))) => Some(l),
            _ => None,
        }
    }

    /// Removes a node from the dirty set (decoding it from its image if it was clean); the
    /// caller puts it, or its replacement, back.
    pub fn take_node(&mut self, page_no: PageNo) -> Result<Node> {
        self.encoded.get_mut().remove(&page_no);
        match self.dirty.remove(&page_no) {
            Some(Dirty::Node(node)) => Ok(node),
            Some(Dirty::Raw(image)) => {
                self.dirty.insert(page_no, Dirty::Raw(image));
                Err(corrupt_page(page_no, "expected a tree node"))
            }
            None => {
                let image = self.page(page_no)?;
                match page_type(page_no, &image)? {
                    PageType::Leaf => Ok(Node::Leaf(LeafNode::decode(page_no, &image)?)),
                    PageType::Branch => Ok(Node::Branch(BranchNode::decode(page_no, &image)?)),
                    other => Err(corrupt_page(
                        page_no,
                        format!("expected a tree node, found {other:?}"),
                    )),
                }
            }
        }
    }

    pub fn put(&mut self, page_no: PageNo, node: Node) {
        self.encoded.get_mut().remove(&page_no);
        self.dirty.insert(page_no, Dirty::Node(node));
    }

    fn node_mut(&mut self, page_no: PageNo) -> Result<&mut Node> {
        if !matches!(self.dirty.get(&page_no), Some(Dirty::Node(_))) {
            let node = self.take_node(page_no)?;
            self.put(page_no, node);
        }
        self.encoded.get_mut().remove(&page_no);
        match self.dirty.get_mut(&page_no) {
            Some(Dirty::Node(node)) => Ok(node),
            _ => Err(corrupt_page(page_no, "expected a tree node")),
        }
    }

    pub fn leaf_mut(&mut self, page_no: PageNo) -> Result<&mut LeafNode> {
        match self.node_mut(page_no)? {
            Node::Leaf(leaf) => Ok(leaf),
            Node::Branch(_) => Err(corrupt_page(page_no, "expected a leaf, found a branch")),
        }
    }

    pub fn branch_mut(&mut self, page_no: PageNo) -> Result<&mut BranchNode> {
        match self.node_mut(page_no)? {
            Node::Branch(branch) => Ok(branch),
            Node::Leaf(_) => Err(corrupt_page(page_no, "expected a branch, found a leaf")),
        }
    }

    /// Encoded size of a node (dirty ones are sized without encoding).
    pub fn node_size(&self, page_no: PageNo) -> Result<usize> {
        match self.dirty.get(&page_no) {
            Some(Dirty::Node(Node::Leaf(l))) => Ok(l.size()),
            Some(Dirty::Node(Node::Branch(b))) => Ok(b.size()),
            _ => {
                let image = self.page(page_no)?;
                match page_type(page_no, &image)? {
                    PageType::Leaf => Ok(LeafNode::decode(page_no, &image)?.size()),
                    PageType::Branch => Ok(BranchNode::decode(page_no, &image)?.size()),
                    other => Err(corrupt_page(
                        page_no,
                        format!("expected a tree node, found {other:?}"),
                    )),
                }
            }
        }
    }

    /// A page for new content: the free list's head, else a new page at the end.
    pub fn alloc(&mut self) -> Result<PageNo> {
        if self.meta.free_head != PageNo::META {
            let page_no = self.meta.free_head;
            let image = self.page(page_no)?;
            if page_type(page_no, &image)? != PageType::Free {
                return Err(corrupt_page(
                    page_no,
                    "free list links to a page that is not free",
                ));
            }
            self.meta.free_head = pages::decode_free(page_no, &image)?;
            self.meta.free_count =
                self.meta.free_count.checked_sub(1).ok_or_else(|| {
                    corrupt_page(PageNo::META, "free list is longer than its count")
                })?;
            // Until the caller writes it, the page holds an empty leaf, never stale bytes.
            self.put(page_no, Node::Leaf(LeafNode::default()));
            return Ok(page_no);
        }
        let page_no = PageNo::new(self.page_count);
        self.page_count = self
            .page_count
            .checked_add(1)
            .ok_or_else(|| Error::Invalid("the database has reached 2^32 pages".to_string()))?;
        self.put(page_no, Node::Leaf(LeafNode::default()));
        Ok(page_no)
    }

    /// Puts `page_no` on the free list.
    pub fn free(&mut self, page_no: PageNo) -> Result<()> {
        if page_no == PageNo::META || page_no.get() >= self.page_count {
            return Err(corrupt_page(page_no, "freeing a page that cannot be freed"));
        }
        let image = pages::encode_free(page_no, self.meta.free_head, self.page_size());
        self.encoded.get_mut().remove(&page_no);
        self.dirty.insert(page_no, Dirty::Raw(Bytes::from(image)));
        self.meta.free_head = page_no;
        self.meta.free_count += 1;
        Ok(())
    }

    fn put_raw(&mut self, page_no: PageNo, image: Vec<u8>) {
        self.encoded.get_mut().remove(&page_no);
        self.dirty.insert(page_no, Dirty::Raw(Bytes::from(image)));
    }

    fn is_empty(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Encodes every dirty page, sorted by page number.
    fn finish(self) -> Vec<(PageNo, Bytes)> {
        let page_size = self.page_size();
        let mut out: Vec<(PageNo, Bytes)> = self
            .dirty
            .into_iter()
            .map(|(p, d)| match d {
                Dirty::Raw(image) => (p, image),
                Dirty::Node(node) => (p, encode_node(p, &node, page_size)),
            })
            .collect();
        out.sort_unstable_by_key(|(p, _)| *p);
        out
    }

    /// Writes `value` to a new overflow chain and returns its first page.
    fn write_overflow(&mut self, value: &[u8]) -> Result<PageNo> {
        let capacity = pages::overflow_capacity(self.page_size());
        let chunks: Vec<&[u8]> = value.chunks(capacity).collect();
        let mut page_nos = Vec::with_capacity(chunks.len());
        for _ in &chunks {
            page_nos.push(self.alloc()?);
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let next = page_nos.get(i + 1).copied().unwrap_or(PageNo::META);
            let image = pages::encode_overflow(page_nos[i], next, chunk, self.page_size());
            self.put_raw(page_nos[i], image);
        }
        Ok(page_nos[0])
    }

    /// Frees an overflow chain of `len` bytes starting at `first`.
    fn free_overflow(&mut self, first: PageNo, len: u32) -> Result<()> {
        let links = (len as usize).div_ceil(pages::overflow_capacity(self.page_size()));
        let mut page_no = first;
        for _ in 0..links {
            let image = self.page(page_no)?;
            if page_type(page_no, &image)? != PageType::Overflow {
                return Err(corrupt_page(page_no, "expected an overflow page"));
            }
            let (next, _) = pages::decode_overflow(page_no, &image)?;
            self.free(page_no)?;
            page_no = next;
        }
        Ok(())
    }
}

fn catalog_value(root: PageNo, id: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(8);
    v.extend_from_slice(&root.get().to_le_bytes());
    v.extend_from_slice(&id.to_le_bytes());
    v
}

fn decode_catalog_value(name: &[u8], value: &[u8]) -> Result<(PageNo, u32)> {
    if value.len() != 8 {
        return Err(Error::corrupt(
            format!("catalog entry {}", String::from_utf8_lossy(name)),
            format!("{} bytes instead of 8", value.len()),
        ));
    }
    let root = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
    let id = u32::from_le_bytes([value[4], value[5], value[6], value[7]]);
    Ok((PageNo::new(root), id))
}

/// Looks a table up in the catalog of the image `src` sees.
fn catalog_lookup(
    src: &impl PageSource,
    meta: &Meta,
    name: &[u8],
) -> Result<Option<(PageNo, u32)>> {
    match btree::get(src, meta.catalog_root, name)? {
        Some(entry) => decode_catalog_value(name, &entry.value).map(Some),
        None => Ok(None),
    }
}

fn read_meta(src: &impl PageSource) -> Result<Meta> {
    let image = src.page(PageNo::META)?;
    if page_type(PageNo::META, &image)? != PageType::Meta {
        return Err(corrupt_page(PageNo::META, "page 0 is not the meta page"));
    }
    Meta::decode(&image)
}

pub(crate) fn validate_table_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > TABLE_NAME_BYTES_MAX || name.starts_with('\0') {
        return Err(Error::Invalid(format!(
            "table name {name:?} must be 1 to {TABLE_NAME_BYTES_MAX} bytes and not start with NUL"
        )));
    }
    Ok(())
}

pub(crate) fn validate_key(key: &[u8]) -> Result<()> {
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "key of {} bytes is longer than the limit of {KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::Invalid(format!(
            "value of {} bytes is larger than the limit of {VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

/// Largest leaf cell kept inline for a page size; larger values go to overflow chains.
fn inline_cell_bytes_max(page_size: usize) -> usize {
    (page_size - PAGE_HEADER_BYTES) / 4 - SLOT_BYTES
}

#[derive(Debug, Clone, Copy)]
struct TableState {
    root: PageNo,
    id: u32,
    root_changed: bool,
}

/// The single write transaction. Commit consumes it; drop aborts it.
#[derive(Debug)]
pub struct WriteTxn<'db> {
    db: &'db Inner,
    /// The writer slot; `None` when the caller holds it (the group-commit leader keeps it
    /// until every member of its group has its result).
    _writer: Option<MutexGuard<'db, ()>>,
    pages: Pages<'db>,
    tables: BTreeMap<Vec<u8>, TableState>,
    lsn: Lsn,
    changed: bool,
}

impl<'db> WriteTxn<'db> {
    pub(crate) fn new(
        db: &'db Inner,
        writer: Option<MutexGuard<'db, ()>>,
        base: Arc<Version>,
        now_ms: u64,
    ) -> Result<Self> {
        let pager = &db.pager;
        let lsn = base.lsn.next();
        let empty_meta = Meta {
            page_size: pager.page_size as u32,
            lsn: base.lsn,
            catalog_root: PageNo::new(1),
            free_head: PageNo::META,
            free_count: 0,
            next_table_id: 1,
        };
        let mut pages = Pages {
            pager,
            page_count: base.page_count,
            base,
            now_ms,
            meta: empty_meta,
            dirty: HashMap::new(),
            encoded: RefCell::default(),
        };
        let mut changed = false;
        if pages.page_count == 0 {
            // The first commit of a database creates its meta page and empty catalog.
            pages.page_count = 1;
            let catalog = pages.alloc()?;
            pages.meta.catalog_root = catalog;
            changed = true;
        } else {
            pages.meta = read_meta(&pages)?;
        }
        Ok(Self {
            db,
            _writer: writer,
            pages,
            tables: BTreeMap::new(),
            lsn,
            changed,
        })
    }

    /// The LSN this transaction commits as.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    fn table(&mut self, name: &[u8], create: bool) -> Result<Option<TableState>> {
        if let Some(t) = self.tables.get(name) {
            return Ok(Some(*t));
        }
        let found = catalog_lookup(&self.pages, &self.pages.meta, name)?;
        let state = match found {
            Some((root, id)) => TableState {
                root,
                id,
                root_changed: false,
            },
            None if create => {
                let root = self.pages.alloc()?;
                let id = self.pages.meta.next_table_id;
                self.pages.meta.next_table_id += 1;
                self.changed = true;
                TableState {
                    root,
                    id,
                    root_changed: true,
                }
            }
            None => return Ok(None),
        };
        self.tables.insert(name.to_vec(), state);
        Ok(Some(state))
    }

    fn table_root(&self, name: &[u8]) -> Result<Option<PageNo>> {
        if let Some(t) = self.tables.get(name) {
            return Ok(Some(t.root));
        }
        Ok(catalog_lookup(&self.pages, &self.pages.meta, name)?.map(|(root, _)| root))
    }

    fn set_root(&mut self, name: &[u8], root: PageNo) {
        if let Some(t) = self.tables.get_mut(name)
            && t.root != root
        {
            t.root = root;
            t.root_changed = true;
        }
    }

    /// Reads `key` as this transaction sees it (its own writes included).
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.get_entry(table, key)?.map(|e| e.value))
    }

    pub fn get_entry(&self, table: &str, key: &[u8]) -> Result<Option<Entry>> {
        match self.table_root(table.as_bytes())? {
            Some(root) => btree::get(&self.pages, root, key),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`, without expiry.
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_with_expiry(table, key, value, None)
    }

    /// Stores `value` under `key`, invisible from `expires_ms` (ms since the Unix epoch) on.
    pub fn put_with_expiry(
        &mut self,
        table: &str,
        key: &[u8],
        value: &[u8],
        expires_ms: Option<u64>,
    ) -> Result<()> {
        validate_table_name(table)?;
        validate_key(key)?;
        validate_value(value)?;
        self.put_raw(table.as_bytes(), key, value, expires_ms)
    }

    fn put_raw(
        &mut self,
        table: &[u8],
        key: &[u8],
        value: &[u8],
        expires_ms: Option<u64>,
    ) -> Result<()> {
        let state = self
            .table(table, true)?
            .ok_or_else(|| Error::Invalid("table vanished".into()))?;
        let key = Bytes::copy_from_slice(key);
        let inline_size = LeafCell {
            key: key.clone(),
            value: CellValue::Inline(Bytes::new()),
            expires_ms,
            lsn: 0,
        }
        .size()
            + value.len();
        let cell_value = if inline_size <= inline_cell_bytes_max(self.pages.page_size()) {
            CellValue::Inline(Bytes::copy_from_slice(value))
        } else {
            CellValue::Overflow {
                first: self.pages.write_overflow(value)?,
                len: value.len() as u32,
            }
        };
        let cell = LeafCell {
            key: key.clone(),
            value: cell_value,
            expires_ms,
            lsn: self.lsn.get(),
        };
        let (root, old) = write::insert(&mut self.pages, state.root, cell)?;
        self.set_root(table, root);
        self.changed = true;
        if let Some(old) = old {
            self.release_cell(state.id, &old)?;
        }
        if let Some(expires) = expires_ms {
            let index_key = expiry_key(expires, state.id, &key);
            self.put_raw(EXPIRY_TABLE, &index_key, &[], None)?;
        }
        Ok(())
    }

    /// Frees what a replaced or removed cell owned: its overflow chain and its expiry entry.
    fn release_cell(&mut self, table_id: u32, cell: &LeafCell) -> Result<()> {
        if let CellValue::Overflow { first, len } = cell.value {
            self.pages.free_overflow(first, len)?;
        }
        if let Some(expires) = cell.expires_ms {
            let index_key = expiry_key(expires, table_id, &cell.key);
            self.delete_raw(EXPIRY_TABLE, &index_key)?;
        }
        Ok(())
    }

    /// Deletes `key`. Returns whether a visible (unexpired) value was deleted.
    pub fn delete(&mut self, table: &str, key: &[u8]) -> Result<bool> {
        validate_table_name(table)?;
        validate_key(key)?;
        Ok(self
            .delete_raw(table.as_bytes(), key)?
            .is_some_and(|c| c.expires_ms.is_none_or(|e| e > self.pages.now_ms)))
    }

    fn delete_raw(&mut self, table: &[u8], key: &[u8]) -> Result<Option<LeafCell>> {
        let Some(state) = self.table(table, false)? else {
            return Ok(None);
        };
        let (root, old) = write::remove(&mut self.pages, state.root, key)?;
        self.set_root(table, root);
        if let Some(old) = &old {
            self.changed = true;
            self.release_cell(state.id, old)?;
        }
        Ok(old)
    }

    /// Iterates `table` between the bounds, forward or in reverse, seeing this transaction's
    /// own writes.
    pub fn range(
        &self,
        table: &str,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Result<Range<'_>> {
        let root = self.table_root(table.as_bytes())?;
        Ok(Range(RangeKind::Write(RangeIter::new(
            &self.pages,
            root,
            start,
            end,
            reverse,
        ))))
    }

    /// Deletes up to `max` keys whose expiry has passed. Returns how many were deleted.
    pub(crate) fn sweep_expired(&mut self, max: usize) -> Result<usize> {
        let Some(root) = self.table_root(EXPIRY_TABLE)? else {
            return Ok(0);
        };
        let now = self.pages.now_ms;
        let mut due = Vec::new();
        for item in RangeIter::new(
            &self.pages,
            Some(root),
            Bound::Unbounded,
            Bound::Unbounded,
            false,
        ) {
            let (key, _) = item?;
            let (expires, table_id, user_key) = split_expiry_key(&key)?;
            if expires > now || due.len() >= max {
                break;
            }
            due.push((expires, table_id, user_key.to_vec(), key.to_vec()));
        }
        if due.is_empty() {
            return Ok(0);
        }
        let names = self.table_names_by_id()?;
        for (expires, table_id, user_key, index_key) in &due {
            let name = names.get(table_id).ok_or_else(|| {
                Error::corrupt(
                    "expiry index",
                    format!("entry for unknown table id {table_id}"),
                )
            })?;
            let state = self
                .table(name, false)?
                .ok_or_else(|| Error::corrupt("catalog", "table vanished"))?;
            let current = btree::get(&self.pages_without_expiry(), state.root, user_key)?;
            if current.is_some_and(|e| e.expires_ms == Some(*expires)) {
                self.delete_raw(name, user_key)?;
            } else {
                self.delete_raw(EXPIRY_TABLE, index_key)?;
            }
        }
        Ok(due.len())
    }

    /// A view that sees expired cells too (the sweeper must find what readers no longer see).
    fn pages_without_expiry(&self) -> AllCells<'_, 'db> {
        AllCells(&self.pages)
    }

    fn table_names_by_id(&self) -> Result<HashMap<u32, Vec<u8>>> {
        let mut out = HashMap::new();
        for item in RangeIter::new(
            &self.pages,
            Some(self.pages.meta.catalog_root),
            Bound::Unbounded,
            Bound::Unbounded,
            false,
        ) {
            let (name, entry) = item?;
            let (_, id) = decode_catalog_value(&name, &entry.value)?;
            out.insert(id, name.to_vec());
        }
        Ok(out)
    }

    /// Whether this transaction has changed anything.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// Commits with `Durability::Sync`: returns once the commit is fdatasynced.
    pub fn commit(self) -> Result<Lsn> {
        self.commit_with(Durability::Sync)
    }

    /// Commits. A transaction that changed nothing commits nothing and returns the LSN it read.
    pub fn commit_with(mut self, durability: Durability) -> Result<Lsn> {
        if !self.changed {
            return Ok(self.pages.base.lsn);
        }
        let changed: Vec<(Vec<u8>, TableState)> = self
            .tables
            .iter()
            .filter(|(_, t)| t.root_changed)
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        for (name, t) in changed {
            let cell = LeafCell {
                key: Bytes::from(name),
                value: CellValue::Inline(Bytes::from(catalog_value(t.root, t.id))),
                expires_ms: None,
                lsn: self.lsn.get(),
            };
            let catalog_root = self.pages.meta.catalog_root;
            let (root, _) = write::insert(&mut self.pages, catalog_root, cell)?;
            self.pages.meta.catalog_root = root;
        }
        self.pages.meta.lsn = self.lsn;
        let meta_image = self.pages.meta.encode(self.pages.page_size());
        self.pages.put_raw(PageNo::META, meta_image);
        debug_assert!(!self.pages.is_empty());
        let base = self.pages.base.clone();
        let page_count = self.pages.page_count;
        let now_ms = self.pages.now_ms;
        let images = self.pages.finish();
        let pending = PendingCommit {
            lsn: self.lsn,
            time_ms: now_ms,
            page_count,
            images,
            expected_checksum: None,
        };
        self.db.commit_pages(&base, pending, durability)?;
        Ok(self.lsn)
    }
}

/// A page source that does not hide expired cells.
struct AllCells<'a, 'db>(&'a Pages<'db>);

impl PageSource for AllCells<'_, '_> {
    fn page(&self, page_no: PageNo) -> Result<Bytes> {
        self.0.page(page_no)
    }

    fn now_ms(&self) -> u64 {
        0
    }
}

fn expiry_key(expires_ms: u64, table_id: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(EXPIRY_PREFIX_BYTES + key.len());
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(&table_id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn split_expiry_key(k: &[u8]) -> Result<(u64, u32, &[u8])> {
    if k.len() < EXPIRY_PREFIX_BYTES {
        return Err(Error::corrupt(
            "expiry index",
            format!("key of {} bytes", k.len()),
        ));
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&k[0..8]);
    let mut t = [0u8; 4];
    t.copy_from_slice(&k[8..12]);
    Ok((u64::from_be_bytes(e), u32::from_be_bytes(t), &k[12..]))
}

/// A read snapshot.
#[derive(Debug)]
pub struct ReadTxn {
    db: Arc<Inner>,
    version: Arc<Version>,
    now_ms: u64,
}

impl PageSource for ReadTxn {
    fn page(&self, page_no: PageNo) -> Result<Bytes> {
        self.db.pager.read(
            page_no,
            self.version.lsn,
            self.version.page_count,
            self.version.image,
        )
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

impl ReadTxn {
    pub(crate) fn new(db: Arc<Inner>, version: Arc<Version>, now_ms: u64) -> Self {
        Self {
            db,
            version,
            now_ms,
        }
    }

    /// The LSN this snapshot reads at.
    pub fn lsn(&self) -> Lsn {
        self.version.lsn
    }

    /// Pages in the image at this snapshot.
    pub fn page_count(&self) -> u32 {
        self.version.page_count
    }

    /// State checksum of the image at this snapshot.
    pub fn checksum(&self) -> StateChecksum {
        self.version.checksum
    }

    /// Commit time of this snapshot's LSN, ms since the Unix epoch (0 for an empty database).
    pub fn commit_time_ms(&self) -> u64 {
        self.version.time_ms
    }

    /// The raw image of one page at this snapshot (for snapshots, replicas and tests).
    pub fn page_image(&self, page_no: PageNo) -> Result<Bytes> {
        self.page(page_no)
    }

    fn table_root(&self, name: &[u8]) -> Result<Option<PageNo>> {
        if self.version.page_count == 0 {
            return Ok(None);
        }
        let meta = read_meta(self)?;
        Ok(catalog_lookup(self, &meta, name)?.map(|(root, _)| root))
    }

    /// A handle on `table` that skips the catalog lookup on every read.
    pub fn table(&self, name: &str) -> Result<Table<'_>> {
        Ok(Table {
            txn: self,
            root: self.table_root(name.as_bytes())?,
        })
    }

    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Bytes>> {
        self.table(table)?.get(key)
    }

    pub fn get_entry(&self, table: &str, key: &[u8]) -> Result<Option<Entry>> {
        self.table(table)?.get_entry(key)
    }

    pub fn range(
        &self,
        table: &str,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Result<Range<'_>> {
        Ok(self.table(table)?.range(start, end, reverse))
    }

    /// Every key starting with `prefix`, in order (or reverse order).
    pub fn prefix(&self, table: &str, prefix: &[u8], reverse: bool) -> Result<Range<'_>> {
        let (start, end) = btree::prefix_bounds(prefix);
        self.range(table, start, end, reverse)
    }

    /// Names of the user tables.
    pub fn table_names(&self) -> Result<Vec<String>> {
        if self.version.page_count == 0 {
            return Ok(Vec::new());
        }
        let meta = read_meta(self)?;
        let mut out = Vec::new();
        for item in RangeIter::new(
            self,
            Some(meta.catalog_root),
            Bound::Unbounded,
            Bound::Unbounded,
            false,
        ) {
            let (name, _) = item?;
            if !name.starts_with(b"\0") {
                out.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        Ok(out)
    }

    pub(crate) fn meta(&self) -> Result<Option<Meta>> {
        if self.version.page_count == 0 {
            Ok(None)
        } else {
            read_meta(self).map(Some)
        }
    }

    pub(crate) fn catalog_entries(&self, meta: &Meta) -> Result<Vec<(Vec<u8>, PageNo)>> {
        let mut out = Vec::new();
        for item in RangeIter::new(
            self,
            Some(meta.catalog_root),
            Bound::Unbounded,
            Bound::Unbounded,
            false,
        ) {
            let (name, entry) = item?;
            let (root, _) = decode_catalog_value(&name, &entry.value)?;
            out.push((name.to_vec(), root));
        }
        Ok(out)
    }
}

/// A table in a read snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Table<'t> {
    txn: &'t ReadTxn,
    root: Option<PageNo>,
}

impl<'t> Table<'t> {
    /// Whether the table exists in this snapshot.
    pub fn exists(&self) -> bool {
        self.root.is_some()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.get_entry(key)?.map(|e| e.value))
    }

    pub fn get_entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        match self.root {
            Some(root) => btree::get(self.txn, root, key),
            None => Ok(None),
        }
    }

    pub fn range(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, reverse: bool) -> Range<'t> {
        Range(RangeKind::Read(RangeIter::new(
            self.txn, self.root, start, end, reverse,
        )))
    }
}

#[derive(Debug)]
enum RangeKind<'a> {
    Read(RangeIter<'a, ReadTxn>),
    Write(RangeIter<'a, Pages<'a>>),
}

/// Iterator over `(key, entry)` pairs of a range; expired keys are skipped.
#[derive(Debug)]
pub struct Range<'a>(RangeKind<'a>);

impl Iterator for Range<'_> {
    type Item = Result<(Bytes, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            RangeKind::Read(it) => it.next(),
            RangeKind::Write(it) => it.next(),
        }
    }
}

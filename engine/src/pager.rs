//! The pager: reads page images as of a snapshot LSN, caches them, and checkpoints.
//!
//! A page at snapshot `S` is the newest WAL frame of that page at or below `S`, else the main
//! file's copy. Every image read from disk has its CRC verified once, when it enters the cache;
//! the cache is bounded in bytes.
//!
//! Checkpoint invariants (crash argument in docs/design/engine.md):
//! 1. It copies, for each page, the newest frame at or below its target LSN, in page order, to
//!    the main file; the target never passes the oldest live reader or the shipped LSN.
//! 2. Order: WAL sync → page writes → main sync → superblock (other region, next generation)
//!    → main sync → drop index entries. A crash anywhere leaves either the old superblock with
//!    a WAL that still holds every newer commit, or the new superblock.
//! 3. Main-file cache entries of copied pages are evicted under the index write lock, so no
//!    reader can cache a stale main-file image once the WAL frames stop shadowing it.
//!
//! Image replacement (a replica installing a snapshot over its old image, `discard_image`):
//! the image number is bumped, the cache emptied and the index cleared under the index write
//! lock, and every read checks its version's image number under the index read lock. So a
//! reader of the old image either finished its read before the replacement began or is refused
//! with `Retry`; it never sees a page of the new image, and never caches a page of the old one
//! after the cache was emptied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hadal_format::limits::{MAIN_FILE_PAGES_OFFSET, SUPERBLOCK_REGION_BYTES};
use hadal_format::page;
use hadal_format::superblock::Superblock;
use hadal_format::{Lsn, PageNo};
use parking_lot::Mutex;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::wal::Wal;

/// Cache key: page number and the LSN of the frame the image came from, or [`MAIN_FILE`].
type CacheKey = (u32, u64);
const MAIN_FILE: u64 = u64::MAX;
/// A checkpoint writes runs of consecutive pages in writes of at most this many bytes.
const CHECKPOINT_WRITE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
struct PageWeighter;

impl Weighter<CacheKey, Bytes> for PageWeighter {
    fn weight(&self, _key: &CacheKey, value: &Bytes) -> u64 {
        value.len() as u64
    }
}

#[derive(Debug)]
pub(crate) struct Pager {
    pub page_size: usize,
    pub main: Arc<dyn Storage>,
    pub wal: Wal,
    cache: Cache<CacheKey, Bytes, PageWeighter>,
    pub superblock: Mutex<Superblock>,
    checkpoint_lock: Mutex<()>,
    /// The current image number: versions of an older one may no longer read pages.
    image: AtomicU64,
}

pub(crate) fn page_offset(page_no: PageNo, page_size: usize) -> u64 {
    MAIN_FILE_PAGES_OFFSET + page_no.index() * page_size as u64
}

impl Pager {
    pub fn new(main: Arc<dyn Storage>, wal: Wal, sb: Superblock, cache_bytes: usize) -> Self {
        let page_size = sb.page_size as usize;
        let items = (cache_bytes / page_size).max(16);
        Self {
            page_size,
            main,
            wal,
            cache: Cache::with_weighter(
                items,
                cache_bytes.max(16 * page_size) as u64,
                PageWeighter,
            ),
            superblock: Mutex::new(sb),
            checkpoint_lock: Mutex::new(()),
            image: AtomicU64::new(0),
        }
    }

    /// Holds off checkpoints while the caller rewrites the main file.
    pub fn lock_checkpoints(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.checkpoint_lock.lock()
    }

    /// Forgets the current image's pages: bumps the image number, so every version of the old
    /// image is refused from now on, empties the cache and discards the WAL (its file is
    /// truncated). Returns the new image number. The caller holds the writer slot and
    /// [`Pager::lock_checkpoints`], and then writes the superblock that matches.
    pub fn discard_image(&self) -> Result<u64> {
        let mut next = 0;
        self.wal.discard(|| {
            next = self.image.fetch_add(1, Ordering::SeqCst) + 1;
            self.cache.clear();
        })?;
        Ok(next)
    }

    /// The image of `page_no` as of `at` in image number `image`. `page_count` is the
    /// snapshot's, so a pointer past the end of the image is reported as corruption instead of
    /// read; a snapshot of a replaced image is refused with `Retry`.
    pub fn read(&self, page_no: PageNo, at: Lsn, page_count: u32, image: u64) -> Result<Bytes> {
        if page_no.get() >= page_count {
            return Err(Error::corrupt(
                format!("page {page_no}"),
                format!("referenced but the image has only {page_count} pages"),
            ));
        }
        let index = self.wal.index.read();
        if self.image.load(Ordering::SeqCst) != image {
            return Err(Error::ImageReplaced { lsn: at });
        }
        if let Some((lsn, frame)) = index.lookup(page_no, at) {
            let key = (page_no.get(), lsn.get());
            if let Some(hit) = self.cache.get(&key) {
                return Ok(hit);
            }
            let image = self.wal.read_frame_page(frame, page_no)?;
            self.cache.insert(key, image.clone());
            return Ok(image);
        }
        let key = (page_no.get(), MAIN_FILE);
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let image = self.read_main(page_no)?;
        self.cache.insert(key, image.clone());
        drop(index);
        Ok(image)
    }

    fn read_main(&self, page_no: PageNo) -> Result<Bytes> {
        let mut buf = vec![0u8; self.page_size];
        let object = || format!("page {page_no} of {}", self.main.name());
        self.main
            .read_at(page_offset(page_no, self.page_size), &mut buf)
            .map_err(|e| Error::io("read page", object(), e))?;
        page::verify(page_no, &buf).map_err(|e| Error::corrupt(object(), e))?;
        Ok(Bytes::from(buf))
    }

    /// Drops cached main-file images of `pages` (their copy in the main file was replaced).
    pub fn forget_main(&self, pages: impl IntoIterator<Item = PageNo>) {
        for p in pages {
            self.cache.remove(&(p.get(), MAIN_FILE));
        }
    }

    /// Puts freshly committed images in the cache: they are the likeliest to be read next.
    pub fn cache_committed(&self, lsn: Lsn, pages: &[(PageNo, Bytes)]) {
        for (p, image) in pages {
            self.cache.insert((p.get(), lsn.get()), image.clone());
        }
    }

    /// Copies committed pages up to `limit` into the main file. Returns the new checkpoint LSN,
    /// or `None` if there was nothing to do.
    pub fn checkpoint(&self, limit: Lsn) -> Result<Option<Lsn>> {
        let _one_at_a_time = self.checkpoint_lock.lock();
        let sb = *self.superblock.lock();
        let target = limit.min(self.wal.state.lock().last_lsn);
        if target <= sb.checkpoint_lsn {
            return Ok(None);
        }
        let meta = self.wal.commit_meta(target).ok_or_else(|| {
            Error::corrupt(
                "wal",
                format!("commit {target:?} is not in the current WAL generation"),
            )
        })?;
        self.wal.sync()?;
        let plan = self.wal.index.read().newest_through(target);
        let main_err = |op, e| Error::io(op, self.main.name().to_string(), e);
        let mut run: Vec<u8> = Vec::with_capacity(CHECKPOINT_WRITE_BYTES);
        let mut run_start: Option<PageNo> = None;
        for (i, &(page_no, lsn, frame)) in plan.iter().enumerate() {
            let image = match self.cache.get(&(page_no.get(), lsn.get())) {
                Some(hit) => hit,
                None => self.wal.read_frame_page(frame, page_no)?,
            };
            let start = *run_start.get_or_insert(page_no);
            run.extend_from_slice(&image);
            let next_is_adjacent = plan
                .get(i + 1)
                .is_some_and(|(n, _, _)| n.get() == page_no.get() + 1);
            if !next_is_adjacent || run.len() >= CHECKPOINT_WRITE_BYTES {
                self.main
                    .write_at(page_offset(start, self.page_size), &run)
                    .map_err(|e| main_err("checkpoint write", e))?;
                run.clear();
                run_start = None;
            }
        }
        self.main
            .sync()
            .map_err(|e| main_err("checkpoint sync", e))?;
        let next = Superblock {
            generation: sb.generation + 1,
            checkpoint_lsn: target,
            page_count: meta.page_count,
            checksum: meta.checksum_after,
            checkpoint_time_ms: meta.time_ms,
            ..sb
        };
        self.write_superblock(&next)?;
        *self.superblock.lock() = next;
        self.wal.checkpointed_through(target, |p| {
            self.cache.remove(&(p.get(), MAIN_FILE));
        });
        Ok(Some(target))
    }

    /// Writes `sb` into its region and syncs the main file.
    pub fn write_superblock(&self, sb: &Superblock) -> Result<()> {
        let main_err = |op, e| Error::io(op, self.main.name().to_string(), e);
        self.main
            .write_at(sb.region() * SUPERBLOCK_REGION_BYTES, &sb.encode())
            .map_err(|e| main_err("write superblock", e))?;
        self.main.sync().map_err(|e| main_err("sync superblock", e))
    }
}

/// Reads both superblock copies and returns the valid one with the highest generation, or
/// `None` for a new, empty main file.
pub(crate) fn read_superblock(main: &dyn Storage) -> Result<Option<Superblock>> {
    let len = main
        .len()
        .map_err(|e| Error::io("len", main.name().to_string(), e))?;
    if len == 0 {
        return Ok(None);
    }
    let mut best: Option<Superblock> = None;
    let mut errors = Vec::new();
    for region in 0..2u64 {
        let mut raw = vec![0u8; hadal_format::limits::SUPERBLOCK_BYTES];
        let offset = region * SUPERBLOCK_REGION_BYTES;
        if offset + raw.len() as u64 > len {
            errors.push(format!("superblock {region}: file too short"));
            continue;
        }
        main.read_at(offset, &mut raw)
            .map_err(|e| Error::io("read superblock", main.name().to_string(), e))?;
        match Superblock::decode(&raw) {
            Ok(sb) if best.is_none_or(|b| sb.generation > b.generation) => best = Some(sb),
            Ok(_) => {}
            Err(e) => errors.push(format!("superblock {region}: {e}")),
        }
    }
    match best {
        Some(sb) => Ok(Some(sb)),
        None => Err(Error::corrupt(
            format!("main file {}", main.name()),
            format!("no valid superblock ({})", errors.join("; ")),
        )),
    }
}

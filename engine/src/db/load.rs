//! Building a fresh database's image in one pass, without the WAL: the fast path of a restore.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use bytes::Bytes;
use hadal_format::page;
use hadal_format::superblock::Superblock;
use hadal_format::{Lsn, PageNo, StateChecksum};

use super::{Commit, Database, ImageHeader, Inner, Version, check_changed_pages};
use crate::error::{Error, Result};
use crate::pager::page_offset;

/// Builds the image of an empty database from a snapshot and the commits after it, writing
/// every page straight to its place in the main file: no WAL frames, no checkpoint copying them
/// again, one sync at the end. A restore spends most of its local work here.
///
/// It checks all that the follower path checks: every page's CRC, dense LSNs, each commit's
/// `checksum_before` and `checksum_after`, and each image's state checksum. It keeps the state
/// checksum's term of every page in memory (8 bytes a page), so replacing a page never reads
/// its old image back.
///
/// The disk works while pages still arrive: after every [`FLUSH_BYTES`] written, a thread of
/// its own syncs the main file (if the previous one is done), so the final sync finds little
/// left to write. Those syncs make nothing durable that a crash could expose early: the
/// superblock is written only by `finish`.
///
/// Nothing is visible before [`Loader::finish`]: readers see the empty database, and a crash
/// or an error before it leaves an empty database on disk (the superblock still describes no
/// pages; what was written lies beyond its page count). `finish` syncs the main file, then
/// writes the superblock that makes the loaded image the checkpoint, then publishes it. The
/// database must not be written to by anything else meanwhile: `finish` refuses if it was.
#[derive(Debug)]
pub struct Loader {
    inner: Arc<Inner>,
    lsn: Lsn,
    page_count: u32,
    checksum: StateChecksum,
    time_ms: u64,
    /// `StateChecksum::page_term` of every page in the image built so far.
    terms: Vec<u64>,
    /// Set once a step failed half-way or `finish` ran: the loader takes nothing more.
    done: Option<String>,
    /// Bytes written since the last early sync began.
    unflushed: u64,
    /// The early sync running, if any.
    flushing: Option<JoinHandle<io::Result<()>>>,
}

/// Bytes written between early syncs of the main file (see [`Loader`]).
pub const FLUSH_BYTES: u64 = 32 * 1024 * 1024;

impl Database {
    /// Starts loading an image into this database, which must be empty (a new folder, LSN 0,
    /// nothing in the WAL). See [`Loader`].
    pub fn loader(&self) -> Result<Loader> {
        let inner = &self.inner;
        inner.check_open()?;
        let _guard = inner.writer.lock();
        let current = inner.current.load_full();
        if current.lsn != Lsn::ZERO || current.page_count != 0 || !inner.pager.wal.is_unused() {
            return Err(Error::Invalid(format!(
                "a loader needs an empty database; this one is at lsn {}",
                current.lsn.get()
            )));
        }
        Ok(Loader {
            inner: inner.clone(),
            lsn: Lsn::ZERO,
            page_count: 0,
            checksum: StateChecksum::EMPTY,
            time_ms: 0,
            terms: Vec::new(),
            done: None,
            unflushed: 0,
            flushing: None,
        })
    }
}

impl Loader {
    /// The LSN of the image loaded so far.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The state checksum of the image loaded so far.
    pub fn checksum(&self) -> StateChecksum {
        self.checksum
    }

    /// Loads a whole image (a snapshot) as the start: `runs` as for
    /// [`Database::install_image`], runs of consecutive whole pages covering exactly
    /// `0..image.page_count` in order, each written with one call. Every page must pass its CRC
    /// and together they must give `image.checksum`.
    pub fn image(
        &mut self,
        image: ImageHeader,
        runs: impl IntoIterator<Item = Result<(PageNo, Bytes)>>,
    ) -> Result<()> {
        self.usable()?;
        if self.lsn != Lsn::ZERO || self.page_count != 0 {
            return Err(Error::Invalid(
                "a loader takes an image only as its first step".into(),
            ));
        }
        let object = format!("snapshot image at {:?}", image.lsn);
        let page_size = self.inner.pager.page_size;
        let mut checksum = StateChecksum::EMPTY;
        let mut terms = Vec::with_capacity(image.page_count as usize);
        for item in runs {
            let (first, bytes) = item?;
            if first.get() as usize != terms.len()
                || bytes.is_empty()
                || !bytes.len().is_multiple_of(page_size)
            {
                return Err(Error::corrupt(
                    &object,
                    format!("the run at page {first} is out of order or not whole pages"),
                ));
            }
            for page in bytes.chunks_exact(page_size) {
                let page_no = u32::try_from(terms.len())
                    .map(PageNo::new)
                    .map_err(|_| Error::corrupt(&object, "more pages than a page number counts"))?;
                page::verify(page_no, page)
                    .map_err(|e| Error::corrupt(format!("{object} page {page_no}"), e))?;
                let term = StateChecksum::page_term(page_no, page);
                checksum = StateChecksum::from_raw(checksum.get() ^ term);
                terms.push(term);
            }
            self.write(first, &bytes, "install image")?;
        }
        if terms.len() != image.page_count as usize || checksum != image.checksum {
            return Err(Error::corrupt(
                &object,
                format!(
                    "{} pages with checksum {checksum:?}, expected {} pages with {:?}",
                    terms.len(),
                    image.page_count,
                    image.checksum
                ),
            ));
        }
        self.terms = terms;
        self.lsn = image.lsn;
        self.page_count = image.page_count;
        self.checksum = checksum;
        self.time_ms = image.time_ms;
        Ok(())
    }

    /// Applies the next commit, with the checks of [`Database::apply_commit`]. Nothing is
    /// written unless every check passes.
    pub fn commit(&mut self, commit: &Commit) -> Result<()> {
        self.usable()?;
        let object = || format!("commit {:?}", commit.lsn);
        if commit.lsn != self.lsn.next() {
            return Err(Error::Invalid(format!(
                "commit {:?} does not follow the loaded lsn {:?}",
                commit.lsn, self.lsn
            )));
        }
        if commit.checksum_before != self.checksum {
            return Err(Error::corrupt(
                object(),
                format!(
                    "checksum_before {:?} differs from the loaded image's {:?}: histories diverged",
                    commit.checksum_before, self.checksum
                ),
            ));
        }
        let (pages, page_count) = (&commit.pages, commit.page_count);
        self.change(&object(), pages, page_count, commit.checksum_after)?;
        self.time_ms = commit.time_ms;
        self.lsn = commit.lsn;
        Ok(())
    }

    /// Moves the image straight to `image.lsn` by the newest image of every page a run of
    /// commits changed (a compacted run), with the checks of [`Database::apply_delta`].
    pub fn delta(
        &mut self,
        image: ImageHeader,
        checksum_before: StateChecksum,
        pages: &[(PageNo, Bytes)],
    ) -> Result<()> {
        self.usable()?;
        let object = || format!("compacted commits up to {:?}", image.lsn);
        if image.lsn <= self.lsn {
            return Err(Error::Invalid(format!(
                "compacted commits up to {:?} do not follow the loaded lsn {:?}",
                image.lsn, self.lsn
            )));
        }
        if checksum_before != self.checksum {
            return Err(Error::corrupt(
                object(),
                format!(
                    "checksum_before {checksum_before:?} differs from the loaded image's {:?}",
                    self.checksum
                ),
            ));
        }
        self.change(&object(), pages, image.page_count, image.checksum)?;
        self.time_ms = image.time_ms;
        self.lsn = image.lsn;
        Ok(())
    }

    /// Syncs the main file, makes the loaded image its checkpoint and publishes it. Loading
    /// nothing leaves the database as it was.
    pub fn finish(&mut self) -> Result<()> {
        self.usable()?;
        self.done = Some("the load has finished".into());
        if self.lsn == Lsn::ZERO && self.page_count == 0 {
            return Ok(());
        }
        let inner = &*self.inner;
        let pager = &inner.pager;
        let _guard = inner.writer.lock();
        let _checkpoints = pager.lock_checkpoints();
        let current = inner.current.load_full();
        if current.lsn != Lsn::ZERO || current.page_count != 0 || !pager.wal.is_unused() {
            return Err(Error::Invalid(format!(
                "the database was written to (lsn {}) while an image was loaded into it",
                current.lsn.get()
            )));
        }
        let early = match self.flushing.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the syncing thread panicked"))),
            None => Ok(()),
        };
        early.and_then(|()| pager.main.sync()).map_err(|e| {
            let e = Error::io("load image", pager.main.name().to_string(), e);
            inner.poison(&e.to_string());
            e
        })?;
        let sb = {
            let now = *pager.superblock.lock();
            Superblock {
                generation: now.generation + 1,
                checkpoint_lsn: self.lsn,
                page_count: self.page_count,
                checksum: self.checksum,
                checkpoint_time_ms: self.time_ms,
                ..now
            }
        };
        pager.write_superblock(&sb)?;
        *pager.superblock.lock() = sb;
        pager.wal.reset_to(self.lsn, self.checksum);
        inner.lsn_shipped.store(self.lsn.get(), Ordering::SeqCst);
        inner.publish(Arc::new(Version {
            lsn: self.lsn,
            page_count: self.page_count,
            checksum: self.checksum,
            time_ms: self.time_ms,
            image: current.image,
        }));
        Ok(())
    }

    fn usable(&self) -> Result<()> {
        self.inner.check_open()?;
        match &self.done {
            Some(why) => Err(Error::Invalid(format!(
                "the loader takes nothing more: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Checks `pages` as a change of the loaded image to `page_count` pages with state
    /// checksum `expected`, then writes them.
    fn change(
        &mut self,
        object: &str,
        pages: &[(PageNo, Bytes)],
        page_count: u32,
        expected: StateChecksum,
    ) -> Result<()> {
        check_changed_pages(
            object,
            self.page_count,
            page_count,
            pages,
            self.inner.pager.page_size,
        )?;
        let mut checksum = self.checksum.get();
        let mut terms = Vec::with_capacity(pages.len());
        for (page_no, bytes) in pages {
            let term = StateChecksum::page_term(*page_no, bytes);
            if let Some(old) = self.terms.get(page_no.get() as usize) {
                checksum ^= old;
            }
            checksum ^= term;
            terms.push(term);
        }
        let checksum = StateChecksum::from_raw(checksum);
        if checksum != expected {
            return Err(Error::corrupt(
                object,
                format!("its pages give state checksum {checksum:?} but it claims {expected:?}"),
            ));
        }
        self.terms.resize(page_count as usize, 0);
        for ((page_no, bytes), term) in pages.iter().zip(terms) {
            self.terms[page_no.get() as usize] = term;
            self.write(*page_no, bytes, "load pages")?;
        }
        self.page_count = page_count;
        self.checksum = checksum;
        Ok(())
    }

    fn write(&mut self, first: PageNo, bytes: &[u8], op: &'static str) -> Result<()> {
        let pager = &self.inner.pager;
        let fail = |e: io::Error| {
            let e = Error::io(op, pager.main.name().to_string(), e);
            self.inner.poison(&e.to_string());
            e
        };
        let written = pager
            .main
            .write_at(page_offset(first, pager.page_size), bytes)
            .map_err(fail)
            .and_then(|()| {
                self.unflushed += bytes.len() as u64;
                if self.unflushed < FLUSH_BYTES
                    || self.flushing.as_ref().is_some_and(|t| !t.is_finished())
                {
                    return Ok(());
                }
                // The previous early sync is done: collect its result, start the next.
                if let Some(thread) = self.flushing.take() {
                    thread
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("the syncing thread panicked")))
                        .map_err(fail)?;
                }
                self.unflushed = 0;
                let main = pager.main.clone();
                self.flushing = Some(
                    std::thread::Builder::new()
                        .name("hadal-load-sync".into())
                        .spawn(move || main.sync())
                        .map_err(fail)?,
                );
                Ok(())
            });
        if let Err(e) = &written {
            self.done = Some(e.to_string());
        }
        written
    }
}

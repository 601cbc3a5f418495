//! The database handle: opening and recovery, the writer slot, group commit, publishing
//! versions to readers, the follower path, shipping hooks, checkpoints and the background
//! thread.
//!
//! Invariants this module owns:
//! 1. LSNs are dense: each published version is the previous one's LSN + 1, and its
//!    `checksum` is the previous checksum updated by exactly the pages of that commit.
//! 2. A version is published (visible to `begin_read`) only after its frames are written to the
//!    WAL, and, for `Durability::Sync`, synced.
//! 3. A checkpoint never passes `min(oldest live reader, lsn_shipped)` (the latter only when
//!    shipping retention is on).
//! 4. After a failed WAL write or sync the database is poisoned: every later write fails with
//!    `Closed` until it is reopened, because the kernel may have dropped the dirty pages.
//! 5. Replacing a non-empty image (`install_image` on a replica behind the bucket's GC) never
//!    lets a reader mix images: read snapshots of the old image are refused from the moment it
//!    is discarded (`Pager::discard_image`). On disk the order is WAL truncated → superblock of
//!    an empty database → new pages → superblock of the new image, each step synced, so a
//!    crash leaves the old checkpoint, an empty database, or the new image, never a mixture.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hadal_format::limits::{
    MAIN_FILE_PAGES_OFFSET, PAGE_SIZE_DEFAULT, WAL_HEADER_BYTES, page_size_is_valid,
};
use hadal_format::page;
use hadal_format::superblock::Superblock;
use hadal_format::wal::{CommitInfo, WalHeader};
use hadal_format::{Lsn, PageNo, StateChecksum};
use parking_lot::Mutex;

use crate::batch::Batch;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorKind, Result};
use crate::pager::{Pager, read_superblock};
use crate::storage::{FileStorage, Storage};
use crate::txn::{ReadTxn, Version, WriteTxn};
use crate::wal::Wal;

mod load;
pub use load::Loader;

/// File names inside a data folder.
pub const MAIN_FILE_NAME: &str = "hadal.db";
pub const WAL_FILE_NAME: &str = "hadal.wal";

/// How far a commit must have gone before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The WAL is fdatasynced: the commit survives power loss.
    #[default]
    Sync,
    /// The WAL is written but not synced: the commit survives a process crash, not power loss.
    NoSync,
}

/// Settings for opening a database.
#[derive(Clone)]
pub struct Options {
    /// Page size for a new database (existing ones keep theirs).
    pub page_size: u32,
    /// Page cache budget in bytes.
    pub cache_bytes: usize,
    /// The background thread checkpoints once the WAL holds this many bytes of frames.
    pub checkpoint_wal_bytes: u64,
    /// Run the background thread (checkpoints and the TTL sweeper).
    pub background: bool,
    /// How often the background thread deletes expired keys; `None` turns the sweeper off.
    /// A follower (a database fed by `apply_commit`) must not sweep: its primary's sweeps
    /// arrive as ordinary commits, and a local one would fork its image.
    pub sweep_interval: Option<Duration>,
    /// Keep every commit after `lsn_shipped` in the WAL (set when a shipper is attached).
    pub retain_unshipped: bool,
    pub clock: Arc<dyn Clock>,
    /// Called after every commit is published, with its LSN (the shipper's wake-up). It runs
    /// on the committing thread with the writer slot held: it must only signal, never block.
    pub on_commit: Option<CommitHook>,
}

/// See [`Options::on_commit`].
pub type CommitHook = Arc<dyn Fn(Lsn) + Send + Sync>;

impl Default for Options {
    fn default() -> Self {
        Self {
            page_size: PAGE_SIZE_DEFAULT,
            cache_bytes: 256 * 1024 * 1024,
            checkpoint_wal_bytes: 64 * 1024 * 1024,
            background: true,
            sweep_interval: Some(Duration::from_secs(1)),
            retain_unshipped: false,
            clock: Arc::new(SystemClock),
            on_commit: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("page_size", &self.page_size)
            .field("cache_bytes", &self.cache_bytes)
            .field("checkpoint_wal_bytes", &self.checkpoint_wal_bytes)
            .field("background", &self.background)
            .field("sweep_interval", &self.sweep_interval)
            .field("retain_unshipped", &self.retain_unshipped)
            .field("clock", &self.clock)
            .field("on_commit", &self.on_commit.as_ref().map(|_| "hook"))
            .finish()
    }
}

/// Expired keys deleted per sweeper commit, so one sweep never holds the writer for long.
const SWEEP_BATCH_KEYS: usize = 1000;
/// How long a checkpoint waits for the writer slot to catch up before giving up on it (a
/// caller holding a write transaction must not deadlock a checkpoint it called).
const CHECKPOINT_CATCH_UP_WAIT: Duration = Duration::from_millis(100);
/// The background thread wakes at least this often.
const BACKGROUND_TICK: Duration = Duration::from_millis(100);

/// One committed transaction as the shipper sees it and the follower path installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub lsn: Lsn,
    /// Commit time, ms since the Unix epoch.
    pub time_ms: u64,
    /// Every page the commit changed, sorted by page number, as sealed images.
    pub pages: Vec<(PageNo, Bytes)>,
    /// Pages in the image after the commit.
    pub page_count: u32,
    pub checksum_before: StateChecksum,
    pub checksum_after: StateChecksum,
}

/// What describes a whole image: see [`Database::install_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub lsn: Lsn,
    pub page_count: u32,
    pub checksum: StateChecksum,
    pub time_ms: u64,
}

/// Counters and positions for `hadal info` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub lsn_committed: Lsn,
    pub lsn_checkpoint: Lsn,
    pub lsn_shipped: Lsn,
    pub page_size: u32,
    pub page_count: u32,
    pub checksum: StateChecksum,
    pub wal_bytes: u64,
    pub db_id: [u8; 16],
}

/// A commit on its way into the WAL.
#[derive(Debug)]
pub(crate) struct PendingCommit {
    pub lsn: Lsn,
    pub time_ms: u64,
    pub page_count: u32,
    /// Sealed page images, sorted by page number.
    pub images: Vec<(PageNo, Bytes)>,
    /// For the follower path: the checksum the sender claims; the commit is refused if its
    /// pages give another.
    pub expected_checksum: Option<StateChecksum>,
}

#[derive(Debug)]
struct Request {
    batch: Mutex<Option<Batch>>,
    result: Mutex<Option<Result<Lsn>>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub pager: Pager,
    current: ArcSwap<Version>,
    /// Every version handed out that may still be held by a reader.
    published: Mutex<Vec<Weak<Version>>>,
    pub writer: Mutex<()>,
    queue: Mutex<Vec<Arc<Request>>>,
    lsn_shipped: AtomicU64,
    poisoned: Mutex<Option<String>>,
    options: Options,
    wake: Mutex<Option<SyncSender<()>>>,
    stop: AtomicBool,
}

/// An open database. Cheap to clone; the background thread stops when the last clone drops.
#[derive(Debug, Clone)]
pub struct Database {
    /// Held only so the background thread stops when the last clone drops.
    _background: Option<Arc<Background>>,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Background {
    inner: Weak<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.stop.store(true, Ordering::SeqCst);
            if let Some(wake) = inner.wake.lock().as_ref() {
                let _ = wake.try_send(());
            }
        }
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

fn replicate(e: &Error) -> Error {
    match e.kind() {
        ErrorKind::Corrupt => Error::corrupt("database", e.to_string()),
        ErrorKind::Invalid => Error::Invalid(e.to_string()),
        ErrorKind::Io => Error::io(
            "group commit",
            "database",
            std::io::Error::other(e.to_string()),
        ),
        _ => Error::Closed(e.to_string()),
    }
}

impl Database {
    /// Opens (or creates) the database in the folder `dir`.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Database> {
        let dir = dir.as_ref();
        let shown = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", &shown, e))?;
        let main_path = dir.join(MAIN_FILE_NAME);
        let main = FileStorage::open(&main_path)
            .map_err(|e| Error::io("open", main_path.display().to_string(), e))?;
        if !main.try_lock().map_err(|e| Error::io("lock", &shown, e))? {
            return Err(Error::Busy(shown));
        }
        let wal_path = dir.join(WAL_FILE_NAME);
        let wal = FileStorage::open(&wal_path)
            .map_err(|e| Error::io("open", wal_path.display().to_string(), e))?;
        // Make the new directory entries durable before anything depends on them.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync folder", &shown, e))?;
        Self::open_storage(Arc::new(main), Arc::new(wal), options)
    }

    /// Opens a database on explicit storage (in-memory and fault-injecting tests).
    pub fn open_storage(
        main: Arc<dyn Storage>,
        wal: Arc<dyn Storage>,
        options: Options,
    ) -> Result<Database> {
        if !page_size_is_valid(options.page_size) {
            return Err(Error::Invalid(format!(
                "page size {} must be a power of two from 4096 to 65536",
                options.page_size
            )));
        }
        let sb = match read_superblock(&*main) {
            Ok(Some(sb)) => sb,
            Ok(None) => create(&*main, options.page_size)?,
            Err(e) if never_used(&*main, &*wal)? => {
                tracing::warn!(error = %e, "main file has no valid superblock and nothing was ever written: creating");
                create(&*main, options.page_size)?
            }
            Err(e) => return Err(e),
        };
        let (wal, tip) = Wal::recover(wal, &sb)?;
        let pager = Pager::new(main, wal, sb, options.cache_bytes);
        let version = Arc::new(Version {
            lsn: tip.lsn,
            page_count: tip.page_count,
            checksum: tip.checksum,
            time_ms: tip.time_ms,
            image: 0,
        });
        let inner = Arc::new(Inner {
            pager,
            published: Mutex::new(vec![Arc::downgrade(&version)]),
            current: ArcSwap::new(version),
            writer: Mutex::new(()),
            queue: Mutex::new(Vec::new()),
            lsn_shipped: AtomicU64::new(sb.checkpoint_lsn.get()),
            poisoned: Mutex::new(None),
            wake: Mutex::new(None),
            stop: AtomicBool::new(false),
            options,
        });
        let background = inner.options.background.then(|| start_background(&inner));
        Ok(Database {
            _background: background,
            inner,
        })
    }

    /// Starts a read snapshot at the latest published LSN. Never blocks.
    pub fn begin_read(&self) -> ReadTxn {
        ReadTxn::new(
            self.inner.clone(),
            self.inner.current.load_full(),
            self.inner.options.clock.now_ms(),
        )
    }

    /// Takes the writer slot (waiting for the current writer) and starts a write transaction.
    pub fn begin_write(&self) -> Result<WriteTxn<'_>> {
        self.inner.check_open()?;
        let guard = self.inner.writer.lock();
        self.inner.check_open()?;
        WriteTxn::new(
            &self.inner,
            Some(guard),
            self.inner.current.load_full(),
            self.inner.options.clock.now_ms(),
        )
    }

    /// Applies a batch through group commit: concurrent callers' batches are applied in arrival
    /// order in one transaction, written once and synced once.
    pub fn apply(&self, batch: Batch) -> Result<Lsn> {
        batch.validate()?;
        self.inner.check_open()?;
        let request = Arc::new(Request {
            batch: Mutex::new(Some(batch)),
            result: Mutex::new(None),
        });
        self.inner.queue.lock().push(request.clone());
        let guard = self.inner.writer.lock();
        if let Some(result) = request.result.lock().take() {
            return result;
        }
        let group = std::mem::take(&mut *self.inner.queue.lock());
        self.inner.run_group(guard, &group);
        request
            .result
            .lock()
            .take()
            .unwrap_or_else(|| Err(Error::Closed("group commit lost a request".into())))
    }

    /// Commits `batches` as one group, exactly as if each had been passed to [`Database::apply`]
    /// by concurrent callers whose requests formed one group: one transaction and one LSN for
    /// every batch whose assertions hold, while a batch that is malformed or whose assertion
    /// fails gets its error and writes nothing. Results come in the order of `batches`. For a
    /// caller that queues writes itself and commits them from one thread (the facade's
    /// committer), which saves a thread and a lock hand-off per write.
    pub fn apply_group(&self, batches: Vec<Batch>) -> Vec<Result<Lsn>> {
        let mut results: Vec<Option<Result<Lsn>>> = Vec::with_capacity(batches.len());
        let mut requests = Vec::with_capacity(batches.len());
        for batch in batches {
            match batch.validate() {
                Err(e) => results.push(Some(Err(e))),
                Ok(()) => {
                    results.push(None);
                    requests.push(Arc::new(Request {
                        batch: Mutex::new(Some(batch)),
                        result: Mutex::new(None),
                    }));
                }
            }
        }
        if !requests.is_empty() {
            match self.inner.check_open() {
                Ok(()) => {
                    let guard = self.inner.writer.lock();
                    self.inner.run_group(guard, &requests);
                }
                Err(e) => {
                    for r in &requests {
                        *r.result.lock() = Some(Err(replicate(&e)));
                    }
                }
            }
        }
        let mut answered = requests.iter();
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    answered
                        .next()
                        .and_then(|r| r.result.lock().take())
                        .unwrap_or_else(|| Err(Error::Closed("group commit lost a request".into())))
                })
            })
            .collect()
    }

    /// The commits after `after`, at most `max` of them, from the local WAL.
    pub fn commits_since(&self, after: Lsn, max: usize) -> Result<Vec<Commit>> {
        let raw = self.inner.pager.wal.commits_since(after, max)?;
        Ok(raw
            .into_iter()
            .map(|(meta, pages)| Commit {
                lsn: meta.lsn,
                time_ms: meta.time_ms,
                pages,
                page_count: meta.page_count,
                checksum_before: meta.checksum_before,
                checksum_after: meta.checksum_after,
            })
            .collect())
    }

    /// Records that every commit up to `lsn` is durable elsewhere, releasing it for checkpoint.
    pub fn set_lsn_shipped(&self, lsn: Lsn) {
        self.inner
            .lsn_shipped
            .fetch_max(lsn.get(), Ordering::SeqCst);
    }

    pub fn lsn_shipped(&self) -> Lsn {
        Lsn::new(self.inner.lsn_shipped.load(Ordering::SeqCst))
    }

    /// The follower path: installs a commit shipped from a primary after checking that it
    /// continues this image (`checksum_before`) and produces what it claims (`checksum_after`).
    pub fn apply_commit(&self, commit: &Commit, durability: Durability) -> Result<()> {
        self.inner.check_open()?;
        let _guard = self.inner.writer.lock();
        let base = self.inner.current.load_full();
        let object = || format!("commit {:?}", commit.lsn);
        if commit.lsn != base.lsn.next() {
            return Err(Error::Invalid(format!(
                "commit {:?} does not follow the local lsn {:?}",
                commit.lsn, base.lsn
            )));
        }
        if commit.checksum_before != base.checksum {
            return Err(Error::corrupt(
                object(),
                format!(
                    "checksum_before {:?} differs from the local image's {:?}: histories diverged",
                    commit.checksum_before, base.checksum
                ),
            ));
        }
        check_changed_pages(
            &object(),
            base.page_count,
            commit.page_count,
            &commit.pages,
            self.inner.pager.page_size,
        )?;
        let pending = PendingCommit {
            lsn: commit.lsn,
            time_ms: commit.time_ms,
            page_count: commit.page_count,
            images: commit.pages.clone(),
            expected_checksum: Some(commit.checksum_after),
        };
        self.inner.commit_pages(&base, pending, durability)
    }

    /// Installs a whole image at `image.lsn` (a snapshot from the bucket): seeds an empty
    /// database, or replaces the image of one that is behind it (a replica that fell behind the
    /// bucket's GC re-bootstraps). The pages go straight to the main file and a superblock makes
    /// them the checkpoint. `runs` yields runs of consecutive pages, each the number of its first
    /// page and the images of one or more pages back to back (a whole snapshot part, say), each
    /// run written with one call. Together the runs must be exactly `0..page_count`, in order;
    /// every page must pass its CRC and the state checksum they give must equal
    /// `image.checksum`. Later commits arrive through `apply_commit`.
    ///
    /// Replacing a non-empty image first discards it (invariant 5): read snapshots of the old
    /// image fail from then on with [`ErrorKind::Retry`], also those begun while the new image
    /// is written; none ever mixes the two. If the new image turns out wrong (a checksum, an
    /// I/O error), the database is left empty at LSN 0, on disk and for readers, and the error
    /// is returned (an I/O error also poisons it). Seeding an empty database that fails leaves
    /// it empty as it was.
    pub fn install_image(
        &self,
        image: ImageHeader,
        runs: impl IntoIterator<Item = Result<(PageNo, Bytes)>>,
    ) -> Result<()> {
        self.inner.check_open()?;
        let _guard = self.inner.writer.lock();
        let current = self.inner.current.load_full();
        if current.lsn != Lsn::ZERO && current.lsn >= image.lsn {
            return Err(Error::Invalid(format!(
                "install_image over lsn {:?} needs a newer image, not one at {:?}",
                current.lsn, image.lsn
            )));
        }
        let _checkpoints = self.inner.pager.lock_checkpoints();
        let number = if current.lsn == Lsn::ZERO {
            current.image
        } else {
            self.inner.discard_image().inspect_err(|e| {
                self.inner.poison(&e.to_string());
            })?
        };
        let written = self.inner.write_image(image, runs, number);
        if let Err(e) = &written
            && number != current.image
        {
            if e.kind() == ErrorKind::Io {
                self.inner.poison(&e.to_string());
            }
            // The old image is gone and the new one did not land: say what the disk says.
            self.inner.publish(Arc::new(Version {
                lsn: Lsn::ZERO,
                page_count: 0,
                checksum: StateChecksum::EMPTY,
                time_ms: 0,
                image: number,
            }));
        }
        written
    }

    /// Moves a checkpointed database from its LSN straight to `image.lsn` by a set of page
    /// images (a compacted run of commits from the bucket: the newest image of every page the
    /// run changed). The state checksum must be `checksum_before` now and the pages must give
    /// `image.checksum`, or nothing changes. The pages go to the main file and a superblock
    /// makes them the checkpoint, as `install_image` does; the WAL must hold no commits past the
    /// checkpoint (call `checkpoint` first, with no snapshot readers open).
    pub fn apply_delta(
        &self,
        image: ImageHeader,
        checksum_before: StateChecksum,
        pages: &[(PageNo, Bytes)],
    ) -> Result<()> {
        self.inner.check_open()?;
        let _guard = self.inner.writer.lock();
        let base = self.inner.current.load_full();
        let pager = &self.inner.pager;
        let object = || format!("compacted commits up to {:?}", image.lsn);
        if pager.superblock.lock().checkpoint_lsn != base.lsn {
            return Err(Error::Invalid(
                "apply_delta needs every commit checkpointed first".into(),
            ));
        }
        if image.lsn <= base.lsn {
            return Err(Error::Invalid(format!(
                "compacted commits up to {:?} do not follow the local lsn {:?}",
                image.lsn, base.lsn
            )));
        }
        if checksum_before != base.checksum {
            return Err(Error::corrupt(
                object(),
                format!(
                    "checksum_before {checksum_before:?} differs from the local image's {:?}",
                    base.checksum
                ),
            ));
        }
        check_changed_pages(
            &object(),
            base.page_count,
            image.page_count,
            pages,
            pager.page_size,
        )?;
        let mut checksum = base.checksum;
        for (page_no, bytes) in pages {
            if page_no.get() < base.page_count {
                let old = pager.read(*page_no, base.lsn, base.page_count, base.image)?;
                checksum.replace(*page_no, &old, bytes);
            } else {
                checksum.add(*page_no, bytes);
            }
        }
        if checksum != image.checksum {
            return Err(Error::corrupt(
                object(),
                format!(
                    "its pages give checksum {checksum:?}, expected {:?}",
                    image.checksum
                ),
            ));
        }
        // Pages are patched in place: first the published image is discarded on disk (a crash
        // from here on reopens an empty database, never a half-patched one) and readers of the
        // old image are refused (`Retry`), as `install_image` does when it replaces an image.
        let _checkpoints = pager.lock_checkpoints();
        let number = self
            .inner
            .discard_image()
            .inspect_err(|e| self.inner.poison(&e.to_string()))?;
        let main_err = |op, e| Error::io(op, pager.main.name().to_string(), e);
        let written = pages
            .iter()
            .try_for_each(|(page_no, bytes)| {
                pager
                    .main
                    .write_at(crate::pager::page_offset(*page_no, pager.page_size), bytes)
            })
            .and_then(|()| pager.main.sync())
            .map_err(|e| main_err("apply compacted pages", e));
        if let Err(e) = written {
            self.inner.poison(&e.to_string());
            self.inner.publish(Arc::new(Version {
                lsn: Lsn::ZERO,
                page_count: 0,
                checksum: StateChecksum::EMPTY,
                time_ms: 0,
                image: number,
            }));
            return Err(e);
        }
        let sb = {
            let current = *pager.superblock.lock();
            Superblock {
                generation: current.generation + 1,
                checkpoint_lsn: image.lsn,
                page_count: image.page_count,
                checksum,
                checkpoint_time_ms: image.time_ms,
                ..current
            }
        };
        pager.write_superblock(&sb)?;
        *pager.superblock.lock() = sb;
        pager.forget_main(pages.iter().map(|(p, _)| *p));
        pager.wal.reset_to(image.lsn, checksum);
        self.inner
            .lsn_shipped
            .fetch_max(image.lsn.get(), Ordering::SeqCst);
        self.inner.publish(Arc::new(Version {
            lsn: image.lsn,
            page_count: image.page_count,
            checksum,
            time_ms: image.time_ms,
            image: number,
        }));
        Ok(())
    }

    /// Copies committed pages into the main file, up to what readers and shipping allow.
    /// Returns the checkpoint LSN reached, if it moved.
    pub fn checkpoint(&self) -> Result<Option<Lsn>> {
        self.inner.checkpoint()
    }

    /// Deletes up to `max` expired keys in one commit. Returns how many were deleted.
    pub fn sweep_expired(&self, max: usize) -> Result<usize> {
        self.inner.sweep_expired(max)
    }

    pub fn info(&self) -> Info {
        let v = self.inner.current.load();
        let sb = *self.inner.pager.superblock.lock();
        Info {
            lsn_committed: v.lsn,
            lsn_checkpoint: sb.checkpoint_lsn,
            lsn_shipped: self.lsn_shipped(),
            page_size: sb.page_size,
            page_count: v.page_count,
            checksum: v.checksum,
            wal_bytes: self.inner.pager.wal.bytes_used(),
            db_id: sb.db_id,
        }
    }

    /// The latest committed LSN.
    pub fn lsn(&self) -> Lsn {
        self.inner.current.load().lsn
    }

    /// Walks every page and structure and reports what is wrong (see [`crate::integrity`]).
    pub fn check_integrity(&self) -> Result<crate::integrity::Report> {
        crate::integrity::check(&self.begin_read())
    }
}

/// Whether a main file without a valid superblock could never have held data: no page was
/// ever checkpointed into it and the WAL never got a valid header.
fn never_used(main: &dyn Storage, wal: &dyn Storage) -> Result<bool> {
    let main_len = main
        .len()
        .map_err(|e| Error::io("len", main.name().to_string(), e))?;
    if main_len > MAIN_FILE_PAGES_OFFSET {
        return Ok(false);
    }
    let wal_len = wal
        .len()
        .map_err(|e| Error::io("len", wal.name().to_string(), e))?;
    if wal_len < WAL_HEADER_BYTES as u64 {
        return Ok(true);
    }
    let mut raw = [0u8; WAL_HEADER_BYTES];
    wal.read_at(0, &mut raw)
        .map_err(|e| Error::io("read header", wal.name().to_string(), e))?;
    Ok(WalHeader::decode(&raw).is_err())
}

/// Writes both superblock copies of a new, empty database.
fn create(main: &dyn Storage, page_size: u32) -> Result<Superblock> {
    let mut sb = Superblock {
        page_size,
        generation: 0,
        checkpoint_lsn: Lsn::ZERO,
        page_count: 0,
        checksum: StateChecksum::EMPTY,
        checkpoint_time_ms: 0,
        db_id: rand::random(),
    };
    let err = |op, e| Error::io(op, main.name().to_string(), e);
    for generation in 0..2 {
        sb.generation = generation;
        main.write_at(
            sb.region() * hadal_format::limits::SUPERBLOCK_REGION_BYTES,
            &sb.encode(),
        )
        .map_err(|e| err("create", e))?;
    }
    main.sync().map_err(|e| err("create", e))?;
    Ok(sb)
}

/// Checks the pages a commit (or a compacted run of commits) changes: sorted and unique page
/// numbers inside the new image, whole pages that pass their CRC, an image that never shrinks,
/// and every page past the old image carried.
fn check_changed_pages(
    object: &str,
    page_count_before: u32,
    page_count: u32,
    pages: &[(PageNo, Bytes)],
    page_size: usize,
) -> Result<()> {
    if page_count < page_count_before || pages.is_empty() {
        return Err(Error::corrupt(
            object,
            "shrinks the image or changes no pages",
        ));
    }
    let mut expected_new = page_count_before;
    for (i, (page_no, image)) in pages.iter().enumerate() {
        if i > 0 && pages[i - 1].0 >= *page_no {
            return Err(Error::corrupt(object, "pages are not sorted and unique"));
        }
        if page_no.get() >= page_count || image.len() != page_size {
            return Err(Error::corrupt(
                object,
                format!("page {page_no} is out of range or the wrong size"),
            ));
        }
        page::verify(*page_no, image)
            .map_err(|e| Error::corrupt(format!("{object} page {page_no}"), e))?;
        if page_no.get() == expected_new {
            expected_new += 1;
        }
    }
    if expected_new != page_count {
        return Err(Error::corrupt(
            object,
            "grows the image without carrying every new page",
        ));
    }
    Ok(())
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            Some(why) => Err(Error::Closed(format!(
                "an earlier failure poisoned the database ({why}); reopen it"
            ))),
            None => Ok(()),
        }
    }

    fn poison(&self, why: &str) {
        tracing::error!(
            reason = why,
            "database poisoned: refusing further writes until reopened"
        );
        self.poisoned.lock().get_or_insert_with(|| why.to_string());
    }

    /// Discards the published image on disk (invariant 5): the WAL goes first (a crash then
    /// reopens at the old checkpoint), then a superblock of an empty database (a crash then
    /// reopens empty). Returns the new image number. The published version is left alone, so
    /// new readers find the old image and are refused, rather than an empty database. Called
    /// with the writer slot and the checkpoint lock held.
    fn discard_image(&self) -> Result<u64> {
        let pager = &self.pager;
        let number = pager.discard_image()?;
        let sb = {
            let current = *pager.superblock.lock();
            Superblock {
                generation: current.generation + 1,
                checkpoint_lsn: Lsn::ZERO,
                page_count: 0,
                checksum: StateChecksum::EMPTY,
                checkpoint_time_ms: 0,
                ..current
            }
        };
        pager.write_superblock(&sb)?;
        *pager.superblock.lock() = sb;
        pager.wal.reset_to(Lsn::ZERO, StateChecksum::EMPTY);
        self.lsn_shipped.store(0, Ordering::SeqCst);
        tracing::info!("discarded the local image to install a newer one");
        Ok(number)
    }

    /// Writes `image` into the main file of an empty database and publishes it as image number
    /// `number`. Called with the writer slot and the checkpoint lock held.
    fn write_image(
        &self,
        image: ImageHeader,
        runs: impl IntoIterator<Item = Result<(PageNo, Bytes)>>,
        number: u64,
    ) -> Result<()> {
        let pager = &self.pager;
        let object = format!("snapshot image at {:?}", image.lsn);
        let mut checksum = StateChecksum::EMPTY;
        let mut expected = 0u32;
        let main_err = |op, e| Error::io(op, pager.main.name().to_string(), e);
        for item in runs {
            let (first, bytes) = item?;
            if first.get() != expected
                || bytes.is_empty()
                || !bytes.len().is_multiple_of(pager.page_size)
            {
                return Err(Error::corrupt(
                    &object,
                    format!("the run at page {first} is out of order or not whole pages"),
                ));
            }
            for page in bytes.chunks_exact(pager.page_size) {
                let page_no = PageNo::new(expected);
                page::verify(page_no, page)
                    .map_err(|e| Error::corrupt(format!("{object} page {page_no}"), e))?;
                checksum.add(page_no, page);
                expected = expected.checked_add(1).ok_or_else(|| {
                    Error::corrupt(&object, "more pages than a page number can count")
                })?;
            }
            pager
                .main
                .write_at(crate::pager::page_offset(first, pager.page_size), &bytes)
                .map_err(|e| main_err("install image", e))?;
        }
        if expected != image.page_count || checksum != image.checksum {
            return Err(Error::corrupt(
                &object,
                format!(
                    "{expected} pages with checksum {checksum:?}, expected {} pages with {:?}",
                    image.page_count, image.checksum
                ),
            ));
        }
        pager
            .main
            .sync()
            .map_err(|e| main_err("install image", e))?;
        let sb = {
            let current = *pager.superblock.lock();
            Superblock {
                generation: current.generation + 1,
                checkpoint_lsn: image.lsn,
                page_count: image.page_count,
                checksum,
                checkpoint_time_ms: image.time_ms,
                ..current
            }
        };
        pager.write_superblock(&sb)?;
        *pager.superblock.lock() = sb;
        pager.wal.reset_to(image.lsn, checksum);
        self.lsn_shipped.store(image.lsn.get(), Ordering::SeqCst);
        self.publish(Arc::new(Version {
            lsn: image.lsn,
            page_count: image.page_count,
            checksum,
            time_ms: image.time_ms,
            image: number,
        }));
        Ok(())
    }

    /// Appends a commit's pages to the WAL and publishes the new version. Called with the
    /// writer slot held.
    pub(crate) fn commit_pages(
        &self,
        base: &Version,
        commit: PendingCommit,
        durability: Durability,
    ) -> Result<()> {
        let PendingCommit {
            lsn,
            time_ms,
            page_count,
            images,
            expected_checksum,
        } = commit;
        assert_eq!(lsn, base.lsn.next(), "commits must be dense");
        let mut checksum = base.checksum;
        for (page_no, image) in &images {
            if page_no.get() < base.page_count {
                let old = self
                    .pager
                    .read(*page_no, base.lsn, base.page_count, base.image)?;
                checksum.replace(*page_no, &old, image);
            } else {
                checksum.add(*page_no, image);
            }
        }
        if let Some(expected) = expected_checksum
            && expected != checksum
        {
            return Err(Error::corrupt(
                format!("commit {lsn:?}"),
                format!("its pages give state checksum {checksum:?} but it claims {expected:?}"),
            ));
        }
        let info = CommitInfo {
            page_count,
            time_ms,
            checksum_after: checksum,
        };
        if let Err(e) = self
            .pager
            .wal
            .append(lsn, info, &images, durability == Durability::Sync)
        {
            self.poison(&e.to_string());
            return Err(e);
        }
        self.pager.cache_committed(lsn, &images);
        self.publish(Arc::new(Version {
            lsn,
            page_count,
            checksum,
            time_ms,
            image: base.image,
        }));
        if self.pager.wal.bytes_pending_checkpoint() >= self.options.checkpoint_wal_bytes
            && let Some(wake) = self.wake.lock().as_ref()
        {
            let _ = wake.try_send(());
        }
        Ok(())
    }

    fn publish(&self, version: Arc<Version>) {
        let lsn = version.lsn;
        {
            let mut published = self.published.lock();
            published.retain(|v| v.strong_count() > 0);
            published.push(Arc::downgrade(&version));
            self.current.store(version);
        }
        if let Some(hook) = &self.options.on_commit {
            hook(lsn);
        }
    }

    /// The lowest LSN any live snapshot reads at.
    fn oldest_reader(&self) -> Lsn {
        let mut published = self.published.lock();
        published.retain(|v| v.strong_count() > 0);
        published
            .iter()
            .filter_map(|v| v.upgrade().map(|v| v.lsn))
            .min()
            .unwrap_or_else(|| self.current.load().lsn)
    }

    /// The LSN a checkpoint may reach now.
    fn checkpoint_limit(&self) -> Lsn {
        let limit = self.oldest_reader();
        if self.options.retain_unshipped {
            limit.min(Lsn::new(self.lsn_shipped.load(Ordering::SeqCst)))
        } else {
            limit
        }
    }

    /// Checkpoints without blocking writers, then catches up with the commits that arrived
    /// meanwhile while briefly holding the writer slot: under a steady write load a checkpoint
    /// never ends exactly at the last commit, so without the catch-up the WAL would never
    /// restart and would grow without bound.
    fn checkpoint(&self) -> Result<Option<Lsn>> {
        self.check_open()?;
        let poison_on_io = |e: &Error| {
            if e.kind() == ErrorKind::Io {
                self.poison(&e.to_string());
            }
        };
        let mut reached = self
            .pager
            .checkpoint(self.checkpoint_limit())
            .inspect_err(poison_on_io)?;
        if self.pager.wal.bytes_pending_checkpoint() > 0
            && let Some(_writer) = self.writer.try_lock_for(CHECKPOINT_CATCH_UP_WAIT)
            && let Some(lsn) = self
                .pager
                .checkpoint(self.checkpoint_limit())
                .inspect_err(poison_on_io)?
        {
            reached = Some(lsn);
        }
        Ok(reached)
    }

    fn sweep_expired(&self, max: usize) -> Result<usize> {
        self.check_open()?;
        let guard = self.writer.lock();
        if self.current.load().page_count == 0 {
            // An empty database has nothing to expire, and its first commit must come from
            // its user (or its primary), not from the sweeper.
            return Ok(0);
        }
        let mut txn = WriteTxn::new(
            self,
            Some(guard),
            self.current.load_full(),
            self.options.clock.now_ms(),
        )?;
        let n = txn.sweep_expired(max)?;
        txn.commit_with(Durability::NoSync)?;
        Ok(n)
    }

    /// Runs a group as its leader. `_guard` (the writer slot) is held until every request of
    /// the group has its result, so no member can take the slot and find its result missing.
    fn run_group(&self, _guard: parking_lot::MutexGuard<'_, ()>, group: &[Arc<Request>]) {
        let fail_all = |e: &Error| {
            for r in group {
                r.result.lock().get_or_insert_with(|| Err(replicate(e)));
            }
        };
        let mut txn = match self.check_open().and_then(|()| {
            WriteTxn::new(
                self,
                None,
                self.current.load_full(),
                self.options.clock.now_ms(),
            )
        }) {
            Ok(txn) => txn,
            Err(e) => return fail_all(&e),
        };
        let mut applied = Vec::with_capacity(group.len());
        let mut durability = Durability::NoSync;
        for request in group {
            let Some(batch) = request.batch.lock().take() else {
                continue;
            };
            match batch.check(&txn) {
                Ok(()) => {}
                Err(e @ Error::AssertionFailed { .. }) => {
                    *request.result.lock() = Some(Err(e));
                    continue;
                }
                Err(e) => return fail_all(&e),
            }
            if let Err(e) = batch.apply_to(&mut txn) {
                return fail_all(&e);
            }
            if batch.durability == Durability::Sync {
                durability = Durability::Sync;
            }
            applied.push(request);
        }
        match txn.commit_with(durability) {
            Ok(lsn) => {
                for r in applied {
                    *r.result.lock() = Some(Ok(lsn));
                }
            }
            Err(e) => fail_all(&e),
        }
    }
}

fn start_background(inner: &Arc<Inner>) -> Arc<Background> {
    let (wake, wakeups) = sync_channel(1);
    *inner.wake.lock() = Some(wake);
    let weak = Arc::downgrade(inner);
    let thread = std::thread::Builder::new()
        .name("hadal-background".into())
        .spawn(move || background_loop(weak, wakeups))
        .expect("spawning the background thread: the OS refused a thread");
    Arc::new(Background {
        inner: Arc::downgrade(inner),
        thread: Mutex::new(Some(thread)),
    })
}

fn background_loop(inner: Weak<Inner>, wakeups: Receiver<()>) {
    let mut last_sweep = Instant::now();
    loop {
        if let Err(RecvTimeoutError::Disconnected) = wakeups.recv_timeout(BACKGROUND_TICK) {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        if inner.pager.wal.bytes_pending_checkpoint() >= inner.options.checkpoint_wal_bytes
            && let Err(e) = inner.checkpoint()
        {
            tracing::warn!(error = %e, "background checkpoint failed");
        }
        if inner
            .options
            .sweep_interval
            .is_some_and(|every| last_sweep.elapsed() >= every)
        {
            last_sweep = Instant::now();
            if let Err(e) = inner.sweep_expired(SWEEP_BATCH_KEYS) {
                tracing::warn!(error = %e, "expired-key sweep failed");
            }
        }
    }
}

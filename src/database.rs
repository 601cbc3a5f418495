//! [`Database`]: the async embedded facade over the engine and, when the data folder is bound to
//! a bucket, its shipper.
//!
//! A write returns a [`WriteHandle`] as soon as it is committed locally; `handle.durable()`
//! waits for the bucket (the output gate, DESIGN.md §4). A server can thus keep executing and
//! hold only the reply, and a bulk loader can pipeline commits while it awaits their
//! durability in order.
//!
//! Commits run on the database's committer thread (`committer.rs`), which groups the writes
//! queued meanwhile into one engine commit; reads run on tokio's blocking pool. A commit may
//! fsync and a read may miss the page cache, and neither may stall the runtime's worker
//! threads.
//!
//! Invariants:
//! 1. No write starts after `close` began, and `close` waits for every write in flight (the
//!    `writes` lock: writes hold it shared until their commit returned, `close` exclusively).
//! 2. After the shipper stopped (fenced, or a bucket failure), every write is refused: a fenced
//!    writer must not keep committing a history the bucket will never hold.
//! 3. A folder bound to a bucket is never written without it (see `binding.rs`).

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hadal_engine::{
    Batch, Clock, DEFAULT_TABLE, Database as Engine, Durability as EngineDurability, Lsn,
    Options as EngineOptions, ReadTxn, SystemClock,
};
use hadal_format::Epoch;
use hadal_shipper::{MetricsSnapshot, Shipper, ShipperOptions};
use parking_lot::{Mutex, RwLock};
use tokio::sync::RwLock as AsyncRwLock;

use crate::binding;
use crate::committer::Committer;
use crate::error::{Error, Result};
use crate::gate::{self, GateState, GateWatch, Relay};
use crate::takeover;

/// How far a write must have gone before it counts as acknowledged (DESIGN.md §4). The same
/// type as the shipper's mode.
pub use hadal_shipper::Mode as Durability;

/// Settings for [`Database::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The local data folder (created if missing, unless `read_only`).
    pub data_dir: PathBuf,
    /// The bucket that is the database's durable home (`file://`, `s3://`, `gs://`, `az://`,
    /// `memory://`). `None`: a local-only database.
    pub bucket_url: Option<String>,
    /// `Strict` (default): the bucket is the durable home, local commits are not fsynced.
    /// `Local`: local commits are fsynced, shipping every `interval`. `Async`: not fsynced,
    /// shipping every `interval`. Without a bucket, `Strict` and `Local` fsync every commit.
    pub durability: Durability,
    /// In `Local` and `Async` modes: how often pending commits are shipped.
    pub interval: Duration,
    /// While idle, how often the writer reads the manifest to learn of a takeover.
    pub manifest_poll: Duration,
    /// A snapshot is taken when a restore would take longer than this, by estimate.
    pub restore_budget: Duration,
    /// How often the writer collects what the retention window no longer needs, in the
    /// background (the first pass one interval after open); `None` leaves it to `hadal gc`.
    pub gc_interval: Option<Duration>,
    /// Open for reads only: no takeover of the bucket (which would fence its current writer),
    /// nothing written to the folder; every write is refused. The bucket, if given, is only
    /// checked against the folder's binding.
    pub read_only: bool,
    /// Engine settings (page size, cache, checkpoints, TTL sweeps). The facade sets
    /// `retain_unshipped` and `on_commit` itself when a bucket is used, and turns background
    /// work off when `read_only`.
    pub engine: EngineOptions,
}

impl Options {
    /// Defaults for the folder `data_dir`: local-only, strict, read-write.
    pub fn new(data_dir: impl Into<PathBuf>) -> Options {
        let shipper = ShipperOptions::default();
        Options {
            data_dir: data_dir.into(),
            bucket_url: None,
            durability: Durability::Strict,
            interval: shipper.interval,
            manifest_poll: shipper.manifest_poll,
            restore_budget: shipper.restore_budget,
            gc_interval: shipper.gc_interval,
            read_only: false,
            engine: EngineOptions::default(),
        }
    }

    /// The same options with `bucket_url` set.
    pub fn bucket(mut self, url: impl Into<String>) -> Options {
        self.bucket_url = Some(url.into());
        self
    }

    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    pub fn read_only(mut self, read_only: bool) -> Options {
        self.read_only = read_only;
        self
    }
}

/// Which keys a [`Database::scan`] visits, in which order, and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    table: String,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    reverse: bool,
    limit: Option<usize>,
}

impl Scan {
    /// Every key of the default table, in ascending order.
    pub fn all() -> Scan {
        Scan {
            table: DEFAULT_TABLE.to_owned(),
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
            limit: None,
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Scan {
        let prefix = prefix.into();
        let end = prefix_end(&prefix);
        Scan {
            start: Bound::Included(prefix),
            end,
            ..Scan::all()
        }
    }

    /// Every key between `start` and `end`.
    pub fn range(start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan {
        Scan {
            start,
            end,
            ..Scan::all()
        }
    }

    /// In the table `name` instead of the default one.
    pub fn in_table(mut self, name: impl Into<String>) -> Scan {
        self.table = name.into();
        self
    }

    /// Descending key order.
    pub fn reverse(mut self) -> Scan {
        self.reverse = true;
        self
    }

    /// At most `n` keys.
    pub fn limit(mut self, n: usize) -> Scan {
        self.limit = Some(n);
        self
    }

    /// The same scan continued after `key` (the last key of the previous page), for paging.
    pub fn resume_after(mut self, key: &[u8]) -> Scan {
        if self.reverse {
            self.end = Bound::Excluded(key.to_vec());
        } else {
            self.start = Bound::Excluded(key.to_vec());
        }
        self
    }
}

/// The first key after every key starting with `prefix`, as an exclusive bound.
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// A committed write. Its LSN is the commit's; [`WriteHandle::durable`] waits for the bucket.
#[derive(Debug, Clone)]
pub struct WriteHandle {
    pub lsn: Lsn,
    /// `None` for a local-only database: the local commit is the durable one.
    gate: Option<GateWatch>,
}

impl WriteHandle {
    /// Resolves once the commit is durable in the bucket (at once for a local-only database);
    /// fails with `Fenced` (or why the shipper stopped) if it never will be.
    pub async fn durable(&self) -> Result<()> {
        match &self.gate {
            Some(watch) => gate::wait(watch, self.lsn).await,
            None => Ok(()),
        }
    }
}

/// The bucket side of an open database.
#[derive(Debug)]
struct Shipping {
    url: String,
    epoch: Epoch,
    watch: GateWatch,
    /// Both are taken by `close`.
    shipper: Mutex<Option<Arc<Shipper>>>,
    relay: Mutex<Option<Relay>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Taken by `close`, which releases the folder.
    engine: RwLock<Option<Engine>>,
    shipping: Option<Shipping>,
    /// `Some(reason)`: every write is refused.
    read_only: Option<String>,
    commit_durability: EngineDurability,
    /// Shared by writes in flight, exclusive for `close` (invariant 1).
    writes: Arc<AsyncRwLock<()>>,
    /// Runs every commit; `None` for a read-only database.
    committer: Option<Committer>,
    /// The head at close, for `lsn()` afterwards.
    lsn_closed: Mutex<Option<Lsn>>,
}

/// An open Hadal database: a local engine whose commits are shipped to a bucket. Cheap to
/// clone; all clones share one database. Call [`Database::close`] to ship everything and
/// release the folder; dropping the last clone without it stops shipping at once, like a
/// crash (unshipped commits are shipped by the next open of the folder).
#[derive(Debug, Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

/// Runs an engine call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Closed(format!("an engine call failed: {e}")))?
}

impl Database {
    /// Opens the database in `options.data_dir`: with a bucket, this takes over the bucket's
    /// log (fencing any other writer), catches the folder up or ships what it has that the
    /// bucket lacks, and restores it from the bucket if their histories diverged.
    pub async fn open(options: Options) -> Result<Database> {
        if options.read_only {
            return Self::open_read_only(options).await;
        }
        let dir = options.data_dir.clone();
        let (engine, shipping, commit_durability) = match &options.bucket_url {
            Some(url) => {
                let shipper_options = ShipperOptions {
                    mode: options.durability,
                    interval: options.interval,
                    manifest_poll: options.manifest_poll,
                    restore_budget: options.restore_budget,
                    gc_interval: options.gc_interval,
                    compact_after: options.restore_budget / 4,
                    ..ShipperOptions::default()
                };
                let takeover::Attached { engine, shipper } =
                    takeover::attach(&dir, url, &options.engine, &shipper_options).await?;
                let shipper = Arc::new(shipper);
                let relay = Relay::start(shipper.clone());
                let shipping = Shipping {
                    url: binding::normalize(url)?,
                    epoch: shipper.epoch(),
                    watch: relay.watch(),
                    shipper: Mutex::new(Some(shipper)),
                    relay: Mutex::new(Some(relay)),
                };
                let durability = match options.durability {
                    Durability::Local => EngineDurability::Sync,
                    Durability::Strict | Durability::Async => EngineDurability::NoSync,
                };
                (engine, Some(shipping), durability)
            }
            None => {
                if let Some(bucket) = binding::read(&dir)? {
                    return Err(Error::BucketRequired {
                        dir: dir.display().to_string(),
                        bucket,
                    });
                }
                let engine_options = options.engine.clone();
                let path = dir.clone();
                let engine =
                    blocking(move || Engine::open(&path, engine_options).map_err(Error::from))
                        .await?;
                let durability = match options.durability {
                    Durability::Strict | Durability::Local => EngineDurability::Sync,
                    Durability::Async => EngineDurability::NoSync,
                };
                (engine, None, durability)
            }
        };
        let committer = Committer::start(engine.clone())?;
        Ok(Database {
            inner: Arc::new(Inner {
                dir,
                engine: RwLock::new(Some(engine)),
                shipping,
                read_only: None,
                commit_durability,
                writes: Arc::new(AsyncRwLock::new(())),
                committer: Some(committer),
                lsn_closed: Mutex::new(None),
            }),
        })
    }

    async fn open_read_only(options: Options) -> Result<Database> {
        let dir = options.data_dir.clone();
        if !dir.join(hadal_engine::MAIN_FILE_NAME).exists() {
            return Err(Error::NoDatabase(dir.display().to_string()));
        }
        let bound = binding::read(&dir)?;
        if let (Some(bound), Some(given)) = (&bound, &options.bucket_url)
            && !binding::same_bucket(bound, given)?
        {
            return Err(Error::WrongBucket {
                dir: dir.display().to_string(),
                bound: bound.clone(),
                given: given.clone(),
            });
        }
        let reason = match (&bound, &options.bucket_url) {
            (Some(bucket), None) => Error::BucketRequired {
                dir: dir.display().to_string(),
                bucket: bucket.clone(),
            }
            .to_string(),
            _ => format!("data folder {} was opened read-only", dir.display()),
        };
        // No background work: a checkpoint could drop unshipped commits from the WAL of a
        // bound folder, and a TTL sweep would commit.
        let engine_options = EngineOptions {
            background: false,
            sweep_interval: None,
            retain_unshipped: true,
            on_commit: None,
            ..options.engine.clone()
        };
        let path = dir.clone();
        let engine =
            blocking(move || Engine::open(&path, engine_options).map_err(Error::from)).await?;
        Ok(Database {
            inner: Arc::new(Inner {
                dir,
                engine: RwLock::new(Some(engine)),
                shipping: None,
                read_only: Some(reason),
                commit_durability: EngineDurability::Sync,
                writes: Arc::new(AsyncRwLock::new(())),
                committer: None,
                lsn_closed: Mutex::new(None),
            }),
        })
    }

    fn engine(&self) -> Result<Engine> {
        self.inner.engine.read().clone().ok_or_else(|| {
            Error::Closed(format!(
                "the database in {} is closed",
                self.inner.dir.display()
            ))
        })
    }

    /// Refuses writes to a read-only, closed or stopped database (invariant 2).
    fn check_writable(&self) -> Result<Engine> {
        if let Some(reason) = &self.inner.read_only {
            return Err(Error::ReadOnly(reason.clone()));
        }
        if let Some(shipping) = &self.inner.shipping
            && let Some(why) = shipping.watch.borrow().stopped.clone()
        {
            return Err(Error::Shipper(why));
        }
        self.engine()
    }

    /// Commits `batch` atomically (its assertions checked first) and returns once it is
    /// committed locally. Dropping the returned future does not undo a commit under way.
    pub async fn apply(&self, batch: Batch) -> Result<WriteHandle> {
        let writing = self.inner.writes.clone().read_owned().await;
        self.check_writable()?;
        let committer = self.inner.committer.as_ref().ok_or_else(|| {
            Error::ReadOnly("this database was opened without a committer".into())
        })?;
        let batch = batch.durability(self.inner.commit_durability);
        let lsn = committer.commit(batch, writing).await?;
        Ok(WriteHandle {
            lsn,
            gate: self.inner.shipping.as_ref().map(|s| s.watch.clone()),
        })
    }

    /// Stores `value` under `key` in the default table.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<WriteHandle> {
        self.apply(Batch::new().put(key, value)).await
    }

    /// Stores `value` under `key`, invisible to reads after `ttl` and then deleted by the
    /// sweeper (in an ordinary commit, so the expiry replicates).
    pub async fn put_with_ttl(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<WriteHandle> {
        let expires_ms = SystemClock
            .now_ms()
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.apply(Batch::new().put_in(DEFAULT_TABLE, key, value, Some(expires_ms)))
            .await
    }

    /// Deletes `key` from the default table (a commit even if the key is absent).
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<WriteHandle> {
        self.apply(Batch::new().delete(key)).await
    }

    /// The value of `key` in the default table, from the newest local commit.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Bytes>> {
        self.get_in(DEFAULT_TABLE, key).await
    }

    /// The value of `key` in `table`.
    pub async fn get_in(&self, table: &str, key: impl Into<Vec<u8>>) -> Result<Option<Bytes>> {
        let engine = self.engine()?;
        let (table, key) = (table.to_owned(), key.into());
        blocking(move || Ok(engine.begin_read().get(&table, &key)?)).await
    }

    /// Runs `f` on one read snapshot of the newest local commit, on the blocking pool (a read
    /// may miss the page cache). The snapshot's LSN is `txn.lsn()`. For reads the other
    /// methods do not cover: an entry's expiry and last-write LSN, or several keys at once.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTxn) -> hadal_engine::Result<T> + Send + 'static,
    ) -> Result<T> {
        let engine = self.engine()?;
        blocking(move || Ok(f(&engine.begin_read())?)).await
    }

    /// A read snapshot of the newest local commit, opened on the calling thread; its reads run
    /// there too. A point read of cached pages takes microseconds, less than the hand-off
    /// [`Database::read`] makes to the blocking pool, but a page that is not cached is read
    /// from the file on this thread: use it for a few keys, and [`Database::read`] for scans.
    pub fn begin_read(&self) -> Result<ReadTxn> {
        Ok(self.engine()?.begin_read())
    }

    /// The keys and values `scan` selects, from one snapshot. The result is collected in
    /// memory: page through large ranges with [`Scan::limit`] and [`Scan::resume_after`].
    pub async fn scan(&self, scan: Scan) -> Result<Vec<(Bytes, Bytes)>> {
        let engine = self.engine()?;
        blocking(move || {
            let read = engine.begin_read();
            let range = read.range(&scan.table, scan.start, scan.end, scan.reverse)?;
            range
                .take(scan.limit.unwrap_or(usize::MAX))
                .map(|item| item.map(|(k, e)| (k, e.value)).map_err(Error::from))
                .collect()
        })
        .await
    }

    /// The newest local commit.
    pub fn lsn(&self) -> Lsn {
        match &*self.inner.engine.read() {
            Some(engine) => engine.lsn(),
            None => self.inner.lsn_closed.lock().unwrap_or(Lsn::ZERO),
        }
    }

    /// The newest commit durable in the bucket; for a local-only database, the newest commit.
    pub fn lsn_durable(&self) -> Lsn {
        match &self.inner.shipping {
            Some(shipping) => shipping.watch.borrow().lsn,
            None => self.lsn(),
        }
    }

    /// This writer's epoch in the bucket (`None` without a bucket).
    pub fn epoch(&self) -> Option<Epoch> {
        self.inner.shipping.as_ref().map(|s| s.epoch)
    }

    /// The bucket the database ships to, in its recorded form.
    pub fn bucket_url(&self) -> Option<&str> {
        self.inner.shipping.as_ref().map(|s| s.url.as_str())
    }

    /// Why the shipper stopped, if it did (for example `Fenced`): writes are refused from then on.
    pub fn stopped(&self) -> Option<Error> {
        let shipping = self.inner.shipping.as_ref()?;
        let why = shipping.watch.borrow().stopped.clone()?;
        Some(Error::Shipper(why))
    }

    /// Upload counters and latencies (`None` without a bucket or once closed).
    pub fn shipper_metrics(&self) -> Option<MetricsSnapshot> {
        let shipping = self.inner.shipping.as_ref()?;
        shipping.shipper.lock().as_ref().map(|s| s.metrics())
    }

    /// Takes a snapshot of the database as it is now (the whole image, uploaded in parallel
    /// parts while commits go on) and publishes it in the manifest, whatever the restore budget
    /// says: restores, takeovers and replicas then start from it. `None` if there is nothing new
    /// to snapshot (empty, or the newest snapshot is at the current LSN). Progress is in
    /// [`Database::shipper_metrics`] (`snapshot_parts_done` of `snapshot_parts_total`). Fails
    /// with `Invalid` for a database without a bucket.
    pub async fn snapshot_now(&self) -> Result<Option<hadal_format::manifest::SnapshotRef>> {
        let shipping = self.inner.shipping.as_ref().ok_or_else(|| {
            Error::Invalid(
                "this database has no bucket: snapshots are taken into the bucket (pass --bucket)"
                    .into(),
            )
        })?;
        let shipper = shipping
            .shipper
            .lock()
            .clone()
            .ok_or_else(|| Error::Closed("the database was closed".into()))?;
        Ok(shipper.snapshot_now().await?)
    }

    /// Waits for the writes in flight, ships every commit to the bucket, stops the shipper and
    /// releases the folder. Fails (after releasing everything) if some commits could not be
    /// shipped, with the reason (for example `Fenced`). Later calls return `Ok` at once; every
    /// other operation fails with `Closed`.
    pub async fn close(&self) -> Result<()> {
        let _exclusive = self.inner.writes.write().await;
        if let Some(committer) = &self.inner.committer {
            committer.stop().await;
        }
        let Some(engine) = self.inner.engine.write().take() else {
            return Ok(());
        };
        let head = engine.lsn();
        *self.inner.lsn_closed.lock() = Some(head);
        let result = match &self.inner.shipping {
            Some(shipping) => shipping.close(head).await,
            None => Ok(()),
        };
        // Engine calls still running on the blocking pool hold clones; the folder is released
        // when the last of them returns.
        drop(engine);
        result
    }
}

impl Shipping {
    async fn close(&self, head: Lsn) -> Result<()> {
        let relay = self.relay.lock().take();
        let sender = match relay {
            Some(relay) => relay.stop().await,
            None => None,
        };
        let Some(shipper) = self.shipper.lock().take() else {
            return Ok(());
        };
        // The relay held the only other reference and has ended; `shipper_metrics` clones none.
        let shipper = Arc::try_unwrap(shipper).map_err(|_| {
            Error::Closed("the shipper is still referenced after its relay stopped".into())
        })?;
        let lsn_before = shipper.lsn_durable();
        let outcome = shipper.shutdown().await;
        let state = match &outcome {
            Ok(()) => GateState {
                lsn: head,
                stopped: Some(hadal_shipper::Error::Closed(
                    "the database was closed".into(),
                )),
            },
            Err(e) => GateState {
                lsn: lsn_before,
                stopped: Some(e.clone()),
            },
        };
        if let Some(sender) = sender {
            sender.send_modify(|s| {
                s.lsn = s.lsn.max(state.lsn);
                if s.stopped.is_none() {
                    s.stopped = state.stopped;
                }
            });
        }
        outcome.map_err(Error::from)
    }
}

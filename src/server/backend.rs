//! [`Backend`]: what a server front-end (HTTP today, the Redis protocol next) asks of the
//! database, the same whichever role the process has. A *writer* serves the embedded facade
//! [`crate::Database`] (it took the bucket over and ships every commit); a *replica* serves a
//! [`Follower`] (a read-only local copy that tails the bucket's log). Front-ends are thin
//! adapters: they parse their protocol, call one method here, and turn the answer or the
//! [`Error`] (with its [`Error::code`]) into their protocol's reply.
//!
//! Every read is one snapshot of the local engine and reports the LSN it was read at, so a
//! client can ask a replica for read-your-writes (`min_lsn`). Every write is a [`Batch`]
//! (assertions and operations, atomic) and returns once it is durable as the durability mode
//! says: in the bucket for `strict`, after the local commit for `local` and `async`.
//!
//! Read-modify-write ([`Backend::atomic`], [`Backend::update`]) is optimistic: the closure reads
//! from a snapshot, returns the batch it wants, and the batch is committed with assertions that
//! every key read is unchanged (a present key still exists and was not written after the
//! snapshot read it; an absent key is still absent). If another write got in between, the
//! closure runs again on a newer snapshot. This keeps the engine's single writer free of
//! server-side locks and makes `INCR`, `SET NX`, `WATCH`/`EXEC` and friends exact.
//!
//! Invariants:
//! 1. A replica commits nothing: every write is refused with [`Error::ReadOnly`] before it
//!    reaches the engine (the follower path is the only thing that changes its image).
//! 2. A write is reported done only once it is durable per the mode; a write whose commit was
//!    fenced is reported [`Error::Fenced`], never done.
//! 3. An atomic closure's batch commits only if nothing it read changed since its snapshot.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hadal_engine::{Assertion, Batch, Clock, DEFAULT_TABLE, Entry, Lsn, ReadTxn, SystemClock};
use hadal_replica::{FollowOptions, Follower};
use hadal_transports::DynBucket;
use parking_lot::Mutex;
use serde::Serialize;

use crate::database::{Database, Durability, Options, WriteHandle};
pub use crate::server::error::{Error, Result};

/// How often an atomic closure may be run again because a concurrent write changed a key it
/// read, before the caller is told the key is too contended. Each retry reads a newer snapshot,
/// so only a key rewritten faster than one read-and-commit round trip exhausts it.
pub const ATOMIC_ATTEMPTS_MAX: usize = 64;

/// How many locks [`Backend::update`] spreads keys over. Two keys share a lock only by hash, so
/// unrelated keys rarely wait for each other, while every read-modify-write of one key (a burst
/// of `INCR`s) runs one at a time instead of retrying against itself.
const KEY_LOCK_STRIPES: usize = 256;

/// Reads of at most this many keys run on the calling thread ([`Backend::read_here`]); more
/// go to the blocking pool.
const POINT_READ_KEYS_MAX: usize = 64;

/// A scan page never holds more keys than this, whatever the caller asks.
pub const SCAN_LIMIT_MAX: usize = 1000;

/// A scan page stops after the first entry that brings its keys and values to this many
/// bytes (it always holds at least one entry), so a page of large values stays bounded.
pub const SCAN_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How often a read is retried when its snapshot vanished under it (a replica replaced its
/// image from a newer snapshot after falling behind the bucket's GC).
const READ_ATTEMPTS_MAX: usize = 3;

/// How long the retention window read from the bucket's manifest is reused by [`Backend::info`].
const RETENTION_REFRESH: Duration = Duration::from_secs(60);

/// Which part a server process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Took the bucket over: serves reads and writes, ships every commit.
    Writer,
    /// Follows the bucket's log: serves reads only.
    Replica,
}

impl Role {
    /// `writer` or `replica`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Replica => "replica",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value read from one snapshot, with the LSN the snapshot was at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    /// The LSN of the snapshot the value was read from.
    pub lsn: Lsn,
    /// What was read.
    pub value: T,
}

/// A key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key has no visible value.
    Missing,
    /// The key never expires.
    Persistent,
    /// The key expires at `at_ms` (ms since the Unix epoch), `remaining` from now.
    Expires {
        /// Absolute expiry, ms since the Unix epoch.
        at_ms: u64,
        /// Time left (zero if it expires this very millisecond).
        remaining: Duration,
    },
}

/// Which keys [`Backend::scan`] visits. Every bound applies together: keys start with `prefix`,
/// are at or after `start`, before `end`, and after `after` (the `next` of the previous page)
/// in the scan's direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanRequest {
    /// Only keys starting with these bytes.
    pub prefix: Option<Vec<u8>>,
    /// Only keys at or after this one (inclusive).
    pub start: Option<Vec<u8>>,
    /// Only keys before this one (exclusive).
    pub end: Option<Vec<u8>>,
    /// Resume cursor: only keys strictly after this one in scan order (descending order for
    /// `reverse`), normally [`ScanPage::next`] of the previous page.
    pub after: Option<Vec<u8>>,
    /// At most this many keys (clamped to 1..=[`SCAN_LIMIT_MAX`]).
    pub limit: usize,
    /// Descending key order.
    pub reverse: bool,
    /// Read at or after this LSN (see [`Backend::get`]).
    pub min_lsn: Option<Lsn>,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// The LSN of the snapshot the page was read from.
    pub lsn: Lsn,
    /// Keys and their entries (value, expiry, last-write LSN), in scan order.
    pub items: Vec<(Bytes, Entry)>,
    /// Set when more keys follow: pass it as [`ScanRequest::after`] for the next page.
    pub next: Option<Vec<u8>>,
}

/// What an atomic closure wants committed, and what to answer its caller.
#[derive(Debug, Clone)]
pub struct Plan<T> {
    /// The writes (and any assertions of the caller's own). Empty: commit nothing.
    pub batch: Batch,
    /// The reply for the caller, returned with the outcome.
    pub reply: T,
}

/// The outcome of [`Backend::atomic`] or [`Backend::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<T> {
    /// The LSN of the commit, durable per the mode; `None` if the plan wrote nothing.
    pub lsn: Option<Lsn>,
    /// The LSN of the snapshot the closure's final run read from.
    pub read_lsn: Lsn,
    /// The closure's reply from its final run.
    pub reply: T,
}

/// A write committed locally whose acknowledgement may still wait for durability: `strict`
/// waits for the bucket, `local` and `async` are done at once. Front-ends that pipeline
/// (RESP) commit a client's next command right away and send each reply once its write is
/// durable, in order.
#[derive(Debug)]
#[must_use = "a write is acknowledged only once `durable` resolves"]
pub struct Pending {
    lsn: Lsn,
    /// Set in `strict` mode: resolves once the commit is in the bucket.
    wait: Option<WriteHandle>,
}

impl Pending {
    /// The LSN of the local commit.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Resolves once the write is durable per the mode (invariant 2); [`Error::Fenced`] if it
    /// never will be.
    pub async fn durable(self) -> Result<Lsn> {
        if let Some(handle) = &self.wait {
            handle.durable().await?;
        }
        Ok(self.lsn)
    }
}

/// [`Committed`] before its write is durable: what [`Backend::atomic_pending`] and
/// [`Backend::update_pending`] return.
#[derive(Debug)]
#[must_use = "a write is acknowledged only once `durable` resolves"]
pub struct PendingCommit<T> {
    /// The local commit, if the plan wrote anything.
    pub pending: Option<Pending>,
    /// The LSN of the snapshot the closure's final run read from.
    pub read_lsn: Lsn,
    /// The closure's reply from its final run.
    pub reply: T,
}

impl<T> PendingCommit<T> {
    /// Waits until the write (if any) is durable per the mode.
    pub async fn durable(self) -> Result<Committed<T>> {
        let lsn = match self.pending {
            Some(pending) => Some(pending.durable().await?),
            None => None,
        };
        Ok(Committed {
            lsn,
            read_lsn: self.read_lsn,
            reply: self.reply,
        })
    }
}

/// What [`Backend::update`]'s closure does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Write nothing.
    Keep,
    /// Store `value`, expiring at `expires_ms` (ms since the Unix epoch) if set.
    Put {
        /// The new value.
        value: Vec<u8>,
        /// Absolute expiry, or `None` for a key that never expires.
        expires_ms: Option<u64>,
    },
    /// Delete the key.
    Delete,
}

/// The snapshot an atomic closure reads from. Every key read through it is remembered, and the
/// closure's batch commits only if none of them changed since (module comment, invariant 3).
#[derive(Debug)]
pub struct Reads<'a> {
    txn: &'a ReadTxn,
    now_ms: u64,
    /// Each key read and the LSN of its last write (`None`: absent).
    read_set: Vec<(Vec<u8>, Option<Lsn>)>,
}

impl Reads<'_> {
    /// The entry of `key` in the default table (value, expiry, last-write LSN), if visible.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Entry>> {
        let entry = self.txn.get_entry(DEFAULT_TABLE, key)?;
        if !self.read_set.iter().any(|(k, _)| k == key) {
            self.read_set
                .push((key.to_vec(), entry.as_ref().map(|e| e.lsn)));
        }
        Ok(entry)
    }

    /// The LSN of this snapshot.
    pub fn lsn(&self) -> Lsn {
        self.txn.lsn()
    }

    /// The time this snapshot judges expiry by, ms since the Unix epoch (for TTL arithmetic).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The assertions that hold exactly while no key read so far has changed.
    fn assertions(&self) -> Vec<Assertion> {
        unchanged(&self.read_set)
    }
}

/// Assertions that each `(key, last write)` is still as read: a present key still exists and
/// was not written after its last write; an absent key is still absent.
fn unchanged(read_set: &[(Vec<u8>, Option<Lsn>)]) -> Vec<Assertion> {
    let table = || DEFAULT_TABLE.to_owned();
    let mut out = Vec::with_capacity(read_set.len() * 2);
    for (key, last_write) in read_set {
        match last_write {
            Some(lsn) => {
                out.push(Assertion::Exists {
                    table: table(),
                    key: key.clone(),
                });
                out.push(Assertion::LastWriteAtMost {
                    table: table(),
                    key: key.clone(),
                    lsn: *lsn,
                });
            }
            None => out.push(Assertion::Absent {
                table: table(),
                key: key.clone(),
            }),
        }
    }
    out
}

/// Settings for [`Backend::open_replica`].
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// The replica's own data folder (a local copy; created if missing). It must not be a
    /// writer's folder (one bound to a bucket).
    pub data_dir: PathBuf,
    /// The bucket to follow.
    pub bucket_url: String,
    /// How the follower polls the bucket.
    pub follow: FollowOptions,
    /// Engine settings; the backend turns the TTL sweeper off (a follower's expiries arrive as
    /// the writer's commits) and keeps the rest.
    pub engine: hadal_engine::Options,
}

/// Positions and settings of a server, for `GET /v1/info`, `INFO` and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Info {
    /// `writer` or `replica`.
    pub role: Role,
    /// The writer's epoch in the bucket; for a replica, the epoch of the newest segment applied.
    pub epoch: Option<u64>,
    /// Writer: the newest local commit. Replica: the newest commit seen in the bucket.
    pub lsn_committed: u64,
    /// The newest commit durable in the bucket (as far as this server knows).
    pub lsn_durable: u64,
    /// The newest commit reads see.
    pub lsn_applied: u64,
    /// A replica's lag behind the bucket (`None` for the writer).
    pub lag: Option<LagInfo>,
    /// The bucket this server ships to or follows.
    pub bucket: Option<String>,
    /// The writer's durability mode (`strict`, `local`, `async`); `None` for a replica.
    pub durability: Option<String>,
    /// The bucket's retention window in ms, as last read from its manifest (refreshed every
    /// minute); `None` if it could not be read.
    pub retention_ms: Option<u64>,
    /// The retention window in words (`7days`).
    pub retention: Option<String>,
    /// Why this server stopped serving writes (writer) or following (replica), if it did.
    pub stopped: Option<String>,
    /// The local data folder.
    pub data_dir: String,
}

/// A replica's lag.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LagInfo {
    /// Commits seen in the bucket but not applied yet.
    pub lsns: u64,
    /// Caught up: seconds since the last poll found the end of the log. Behind: seconds since
    /// the newest applied commit was made.
    pub seconds: f64,
}

/// Upload and follow counters for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// The writer's shipper counters (`None` for a replica or once closed).
    pub shipper: Option<crate::MetricsSnapshot>,
    /// How often a replica re-bootstrapped from a snapshot after falling behind GC.
    pub rebootstraps: Option<u64>,
}

#[derive(Debug)]
enum Node {
    Writer {
        db: Database,
        durability: Durability,
    },
    Replica {
        /// Taken by `close`.
        follower: Mutex<Option<Arc<Follower>>>,
        /// The follower's local database, for reads.
        engine: hadal_engine::Database,
    },
}

#[derive(Debug)]
struct Inner {
    node: Node,
    bucket_url: Option<String>,
    /// A handle of its own on the bucket, for reading the retention window.
    bucket: Option<DynBucket>,
    data_dir: PathBuf,
    clock: Arc<dyn Clock>,
    /// The retention window and when it was read.
    retention: Mutex<Option<(Instant, u64)>>,
    /// Per-key locks of [`Backend::update`] (by hash, [`KEY_LOCK_STRIPES`] of them).
    key_locks: Box<[tokio::sync::Mutex<()>]>,
    key_hasher: std::collections::hash_map::RandomState,
}

/// A writer or a replica, as server front-ends use it. Cheap to clone; clones share one node.
#[derive(Debug, Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

impl Backend {
    /// Opens the writer: the facade takes the bucket over (fencing any other writer), catches
    /// the folder up or restores it. Returns once the writer can serve.
    pub async fn open_writer(options: Options) -> Result<Backend> {
        let durability = options.durability;
        let data_dir = options.data_dir.clone();
        let db = Database::open(options).await?;
        let bucket_url = db.bucket_url().map(str::to_owned);
        let bucket = match &bucket_url {
            Some(url) => Some(open_bucket(url).await?),
            None => None,
        };
        Ok(Backend {
            inner: Arc::new(Inner {
                node: Node::Writer { db, durability },
                bucket_url,
                bucket,
                data_dir,
                clock: Arc::new(SystemClock),
                retention: Mutex::new(None),
                key_locks: key_locks(),
                key_hasher: Default::default(),
            }),
        })
    }

    /// Opens a replica: restores `options.data_dir` to the bucket's head (from the newest
    /// snapshot if empty), then follows the log. Returns once the replica can serve.
    pub async fn open_replica(options: ReplicaOptions) -> Result<Backend> {
        let dir = &options.data_dir;
        if let Some(bound) = crate::binding::read(dir)? {
            return Err(Error::Invalid(format!(
                "data folder {} is a writer's folder (bound to bucket {bound}); a replica keeps its own copy: pass another --data folder",
                dir.display()
            )));
        }
        let bucket = open_bucket(&options.bucket_url).await?;
        let engine_options = hadal_engine::Options {
            sweep_interval: None,
            ..options.engine.clone()
        };
        let follower = Follower::start(dir, engine_options, bucket.clone(), options.follow)
            .await
            .map_err(|e| replica_error(&options.bucket_url, e))?;
        let engine = follower.db().clone();
        Ok(Backend {
            inner: Arc::new(Inner {
                node: Node::Replica {
                    follower: Mutex::new(Some(Arc::new(follower))),
                    engine,
                },
                bucket_url: Some(options.bucket_url.clone()),
                bucket: Some(bucket),
                data_dir: options.data_dir.clone(),
                clock: Arc::new(SystemClock),
                retention: Mutex::new(None),
                key_locks: key_locks(),
                key_hasher: Default::default(),
            }),
        })
    }

    /// This server's role.
    pub fn role(&self) -> Role {
        match &self.inner.node {
            Node::Writer { .. } => Role::Writer,
            Node::Replica { .. } => Role::Replica,
        }
    }

    /// The bucket this server ships to or follows.
    pub fn bucket_url(&self) -> Option<&str> {
        self.inner.bucket_url.as_deref()
    }

    fn follower(&self) -> Option<Arc<Follower>> {
        match &self.inner.node {
            Node::Replica { follower, .. } => follower.lock().clone(),
            Node::Writer { .. } => None,
        }
    }

    /// The newest LSN reads see now.
    pub fn lsn_applied(&self) -> Lsn {
        match &self.inner.node {
            Node::Writer { db, .. } => db.lsn(),
            Node::Replica { engine, .. } => engine.lsn(),
        }
    }

    /// Why the server cannot serve writes (writer) or stopped following (replica), if so.
    pub fn stopped(&self) -> Option<String> {
        match &self.inner.node {
            Node::Writer { db, .. } => db.stopped().map(|e| e.to_string()),
            Node::Replica { follower, .. } => match follower.lock().as_ref() {
                Some(f) => f.state().stopped.map(|(_, why)| why),
                None => Some("the replica was closed".into()),
            },
        }
    }

    /// Waits (replica: at most `wait`) until reads see `min_lsn`. The writer sees every commit
    /// it made at once, so a `min_lsn` beyond its head names a commit it never made.
    async fn reach(&self, min_lsn: Option<Lsn>, wait: Duration) -> Result<()> {
        let Some(wanted) = min_lsn else {
            return Ok(());
        };
        let current = self.lsn_applied();
        if current >= wanted {
            return Ok(());
        }
        let behind = |current, waited| Error::Behind {
            role: self.role(),
            wanted,
            current,
            waited,
        };
        let Some(follower) = self.follower() else {
            return Err(match &self.inner.node {
                Node::Writer { .. } => behind(current, Duration::ZERO),
                Node::Replica { .. } => Error::Unavailable("the replica was closed".into()),
            });
        };
        match follower.wait_for(wanted, wait).await {
            Ok(()) => Ok(()),
            Err(hadal_replica::Error::Behind {
                applied, waited, ..
            }) => Err(behind(applied, waited)),
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }

    /// Runs `f` on one snapshot of the local engine, on the blocking pool, and returns its
    /// answer with the snapshot's LSN. A snapshot that vanished (a replica re-bootstrapped)
    /// is retried on a new one.
    async fn read<T, F>(&self, f: F) -> Result<Read<T>>
    where
        T: Send + 'static,
        F: Fn(&ReadTxn) -> Result<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let g = f.clone();
            let run = move |txn: &ReadTxn| Read {
                lsn: txn.lsn(),
                value: (*g)(txn),
            };
            let read: Read<Result<T>> = match &self.inner.node {
                Node::Writer { db, .. } => {
                    db.read(move |txn| Ok::<_, hadal_engine::Error>(run(txn)))
                        .await?
                }
                Node::Replica { engine, .. } => {
                    let engine = engine.clone();
                    tokio::task::spawn_blocking(move || run(&engine.begin_read()))
                        .await
                        .map_err(|e| Error::Internal(format!("a read task failed: {e}")))?
                }
            };
            match read.value {
                Ok(value) => {
                    return Ok(Read {
                        lsn: read.lsn,
                        value,
                    });
                }
                Err(Error::Retry(_)) if attempt < READ_ATTEMPTS_MAX => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Backend::read`] on the calling thread, for point reads of a few keys (see
    /// [`Database::begin_read`]): no hand-off to the blocking pool, which costs more than the
    /// read when its pages are cached.
    fn read_here<T>(&self, f: impl Fn(&ReadTxn) -> Result<T>) -> Result<Read<T>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let txn = match &self.inner.node {
                Node::Writer { db, .. } => db.begin_read()?,
                Node::Replica { engine, .. } => engine.begin_read(),
            };
            match f(&txn) {
                Ok(value) => {
                    return Ok(Read {
                        lsn: txn.lsn(),
                        value,
                    });
                }
                Err(Error::Retry(_)) if attempt < READ_ATTEMPTS_MAX => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The entry of `key` in the default table (value, expiry, last-write LSN), `None` when
    /// absent or expired, read at or after `min_lsn` if given: a replica waits up to `wait` for
    /// it, then fails with [`Error::Behind`] carrying its current LSN.
    pub async fn get(
        &self,
        key: Vec<u8>,
        min_lsn: Option<Lsn>,
        wait: Duration,
    ) -> Result<Read<Option<Entry>>> {
        self.reach(min_lsn, wait).await?;
        self.read_here(|txn| Ok(txn.get_entry(DEFAULT_TABLE, &key)?))
    }

    /// Several keys from one snapshot (for `MGET`), in the order asked.
    pub async fn get_many(
        &self,
        keys: Vec<Vec<u8>>,
        min_lsn: Option<Lsn>,
        wait: Duration,
    ) -> Result<Read<Vec<Option<Entry>>>> {
        let keys_len = keys.len();
        self.reach(min_lsn, wait).await?;
        let read = move |txn: &ReadTxn| {
            let table = txn.table(DEFAULT_TABLE)?;
            keys.iter()
                .map(|k| table.get_entry(k).map_err(Error::from))
                .collect()
        };
        if keys_len <= POINT_READ_KEYS_MAX {
            self.read_here(read)
        } else {
            self.read(read).await
        }
    }

    /// The time to live of `key`.
    pub async fn ttl(&self, key: Vec<u8>) -> Result<Read<Ttl>> {
        let now_ms = self.inner.clock.now_ms();
        let read = self.get(key, None, Duration::ZERO).await?;
        let ttl = match read.value {
            None => Ttl::Missing,
            Some(Entry {
                expires_ms: None, ..
            }) => Ttl::Persistent,
            Some(Entry {
                expires_ms: Some(at_ms),
                ..
            }) => Ttl::Expires {
                at_ms,
                remaining: Duration::from_millis(at_ms.saturating_sub(now_ms)),
            },
        };
        Ok(Read {
            lsn: read.lsn,
            value: ttl,
        })
    }

    /// How many visible keys the default table holds. This walks every key (O(n) page reads
    /// on the blocking pool): fine for `DBSIZE` now and then, not for a hot path.
    pub async fn key_count(&self) -> Result<Read<u64>> {
        self.read(|txn| {
            let mut n = 0u64;
            for item in txn.range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)? {
                item?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    /// One page of keys and entries from one snapshot; see [`ScanRequest`].
    pub async fn scan(&self, request: ScanRequest, wait: Duration) -> Result<ScanPage> {
        self.reach(request.min_lsn, wait).await?;
        let (start, end) = scan_bounds(&request);
        let limit = request.limit.clamp(1, SCAN_LIMIT_MAX);
        let reverse = request.reverse;
        let read = self
            .read(move |txn| {
                let mut items = Vec::new();
                let mut bytes = 0usize;
                let mut more = false;
                for item in txn.range(DEFAULT_TABLE, start.clone(), end.clone(), reverse)? {
                    let (key, entry) = item?;
                    if items.len() == limit || bytes >= SCAN_PAGE_BYTES_MAX {
                        more = true;
                        break;
                    }
                    bytes += key.len() + entry.value.len();
                    items.push((key, entry));
                }
                Ok((items, more))
            })
            .await?;
        let (items, more) = read.value;
        let next = if more {
            items.last().map(|(k, _)| k.to_vec())
        } else {
            None
        };
        Ok(ScanPage {
            lsn: read.lsn,
            items,
            next,
        })
    }

    /// Refuses writes on a replica (invariant 1).
    fn writer(&self) -> Result<(&Database, Durability)> {
        match &self.inner.node {
            Node::Writer { db, durability } => Ok((db, *durability)),
            Node::Replica { .. } => Err(Error::ReadOnly {
                role: Role::Replica,
                bucket: self.inner.bucket_url.clone().unwrap_or_default(),
            }),
        }
    }

    /// Commits `batch` atomically (assertions first) and returns its LSN once durable per the
    /// mode (invariant 2). A failed assertion is [`Error::AssertionFailed`] naming it.
    pub async fn write(&self, batch: Batch) -> Result<Lsn> {
        self.write_pending(batch).await?.durable().await
    }

    /// Commits `batch` locally (assertions first) and returns at once; the [`Pending`] says
    /// when the write is durable per the mode. A failed assertion fails here, before anything
    /// is written.
    pub async fn write_pending(&self, batch: Batch) -> Result<Pending> {
        let (db, durability) = self.writer()?;
        batch.validate()?;
        let handle = db.apply(batch).await?;
        Ok(Pending {
            lsn: handle.lsn,
            wait: (durability == Durability::Strict).then_some(handle),
        })
    }

    /// Atomic read-modify-write: runs `f` on a snapshot and commits the batch it plans only if
    /// nothing `f` read changed meanwhile, running `f` again on a newer snapshot otherwise (at
    /// most [`ATOMIC_ATTEMPTS_MAX`] times). Assertions `f` puts in its batch itself are checked
    /// too; if one fails, that is the caller's [`Error::AssertionFailed`], not a retry. An error
    /// `f` returns is returned as is. A plan with no operations commits nothing (so a
    /// read-only `f` also works on a replica).
    pub async fn atomic<T, F>(&self, f: F) -> Result<Committed<T>>
    where
        T: Send + 'static,
        F: Fn(&mut Reads<'_>) -> Result<Plan<T>> + Send + Sync + 'static,
    {
        self.atomic_pending(f).await?.durable().await
    }

    /// [`Backend::atomic`] that returns once the batch is committed locally; the
    /// [`PendingCommit`] says when it is durable.
    pub async fn atomic_pending<T, F>(&self, f: F) -> Result<PendingCommit<T>>
    where
        T: Send + 'static,
        F: Fn(&mut Reads<'_>) -> Result<Plan<T>> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let clock = self.inner.clock.clone();
        for _ in 0..ATOMIC_ATTEMPTS_MAX {
            let g = f.clone();
            let clock = clock.clone();
            // The closures of read-modify-writes read a few keys: on this thread.
            let read = self.read_here(move |txn| {
                let mut reads = Reads {
                    txn,
                    now_ms: clock.now_ms(),
                    read_set: Vec::new(),
                };
                let plan = (*g)(&mut reads)?;
                Ok((plan, reads.assertions()))
            })?;
            let (plan, guards) = read.value;
            if plan.batch.ops.is_empty() {
                return Ok(PendingCommit {
                    pending: None,
                    read_lsn: read.lsn,
                    reply: plan.reply,
                });
            }
            let own = plan.batch.assertions.len();
            let mut batch = plan.batch;
            batch.assertions.extend(guards);
            match self.write_pending(batch).await {
                Ok(pending) => {
                    return Ok(PendingCommit {
                        pending: Some(pending),
                        read_lsn: read.lsn,
                        reply: plan.reply,
                    });
                }
                Err(Error::AssertionFailed { index, .. }) if index >= own => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contended {
            attempts: ATOMIC_ATTEMPTS_MAX,
        })
    }

    /// [`Backend::atomic_pending`] for a closure that works on one `key`: it runs under that
    /// key's lock, held until the local commit (not until durability), so read-modify-writes
    /// of one key in this process take turns instead of retrying against each other (a burst
    /// of `INCR`s on a hot key never runs out of attempts). Writes that take no lock are still
    /// caught by the optimistic check.
    pub async fn atomic_pending_keyed<T, F>(&self, key: Vec<u8>, f: F) -> Result<PendingCommit<T>>
    where
        T: Send + 'static,
        F: Fn(&mut Reads<'_>) -> Result<Plan<T>> + Send + Sync + 'static,
    {
        use std::hash::BuildHasher as _;
        let stripe = (self.inner.key_hasher.hash_one(&key) as usize) % self.inner.key_locks.len();
        let _turn = self.inner.key_locks[stripe].lock().await;
        self.atomic_pending(f).await
    }

    /// Atomic read-modify-write of one key: `f` sees its entry (or `None`) and says what to do
    /// with it and what to answer; see [`Backend::atomic`]. The building block of `INCR`,
    /// `APPEND`, `SET NX|XX|GET`, `GETDEL`, `EXPIRE`, `PERSIST`.
    pub async fn update<T, F>(&self, key: Vec<u8>, f: F) -> Result<Committed<T>>
    where
        T: Send + 'static,
        F: Fn(Option<&Entry>, u64) -> Result<(Change, T)> + Send + Sync + 'static,
    {
        self.update_pending(key, f).await?.durable().await
    }

    /// [`Backend::update`] that returns once the change is committed locally (under the key's
    /// lock, see [`Backend::atomic_pending_keyed`]).
    pub async fn update_pending<T, F>(&self, key: Vec<u8>, f: F) -> Result<PendingCommit<T>>
    where
        T: Send + 'static,
        F: Fn(Option<&Entry>, u64) -> Result<(Change, T)> + Send + Sync + 'static,
    {
        let locked = key.clone();
        self.atomic_pending_keyed(locked, move |reads| {
            let entry = reads.get(&key)?;
            let (change, reply) = f(entry.as_ref(), reads.now_ms())?;
            let batch = match change {
                Change::Keep => Batch::new(),
                Change::Put { value, expires_ms } => {
                    Batch::new().put_in(DEFAULT_TABLE, key.clone(), value, expires_ms)
                }
                Change::Delete => Batch::new().delete(key.clone()),
            };
            Ok(Plan { batch, reply })
        })
        .await
    }

    /// Assertions that hold at commit time exactly while `keys` are as they are now (for
    /// `WATCH`: append them to the `EXEC` batch; a failed one means a watched key changed).
    pub async fn watch(&self, keys: Vec<Vec<u8>>) -> Result<Read<Vec<Assertion>>> {
        self.read(move |txn| {
            let table = txn.table(DEFAULT_TABLE)?;
            let mut read_set = Vec::with_capacity(keys.len());
            for key in &keys {
                let last_write = table.get_entry(key)?.map(|e| e.lsn);
                read_set.push((key.clone(), last_write));
            }
            Ok(unchanged(&read_set))
        })
        .await
    }

    /// Whether the server can serve: `Err(why)` once a writer was fenced or its shipper
    /// stopped, or a replica stopped following.
    pub fn ready(&self) -> std::result::Result<(), String> {
        match self.stopped() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Positions and settings (reads the bucket's retention window at most once a minute).
    pub async fn info(&self) -> Info {
        let retention_ms = self.retention_ms().await;
        let (epoch, lsn_committed, lsn_durable, lag, durability) = match &self.inner.node {
            Node::Writer { db, durability } => (
                db.epoch().map(|e| e.get()),
                db.lsn().get(),
                db.lsn_durable().get(),
                None,
                Some(durability_name(*durability).to_owned()),
            ),
            Node::Replica { engine, .. } => match self.follower() {
                Some(f) => {
                    let state = f.state();
                    let lag = f.lag();
                    (
                        Some(state.epoch.get()),
                        state.lsn_seen.get(),
                        state.lsn_seen.get(),
                        Some(LagInfo {
                            lsns: lag.lsns,
                            seconds: lag.seconds,
                        }),
                        None,
                    )
                }
                None => (None, engine.lsn().get(), engine.lsn().get(), None, None),
            },
        };
        Info {
            role: self.role(),
            epoch,
            lsn_committed,
            lsn_durable,
            lsn_applied: self.lsn_applied().get(),
            lag,
            bucket: self.inner.bucket_url.clone(),
            durability,
            retention_ms,
            retention: retention_ms
                .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string()),
            stopped: self.stopped(),
            data_dir: self.inner.data_dir.display().to_string(),
        }
    }

    /// Upload and follow counters.
    pub fn counters(&self) -> Counters {
        match &self.inner.node {
            Node::Writer { db, .. } => Counters {
                shipper: db.shipper_metrics(),
                rebootstraps: None,
            },
            Node::Replica { .. } => Counters {
                shipper: None,
                rebootstraps: self.follower().map(|f| f.state().rebootstraps),
            },
        }
    }

    async fn retention_ms(&self) -> Option<u64> {
        if let Some((at, ms)) = *self.inner.retention.lock()
            && at.elapsed() < RETENTION_REFRESH
        {
            return Some(ms);
        }
        let bucket = self.inner.bucket.clone()?;
        let log = hadal_replica::BucketLog::new(bucket);
        match log.latest_manifest(None).await {
            Ok(Some(latest)) => {
                let ms = latest.manifest.retention_ms;
                *self.inner.retention.lock() = Some((Instant::now(), ms));
                Some(ms)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "reading the retention window from the manifest");
                self.inner.retention.lock().map(|(_, ms)| ms)
            }
        }
    }

    /// Shuts down: a writer waits for its writes in flight, ships every commit and releases the
    /// folder (`Database::close`); a replica stops following. Later calls return at once.
    pub async fn close(&self) -> Result<()> {
        match &self.inner.node {
            Node::Writer { db, .. } => db.close().await.map_err(Error::from),
            Node::Replica { follower, .. } => {
                let taken = follower.lock().take();
                if let Some(follower) = taken {
                    match Arc::try_unwrap(follower) {
                        Ok(follower) => {
                            follower.stop().await;
                        }
                        // A read waiting for an LSN holds a clone: dropping ours and theirs
                        // stops the tailing task (it is aborted at its next await, never in
                        // the middle of applying a segment).
                        Err(shared) => drop(shared),
                    }
                }
                Ok(())
            }
        }
    }
}

fn key_locks() -> Box<[tokio::sync::Mutex<()>]> {
    (0..KEY_LOCK_STRIPES)
        .map(|_| tokio::sync::Mutex::new(()))
        .collect()
}

/// `strict`, `local` or `async`.
pub fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Strict => "strict",
        Durability::Local => "local",
        Durability::Async => "async",
    }
}

async fn open_bucket(url: &str) -> Result<DynBucket> {
    hadal_transports::open(url)
        .await
        .map_err(|e| Error::Invalid(format!("opening bucket {url}: {e}")))
}

fn replica_error(url: &str, e: hadal_replica::Error) -> Error {
    let message = format!("following {url}: {e}");
    match e.kind() {
        hadal_replica::ErrorKind::Invalid => Error::Invalid(message),
        hadal_replica::ErrorKind::Bucket => Error::Unavailable(message),
        _ => Error::Internal(message),
    }
}

/// The engine range bounds of a scan: the tightest of `prefix`, `start`, `end` and the resume
/// cursor `after`.
fn scan_bounds(r: &ScanRequest) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut lower: Bound<Vec<u8>> = Bound::Unbounded;
    let mut upper: Bound<Vec<u8>> = Bound::Unbounded;
    if let Some(prefix) = &r.prefix {
        lower = Bound::Included(prefix.clone());
        upper = prefix_end(prefix);
    }
    if let Some(start) = &r.start {
        lower = tighter_lower(lower, Bound::Included(start.clone()));
    }
    if let Some(end) = &r.end {
        upper = tighter_upper(upper, Bound::Excluded(end.clone()));
    }
    if let Some(after) = &r.after {
        if r.reverse {
            upper = tighter_upper(upper, Bound::Excluded(after.clone()));
        } else {
            lower = tighter_lower(lower, Bound::Excluded(after.clone()));
        }
    }
    (lower, upper)
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

fn tighter_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    use Bound::{Excluded, Included, Unbounded};
    match (&a, &b) {
        (Unbounded, _) => b,
        (_, Unbounded) => a,
        (Included(x) | Excluded(x), Included(y) | Excluded(y)) => {
            if x > y || (x == y && matches!(a, Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

fn tighter_upper(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    use Bound::{Excluded, Included, Unbounded};
    match (&a, &b) {
        (Unbounded, _) => b,
        (_, Unbounded) => a,
        (Included(x) | Excluded(x), Included(y) | Excluded(y)) => {
            if x < y || (x == y && matches!(a, Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(k: &str) -> Bound<Vec<u8>> {
        Bound::Included(k.as_bytes().to_vec())
    }
    fn exc(k: &str) -> Bound<Vec<u8>> {
        Bound::Excluded(k.as_bytes().to_vec())
    }

    #[test]
    fn scan_bounds_take_the_tightest_of_prefix_range_and_cursor() {
        // Proves prefix, start, end and the resume cursor combine as an intersection, in both
        // directions, with exclusive bounds winning ties.
        let r = ScanRequest {
            prefix: Some(b"user:".to_vec()),
            start: Some(b"user:b".to_vec()),
            end: Some(b"zzz".to_vec()),
            ..ScanRequest::default()
        };
        assert_eq!(scan_bounds(&r), (inc("user:b"), exc("user;")));
        let r = ScanRequest {
            after: Some(b"user:b".to_vec()),
            ..r
        };
        assert_eq!(scan_bounds(&r), (exc("user:b"), exc("user;")));
        let r = ScanRequest {
            reverse: true,
            after: Some(b"user:m".to_vec()),
            ..r
        };
        assert_eq!(scan_bounds(&r), (inc("user:b"), exc("user:m")));
        assert_eq!(
            scan_bounds(&ScanRequest::default()),
            (Bound::Unbounded, Bound::Unbounded)
        );
        assert_eq!(prefix_end(&[0x61, 0xff]), Bound::Excluded(vec![0x62]));
        assert_eq!(prefix_end(&[0xff]), Bound::Unbounded);
    }

    #[test]
    fn a_read_set_asserts_present_keys_unchanged_and_absent_keys_absent() {
        // Proves the optimistic check: a present key must still exist and not be rewritten
        // after its last write; an absent one must still be absent.
        let asserts = unchanged(&[(b"a".to_vec(), Some(Lsn::new(7))), (b"b".to_vec(), None)]);
        assert_eq!(asserts.len(), 3);
        assert!(matches!(&asserts[0], Assertion::Exists { key, .. } if key == b"a"));
        assert!(
            matches!(&asserts[1], Assertion::LastWriteAtMost { key, lsn, .. } if key == b"a" && *lsn == Lsn::new(7))
        );
        assert!(matches!(&asserts[2], Assertion::Absent { key, .. } if key == b"b"));
    }
}

//! The two systems under test behind one `commit`: a single-key write that returns once it is
//! durable in the object store, and nothing earlier.
//!
//! * Hadal: the engine with `retain_unshipped` and the shipper's commit hook, the shipper in
//!   strict mode on an [`ObjectStoreBucket`] over the latency store. A commit is a local
//!   `Durability::NoSync` apply (the bucket, not the local disk, is what makes it durable in
//!   strict mode), run on tokio's blocking pool because it can wait on locks, followed by
//!   `Shipper::wait_durable` of its LSN.
//! * SlateDB 0.18 (`default-features = false`) on the latency store with its default settings
//!   except `flush_interval`; a commit is `Db::put` followed by `WriteHandle::await_durable`.
//!
//! Every commit writes the pair of its number `n` ([`pair`]), so the harness can read any of them
//! back afterwards and check the value.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hadal_engine::{Batch, DEFAULT_TABLE, Database, Durability, Options};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::DynBucket;
use object_store::ObjectStore;
use tokio::sync::Notify;

use super::bucket::ObjectStoreBucket;
use super::latency::{LatencyModel, LatencyStore, StoreCounts};
use crate::workload::{KEY_BYTES, SplitMix64, VALUE_BYTES};

/// Seed of the commit pairs (distinct from the engine benchmark's).
const SEED_PAIRS: u64 = 0x5eed_5a1b;

/// The key and value written by commit number `n`: 16 and 100 uniformly random bytes, as in the
/// engine benchmark, so keys land anywhere in the tree.
pub fn pair(n: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = SplitMix64::new(SEED_PAIRS ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut key = vec![0u8; KEY_BYTES];
    let mut value = vec![0u8; VALUE_BYTES];
    rng.fill(&mut key);
    rng.fill(&mut value);
    (key, value)
}

/// Which system, for `--only` and the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SystemName {
    Hadal,
    Slatedb,
}

impl SystemName {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemName::Hadal => "hadal",
            SystemName::Slatedb => "slatedb",
        }
    }
}

/// Log-write counters of the system itself, beside the store's (Hadal's shipper metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnCounts {
    pub segments: u64,
    pub segment_puts: u64,
    pub segment_bytes: u64,
    /// Engine commits shipped; below client commits when group commit merged them.
    pub engine_commits: u64,
}

impl OwnCounts {
    pub fn since(&self, earlier: &OwnCounts) -> OwnCounts {
        OwnCounts {
            segments: self.segments - earlier.segments,
            segment_puts: self.segment_puts - earlier.segment_puts,
            segment_bytes: self.segment_bytes - earlier.segment_bytes,
            engine_commits: self.engine_commits - earlier.engine_commits,
        }
    }
}

/// One system, opened on a fresh in-memory store behind its own latency store.
#[derive(Debug)]
pub struct System {
    pub name: SystemName,
    pub store: LatencyStore,
    kind: Kind,
}

enum Kind {
    Hadal {
        db: Database,
        shipper: Shipper,
        _dir: tempfile::TempDir,
    },
    Slatedb {
        db: slatedb::Db,
    },
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Hadal { .. } => f.write_str("Hadal"),
            Kind::Slatedb { .. } => f.write_str("Slatedb"),
        }
    }
}

/// Object path prefixes in each system's store.
pub const HADAL_PREFIX: &str = "hadal";
pub const SLATEDB_PATH: &str = "slatedb";

impl System {
    /// Opens `name` on a new `InMemory` store behind a [`LatencyStore`] with `model`; Hadal's
    /// local files go into a fresh folder under `scratch`.
    pub async fn open(
        name: SystemName,
        model: LatencyModel,
        slatedb_flush: Duration,
        scratch: &Path,
    ) -> Result<System> {
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        match name {
            SystemName::Hadal => {
                let store = LatencyStore::new(memory, model, &format!("{HADAL_PREFIX}/seg/"));
                let bucket: DynBucket = Arc::new(ObjectStoreBucket::new(
                    Arc::new(store.clone()),
                    HADAL_PREFIX,
                    &format!("latency-injected InMemory/{HADAL_PREFIX}"),
                ));
                let dir = tempfile::Builder::new()
                    .prefix("hadal-shipping-")
                    .tempdir_in(scratch)
                    .with_context(|| format!("create a scratch folder in {}", scratch.display()))?;
                let wake = Arc::new(Notify::new());
                let options = Options {
                    retain_unshipped: true,
                    on_commit: Some(commit_hook(&wake)),
                    ..Options::default()
                };
                let db = Database::open(dir.path().join("db"), options)
                    .context("hadal: open the engine")?;
                let shipper = Shipper::start(db.clone(), bucket, ShipperOptions::default(), wake)
                    .await
                    .context("hadal: start the shipper")?;
                Ok(System {
                    name,
                    store,
                    kind: Kind::Hadal {
                        db,
                        shipper,
                        _dir: dir,
                    },
                })
            }
            SystemName::Slatedb => {
                let store = LatencyStore::new(memory, model, &format!("{SLATEDB_PATH}/wal/"));
                let settings = slatedb::Settings {
                    flush_interval: Some(slatedb_flush),
                    ..slatedb::Settings::default()
                };
                let db = slatedb::Db::builder(SLATEDB_PATH, Arc::new(store.clone()))
                    .with_settings(settings)
                    .build()
                    .await
                    .context("slatedb: open")?;
                Ok(System {
                    name,
                    store,
                    kind: Kind::Slatedb { db },
                })
            }
        }
    }

    /// Writes the pair of commit `n` and returns once it is durable in the store.
    pub async fn commit(&self, n: u64) -> Result<()> {
        let (key, value) = pair(n);
        match &self.kind {
            Kind::Hadal { db, shipper, .. } => {
                let batch = Batch::new().put(key, value).durability(Durability::NoSync);
                // `apply` blocks (group commit, the WAL lock): keep it off the async workers
                // so a blocked commit never stalls the shipper's upload or the load driver.
                let db = db.clone();
                let lsn = tokio::task::spawn_blocking(move || db.apply(batch))
                    .await
                    .context("hadal: local commit task")?
                    .context("hadal: local commit")?;
                shipper
                    .wait_durable(lsn)
                    .await
                    .context("hadal: wait for the segment")?;
            }
            Kind::Slatedb { db } => {
                let handle = db.put(key, value).await.context("slatedb: put")?;
                handle
                    .await_durable()
                    .await
                    .context("slatedb: await durable")?;
            }
        }
        Ok(())
    }

    /// Reads back the pair of commit `n`; an error if it is missing or differs.
    pub async fn check(&self, n: u64) -> Result<()> {
        let (key, value) = pair(n);
        let got = match &self.kind {
            Kind::Hadal { db, .. } => db
                .begin_read()
                .get(DEFAULT_TABLE, &key)
                .context("hadal: read back")?
                .map(|b| b.to_vec()),
            Kind::Slatedb { db } => db
                .get(&key)
                .await
                .context("slatedb: read back")?
                .map(|b| b.to_vec()),
        };
        match got {
            Some(v) if v == value => Ok(()),
            Some(_) => bail!(
                "{}: commit {n} reads back a different value",
                self.name.as_str()
            ),
            None => bail!("{}: commit {n} is missing", self.name.as_str()),
        }
    }

    /// The system's own log counters (zero for SlateDB, which publishes none we use).
    pub fn own_counts(&self) -> OwnCounts {
        match &self.kind {
            Kind::Hadal { shipper, .. } => {
                let m = shipper.metrics();
                OwnCounts {
                    segments: m.segments_uploaded,
                    segment_puts: m.segment_puts,
                    segment_bytes: m.bytes_uploaded,
                    engine_commits: m.commits_shipped,
                }
            }
            Kind::Slatedb { .. } => OwnCounts::default(),
        }
    }

    pub fn counts(&self) -> StoreCounts {
        self.store.counts()
    }

    /// Ships or flushes what is pending and closes.
    pub async fn close(self) -> Result<()> {
        match self.kind {
            Kind::Hadal { db, shipper, _dir } => {
                shipper
                    .shutdown()
                    .await
                    .context("hadal: shut the shipper down")?;
                drop(db);
            }
            Kind::Slatedb { db } => db.close().await.context("slatedb: close")?,
        }
        Ok(())
    }
}

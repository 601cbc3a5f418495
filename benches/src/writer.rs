//! [`Writer`]: Hadal's primary as the restore and replica benchmarks drive it: the engine,
//! opened with `retain_unshipped` and the shipper's commit hook in a fresh folder, and the
//! shipper in strict mode on a given bucket (the same path `hadal::Database` takes, minus the
//! bucket URL, which cannot name the benchmarks' latency-injected store).
//!
//! A commit is a local `Durability::NoSync` apply (in strict mode the bucket, not the local disk,
//! makes it durable), run on tokio's blocking pool because it can wait on locks, then
//! `Shipper::wait_durable` of its LSN: it returns once its segment is in the bucket.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use hadal_engine::{Batch, Database, Durability, Lsn, Options, StateChecksum};
use hadal_format::manifest::SnapshotRef;
use hadal_shipper::{MetricsSnapshot, Shipper, ShipperOptions, commit_hook};
use hadal_transports::DynBucket;
use tokio::sync::Notify;

/// An engine and its shipper, writing to one bucket.
#[derive(Debug)]
pub struct Writer {
    db: Database,
    shipper: Shipper,
    _dir: tempfile::TempDir,
}

impl Writer {
    /// Opens a new database in a fresh folder under `scratch` and starts shipping it to `bucket`.
    pub async fn open(
        bucket: DynBucket,
        scratch: &Path,
        options: ShipperOptions,
    ) -> Result<Writer> {
        let dir = tempfile::Builder::new()
            .prefix("hadal-writer-")
            .tempdir_in(scratch)
            .with_context(|| format!("create a scratch folder in {}", scratch.display()))?;
        let wake = Arc::new(Notify::new());
        let engine = Options {
            retain_unshipped: true,
            on_commit: Some(commit_hook(&wake)),
            ..Options::default()
        };
        let db =
            Database::open(dir.path().join("db"), engine).context("writer: open the engine")?;
        let shipper = Shipper::start(db.clone(), bucket, options, wake)
            .await
            .context("writer: start the shipper")?;
        Ok(Writer {
            db,
            shipper,
            _dir: dir,
        })
    }

    /// Commits `batch` and returns its LSN once it is durable in the bucket.
    pub async fn commit(&self, batch: Batch) -> Result<Lsn> {
        let batch = batch.durability(Durability::NoSync);
        let db = self.db.clone();
        let lsn = tokio::task::spawn_blocking(move || db.apply(batch))
            .await
            .context("writer: local commit task")?
            .context("writer: local commit")?;
        self.shipper
            .wait_durable(lsn)
            .await
            .with_context(|| format!("writer: wait for lsn {} to be durable", lsn.get()))?;
        Ok(lsn)
    }

    /// Takes, uploads and publishes a snapshot of the database as it is now.
    pub async fn snapshot_now(&self) -> Result<SnapshotRef> {
        self.shipper
            .snapshot_now()
            .await
            .context("writer: take a snapshot")?
            .ok_or_else(|| anyhow!("writer: no snapshot taken (nothing new since the last one)"))
    }

    /// The LSN and state checksum of the newest local commit.
    pub fn head(&self) -> (Lsn, StateChecksum) {
        let read = self.db.begin_read();
        (read.lsn(), read.checksum())
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.shipper.metrics()
    }

    /// Ships what is pending, stops the shipper and closes the engine.
    pub async fn close(self) -> Result<()> {
        self.shipper
            .shutdown()
            .await
            .context("writer: shut the shipper down")?;
        drop(self.db);
        Ok(())
    }
}

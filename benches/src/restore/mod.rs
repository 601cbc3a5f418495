//! The restore benchmark (issue 5, item 6): how close a restore to the head comes to a plain
//! parallel download of the same objects, on the same store.
//!
//! One database is built through Hadal's real writer path ([`Writer`]: engine and strict
//! shipper) on a latency-injected in-memory store: `100 - tail` percent of the data, a snapshot
//! (`Shipper::snapshot_now`), then the tail, so a restore reads snapshot parts and then a run of
//! segments. Then, per store, for each round: `hadal_replica::restore(bucket, out, Head)` into a
//! fresh folder on the real disk, timed and checked (its LSN and state checksum must equal the
//! writer's, sampled keys must read back); and a raw download of exactly the snapshot parts and
//! segments that restore read, with restore's own parallelism (its snapshot parts, then its
//! segments), keeping nothing. The stores:
//!
//! * `latency`: the build's `InMemory` store behind a fresh [`LatencyStore`] with the same model;
//! * `bandwidth`: the same, plus a per-connection download bandwidth for GET bodies;
//! * `file`: a `FileBucket` in a folder on the real disk, holding a byte-for-byte copy of every
//!   object (no injected latency: the page cache holds the copy, so this is the CPU-and-disk
//!   ceiling).
//!
//! Invariant: a round fails (the benchmark fails) if the restore's LSN, checksum, snapshot or
//! sampled values differ from the writer's, or if the raw download does not return exactly the
//! bytes the restore read.

pub mod report;
pub mod request_log;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use hadal_engine::{Batch, DEFAULT_TABLE, Lsn, StateChecksum};
use hadal_replica::Target;
use hadal_replica::restore::{FETCH_AHEAD_SEGMENTS, PARALLEL_PART_DOWNLOADS};
use hadal_shipper::ShipperOptions;
use hadal_transports::{Bucket, DynBucket, FileBucket, Op};
use object_store::ObjectStore;

use self::request_log::RequestLog;
use crate::shipping::bucket::ObjectStoreBucket;
use crate::shipping::latency::{LatencyModel, LatencyStore};
use crate::workload::{KEY_BYTES, SplitMix64};
use crate::writer::Writer;

/// The database's prefix in the in-memory store.
const PREFIX: &str = "hadal";
/// Seed of the restore database's keys and values.
const SEED_PAIRS: u64 = 0x5eed_4e57;
/// Keys read back from every restored database.
const CHECK_SAMPLES: u64 = 200;
/// A restore budget no build reaches: the only snapshot is the one the benchmark takes.
const BUILD_RESTORE_BUDGET: Duration = Duration::from_secs(24 * 3600);

/// Which store a round runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreName {
    /// In-memory, every request delayed by the latency model.
    Latency,
    /// As `latency`, and GET bodies arrive at a per-connection bandwidth.
    Bandwidth,
    /// A `FileBucket` on the real disk, no injected latency.
    File,
}

impl StoreName {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreName::Latency => "latency",
            StoreName::Bandwidth => "bandwidth",
            StoreName::File => "file",
        }
    }
}

/// Everything a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model: LatencyModel,
    /// Download bandwidth of one connection of the `bandwidth` store, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// Bytes of keys and values written in all.
    pub data_bytes: u64,
    /// Share of the data written after the snapshot, in percent.
    pub tail_percent: u64,
    pub value_bytes: usize,
    pub commit_keys: usize,
    /// Restores (and raw downloads) per store.
    pub rounds: usize,
    pub stores: Vec<StoreName>,
}

impl Plan {
    pub fn pair_bytes(&self) -> u64 {
        (KEY_BYTES + self.value_bytes) as u64
    }

    pub fn key_count(&self) -> u64 {
        (self.data_bytes / self.pair_bytes()).max(2)
    }

    /// Keys written before the snapshot (at least one, so there is something to snapshot).
    pub fn head_keys(&self) -> u64 {
        let keys = self.key_count();
        (keys - keys * self.tail_percent / 100).max(1)
    }
}

/// The key and value of pair `i`: an 8-byte big-endian index and 8 random bytes (keys arrive in
/// ascending order, as in a bulk load), and `value_bytes` random bytes (incompressible, so every
/// object is about as large as the pages it carries).
pub fn pair(i: u64, value_bytes: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = SplitMix64::new(SEED_PAIRS ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut key = vec![0u8; KEY_BYTES];
    key[..8].copy_from_slice(&i.to_be_bytes());
    rng.fill(&mut key[8..]);
    let mut value = vec![0u8; value_bytes];
    rng.fill(&mut value);
    (key, value)
}

/// What the build wrote.
#[derive(Debug, Clone)]
pub struct Build {
    pub keys: u64,
    pub commits: u64,
    pub seconds: f64,
    pub snapshot_lsn: Lsn,
    pub snapshot_pages: u32,
    pub lsn: Lsn,
    pub checksum: StateChecksum,
    pub segments_uploaded: u64,
    pub segment_bytes_uploaded: u64,
    pub snapshot_bytes_uploaded: u64,
}

/// The objects a restore read whole: its snapshot parts, then its segments (key, bytes).
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub parts: Vec<(String, u64)>,
    pub segments: Vec<(String, u64)>,
}

impl Objects {
    pub fn count(&self) -> usize {
        self.parts.len() + self.segments.len()
    }

    pub fn part_bytes(&self) -> u64 {
        self.parts.iter().map(|(_, b)| b).sum()
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segments.iter().map(|(_, b)| b).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.part_bytes() + self.segment_bytes()
    }
}

/// One timed transfer (a restore or a raw download).
#[derive(Debug, Clone)]
pub struct Timing {
    pub seconds: f64,
    /// Seconds from the start until the first snapshot-part GET was sent, and until the last
    /// part had arrived.
    pub parts: (f64, f64),
    /// The same for the segments.
    pub segments: (f64, f64),
    /// Requests by operation, and body bytes received.
    pub requests: Vec<(Op, u64)>,
    pub bytes: u64,
}

impl Timing {
    /// The figures of `log`, whose requests all came from a transfer that began at `started`
    /// and took `seconds`.
    fn of(log: &RequestLog, started: Instant, seconds: f64) -> Timing {
        let span = |prefix: &str| {
            log.span(prefix).map_or((0.0, 0.0), |(first, last)| {
                (
                    first.saturating_duration_since(started).as_secs_f64(),
                    last.saturating_duration_since(started).as_secs_f64(),
                )
            })
        };
        Timing {
            seconds,
            parts: span(hadal_format::keys::SNAPSHOT_PREFIX),
            segments: span(hadal_format::keys::SEGMENT_PREFIX),
            requests: log.counts().into_iter().collect(),
            bytes: log.bytes(),
        }
    }
}

/// Every round on one store.
#[derive(Debug, Clone)]
pub struct StoreRun {
    pub name: StoreName,
    pub description: String,
    pub raw: Vec<Timing>,
    pub restore: Vec<Timing>,
    /// Per round: seconds to write as many bytes as the restored database's main file holds
    /// into a new file on the scratch disk and sync it (the disk's share of any restore).
    pub disk: Vec<f64>,
    /// Bytes of the restored database's main file.
    pub image_bytes: u64,
}

/// Everything measured, before formatting.
#[derive(Debug, Clone)]
pub struct Results {
    pub plan: Plan,
    pub build: Build,
    pub objects: Objects,
    pub stores: Vec<StoreRun>,
    pub seconds: f64,
}

/// Runs `plan`; local files (the writer's, the restored databases, the file bucket) go under
/// `scratch`.
pub async fn run(plan: &Plan, scratch: &Path) -> Result<Results> {
    let started = Instant::now();
    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let build_store = LatencyStore::new(memory.clone(), plan.model, &format!("{PREFIX}/seg/"));
    let build_bucket: DynBucket = Arc::new(ObjectStoreBucket::new(
        Arc::new(build_store),
        PREFIX,
        &format!("latency-injected InMemory/{PREFIX}"),
    ));
    let build = build(plan, build_bucket, scratch).await?;
    let plain: DynBucket = Arc::new(ObjectStoreBucket::new(
        memory.clone(),
        PREFIX,
        &format!("InMemory/{PREFIX}"),
    ));

    let mut objects: Option<Objects> = None;
    let mut stores = Vec::new();
    for &name in &plan.stores {
        let store = Store::open(name, plan, &memory, &plain, scratch).await?;
        let mut run = StoreRun {
            name,
            description: store.description.clone(),
            raw: Vec::new(),
            restore: Vec::new(),
            disk: Vec::new(),
            image_bytes: 0,
        };
        for round in 0..plan.rounds {
            crate::flush_page_cache();
            let (timing, read, image_bytes) = restore_once(plan, &store.bucket, &build, scratch)
                .await
                .with_context(|| format!("{}: restore, round {}", name.as_str(), round + 1))?;
            let objects = objects.get_or_insert_with(|| read.clone());
            ensure!(
                read.parts == objects.parts && read.segments == objects.segments,
                "{}: restore round {} read other objects than the first restore ({} parts and {} segments, then {} and {})",
                name.as_str(),
                round + 1,
                objects.parts.len(),
                objects.segments.len(),
                read.parts.len(),
                read.segments.len()
            );
            let raw = download(&store.bucket, objects)
                .await
                .with_context(|| format!("{}: raw download, round {}", name.as_str(), round + 1))?;
            crate::progress(&format!(
                "restore: {} round {}: restore {:.2} s ({:.1} MiB/s), raw download {:.2} s ({:.1} MiB/s)",
                name.as_str(),
                round + 1,
                timing.seconds,
                mib(objects.bytes()) / timing.seconds,
                raw.seconds,
                mib(objects.bytes()) / raw.seconds
            ));
            crate::flush_page_cache();
            let disk = disk_write(image_bytes, scratch)
                .with_context(|| format!("{}: disk write, round {}", name.as_str(), round + 1))?;
            run.restore.push(timing);
            run.raw.push(raw);
            run.disk.push(disk);
            run.image_bytes = image_bytes;
        }
        stores.push(run);
    }
    Ok(Results {
        plan: plan.clone(),
        build,
        objects: objects.unwrap_or_default(),
        stores,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Writes the database: the head part, a snapshot, the tail.
async fn build(plan: &Plan, bucket: DynBucket, scratch: &Path) -> Result<Build> {
    let started = Instant::now();
    let options = ShipperOptions {
        restore_budget: BUILD_RESTORE_BUDGET,
        ..ShipperOptions::default()
    };
    let writer = Writer::open(bucket, scratch, options).await?;
    let (keys, head_keys) = (plan.key_count(), plan.head_keys());
    let mut commits = 0u64;
    let mut next = 0u64;
    let report_every = (keys / plan.commit_keys as u64 / 10).max(1);
    let mut snapshot = None;
    while next < keys {
        if next == head_keys {
            let snap = writer.snapshot_now().await?;
            crate::progress(&format!(
                "restore: build: snapshot at lsn {} in {} parts, {:.1} MiB",
                snap.lsn,
                snap.parts.len(),
                mib(snap.parts.iter().map(|p| p.bytes).sum())
            ));
            snapshot = Some(snap);
        }
        let end =
            (next + plan.commit_keys as u64).min(if next < head_keys { head_keys } else { keys });
        let mut batch = Batch::new();
        for i in next..end {
            let (key, value) = pair(i, plan.value_bytes);
            batch = batch.put(key, value);
        }
        writer.commit(batch).await?;
        commits += 1;
        next = end;
        if commits.is_multiple_of(report_every) {
            crate::progress(&format!(
                "restore: build: {next} of {keys} keys in {commits} commits, {:.1} s",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    let Some(snapshot) = snapshot else {
        bail!("restore: build: the data ended before the snapshot point");
    };
    let (lsn, checksum) = writer.head();
    let metrics = writer.metrics();
    writer.close().await?;
    Ok(Build {
        keys,
        commits,
        seconds: started.elapsed().as_secs_f64(),
        snapshot_lsn: Lsn::new(snapshot.lsn),
        snapshot_pages: snapshot.page_count,
        lsn,
        checksum,
        segments_uploaded: metrics.segments_uploaded,
        segment_bytes_uploaded: metrics.bytes_uploaded,
        snapshot_bytes_uploaded: metrics.snapshot_bytes_uploaded,
    })
}

/// A store the rounds run on; `_dir` keeps a file bucket's folder alive.
struct Store {
    bucket: DynBucket,
    description: String,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    async fn open(
        name: StoreName,
        plan: &Plan,
        memory: &Arc<dyn ObjectStore>,
        plain: &DynBucket,
        scratch: &Path,
    ) -> Result<Store> {
        let m = &plan.model;
        let latency = format!(
            "InMemory, every request {} ms ± {} ms (uniform, seed {})",
            m.mean.as_secs_f64() * 1000.0,
            m.jitter.as_secs_f64() * 1000.0,
            m.seed
        );
        let log_prefix = format!("{PREFIX}/seg/");
        let (store, description) = match name {
            StoreName::Latency => (LatencyStore::new(memory.clone(), *m, &log_prefix), latency),
            StoreName::Bandwidth => (
                LatencyStore::with_download_bandwidth(
                    memory.clone(),
                    *m,
                    &log_prefix,
                    plan.bandwidth_bytes_per_s,
                ),
                format!(
                    "{latency}, then GET bodies at {:.0} MiB/s per request",
                    mib(plan.bandwidth_bytes_per_s as u64)
                ),
            ),
            StoreName::File => return Store::file(plain, scratch).await,
        };
        Ok(Store {
            bucket: Arc::new(ObjectStoreBucket::new(
                Arc::new(store),
                PREFIX,
                &format!("{name}/{PREFIX}", name = name.as_str()),
            )),
            description,
            _dir: None,
        })
    }

    /// A `FileBucket` under `scratch` holding a copy of every object in `plain`.
    async fn file(plain: &DynBucket, scratch: &Path) -> Result<Store> {
        let dir = tempfile::Builder::new()
            .prefix("hadal-file-bucket-")
            .tempdir_in(scratch)
            .with_context(|| format!("create a bucket folder in {}", scratch.display()))?;
        let file = FileBucket::open(dir.path()).context("open the file bucket")?;
        let listed = hadal_transports::list_all(plain.as_ref(), "", None)
            .await
            .context("list the built database")?;
        let started = Instant::now();
        let mut bytes = 0u64;
        for info in &listed {
            let object = plain
                .get(&info.key)
                .await
                .with_context(|| format!("read {} for the copy", info.key))?
                .with_context(|| format!("{} was listed, then missing", info.key))?;
            bytes += object.bytes.len() as u64;
            file.put(&info.key, object.bytes)
                .await
                .with_context(|| format!("copy {} into {}", info.key, file.name()))?;
        }
        crate::progress(&format!(
            "restore: copied {} objects ({:.1} MiB) into {} in {:.1} s",
            listed.len(),
            mib(bytes),
            file.name(),
            started.elapsed().as_secs_f64()
        ));
        let description = format!(
            "FileBucket on the real disk ({}), no injected latency; objects in the page cache",
            dir.path().display()
        );
        Ok(Store {
            bucket: Arc::new(file),
            description,
            _dir: Some(dir),
        })
    }
}

/// Restores the head into a fresh folder, checks it against the writer, and returns its timing
/// and the objects it read.
async fn restore_once(
    plan: &Plan,
    bucket: &DynBucket,
    build: &Build,
    scratch: &Path,
) -> Result<(Timing, Objects, u64)> {
    let dir = tempfile::Builder::new()
        .prefix("hadal-restored-")
        .tempdir_in(scratch)
        .with_context(|| format!("create a restore folder in {}", scratch.display()))?;
    let out = dir.path().join("db");
    let log = Arc::new(RequestLog::new(bucket.clone()));
    let started = Instant::now();
    let restored = hadal_replica::restore(log.clone(), &out, Target::Head, None)
        .await
        .context("restore to the head")?;
    let seconds = started.elapsed().as_secs_f64();

    ensure!(
        restored.lsn == build.lsn && restored.checksum == build.checksum,
        "restored lsn {} with checksum {}; the writer is at lsn {} with {}",
        restored.lsn.get(),
        restored.checksum,
        build.lsn.get(),
        build.checksum
    );
    ensure!(
        restored.snapshot_lsn == Some(build.snapshot_lsn),
        "restored from snapshot {:?}, the writer published one at lsn {}",
        restored.snapshot_lsn.map(Lsn::get),
        build.snapshot_lsn.get()
    );
    check_sample(plan, &out, build.keys)?;

    let objects = Objects {
        parts: log.objects_read(hadal_format::keys::SNAPSHOT_PREFIX),
        segments: log.objects_read(hadal_format::keys::SEGMENT_PREFIX),
    };
    ensure!(
        objects.segment_bytes() == restored.bytes,
        "restore says it read {} segment bytes, its requests carried {}",
        restored.bytes,
        objects.segment_bytes()
    );
    let timing = Timing::of(&log, started, seconds);
    let main = out.join(hadal_engine::MAIN_FILE_NAME);
    let image_bytes = std::fs::metadata(&main)
        .with_context(|| format!("size of {}", main.display()))?
        .len();
    drop(dir);
    Ok((timing, objects, image_bytes))
}

/// Writes `bytes` bytes into a new file under `scratch` in 8 MiB calls and syncs it; returns
/// the seconds taken. What a restore cannot beat on this disk: it writes at least the image.
fn disk_write(bytes: u64, scratch: &Path) -> Result<f64> {
    use std::io::Write as _;
    let mut file = tempfile::NamedTempFile::new_in(scratch)
        .with_context(|| format!("create a file in {}", scratch.display()))?;
    let chunk: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])
            .context("write the disk-floor file")?;
        left -= n as u64;
    }
    file.as_file()
        .sync_data()
        .context("sync the disk-floor file")?;
    Ok(started.elapsed().as_secs_f64())
}

/// Reads `CHECK_SAMPLES` keys spread over all of them, and the last, from the restored folder.
fn check_sample(plan: &Plan, out: &Path, keys: u64) -> Result<()> {
    let options = hadal_engine::Options {
        background: false,
        sweep_interval: None,
        ..hadal_engine::Options::default()
    };
    let db = hadal_engine::Database::open(out, options)
        .with_context(|| format!("open the restored database in {}", out.display()))?;
    let read = db.begin_read();
    let step = (keys / CHECK_SAMPLES).max(1);
    for i in (0..keys).step_by(step as usize).chain([keys - 1]) {
        let (key, value) = pair(i, plan.value_bytes);
        match read
            .get(DEFAULT_TABLE, &key)
            .with_context(|| format!("read key {i} from the restored database"))?
        {
            Some(got) if got.as_ref() == value.as_slice() => {}
            Some(_) => bail!("key {i} reads back a different value from the restored database"),
            None => bail!("key {i} is missing from the restored database"),
        }
    }
    Ok(())
}

/// Downloads `objects` with restore's parallelism (parts, then segments) and keeps nothing.
async fn download(bucket: &DynBucket, objects: &Objects) -> Result<Timing> {
    let log = Arc::new(RequestLog::new(bucket.clone()));
    let started = Instant::now();
    fetch_all(&log, &objects.parts, PARALLEL_PART_DOWNLOADS).await?;
    fetch_all(&log, &objects.segments, FETCH_AHEAD_SEGMENTS).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Timing::of(&log, started, seconds))
}

/// GETs every object, `parallel` at a time in any order, checking each one's size.
async fn fetch_all(
    log: &Arc<RequestLog>,
    objects: &[(String, u64)],
    parallel: usize,
) -> Result<()> {
    futures::stream::iter(objects)
        .map(|(key, bytes)| async move {
            let object = log
                .get(key)
                .await
                .with_context(|| format!("GET {key}"))?
                .with_context(|| format!("{key} is missing"))?;
            ensure!(
                object.bytes.len() as u64 == *bytes,
                "{key} has {} bytes, the restore read {bytes}",
                object.bytes.len()
            );
            Ok(())
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the whole benchmark runs end to end on all three stores over a 1 ms store: every
    // restore equals the writer (checked inside the run), it read snapshot parts and more than
    // one segment, and the raw download moved exactly the bytes of those objects. No timing is
    // asserted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_run_on_a_fast_store() {
        let plan = Plan {
            model: LatencyModel {
                mean: Duration::from_millis(1),
                jitter: Duration::ZERO,
                seed: 3,
            },
            bandwidth_bytes_per_s: 256.0 * 1024.0 * 1024.0,
            data_bytes: 2 * 1024 * 1024,
            tail_percent: 25,
            value_bytes: 900,
            commit_keys: 100,
            rounds: 1,
            stores: vec![StoreName::Latency, StoreName::Bandwidth, StoreName::File],
        };
        let scratch = tempfile::tempdir().expect("scratch");
        let results = run(&plan, scratch.path()).await.expect("run");
        assert_eq!(results.stores.len(), 3);
        assert!(!results.objects.parts.is_empty());
        assert!(results.objects.segments.len() > 1, "{:?}", results.objects);
        for store in &results.stores {
            assert_eq!(store.raw.len(), 1);
            assert_eq!(
                store.raw[0].bytes,
                results.objects.bytes(),
                "{:?}",
                store.name
            );
            assert!(store.restore[0].bytes >= results.objects.bytes());
        }
        let text = report::table(&results);
        assert!(text.contains("restore/raw"), "{text}");
        let json = report::json(&results);
        assert_eq!(json["stores"].as_array().map(Vec::len), Some(3));
    }

    // Proves keys are ascending in their index and values are a pure function of it.
    #[test]
    fn pairs_ascend_and_repeat() {
        let (a, va) = pair(41, 50);
        let (b, _) = pair(42, 50);
        assert!(a < b);
        assert_eq!(pair(41, 50), (a, va.clone()));
        assert_eq!(va.len(), 50);
    }
}

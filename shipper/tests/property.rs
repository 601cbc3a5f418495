//! Issue 5, Done when 4: a seeded property test interleaving random writes, snapshots,
//! compactions, branch creations and deletions, GC passes (with a zombie writer resuming after
//! GC), takeovers and restores. After every step that can lose something it checks:
//! every restore inside the retention window succeeds and equals the history at that point
//! (nothing needed was deleted), the head restores to the last acknowledged commit (nothing
//! acknowledged was lost), a zombie's commits are never acknowledged, every live branch restores
//! to its writer's image, and `verify` passes.
//!
//! Each seed prints itself on failure; `HADAL_PROPERTY_SEEDS=N` runs more seeds locally.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use hadal_engine::{Batch, Clock, Database, Durability, Lsn, ManualClock, StateChecksum};
use hadal_replica::{Target, restore, verify};
use hadal_shipper::compact::{CompactOptions, compact};
use hadal_shipper::gc::{GcOptions, collect, set_retention};
use hadal_shipper::{Shipper, ShipperOptions, branch};
use hadal_transports::DynBucket;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod writer;

const T0: u64 = 1_790_000_000_000;
const RETENTION_MS: u64 = 40_000;
const STEPS: usize = 70;

struct Writer {
    db: Database,
    shipper: Shipper,
}

async fn open(url: &str) -> DynBucket {
    hadal_transports::open(url).await.expect("open")
}

async fn start_writer(dir: &Path, url: &str, clock: &ManualClock) -> Writer {
    let (db, shipper) =
        writer::start(dir, open(url).await, Some(clock), ShipperOptions::default()).await;
    Writer { db, shipper }
}

impl Writer {
    /// One acknowledged commit: returns its LSN, state and commit time.
    async fn write(&self, rng: &mut StdRng, clock: &ManualClock) -> (Lsn, StateChecksum, u64) {
        clock.advance(rng.random_range(200..1500));
        let mut batch = Batch::new().durability(Durability::NoSync);
        for _ in 0..rng.random_range(1..4) {
            let key = format!("k{:03}", rng.random_range(0..80));
            if rng.random_bool(0.15) {
                batch = batch.delete(key);
            } else {
                batch = batch.put(key, vec![rng.random::<u8>(); rng.random_range(10..900)]);
            }
        }
        let lsn = self.db.apply(batch).expect("apply");
        self.shipper.wait_durable(lsn).await.expect("durable");
        let r = self.db.begin_read();
        (lsn, r.checksum(), r.commit_time_ms())
    }
}

struct Branch {
    url: String,
    writer: Option<Writer>,
    /// The branch's head state as its writer (or creation) left it.
    head: StateChecksum,
}

struct World {
    dir: PathBuf,
    rng: StdRng,
    clock: ManualClock,
    url: String,
    writer: Writer,
    zombies: Vec<Writer>,
    /// Every acknowledged commit of the main database: state and commit time.
    history: BTreeMap<Lsn, (StateChecksum, u64)>,
    branches: Vec<Branch>,
    folders: u64,
    restores: u64,
    /// What the run exercised: objects GC deleted, branches created, zombie commits refused.
    gc_deleted: u64,
    branches_created: u64,
    zombies_refused: u64,
}

impl World {
    fn folder(&mut self, what: &str) -> PathBuf {
        self.folders += 1;
        self.dir.join(format!("{what}-{}", self.folders))
    }

    async fn check_restores(&mut self, seed: u64, step: usize) {
        let now = self.clock.now_ms();
        let window_start = now.saturating_sub(RETENTION_MS);
        let inside: Vec<(Lsn, (StateChecksum, u64))> = self
            .history
            .iter()
            .filter(|(_, (_, t))| *t >= window_start)
            .map(|(l, v)| (*l, *v))
            .collect();
        let mut picks = vec![*self.history.last_key_value().expect("history").0];
        for _ in 0..3 {
            if !inside.is_empty() {
                picks.push(inside[self.rng.random_range(0..inside.len())].0);
            }
        }
        for lsn in picks {
            let (checksum, time) = self.history[&lsn];
            let by_time = self.rng.random_bool(0.3);
            let target = if by_time {
                Target::Time(time)
            } else {
                Target::Lsn(lsn)
            };
            let out = self.folder("restore");
            let r = restore(open(&self.url).await, &out, target, None)
                .await
                .unwrap_or_else(|e| {
                    panic!("seed {seed} step {step}: restore of {target:?} inside the window failed: {e}")
                });
            assert_eq!(
                r.checksum, checksum,
                "seed {seed} step {step}: restore of {target:?} differs from the history"
            );
            self.restores += 1;
            let _ = std::fs::remove_dir_all(&out);
        }
        let branches: Vec<(String, StateChecksum)> = self
            .branches
            .iter()
            .map(|b| (b.url.clone(), b.head))
            .collect();
        for (url, head) in branches {
            let out = self.folder("branch-restore");
            let r = restore(open(&url).await, &out, Target::Head, None)
                .await
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: branch {} restore: {e}", url));
            assert_eq!(r.checksum, head, "seed {seed} step {step}: branch {}", url);
            let _ = std::fs::remove_dir_all(&out);
        }
        verify(open(&self.url).await, None)
            .await
            .unwrap_or_else(|e| panic!("seed {seed} step {step}: verify: {e}"));
    }
}

/// What one seed exercised.
#[derive(Debug, Default)]
struct Tally {
    commits: u64,
    restores: u64,
    gc_deleted: u64,
    branches: u64,
    zombies: u64,
}

async fn run_seed(seed: u64) -> Tally {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let url = format!("memory://property-{seed}-{}", rand::random::<u64>());
    let writer = start_writer(&dir.path().join("w0"), &url, &clock).await;
    set_retention(open(&url).await, RETENTION_MS, clock.now_ms())
        .await
        .expect("retention");
    let mut world = World {
        dir: dir.path().to_path_buf(),
        rng: StdRng::seed_from_u64(seed),
        clock,
        url,
        writer,
        zombies: Vec::new(),
        history: BTreeMap::new(),
        branches: Vec::new(),
        folders: 0,
        restores: 0,
        gc_deleted: 0,
        branches_created: 0,
        zombies_refused: 0,
    };
    for _ in 0..5 {
        let (lsn, c, t) = world.writer.write(&mut world.rng, &world.clock).await;
        world.history.insert(lsn, (c, t));
    }
    let gc_options = GcOptions {
        grace: Duration::from_secs(2),
        dry_run: false,
    };
    for step in 0..STEPS {
        match world.rng.random_range(0..100) {
            0..=44 => {
                for _ in 0..world.rng.random_range(1..6) {
                    let (lsn, c, t) = world.writer.write(&mut world.rng, &world.clock).await;
                    world.history.insert(lsn, (c, t));
                }
            }
            45..=54 => {
                world.writer.shipper.snapshot_now().await.expect("snapshot");
            }
            55..=61 => {
                let options = CompactOptions {
                    min_segments: world.rng.random_range(2..8),
                    ..CompactOptions::default()
                };
                compact(open(&world.url).await, world.clock.now_ms(), &options)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: compact: {e}"));
            }
            62..=71 => {
                let report = collect(open(&world.url).await, world.clock.now_ms(), &gc_options)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: gc: {e}"));
                world.gc_deleted += report.deleted.len() as u64;
                world.check_restores(seed, step).await;
            }
            72..=77 => {
                // A new writer takes over; the old one lives on as a zombie.
                let folder = world.folder("writer");
                let next = start_writer(&folder, &world.url, &world.clock).await;
                let (head, _) = world
                    .history
                    .last_key_value()
                    .map(|(l, v)| (*l, *v))
                    .expect("h");
                assert_eq!(
                    next.db.lsn(),
                    head,
                    "seed {seed} step {step}: takeover lost commits"
                );
                let old = std::mem::replace(&mut world.writer, next);
                world.zombies.push(old);
            }
            78..=83 => {
                // A zombie resumes (often after GC): its commit must never be acknowledged.
                if let Some(z) = world.zombies.pop() {
                    world.clock.advance(100);
                    if let Ok(lsn) = z.db.apply(
                        Batch::new()
                            .put("zombie", "write")
                            .durability(Durability::NoSync),
                    ) {
                        let acked = tokio::time::timeout(
                            Duration::from_secs(10),
                            z.shipper.wait_durable(lsn),
                        )
                        .await;
                        assert!(
                            !matches!(acked, Ok(Ok(()))),
                            "seed {seed} step {step}: a fenced zombie's commit was acknowledged"
                        );
                        world.zombies_refused += 1;
                    }
                    let _ = z.shipper.shutdown().await;
                }
            }
            84..=91 => {
                if world.branches.len() < 3 {
                    let child = format!("memory://property-branch-{}", rand::random::<u64>());
                    let keys: Vec<Lsn> = world.history.keys().copied().collect();
                    let target = if world.rng.random_bool(0.5) {
                        Target::Head
                    } else {
                        // A recent point: older ones may be outside the window already.
                        Target::Lsn(
                            keys[keys.len() - 1 - world.rng.random_range(0..keys.len().min(5))],
                        )
                    };
                    let created = branch::create(
                        open(&world.url).await,
                        &world.url,
                        open(&child).await,
                        &child,
                        target,
                        world.clock.now_ms(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: branch create: {e}"));
                    world.branches_created += 1;
                    let at = Lsn::new(created.point.parent.lsn);
                    let head = world.history[&at].0;
                    let mut b = Branch {
                        url: child,
                        writer: None,
                        head,
                    };
                    if world.rng.random_bool(0.7) {
                        let folder = world.folder("branch-writer");
                        let w = start_writer(&folder, &b.url, &world.clock).await;
                        assert_eq!(w.db.begin_read().checksum(), head);
                        for _ in 0..world.rng.random_range(1..4) {
                            let (_, c, _) = w.write(&mut world.rng, &world.clock).await;
                            b.head = c;
                        }
                        b.writer = Some(w);
                    }
                    world.branches.push(b);
                }
            }
            _ => {
                if !world.branches.is_empty() {
                    let i = world.rng.random_range(0..world.branches.len());
                    let b = world.branches.remove(i);
                    if let Some(w) = b.writer {
                        w.shipper.shutdown().await.expect("shutdown branch writer");
                    }
                    branch::delete(open(&b.url).await, &b.url, world.clock.now_ms())
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed} step {step}: branch delete: {e}"));
                }
            }
        }
    }
    collect(open(&world.url).await, world.clock.now_ms(), &gc_options)
        .await
        .expect("final gc");
    world.check_restores(seed, STEPS).await;
    let head = world.writer.db.begin_read().checksum();
    assert_eq!(
        head,
        world.history.last_key_value().expect("history").1.0,
        "seed {seed}: the writer's head is the last acknowledged commit"
    );
    for b in world.branches.drain(..) {
        if let Some(w) = b.writer {
            w.shipper.shutdown().await.expect("shutdown");
        }
    }
    world.writer.shipper.shutdown().await.expect("shutdown");
    Tally {
        commits: world.history.len() as u64,
        restores: world.restores,
        gc_deleted: world.gc_deleted,
        branches: world.branches_created,
        zombies: world.zombies_refused,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_never_lose_what_a_restore_needs() {
    let seeds: u64 = std::env::var("HADAL_PROPERTY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut total = Tally::default();
    for seed in 1..=seeds {
        let t = run_seed(seed).await;
        eprintln!("seed {seed}: {t:?}");
        assert!(
            t.commits > 20 && t.restores > 0,
            "seed {seed} exercised too little"
        );
        total.gc_deleted += t.gc_deleted;
        total.branches += t.branches;
        total.zombies += t.zombies;
    }
    assert!(
        total.gc_deleted > 0 && total.branches > 0 && total.zombies > 0,
        "the seeds never exercised GC deletes, branches or zombies: {total:?}"
    );
}

//! End to end over every store (`memory://`, `file://`, moto, Azurite) in every durability mode
//! (strict, local, async): a random workload — sequential and concurrent committers, deletes,
//! overflow values, TTL puts and the sweeps that expire them, checkpoints while shipping — is
//! shipped, then restored to the head, to random LSNs and to random times. Each restored image
//! is the primary's image at that LSN: same state checksum, same commit time, same contents
//! (values and expiries), `check_integrity` clean, and page for page at the head.
//!
//! The primary's state is recorded at *every* LSN from inside the engine's commit hook, which
//! runs with the writer slot held, so the snapshot it reads is exactly that LSN even while
//! several committers race. The primary's clock is a manual clock advanced by that hook after
//! each commit: commit times are then distinct and known, so a restore to a time must land on
//! exactly the expected LSN, and TTL visibility can be compared at the same instant.
//! Reproduce a run with `HADAL_E2E_SEED=<seed>` (printed at the start).

mod stores;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hadal_engine::{
    Batch, Clock, CommitHook, DEFAULT_TABLE, Database, Durability, Lsn, ManualClock, Options,
    PageNo, StateChecksum, SystemClock,
};
use hadal_replica::{Target, restore};
use hadal_shipper::{Mode, Shipper, ShipperOptions, commit_hook};
use hadal_transports::DynBucket;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stores::Store;
use tokio::sync::Notify;

/// How far the primary's clock moves per commit: commit times are `start + STEP × (lsn − 1)`.
const CLOCK_STEP_MS: u64 = 10;
/// Keys the workload draws from (small, so puts overwrite and deletes hit).
const KEYS: u32 = 400;
/// A value this large spills into overflow pages.
const OVERFLOW_VALUE_BYTES: usize = 20_000;
/// How often the local and async modes ship.
const SHIP_INTERVAL: Duration = Duration::from_millis(30);
/// A WAL this full is checkpointed, so checkpoints run while commits wait to be shipped.
const CHECKPOINT_WAL_BYTES: u64 = 256 * 1024;

/// Visible entries of the default table: value and expiry.
type Contents = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

/// The primary's state at one LSN.
#[derive(Debug)]
struct Recorded {
    checksum: StateChecksum,
    time_ms: u64,
    contents: Contents,
}

fn contents(db: &Database) -> Contents {
    db.begin_read()
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .map(|item| {
            let (k, e) = item.expect("item");
            (k.to_vec(), (e.value.to_vec(), e.expires_ms))
        })
        .collect()
}

/// Captures the primary at every LSN from the commit hook, then moves the clock on.
struct Recorder {
    /// The primary, once opened; taken out at the end to break the cycle hook → database.
    db: Mutex<Option<Database>>,
    clock: ManualClock,
    at: Mutex<BTreeMap<Lsn, Recorded>>,
}

impl Recorder {
    fn new(clock: ManualClock) -> Arc<Recorder> {
        Arc::new(Recorder {
            db: Mutex::new(None),
            clock,
            at: Mutex::new(BTreeMap::new()),
        })
    }

    /// The engine's `on_commit`: wakes the shipper, records the state at `lsn`, ticks the clock.
    fn hook(self: &Arc<Self>, wake: &Arc<Notify>) -> CommitHook {
        let (recorder, ship) = (self.clone(), commit_hook(wake));
        Arc::new(move |lsn| {
            ship(lsn);
            if let Some(db) = recorder.db.lock().as_ref() {
                let r = db.begin_read();
                assert_eq!(r.lsn(), lsn, "the hook runs before any later commit");
                let recorded = Recorded {
                    checksum: r.checksum(),
                    time_ms: r.commit_time_ms(),
                    contents: contents(db),
                };
                recorder.at.lock().insert(lsn, recorded);
            }
            recorder.clock.advance(CLOCK_STEP_MS);
        })
    }

    fn detach(&self) -> BTreeMap<Lsn, Recorded> {
        self.db.lock().take();
        std::mem::take(&mut *self.at.lock())
    }
}

/// A random batch: puts (some with a TTL that runs out a few commits later, some overflowing),
/// deletes.
fn random_batch(rng: &mut StdRng, tag: &str, now_ms: u64) -> Batch {
    let mut batch = Batch::new();
    for _ in 0..rng.random_range(1..12) {
        let key = format!("k{:04}", rng.random_range(0..KEYS));
        let roll: f64 = rng.random();
        batch = if roll < 0.15 {
            batch.delete(key)
        } else if roll < 0.35 {
            let expires_ms = now_ms + CLOCK_STEP_MS * rng.random_range(1..8);
            batch.put_in(DEFAULT_TABLE, key, format!("{tag} ttl"), Some(expires_ms))
        } else if roll < 0.40 {
            let expires_ms = now_ms + 3_600_000;
            batch.put_in(DEFAULT_TABLE, key, format!("{tag} long"), Some(expires_ms))
        } else if roll < 0.43 {
            batch.put(key, vec![tag.len() as u8; OVERFLOW_VALUE_BYTES])
        } else {
            let len = rng.random_range(1..300);
            batch.put(key, format!("{tag} {}", "v".repeat(len)))
        };
    }
    batch
}

/// Commits `batch` as a client of `mode` would: strict waits for the bucket, local for the
/// fsynced WAL, async for the written WAL.
async fn commit(db: &Database, shipper: &Shipper, mode: Mode, batch: Batch) -> Lsn {
    let durability = match mode {
        Mode::Local => Durability::Sync,
        Mode::Strict | Mode::Async => Durability::NoSync,
    };
    let db = db.clone();
    let lsn = tokio::task::spawn_blocking(move || db.apply(batch.durability(durability)))
        .await
        .expect("apply task")
        .expect("apply");
    if mode == Mode::Strict {
        shipper.wait_durable(lsn).await.expect("durable");
    }
    lsn
}

async fn sweep(db: &Database) -> usize {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.sweep_expired(1000))
        .await
        .expect("sweep task")
        .expect("sweep")
}

/// Opens a restored folder with no background work (no checkpoint, no sweep) and a clock stopped at
/// `now_ms` so TTL visibility is judged at the same instant as on the primary.
fn open_restored(dir: &Path, now_ms: u64) -> Database {
    let options = Options {
        background: false,
        sweep_interval: None,
        clock: Arc::new(ManualClock::new(now_ms)),
        ..Options::default()
    };
    Database::open(dir, options).expect("open restored")
}

/// Runs the workload in `mode` against a fresh prefix of `store`; returns what was recorded.
async fn ship(
    store: &Store,
    mode: Mode,
    rng: &mut StdRng,
    dir: &Path,
) -> (DynBucket, Database, BTreeMap<Lsn, Recorded>) {
    let bucket = store.bucket(&format!("{mode:?}").to_lowercase()).await;
    let clock = ManualClock::new(SystemClock.now_ms());
    let recorder = Recorder::new(clock.clone());
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(recorder.hook(&wake)),
        clock: Arc::new(clock.clone()),
        // Sweeps are called explicitly, so they land between known commits.
        sweep_interval: None,
        checkpoint_wal_bytes: CHECKPOINT_WAL_BYTES,
        ..Options::default()
    };
    let db = Database::open(dir.join("primary"), options).expect("open primary");
    *recorder.db.lock() = Some(db.clone());
    let shipper_options = ShipperOptions {
        mode,
        interval: SHIP_INTERVAL,
        ..ShipperOptions::default()
    };
    let shipper = Arc::new(
        Shipper::start(db.clone(), bucket.clone(), shipper_options, wake)
            .await
            .unwrap_or_else(|e| panic!("start shipper: {e}\n{}", store.log_tail())),
    );

    let mut swept = 0;
    for i in 0..24 {
        let batch = random_batch(rng, &format!("s{i}"), clock.now_ms());
        commit(&db, &shipper, mode, batch).await;
        if i % 6 == 5 {
            swept += sweep(&db).await;
        }
    }
    // A checkpoint while commits may still wait to be shipped must stop at `lsn_shipped`
    // (read after it, since shipping only moves forward).
    let db_for_checkpoint = db.clone();
    tokio::task::spawn_blocking(move || db_for_checkpoint.checkpoint())
        .await
        .expect("checkpoint task")
        .expect("checkpoint");
    let (checkpointed, shipped) = (db.info().lsn_checkpoint, db.lsn_shipped());
    assert!(
        checkpointed <= shipped,
        "{mode:?}: checkpoint at {checkpointed:?} passed lsn_shipped {shipped:?}"
    );
    // Concurrent committers: their batches meet in the engine's group commit and their
    // commits in the shipper's segments.
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let (db, shipper, clock) = (db.clone(), shipper.clone(), clock.clone());
            let mut rng = StdRng::seed_from_u64(rng.random());
            tokio::spawn(async move {
                for i in 0..6 {
                    let batch = random_batch(&mut rng, &format!("c{t}-{i}"), clock.now_ms());
                    commit(&db, &shipper, mode, batch).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("committer");
    }
    swept += sweep(&db).await;
    assert!(swept > 0, "TTL puts must expire and be swept in commits");

    let head = db.lsn();
    shipper
        .wait_durable(head)
        .await
        .unwrap_or_else(|e| panic!("{mode:?}: head {head:?} never became durable: {e}"));
    let metrics = shipper.metrics();
    assert_eq!(metrics.commits_shipped, head.get(), "{metrics:?}");
    assert!(metrics.segments_uploaded <= head.get(), "{metrics:?}");
    eprintln!(
        "{mode:?}: {} LSNs in {} segments, {swept} keys swept, checkpoint at {:?}",
        head.get(),
        metrics.segments_uploaded,
        db.info().lsn_checkpoint
    );
    Arc::try_unwrap(shipper)
        .expect("the committers are done")
        .shutdown()
        .await
        .expect("shutdown");
    let recorded = recorder.detach();
    assert_eq!(
        recorded.keys().copied().collect::<Vec<_>>(),
        (1..=head.get()).map(Lsn::new).collect::<Vec<_>>(),
        "the hook saw every LSN"
    );
    assert!(
        recorded
            .values()
            .any(|r| r.contents.values().any(|(_, expiry)| expiry.is_some())),
        "some recorded state holds keys with a TTL"
    );
    (bucket, db, recorded)
}

/// Restores `target` into `out` and checks it against the primary's record at `expected`.
async fn restore_and_compare(
    bucket: &DynBucket,
    out: &Path,
    target: Target,
    expected: Lsn,
    recorded: &BTreeMap<Lsn, Recorded>,
) -> Database {
    let restored = restore(bucket.clone(), out, target, None)
        .await
        .unwrap_or_else(|e| panic!("restore {target:?}: {e}"));
    let want = &recorded[&expected];
    assert_eq!(
        (restored.lsn, restored.checksum, restored.time_ms),
        (expected, want.checksum, want.time_ms),
        "restore {target:?}"
    );
    let copy = open_restored(out, want.time_ms);
    let r = copy.begin_read();
    assert_eq!((r.lsn(), r.checksum()), (expected, want.checksum));
    assert!(
        contents(&copy) == want.contents,
        "restore {target:?}: contents differ from the primary's at {expected:?}"
    );
    let report = copy.check_integrity().expect("check integrity");
    assert!(report.is_ok(), "restore {target:?}: {report:?}");
    copy
}

async fn ship_and_restore(store: &Store, mode: Mode, seed: u64) {
    eprintln!("{mode:?}: seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (bucket, primary, recorded) = ship(store, mode, &mut rng, dir.path()).await;
    let head = primary.lsn();

    // Head: the primary's image page for page.
    let copy = restore_and_compare(
        &bucket,
        &dir.path().join("head"),
        Target::Head,
        head,
        &recorded,
    )
    .await;
    let (a, b) = (primary.begin_read(), copy.begin_read());
    assert_eq!(a.page_count(), b.page_count());
    for p in 0..a.page_count() {
        assert!(
            a.page_image(PageNo::new(p)).expect("primary page")
                == b.page_image(PageNo::new(p)).expect("restored page"),
            "{mode:?}: page {p} differs at the head"
        );
    }
    drop(copy);

    // Random LSNs, and random instants between one commit and the next.
    for round in 0..2 {
        let lsn = Lsn::new(rng.random_range(1..=head.get()));
        let out = dir.path().join(format!("lsn-{round}"));
        restore_and_compare(&bucket, &out, Target::Lsn(lsn), lsn, &recorded).await;

        let lsn = Lsn::new(rng.random_range(1..=head.get()));
        let t = recorded[&lsn].time_ms + rng.random_range(0..CLOCK_STEP_MS);
        let out = dir.path().join(format!("time-{round}"));
        restore_and_compare(&bucket, &out, Target::Time(t), lsn, &recorded).await;
    }

    let beyond = dir.path().join("beyond");
    let err = restore(
        bucket.clone(),
        &beyond,
        Target::Lsn(Lsn::new(head.get() + 5)),
        None,
    )
    .await
    .expect_err("an LSN beyond the log");
    assert!(err.to_string().contains("beyond the end"), "{err}");
    assert!(!beyond.exists(), "a failed restore leaves nothing behind");
}

/// `HADAL_E2E_SEED`, else a fixed seed per store.
fn seed(default: u64) -> u64 {
    let seed = std::env::var("HADAL_E2E_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    eprintln!("seed {seed} (reproduce with HADAL_E2E_SEED={seed})");
    seed
}

async fn every_mode(store: Store, seed: u64) {
    for (i, mode) in [Mode::Strict, Mode::Local, Mode::Async]
        .into_iter()
        .enumerate()
    {
        ship_and_restore(&store, mode, seed.wrapping_add(i as u64)).await;
    }
}

// Proves shipping and exact restore in all three modes on the in-process store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_restores_exactly_on_memory() {
    every_mode(Store::memory(), seed(1)).await;
}

// Proves shipping and exact restore in all three modes on a local folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_restores_exactly_on_file() {
    every_mode(Store::file(), seed(2)).await;
}

// Proves shipping and exact restore in all three modes through the S3 transport against moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_restores_exactly_on_moto() {
    let Some(store) = Store::moto("every_mode_restores_exactly_on_moto").await else {
        return;
    };
    every_mode(store, seed(3)).await;
}

// Proves shipping and exact restore in all three modes through the Azure transport against
// Azurite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_restores_exactly_on_azurite() {
    let Some(store) = Store::azurite("every_mode_restores_exactly_on_azurite").await else {
        return;
    };
    every_mode(store, seed(4)).await;
}

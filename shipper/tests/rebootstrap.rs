//! Replicas that fall behind GC (DESIGN.md §3 "Replicas", "GC and retention"; F4): a follower
//! whose next slot was collected re-bootstraps from the newest snapshot and reaches the writer's
//! image byte for byte, whether it was paused while following or stopped and restarted; a missing
//! slot above the GC boundary is still corruption; and an idle follower reads the boundary only
//! at the bounded rate (F12).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hadal_engine::{Batch, Database, Durability, Lsn, Options, PageNo, StateChecksum};
use hadal_format::{Slot, keys};
use hadal_replica::{ErrorKind, FollowOptions, Follower, Target, restore, verify};
use hadal_shipper::gc::{GcOptions, collect};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, DynBucket, ListStream, MemoryBucket, Nonce, Object,
    ObjectInfo, Result, Swapped, Version, async_trait,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, watch};

type Checksums = Arc<Mutex<BTreeMap<Lsn, StateChecksum>>>;
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A follower's view of the bucket that can be paused: while paused, every segment read waits
/// (as if the follower's task were descheduled or its host suspended). Counts requests,
/// boundary reads and listings.
#[derive(Debug)]
struct Pausable {
    inner: DynBucket,
    paused: watch::Sender<bool>,
    boundary_gets: AtomicU64,
    requests: AtomicU64,
    lists: AtomicU64,
}

impl Pausable {
    fn new(inner: DynBucket) -> Arc<Pausable> {
        Arc::new(Pausable {
            inner,
            paused: watch::channel(false).0,
            boundary_gets: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            lists: AtomicU64::new(0),
        })
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    async fn gate(&self, key: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if key.starts_with(keys::GC_PREFIX) {
            self.boundary_gets.fetch_add(1, Ordering::Relaxed);
        }
        if !key.starts_with(keys::SEGMENT_PREFIX) {
            return;
        }
        let mut rx = self.paused.subscribe();
        while *rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[async_trait]
impl Bucket for Pausable {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        self.gate(key).await;
        self.inner.put_if_absent(key, body, nonce).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        self.gate(key).await;
        self.inner.put_if_match(key, body, expected, nonce).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        self.gate(key).await;
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.gate(key).await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.gate(key).await;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.gate(key).await;
        self.inner.head(key).await
    }
    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list(prefix, start_after)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.gate(key).await;
        self.inner.delete(key).await
    }
}

async fn writer(dir: &std::path::Path, bucket: DynBucket) -> (Database, Shipper) {
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db = Database::open(dir, options).expect("open");
    let shipper = Shipper::start(db.clone(), bucket, ShipperOptions::default(), wake)
        .await
        .expect("start");
    (db, shipper)
}

fn follow_options() -> FollowOptions {
    FollowOptions {
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(50),
        boundary_poll: Duration::from_millis(100),
    }
}

/// Strict commits of random puts and deletes; records the primary's checksum at every LSN.
async fn workload(db: &Database, shipper: &Shipper, seed: u64, n: usize, record: &Checksums) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let mut batch = Batch::new().durability(Durability::NoSync);
        for _ in 0..rng.random_range(1..5) {
            let key = format!("k{:04}", rng.random_range(0..500));
            batch = if rng.random_bool(0.15) {
                batch.delete(key)
            } else {
                batch.put(key, vec![rng.random::<u8>(); rng.random_range(1..1200)])
            };
        }
        let lsn = db.apply(batch).expect("apply");
        record.lock().insert(lsn, db.begin_read().checksum());
        shipper.wait_durable(lsn).await.expect("durable");
    }
}

/// The first slot with no segment.
async fn frontier(bucket: &DynBucket) -> Slot {
    let mut slot = Slot::new(1);
    while bucket
        .head(&keys::segment(slot))
        .await
        .expect("head")
        .is_some()
    {
        slot = slot.next();
    }
    slot
}

/// One GC pass as if `retention + a day` had passed, with no grace: everything before the
/// newest snapshot that no fence holds is collected.
async fn collect_all_but_the_newest(bucket: &DynBucket) -> Vec<String> {
    use hadal_engine::Clock;
    let later = hadal_engine::SystemClock.now_ms() + 8 * DAY.as_millis() as u64;
    let options = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let report = collect(bucket.clone(), later, &options).await.expect("gc");
    report.deleted.into_iter().map(|d| d.key).collect()
}

/// Waits until the follower applied `lsn` (panics if it stopped or got stuck).
async fn caught_up(follower: &Follower, lsn: Lsn) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = follower.state();
        if let Some(stopped) = &state.stopped {
            panic!("replica stopped: {stopped:?}");
        }
        if state.lsn_applied >= lsn {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica stuck at {:?} (want {lsn:?})",
            state.lsn_applied
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The replica's image equals a restore of the bucket's head page for page, and is sound.
async fn assert_equals_a_restore(replica: &Database, bucket: &DynBucket, dir: &std::path::Path) {
    let out = dir.join(format!("restored-{}", replica.lsn().get()));
    let restored = restore(bucket.clone(), &out, Target::Head, None)
        .await
        .expect("restore");
    let db = Database::open(&out, Options::default()).expect("open restored");
    let (a, b) = (replica.begin_read(), db.begin_read());
    assert_eq!(
        (a.lsn(), a.page_count(), a.checksum()),
        (restored.lsn, b.page_count(), restored.checksum)
    );
    for p in 0..a.page_count() {
        let p = PageNo::new(p);
        assert_eq!(
            a.page_image(p).expect("replica page"),
            b.page_image(p).expect("restored page"),
            "page {p}"
        );
    }
    assert!(replica.check_integrity().expect("check").is_ok());
}

async fn a_paused_replica_rebootstraps(bucket: DynBucket) {
    let dir = tempfile::tempdir().expect("tempdir");
    let record: Checksums = Arc::default();
    let (db, shipper) = writer(&dir.path().join("w"), bucket.clone()).await;
    workload(&db, &shipper, 1, 30, &record).await;
    shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    workload(&db, &shipper, 2, 10, &record).await;

    let view = Pausable::new(bucket.clone());
    let follower = Follower::start(
        dir.path().join("replica"),
        Options::default(),
        view.clone(),
        follow_options(),
    )
    .await
    .expect("follow");
    caught_up(&follower, db.lsn()).await;
    let next = frontier(&bucket).await;
    let paused_at = follower.state().lsn_applied;

    // The replica stalls while the writer moves on, snapshots, and GC collects its next slot.
    view.pause(true);
    workload(&db, &shipper, 3, 40, &record).await;
    let newest = shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    workload(&db, &shipper, 4, 10, &record).await;
    let deleted = collect_all_but_the_newest(&bucket).await;
    assert!(
        deleted.contains(&keys::segment(next)),
        "gc collected the replica's next slot {next:?}: {deleted:?}"
    );
    assert_eq!(follower.state().lsn_applied, paused_at, "it was paused");
    view.pause(false);

    caught_up(&follower, db.lsn()).await;
    let state = follower.state();
    assert_eq!(state.rebootstraps, 1, "{state:?}");
    assert!(state.lsn_applied.get() > newest.lsn);
    assert_equals_a_restore(follower.db(), &bucket, dir.path()).await;

    // After the re-bootstrap it tails as before.
    workload(&db, &shipper, 5, 15, &record).await;
    caught_up(&follower, db.lsn()).await;
    let r = follower.db().begin_read();
    assert_eq!(Some(r.checksum()), record.lock().get(&r.lsn()).copied());
    drop(r);
    assert_eq!(follower.state().rebootstraps, 1);
    shipper.shutdown().await.expect("shutdown");
    verify(bucket.clone(), None).await.expect("verify after gc");
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_behind_gc_rebootstraps_on_memory() {
    // Proves a follower stalled while GC collected its next slot re-bootstraps from the newest
    // snapshot (counted once), equals a restore of the head byte for byte, and keeps following.
    a_paused_replica_rebootstraps(Arc::new(MemoryBucket::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_behind_gc_rebootstraps_on_file() {
    // The same on a `file://` bucket.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("bucket").display());
    let bucket = hadal_transports::open(&url).await.expect("open");
    a_paused_replica_rebootstraps(bucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_after_gc_rebootstraps_before_catching_up() {
    // Proves a replica stopped at an LSN whose log GC then collected re-bootstraps from the
    // newest snapshot when it starts again (instead of failing on the trimmed log), and equals a
    // restore of the head.
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket: DynBucket = Arc::new(MemoryBucket::new());
    let record: Checksums = Arc::default();
    let (db, shipper) = writer(&dir.path().join("w"), bucket.clone()).await;
    workload(&db, &shipper, 10, 20, &record).await;
    let follower = Follower::start(
        dir.path().join("replica"),
        Options::default(),
        bucket.clone(),
        follow_options(),
    )
    .await
    .expect("follow");
    caught_up(&follower, db.lsn()).await;
    let replica = follower.stop().await;
    let stopped_at = replica.lsn();

    workload(&db, &shipper, 11, 30, &record).await;
    shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    workload(&db, &shipper, 12, 5, &record).await;
    let deleted = collect_all_but_the_newest(&bucket).await;
    assert!(!deleted.is_empty());

    let follower = Follower::start_on(replica, bucket.clone(), follow_options())
        .await
        .expect("restart");
    let state = follower.state();
    assert_eq!(state.rebootstraps, 1, "{state:?}");
    assert!(state.lsn_applied > stopped_at);
    assert_eq!(state.lsn_applied, db.lsn());
    assert_equals_a_restore(follower.db(), &bucket, dir.path()).await;
    shipper.shutdown().await.expect("shutdown");
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_slot_above_the_boundary_stops_the_replica_by_name() {
    // Proves a re-bootstrap needs the GC boundary: a segment deleted without GC (so above the
    // boundary) while later slots exist stops the follower with Corrupt naming the key, and
    // nothing is re-bootstrapped.
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let record: Checksums = Arc::default();
    let (db, shipper) = writer(&dir.path().join("w"), bucket.clone()).await;
    workload(&db, &shipper, 20, 10, &record).await;
    shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    let view = Pausable::new(bucket.clone());
    let follower = Follower::start(
        dir.path().join("replica"),
        Options::default(),
        view.clone(),
        follow_options(),
    )
    .await
    .expect("follow");
    caught_up(&follower, db.lsn()).await;
    let next = frontier(&bucket).await;
    view.pause(true);
    workload(&db, &shipper, 21, 10, &record).await;
    shipper.shutdown().await.expect("shutdown");
    let lost = keys::segment(next);
    memory.delete(&lost).await.expect("delete");
    view.pause(false);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        if let Some(stopped) = follower.state().stopped {
            break stopped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica kept going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(stopped.0, ErrorKind::Corrupt, "{stopped:?}");
    assert!(stopped.1.contains(&lost), "{stopped:?}");
    assert_eq!(follower.state().rebootstraps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_reads_the_boundary_at_a_bounded_rate() {
    // Proves the GC check keeps idle polling cheap (F12): over an idle second the follower reads
    // the boundary about once per `boundary_poll`, not once per poll, and lists nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket: DynBucket = Arc::new(MemoryBucket::new());
    let record: Checksums = Arc::default();
    let (db, shipper) = writer(&dir.path().join("w"), bucket.clone()).await;
    workload(&db, &shipper, 30, 5, &record).await;
    let view = Pausable::new(bucket.clone());
    let options = FollowOptions {
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(20),
        boundary_poll: Duration::from_millis(250),
    };
    let follower = Follower::start(
        dir.path().join("replica"),
        Options::default(),
        view.clone(),
        options,
    )
    .await
    .expect("follow");
    caught_up(&follower, db.lsn()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let before = (
        count(&view.boundary_gets),
        count(&view.requests),
        count(&view.lists),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let boundary_gets = count(&view.boundary_gets) - before.0;
    let requests = count(&view.requests) - before.1;
    assert_eq!(
        count(&view.lists),
        before.2,
        "an idle replica lists nothing"
    );
    // 1 s / 250 ms = 4 checks, plus one for timer slack.
    assert!(
        (1..=5).contains(&boundary_gets),
        "{boundary_gets} boundary reads in an idle second"
    );
    // Polls at most every 20 ms (≤ 50 GETs, jittered down to 15 ms: ≤ 67) plus the checks.
    assert!(
        requests <= 67 + 2 * 5,
        "{requests} requests in an idle second"
    );
    assert_eq!(follower.state().rebootstraps, 0);
    shipper.shutdown().await.expect("shutdown");
    follower.stop().await;
}

//! Read replicas: a follower tails the log of a live primary, its image is the primary's at
//! every LSN it reports, it keeps following across a writer takeover, it answers `min_lsn`
//! waits, it can be promoted to the writer, and a damaged segment stops it by name.

// Shared with other test crates; this one uses the two servers only.
#[allow(dead_code)]
mod stores;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hadal_engine::{Batch, Database, Durability, Lsn, Options, StateChecksum};
use hadal_replica::{ErrorKind, FollowOptions, Follower, Target, restore};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook, promote};
use hadal_transports::{Bucket, DynBucket, MemoryBucket};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

type Checksums = Arc<Mutex<BTreeMap<Lsn, StateChecksum>>>;

fn engine(wake: &Arc<Notify>) -> Options {
    Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(wake)),
        ..Options::default()
    }
}

async fn writer(dir: &std::path::Path, bucket: DynBucket) -> (Database, Shipper) {
    let wake = Arc::new(Notify::new());
    let db = Database::open(dir, engine(&wake)).expect("open");
    let shipper = Shipper::start(db.clone(), bucket, ShipperOptions::default(), wake)
        .await
        .expect("start");
    (db, shipper)
}

fn fast() -> FollowOptions {
    FollowOptions {
        poll_min: Duration::from_millis(5),
        poll_max: Duration::from_millis(50),
        ..FollowOptions::default()
    }
}

/// Strict commits of random puts and deletes; records the primary's checksum at every LSN.
async fn workload(db: &Database, shipper: &Shipper, seed: u64, n: usize, record: &Checksums) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let mut batch = Batch::new().durability(Durability::NoSync);
        for _ in 0..rng.random_range(1..6) {
            let key = format!("k{:04}", rng.random_range(0..800));
            batch = if rng.random_bool(0.15) {
                batch.delete(key)
            } else {
                batch.put(key, vec![rng.random::<u8>(); rng.random_range(1..1500)])
            };
        }
        let lsn = db.apply(batch).expect("apply");
        record.lock().insert(lsn, db.begin_read().checksum());
        shipper.wait_durable(lsn).await.expect("durable");
    }
}

/// Samples the follower while the primary writes: every (LSN, checksum) it shows must be the
/// primary's at that LSN. Ends when the writer is done and the replica reached its head.
async fn sample_until(
    follower: &Follower,
    record: &Checksums,
    primary: &Database,
    writer_done: impl Fn() -> bool,
) -> usize {
    let mut checked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = follower.db().begin_read();
        let expected = record.lock().get(&r.lsn()).copied();
        if r.lsn() != Lsn::ZERO {
            assert_eq!(
                Some(r.checksum()),
                expected,
                "replica image at {:?}",
                r.lsn()
            );
            checked += 1;
        }
        if writer_done() && r.lsn() >= primary.lsn() {
            return checked;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica stuck at {:?}",
            r.lsn()
        );
        if let Some(stopped) = follower.state().stopped {
            panic!("replica stopped: {stopped:?}");
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

async fn follows_a_live_primary_across_a_takeover(bucket: DynBucket) {
    let dir = tempfile::tempdir().expect("tempdir");
    let record: Checksums = Arc::default();
    let (db_a, ship_a) = writer(&dir.path().join("a"), bucket.clone()).await;
    workload(&db_a, &ship_a, 1, 40, &record).await;
    // Start with a snapshot behind the head, so the replica bootstraps from it.
    ship_a.snapshot_now().await.expect("snapshot");
    workload(&db_a, &ship_a, 2, 10, &record).await;

    let follower = Follower::start(
        dir.path().join("replica"),
        Options::default(),
        bucket.clone(),
        fast(),
    )
    .await
    .expect("follow");
    assert_eq!(follower.state().lsn_applied, db_a.lsn());

    // Writer A keeps writing while the replica is sampled.
    let writing = {
        let (db, record) = (db_a.clone(), record.clone());
        let ship = Arc::new(ship_a);
        let s = ship.clone();
        (
            tokio::spawn(async move {
                workload(&db, &s, 3, 120, &record).await;
            }),
            ship,
        )
    };
    let checked = sample_until(&follower, &record, &db_a, || writing.0.is_finished()).await;
    assert!(checked >= 1, "sampled {checked} points");
    writing.0.await.expect("writer a");
    let epoch_a = follower.state().epoch;

    // Writer B takes over (A is fenced); the replica follows through the fence.
    let (db_b, ship_b) = writer(&dir.path().join("b"), bucket.clone()).await;
    assert!(writing.1.wait_durable(Lsn::new(u64::MAX)).await.is_err());
    workload(&db_b, &ship_b, 4, 60, &record).await;
    sample_until(&follower, &record, &db_b, || true).await;
    let state = follower.state();
    assert!(state.epoch > epoch_a, "{state:?}");
    assert_eq!(follower.lag().lsns, 0);

    // Read-your-writes: an applied LSN answers at once, a future one times out by name.
    follower
        .wait_for(db_b.lsn(), Duration::from_secs(30))
        .await
        .expect("applied");
    let err = follower
        .wait_for(
            Lsn::new(db_b.lsn().get() + 1_000),
            Duration::from_millis(100),
        )
        .await
        .expect_err("not yet");
    assert_eq!(err.kind(), ErrorKind::Behind, "{err}");
    ship_b.shutdown().await.expect("shutdown b");
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_across_a_takeover_on_memory() {
    // Proves the replica's image equals the primary's at every sampled LSN, through a snapshot
    // bootstrap, a live workload and a writer takeover, on the in-memory bucket.
    follows_a_live_primary_across_a_takeover(Arc::new(MemoryBucket::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_across_a_takeover_on_file() {
    // The same on a `file://` bucket.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("bucket").display());
    let bucket = hadal_transports::open(&url).await.expect("open");
    follows_a_live_primary_across_a_takeover(bucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_across_a_takeover_on_moto() {
    // The same through the S3 transport against moto (started by the test).
    let Some(store) = stores::Store::moto("follows_across_a_takeover_on_moto").await else {
        return;
    };
    follows_a_live_primary_across_a_takeover(store.bucket("follow").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_across_a_takeover_on_azurite() {
    // The same through the Azure transport against Azurite (started by the test).
    let Some(store) = stores::Store::azurite("follows_across_a_takeover_on_azurite").await else {
        return;
    };
    follows_a_live_primary_across_a_takeover(store.bucket("follow").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_becomes_the_writer() {
    // Proves promotion: the replica stops following, fences the old writer, keeps what it had
    // applied (only the missing tail is fetched) and accepts strict writes; the old writer is
    // fenced; a restore shows both writers' acknowledged commits.
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket: DynBucket = Arc::new(MemoryBucket::new());
    let record: Checksums = Arc::default();
    let (db_a, ship_a) = writer(&dir.path().join("a"), bucket.clone()).await;
    workload(&db_a, &ship_a, 10, 30, &record).await;
    let wake = Arc::new(Notify::new());
    let follower = Follower::start(
        dir.path().join("replica"),
        engine(&wake),
        bucket.clone(),
        fast(),
    )
    .await
    .expect("follow");
    workload(&db_a, &ship_a, 11, 5, &record).await;
    let (db_r, ship_r) = promote(follower, ShipperOptions::default(), wake)
        .await
        .expect("promote");
    assert_eq!(db_r.lsn(), db_a.lsn(), "nothing acknowledged is missing");
    assert!(ship_a.wait_durable(Lsn::new(u64::MAX)).await.is_err());
    workload(&db_r, &ship_r, 12, 20, &record).await;
    ship_r.shutdown().await.expect("shutdown");
    let out = dir.path().join("restored");
    let r = restore(bucket, &out, Target::Head, None)
        .await
        .expect("restore");
    assert_eq!(r.lsn, db_r.lsn());
    assert_eq!(Some(r.checksum), record.lock().get(&r.lsn).copied());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_stops_the_replica_by_name() {
    // Proves a follower never applies a damaged object: a flipped byte in the next segment
    // stops it with a Corrupt error naming the key, at the last good LSN.
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let record: Checksums = Arc::default();
    let (db, shipper) = writer(&dir.path().join("a"), bucket.clone()).await;
    workload(&db, &shipper, 20, 10, &record).await;
    let follower = Follower::start(dir.path().join("r"), Options::default(), bucket, fast())
        .await
        .expect("follow");
    let good = follower.state().lsn_applied;
    workload(&db, &shipper, 21, 1, &record).await;
    shipper.shutdown().await.expect("shutdown");
    // The last segment was just written; the follower may have applied it already, so damage
    // one that it cannot have read: plant a corrupted copy at the next free slot.
    let frontier = {
        let mut slot = 1u64;
        while memory
            .get(&hadal_format::keys::segment(hadal_format::Slot::new(slot)))
            .await
            .expect("get")
            .is_some()
        {
            slot += 1;
        }
        slot
    };
    let last_key = hadal_format::keys::segment(hadal_format::Slot::new(frontier - 1));
    let next_key = hadal_format::keys::segment(hadal_format::Slot::new(frontier));
    let mut bytes = memory
        .get(&last_key)
        .await
        .expect("get")
        .expect("present")
        .bytes
        .to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    memory.put(&next_key, bytes.into()).await.expect("plant");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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
    assert!(stopped.1.contains(&next_key), "{stopped:?}");
    let applied = follower.state().lsn_applied;
    assert!(applied >= good && applied <= db.lsn());
    assert_eq!(
        Some(follower.db().begin_read().checksum()),
        record.lock().get(&applied).copied()
    );
}

//! GC and retention: a pass collects exactly what no restore inside the window needs (segments
//! before the base snapshot except fences, older snapshots' parts, abandoned uploads), every
//! point inside the window still restores exactly, points before it are refused with the oldest
//! restorable time, `verify` passes afterwards, and writers and takeovers carry on; a writer
//! runs such passes in the background when asked to, and stops when fenced.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use hadal_engine::{Batch, Database, Durability, Lsn, ManualClock, Options, StateChecksum};
use hadal_replica::{Target, restore, verify};
use hadal_shipper::gc::{GcOptions, collect};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::{Bucket, DynBucket, MemoryBucket};
use tokio::sync::Notify;

const DAY: u64 = 24 * 3600 * 1000;
const T0: u64 = 1_760_000_000_000;

async fn keys(memory: &MemoryBucket, prefix: &str) -> Vec<String> {
    memory
        .list(prefix, None)
        .map(|i| i.expect("list").key)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_the_window_restorable_and_collects_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let clock = ManualClock::new(T0);
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    let db = Database::open(dir.path().join("a"), options).expect("open");
    let shipper = Shipper::start(db.clone(), bucket.clone(), ShipperOptions::default(), wake)
        .await
        .expect("start");
    // (lsn → checksum, time) at every commit.
    let mut history: BTreeMap<Lsn, (StateChecksum, u64)> = BTreeMap::new();
    let mut snapshots = Vec::new();
    let mut n = 0u32;
    for (round, advance) in [0, 3 * DAY, 5 * DAY, 3 * DAY].into_iter().enumerate() {
        clock.advance(advance);
        for _ in 0..25 {
            n += 1;
            clock.advance(1000);
            let lsn = db
                .apply(
                    Batch::new()
                        .put(format!("k{:03}", n % 60), vec![n as u8; 600])
                        .durability(Durability::NoSync),
                )
                .expect("apply");
            shipper.wait_durable(lsn).await.expect("durable");
            let r = db.begin_read();
            history.insert(lsn, (r.checksum(), r.commit_time_ms()));
        }
        if round < 3 {
            snapshots.push(
                shipper
                    .snapshot_now()
                    .await
                    .expect("snapshot")
                    .expect("new"),
            );
        }
    }
    // An abandoned snapshot upload from long ago (a fenced writer's leftovers).
    let abandoned = "snap/00000000000000000003-00000000000000000000000000000000/part-00000";
    memory
        .put(abandoned, vec![1u8; 100].into())
        .await
        .expect("put");
    let now = clock_now(&clock);
    // Window = 7 days: starts at T0 + 4 days, so the base is the snapshot taken at T0 + 3 days.
    let base = &snapshots[1];
    assert!(base.time_ms <= now - 7 * DAY && snapshots[2].time_ms > now - 7 * DAY);

    let plan = collect(
        bucket.clone(),
        now,
        &GcOptions {
            dry_run: true,
            ..GcOptions::default()
        },
    )
    .await
    .expect("dry run");
    assert_eq!(plan.base.map(|b| b.0), Some(base.lsn));
    let before = keys(&memory, "").await;
    let report = collect(bucket.clone(), now, &GcOptions::default())
        .await
        .expect("gc");
    assert_eq!(
        report.deleted, plan.deleted,
        "the dry run plans what the run does"
    );
    for d in &report.deleted {
        assert!(!d.reason.is_empty());
    }
    let after = keys(&memory, "").await;
    let gone: Vec<&String> = before.iter().filter(|k| !after.contains(k)).collect();
    assert_eq!(gone.len(), report.deleted.len(), "{gone:?}");
    assert!(gone.iter().any(|k| k.as_str() == abandoned));
    assert!(
        snapshots[0].parts.iter().all(|p| !after.contains(&p.key)),
        "the oldest snapshot's parts are collected"
    );
    // Every segment before the base is gone except the fence at slot 1.
    for slot in 1..base.slot {
        let key = hadal_format::keys::segment(hadal_format::Slot::new(slot));
        assert_eq!(after.contains(&key), slot == 1, "{key}");
    }
    assert_eq!(report.kept_fences, 1);
    verify(bucket.clone(), None).await.expect("verify after gc");

    // Inside the window: exact. Before it: refused with the oldest restorable time.
    for (lsn, (checksum, time)) in history.iter().filter(|(l, _)| l.get() >= base.lsn) {
        if lsn.get() % 7 != 0 {
            continue;
        }
        let out = dir.path().join(format!("lsn-{}", lsn.get()));
        let r = restore(bucket.clone(), &out, Target::Lsn(*lsn), None)
            .await
            .expect("restore inside the window");
        assert_eq!(r.checksum, *checksum);
        let out = dir.path().join(format!("time-{}", lsn.get()));
        let r = restore(bucket.clone(), &out, Target::Time(*time), None)
            .await
            .expect("restore by time inside the window");
        assert_eq!((r.lsn, r.checksum), (*lsn, *checksum));
    }
    let out = dir.path().join("too-old");
    let err = restore(
        bucket.clone(),
        &out,
        Target::Lsn(Lsn::new(base.lsn - 5)),
        None,
    )
    .await
    .expect_err("before the window");
    assert!(
        err.to_string().contains("oldest restorable"),
        "names the oldest restorable point: {err}"
    );
    let err = restore(bucket.clone(), &out, Target::Time(T0 + DAY), None)
        .await
        .expect_err("before the window");
    assert!(err.to_string().contains("oldest restorable"), "{err}");

    // The writer carries on; a second pass finds nothing new; a new writer takes over.
    clock.advance(1000);
    let lsn = db
        .apply(
            Batch::new()
                .put("after-gc", "yes")
                .durability(Durability::NoSync),
        )
        .expect("apply");
    shipper.wait_durable(lsn).await.expect("durable");
    let again = collect(bucket.clone(), clock_now(&clock), &GcOptions::default())
        .await
        .expect("gc again");
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);
    shipper.shutdown().await.expect("shutdown");
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db2 = Database::open(dir.path().join("b"), options).expect("open b");
    let shipper2 = Shipper::start(db2.clone(), bucket.clone(), ShipperOptions::default(), wake)
        .await
        .expect("take over after gc");
    assert_eq!(db2.lsn(), lsn);
    assert_eq!(
        db2.begin_read()
            .get(hadal_engine::DEFAULT_TABLE, b"after-gc")
            .expect("get"),
        Some(bytes::Bytes::from_static(b"yes"))
    );
    shipper2.shutdown().await.expect("shutdown");
    verify(bucket, None).await.expect("verify at the end");
}

fn clock_now(clock: &ManualClock) -> u64 {
    use hadal_engine::Clock;
    clock.now_ms()
}

/// A writer whose engine clock (`clock`) is set apart from the wall clock GC uses: commits and
/// snapshots made while it runs behind look that old, as if the database were written back then.
async fn writer_with_clock(
    dir: &std::path::Path,
    bucket: DynBucket,
    clock: &ManualClock,
    shipper_options: ShipperOptions,
) -> (Database, Shipper) {
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    let db = Database::open(dir, options).expect("open");
    let shipper = Shipper::start(db.clone(), bucket, shipper_options, wake)
        .await
        .expect("start");
    (db, shipper)
}

/// `n` strict commits a second apart on `clock`; records (checksum, time) at every LSN.
async fn commit_n(
    db: &Database,
    shipper: &Shipper,
    clock: &ManualClock,
    n: u32,
    history: &mut BTreeMap<Lsn, (StateChecksum, u64)>,
) {
    for i in 0..n {
        clock.advance(1000);
        let lsn = db
            .apply(
                Batch::new()
                    .put(format!("k{:03}", i % 40), vec![i as u8; 700])
                    .durability(Durability::NoSync),
            )
            .expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
        let r = db.begin_read();
        history.insert(lsn, (r.checksum(), r.commit_time_ms()));
    }
}

fn wall_ms() -> u64 {
    use hadal_engine::Clock;
    hadal_engine::SystemClock.now_ms()
}

async fn segment_keys(memory: &MemoryBucket) -> Vec<String> {
    keys(memory, hadal_format::keys::SEGMENT_PREFIX).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_collects_in_the_background() {
    // Proves a writer with a short gc_interval collects on its own, with the default grace: the
    // segments before the newest snapshot older than the window and the older snapshot's parts
    // go (the fence stays), the metrics count the passes and deletions, and the head, a point
    // inside the window and the base snapshot's own LSN still restore exactly.
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let clock = ManualClock::new(wall_ms() - 30 * DAY);
    let options = ShipperOptions {
        gc_interval: Some(std::time::Duration::from_millis(50)),
        ..ShipperOptions::default()
    };
    let (db, shipper) =
        writer_with_clock(&dir.path().join("a"), bucket.clone(), &clock, options).await;
    let mut history = BTreeMap::new();
    commit_n(&db, &shipper, &clock, 20, &mut history).await;
    let old = shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    clock.advance(5 * DAY);
    commit_n(&db, &shipper, &clock, 20, &mut history).await;
    let base = shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    // The latest commits are recent: inside the 7-day window.
    clock.set(wall_ms() - 60_000);
    commit_n(&db, &shipper, &clock, 10, &mut history).await;
    // Slots are dense from 1 and GC never deletes the newest: the highest is how many were
    // written, whatever the passes already did.
    let written = segment_keys(&memory)
        .await
        .iter()
        .filter_map(|k| hadal_format::keys::parse_segment(k).ok())
        .map(|s| s.get())
        .max()
        .expect("segments");

    // Everything below the base's slot but the fence at slot 1 goes, by the writer alone.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = segment_keys(&memory).await;
        let below_base = left
            .iter()
            .filter_map(|k| hadal_format::keys::parse_segment(k).ok())
            .filter(|s| s.get() < base.slot)
            .count();
        if below_base == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{below_base} segments left below the base slot {}: {:?}",
            base.slot,
            shipper.metrics()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = keys(&memory, "").await;
    assert!(after.contains(&hadal_format::keys::segment(hadal_format::Slot::new(1))));
    assert!(old.parts.iter().all(|p| !after.contains(&p.key)));
    assert!(base.parts.iter().all(|p| after.contains(&p.key)));
    let left = segment_keys(&memory).await.len() as u64;
    assert!(
        left < written,
        "the bucket shrank: {left} of {written} segments"
    );
    let deleted = written - left + old.parts.len() as u64;
    let m = shipper.metrics();
    assert!(m.gc_runs >= 1, "{m:?}");
    assert!(m.gc_deleted >= deleted, "{m:?}: {deleted} deleted");
    assert_eq!(m.gc_errors, 0, "{m:?}");

    let (head, (head_checksum, _)) = history
        .last_key_value()
        .map(|(l, v)| (*l, *v))
        .expect("head");
    let r = restore(bucket.clone(), &dir.path().join("head"), Target::Head, None)
        .await
        .expect("restore the head");
    assert_eq!((r.lsn, r.checksum), (head, head_checksum));
    let (inside, (checksum, time)) = history
        .iter()
        .rev()
        .nth(4)
        .map(|(l, v)| (*l, *v))
        .expect("a recent commit");
    assert!(time > wall_ms() - 7 * DAY, "inside the window");
    let r = restore(
        bucket.clone(),
        &dir.path().join("inside"),
        Target::Time(time),
        None,
    )
    .await
    .expect("restore inside the window");
    assert_eq!((r.lsn, r.checksum), (inside, checksum));
    let base_lsn = Lsn::new(base.lsn);
    let r = restore(
        bucket.clone(),
        &dir.path().join("base"),
        Target::Lsn(base_lsn),
        None,
    )
    .await
    .expect("restore the base");
    assert_eq!(r.checksum, history[&base_lsn].0);
    let err = restore(
        bucket.clone(),
        &dir.path().join("gone"),
        Target::Lsn(Lsn::new(old.lsn)),
        None,
    )
    .await
    .expect_err("collected");
    assert!(err.to_string().contains("oldest restorable"), "{err}");
    shipper.shutdown().await.expect("shutdown");
    verify(bucket, None)
        .await
        .expect("verify after background gc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_gc_runs_only_when_asked_and_only_in_a_live_writer() {
    // Proves `gc_interval: None` collects nothing, and that a writer's GC task stops once it is
    // fenced: after writer B takes over, A's pass count no longer moves.
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let clock = ManualClock::new(wall_ms() - 30 * DAY);
    let off = ShipperOptions {
        gc_interval: None,
        ..ShipperOptions::default()
    };
    let (db, shipper) = writer_with_clock(&dir.path().join("a"), bucket.clone(), &clock, off).await;
    let mut history = BTreeMap::new();
    commit_n(&db, &shipper, &clock, 15, &mut history).await;
    shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    commit_n(&db, &shipper, &clock, 5, &mut history).await;
    let written = segment_keys(&memory).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(segment_keys(&memory).await, written, "gc is off");
    assert_eq!(shipper.metrics().gc_runs, 0);
    shipper.shutdown().await.expect("shutdown");

    // A: collecting every 20 ms, learning of a takeover within 50 ms.
    let a_options = ShipperOptions {
        gc_interval: Some(std::time::Duration::from_millis(20)),
        manifest_poll: std::time::Duration::from_millis(50),
        ..ShipperOptions::default()
    };
    let (_db_a, a) =
        writer_with_clock(&dir.path().join("b"), bucket.clone(), &clock, a_options).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while a.metrics().gc_runs < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", a.metrics());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (_db_b, b) = writer_with_clock(
        &dir.path().join("c"),
        bucket.clone(),
        &clock,
        ShipperOptions {
            gc_interval: None,
            ..ShipperOptions::default()
        },
    )
    .await;
    while a.stopped().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "a was never fenced");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let runs = a.metrics().gc_runs;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        a.metrics().gc_runs,
        runs,
        "a fenced writer stopped collecting"
    );
    b.shutdown().await.expect("shutdown b");
}

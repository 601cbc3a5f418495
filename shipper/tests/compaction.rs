//! Compaction for restore speed: runs of small segments after the newest snapshot are folded
//! into page-deduplicated objects named in the manifest; a restore of the head reads them
//! instead of the segments (far fewer GETs) and reaches the same image; exact restores inside a
//! run still use the segments; verify checks the runs and names a damaged one; GC drops runs
//! that start before its base.

use std::collections::BTreeMap;
use std::sync::Arc;

use hadal_engine::{Batch, Clock, Database, Durability, Lsn, ManualClock, Options, StateChecksum};
use hadal_replica::{Target, restore, verify};
use hadal_shipper::ShipperOptions;
use hadal_shipper::compact::{CompactOptions, compact};
use hadal_shipper::gc::{GcOptions, collect, set_retention};
use hadal_transports::{Bucket, DynBucket, MemoryBucket, MeteredBucket, Op};

mod writer;

const T0: u64 = 1_780_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_runs_speed_up_restores_and_keep_pitr_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let clock = ManualClock::new(T0);
    let (db, shipper) = writer::start(
        &dir.path().join("w"),
        bucket.clone(),
        Some(&clock),
        ShipperOptions::default(),
    )
    .await;
    let mut history: BTreeMap<Lsn, StateChecksum> = BTreeMap::new();
    let commit = |n: u32| {
        clock.advance(1000);
        db.apply(
            Batch::new()
                .put(format!("k{:03}", n % 40), vec![n as u8; 300])
                .durability(Durability::NoSync),
        )
        .expect("apply")
    };
    for n in 0..30 {
        let lsn = commit(n);
        shipper.wait_durable(lsn).await.expect("durable");
        history.insert(lsn, db.begin_read().checksum());
    }
    shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    for n in 30..130 {
        // One durable commit per segment: the small-segment log compaction is for.
        let lsn = commit(n);
        shipper.wait_durable(lsn).await.expect("durable");
        history.insert(lsn, db.begin_read().checksum());
    }
    let head = db.lsn();

    let options = CompactOptions {
        min_segments: 16,
        max_page_bytes: 40 * 4096 * 4,
        dry_run: true,
    };
    let plan = compact(bucket.clone(), clock.now_ms(), &options)
        .await
        .expect("plan");
    assert!(!plan.runs.is_empty(), "{plan:?}");
    assert!(
        hadal_transports::list_all(memory.as_ref(), "compact/", None)
            .await
            .expect("list")
            .is_empty(),
        "a dry run writes nothing"
    );
    let options = CompactOptions {
        dry_run: false,
        ..options
    };
    let report = compact(bucket.clone(), clock.now_ms(), &options)
        .await
        .expect("compact");
    assert_eq!(report.runs.len(), plan.runs.len());
    assert!(report.segments_folded >= 90, "{report:?}");
    for pair in report.runs.windows(2) {
        assert_eq!(pair[1].slot_first, pair[0].slot_last + 1, "runs chain");
    }
    let again = compact(bucket.clone(), clock.now_ms(), &options)
        .await
        .expect("again");
    assert!(again.runs.is_empty(), "nothing new to fold: {again:?}");

    // The head restores through the runs: same image, far fewer reads than segments.
    let metered = Arc::new(MeteredBucket::new(bucket.clone()));
    let r = restore(
        metered.clone(),
        &dir.path().join("head"),
        Target::Head,
        None,
    )
    .await
    .expect("restore head");
    assert_eq!((r.lsn, r.checksum), (head, history[&head]));
    let gets = metered.usage().requests.get(&Op::Get).copied().unwrap_or(0);
    assert!(
        gets < report.segments_folded / 2,
        "{gets} GETs for a log of {} folded segments",
        report.segments_folded
    );
    let db_check = Database::open(dir.path().join("head"), Options::default()).expect("open");
    db_check.check_integrity().expect("integrity");
    drop(db_check);
    // Exact restores inside and at the end of a run.
    let run = &report.runs[0];
    for lsn in [
        run.lsn_first,
        (run.lsn_first + run.lsn_last) / 2,
        run.lsn_last,
    ] {
        let lsn = Lsn::new(lsn);
        let r = restore(
            bucket.clone(),
            &dir.path().join(format!("at-{}", lsn.get())),
            Target::Lsn(lsn),
            None,
        )
        .await
        .expect("restore inside a run");
        assert_eq!(r.checksum, history[&lsn]);
    }
    let v = verify(bucket.clone(), None).await.expect("verify");
    assert_eq!(v.compacted_runs, report.runs.len() as u64);

    // A takeover (which restores through the runs) carries on writing.
    shipper.shutdown().await.expect("shutdown");
    let (db2, shipper2) = writer::start(
        &dir.path().join("w2"),
        bucket.clone(),
        Some(&clock),
        ShipperOptions::default(),
    )
    .await;
    assert_eq!(
        (db2.lsn(), db2.begin_read().checksum()),
        (head, history[&head])
    );
    clock.advance(1000);
    let lsn = db2
        .apply(
            Batch::new()
                .put("after", "compaction")
                .durability(Durability::NoSync),
        )
        .expect("apply");
    shipper2.wait_durable(lsn).await.expect("durable");

    // GC with a new snapshot and no window drops the runs that start before its base.
    shipper2
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    set_retention(bucket.clone(), 0, clock.now_ms())
        .await
        .expect("retention");
    let gc = collect(
        bucket.clone(),
        clock.now_ms(),
        &GcOptions {
            grace: std::time::Duration::ZERO,
            dry_run: false,
        },
    )
    .await
    .expect("gc");
    assert!(
        gc.deleted
            .iter()
            .filter(|d| d.key.starts_with("compact/"))
            .count()
            == report.runs.len(),
        "{:?}",
        gc.deleted
    );
    assert!(
        hadal_transports::list_all(memory.as_ref(), "compact/", None)
            .await
            .expect("list")
            .is_empty()
    );
    verify(bucket.clone(), None).await.expect("verify after gc");
    shipper2.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_compacted_run_is_named() {
    // Proves a flipped byte in a compacted object fails restore and verify, naming the object.
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let (db, shipper) = writer::start(
        &dir.path().join("w"),
        bucket.clone(),
        None,
        ShipperOptions::default(),
    )
    .await;
    for n in 0..40u32 {
        let lsn = db
            .apply(
                Batch::new()
                    .put(format!("k{n}"), "v")
                    .durability(Durability::NoSync),
            )
            .expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
    }
    shipper.shutdown().await.expect("shutdown");
    let report = compact(
        bucket.clone(),
        0,
        &CompactOptions {
            min_segments: 8,
            ..CompactOptions::default()
        },
    )
    .await
    .expect("compact");
    let key = report.runs[0].key.clone();
    let object = memory.get(&key).await.expect("get").expect("present");
    let mut bytes = object.bytes.to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    memory.put(&key, bytes.into()).await.expect("put");
    let err = restore(bucket.clone(), &dir.path().join("r"), Target::Head, None)
        .await
        .expect_err("damaged run");
    assert!(err.to_string().contains(&key), "{err}");
    let err = verify(bucket, None).await.expect_err("damaged run");
    assert!(err.to_string().contains(&key), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_compacts_in_the_background_when_the_estimate_says_so() {
    // Proves a writer whose replay estimate reaches `compact_after` folds runs on its own, and
    // one with compaction off never does.
    for enabled in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = Arc::new(MemoryBucket::new());
        let bucket: DynBucket = memory.clone();
        let shipper_options = ShipperOptions {
            compact_check: enabled.then_some(std::time::Duration::from_millis(20)),
            compact_after: std::time::Duration::ZERO,
            ..ShipperOptions::default()
        };
        let (db, shipper) =
            writer::start(&dir.path().join("w"), bucket.clone(), None, shipper_options).await;
        for n in 0..40u32 {
            let lsn = db
                .apply(
                    Batch::new()
                        .put(format!("k{n}"), "v")
                        .durability(Durability::NoSync),
                )
                .expect("apply");
            shipper.wait_durable(lsn).await.expect("durable");
        }
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_secs(if enabled { 20 } else { 1 });
        let mut runs = 0;
        while std::time::Instant::now() < deadline {
            runs = hadal_transports::list_all(memory.as_ref(), "compact/", None)
                .await
                .expect("list")
                .len();
            if runs > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(runs > 0, enabled, "enabled: {enabled}, runs: {runs}");
        shipper.shutdown().await.expect("shutdown");
        let r = restore(bucket.clone(), &dir.path().join("r"), Target::Head, None)
            .await
            .expect("restore");
        assert_eq!(r.checksum, db.begin_read().checksum());
        verify(bucket, None).await.expect("verify");
    }
}

//! GC and retention: a pass collects exactly what no restore inside the window needs (segments
//! before the base snapshot except fences, older snapshots' parts, abandoned uploads), every
//! point inside the window still restores exactly, points before it are refused with the oldest
//! restorable time, `verify` passes afterwards, and writers and takeovers carry on.

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

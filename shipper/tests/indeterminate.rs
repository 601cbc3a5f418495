//! A writer that cannot get a definite answer for a segment within its deadline gives up with
//! `Indeterminate` (DESIGN.md §3 "Ambiguous writes"): strict waiters are told so rather than
//! hanging or being told "durable", and reopening the same folder settles the question.

use std::sync::Arc;
use std::time::Duration;

use hadal_engine::{Batch, Database, Durability, Options};
use hadal_replica::{Target, restore};
use hadal_shipper::{ErrorKind, Shipper, ShipperOptions, commit_hook};
use hadal_transports::{DynBucket, Fault, FaultConfig, FaultRule, FaultyBucket, MemoryBucket, Op};
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswerable_upload_reports_indeterminate_and_reopening_settles_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    // The fence goes to slot 1; every attempt at slot 2 (the first data segment) gets a 503.
    let config = FaultConfig {
        seed: 7,
        rules: vec![
            FaultRule::always(&[Op::PutIfAbsent], Fault::Status(503))
                .with_prefix(&hadal_format::keys::segment(hadal_format::Slot::new(2))),
        ],
        ..FaultConfig::default()
    };
    let faulty: DynBucket = Arc::new(FaultyBucket::wrap(memory.clone(), config));
    let path = dir.path().join("a");
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db = Database::open(&path, options).expect("open");
    let shipper = Shipper::start(
        db.clone(),
        faulty,
        ShipperOptions {
            upload_deadline: Duration::from_secs(2),
            ..Default::default()
        },
        wake,
    )
    .await
    .expect("start");
    let lsn = db
        .apply(Batch::new().put("k", "v").durability(Durability::Sync))
        .expect("apply");
    let err = tokio::time::timeout(Duration::from_secs(120), shipper.wait_durable(lsn))
        .await
        .expect("the deadline ends the wait")
        .expect_err("never durable");
    assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");
    assert!(err.to_string().contains("seg/"), "names the segment: {err}");
    assert_eq!(shipper.lsn_durable().get(), 0);
    let stopped = shipper.shutdown().await.expect_err("stopped already");
    assert_eq!(stopped.kind(), ErrorKind::Indeterminate);
    drop(db);

    // Reopening the folder on a healthy bucket: the commit was never created, so it is ahead of
    // the bucket with the same history and is shipped after the new fence.
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db = Database::open(&path, options).expect("reopen");
    let bucket: DynBucket = memory.clone();
    let shipper = Shipper::start(db.clone(), bucket.clone(), ShipperOptions::default(), wake)
        .await
        .expect("take over");
    shipper.wait_durable(lsn).await.expect("durable now");
    shipper.shutdown().await.expect("shutdown");
    let out = dir.path().join("restored");
    let r = restore(bucket, &out, Target::Head, None)
        .await
        .expect("restore");
    assert_eq!(r.lsn, lsn);
}

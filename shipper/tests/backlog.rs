//! In `local` and `async` modes the shipper uploads every `interval`; a backlog larger than one
//! segment (a burst of commits, or a bucket that was slow for a while) must then drain at upload
//! speed, not one segment per interval, or the window of commits a lost disk would take with it
//! grows without bound.

mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hadal_engine::{Batch, Durability};
use hadal_format::limits::SEGMENT_COMMITS_MAX;
use hadal_shipper::{Mode, ShipperOptions};
use hadal_transports::MemoryBucket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_backlog_of_several_segments_drains_within_one_interval() {
    // Proves a backlog of three full segments' worth of commits is durable within one interval
    // of the first upload: after a full segment the shipper ships again at once (the old loop
    // waited an interval before each segment: three intervals).
    let interval = Duration::from_secs(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ShipperOptions {
        mode: Mode::Async,
        interval,
        ..ShipperOptions::default()
    };
    let (db, shipper) =
        writer::start(dir.path(), Arc::new(MemoryBucket::new()), None, options).await;
    let started = Instant::now();
    let commits = 3 * SEGMENT_COMMITS_MAX + 1;
    let burst = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..commits {
                db.apply(
                    Batch::new()
                        .put(format!("key-{i:06}"), "v")
                        .durability(Durability::NoSync),
                )
                .expect("commit");
            }
        })
    };
    burst.await.expect("the burst");
    let head = db.lsn();
    assert_eq!(head.get(), commits as u64);
    let bound = started + 2 * interval;
    while shipper.lsn_durable() < head {
        assert!(
            Instant::now() < bound,
            "after {:?} only lsn {} of {} is in the bucket ({} segments): the backlog ships one segment per interval",
            started.elapsed(),
            shipper.lsn_durable().get(),
            head.get(),
            shipper.metrics().segments_uploaded
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let segments = shipper.metrics().segments_uploaded;
    assert!(segments >= 4, "{segments} segments for {commits} commits");
    shipper.shutdown().await.expect("shut down");
}

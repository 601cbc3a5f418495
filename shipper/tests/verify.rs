//! `verify` walks a bucket's whole history: it passes on a healthy bucket (two writers, a
//! takeover, a snapshot) and names the object for a flipped byte in every object, a deleted
//! middle segment and a swapped pair of segments.

use std::sync::Arc;

use futures::StreamExt;
use hadal_engine::{Batch, Database, Durability, Options};
use hadal_replica::{ErrorKind, verify};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::{Bucket, DynBucket, MemoryBucket};
use tokio::sync::Notify;

async fn writer(dir: &std::path::Path, bucket: DynBucket, from: usize, n: usize) -> Shipper {
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
    for i in from..from + n {
        let lsn = db
            .apply(
                Batch::new()
                    .put(format!("k{:03}", i % 40), vec![i as u8; 900])
                    .durability(Durability::NoSync),
            )
            .expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
    }
    shipper
}

async fn expect_named(bucket: &DynBucket, key: &str, what: &str) {
    let err = verify(bucket.clone(), None)
        .await
        .expect_err(&format!("{what}: verify must fail"));
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
    assert!(
        err.to_string().contains(key),
        "{what}: must name {key}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_healthy_history_and_names_every_damaged_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let a = writer(&dir.path().join("a"), bucket.clone(), 0, 12).await;
    a.snapshot_now()
        .await
        .expect("snapshot")
        .expect("published");
    drop(a);
    let b = writer(&dir.path().join("b"), bucket.clone(), 12, 8).await;
    b.snapshot_now()
        .await
        .expect("snapshot")
        .expect("published");
    b.shutdown().await.expect("shutdown");

    let report = verify(bucket.clone(), None).await.expect("healthy");
    assert_eq!(report.head_lsn, 20, "{report:?}");
    assert_eq!(report.commits, 20, "{report:?}");
    assert_eq!(report.fences, 2, "{report:?}");
    assert_eq!(report.snapshots, 2, "{report:?}");
    assert!(report.head_epoch >= 2, "{report:?}");

    let keys: Vec<String> = memory
        .list("", None)
        .map(|i| i.expect("list").key)
        .collect()
        .await;
    let interesting =
        |k: &String| k.starts_with("seg/") || k.starts_with("manifest/") || k.starts_with("snap/");
    for key in keys.iter().filter(|k| interesting(k)) {
        let original = memory.get(key).await.expect("get").expect("present").bytes;
        for offset in [0, original.len() / 3, original.len() - 1] {
            let mut flipped = original.to_vec();
            flipped[offset] ^= 0x20;
            memory.put(key, flipped.into()).await.expect("flip");
            expect_named(&bucket, key, &format!("flip in {key} at {offset}")).await;
        }
        memory.put(key, original).await.expect("put back");
    }

    // A deleted middle segment, and a swapped pair.
    let segs: Vec<&String> = keys.iter().filter(|k| k.starts_with("seg/")).collect();
    let (x, y) = (segs[segs.len() / 2], segs[segs.len() / 2 + 1]);
    let bx = memory.get(x).await.expect("get").expect("present").bytes;
    let by = memory.get(y).await.expect("get").expect("present").bytes;
    memory.delete(x).await.expect("delete");
    expect_named(&bucket, x, "deleted middle segment").await;
    memory.put(x, by.clone()).await.expect("swap");
    memory.put(y, bx.clone()).await.expect("swap");
    expect_named(&bucket, x, "swapped segments").await;
    memory.put(x, bx).await.expect("restore");
    memory.put(y, by).await.expect("restore");
    verify(bucket, None).await.expect("healthy again");
}

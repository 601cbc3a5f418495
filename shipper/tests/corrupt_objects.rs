//! A bucket object with one flipped byte (any segment, any manifest) makes restore fail with an
//! error naming that object's key, and leaves no restored folder behind: never a wrong database.

use std::sync::Arc;

use futures::StreamExt;
use hadal_engine::{Batch, Database, Durability, Options};
use hadal_replica::{ErrorKind, Target, restore};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::{Bucket, DynBucket, MemoryBucket};
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_object_fails_the_restore_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db = Database::open(dir.path().join("primary"), options).expect("open");
    let shipper = Shipper::start(db.clone(), bucket.clone(), ShipperOptions::default(), wake)
        .await
        .expect("start");
    for i in 0..12 {
        let lsn = db
            .apply(
                Batch::new()
                    .put(format!("k{i}"), vec![i as u8; 3000])
                    .durability(Durability::NoSync),
            )
            .expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
    }
    shipper.shutdown().await.expect("shutdown");
    let keys: Vec<String> = memory
        .list("", None)
        .map(|info| info.expect("list").key)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter(|k| k.starts_with("seg/") || k.starts_with("manifest/"))
        .collect();
    assert!(
        keys.iter().filter(|k| k.starts_with("seg/")).count() >= 10,
        "{keys:?}"
    );
    for key in &keys {
        let original = memory.get(key).await.expect("get").expect("present").bytes;
        for offset in [0, original.len() / 2, original.len() - 1] {
            let mut flipped = original.to_vec();
            flipped[offset] ^= 0x04;
            memory.put(key, flipped.into()).await.expect("overwrite");
            let out = dir.path().join("out");
            let err = restore(bucket.clone(), &out, Target::Head, None)
                .await
                .expect_err("must refuse");
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{key} at {offset}: {err}");
            assert!(
                err.to_string().contains(key.as_str()),
                "{key} at {offset}: the error must name the object: {err}"
            );
            assert!(!out.exists(), "no restored folder may be left behind");
        }
        memory.put(key, original).await.expect("restore original");
    }
    let out = dir.path().join("intact");
    restore(bucket, &out, Target::Head, None)
        .await
        .expect("the intact bucket restores");
}

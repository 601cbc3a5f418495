//! A bucket object with one flipped byte (any segment, any manifest, any snapshot part) makes
//! restore fail with an error naming that object's key, and leaves no restored folder behind:
//! never a wrong database. A restore that does not need the object (the head restore starts
//! at the snapshot; a restore to the LSN just below the snapshot stops before the later segments) may succeed, and then
//! must produce exactly the primary's image; every object fails at least one of the two, except
//! manifests older than the latest, which no restore needs (the latest one's probe may read some
//! of them; their successor's `prev_hash` vouches for them and `hadal verify` walks that chain):
//! those must refuse by name or leave every restore exact.

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
    let mut checksums = std::collections::BTreeMap::new();
    for i in 0..16 {
        let lsn = db
            .apply(
                Batch::new()
                    .put(format!("k{i}"), vec![i as u8; 3000])
                    .durability(Durability::NoSync),
            )
            .expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
        checksums.insert(lsn, db.begin_read().checksum());
        if i == 11 {
            let snap = shipper.snapshot_now().await.expect("snapshot");
            assert!(snap.is_some(), "a snapshot is published at lsn {lsn:?}");
        }
    }
    shipper.shutdown().await.expect("shutdown");
    let head = *checksums.keys().last().expect("commits");
    let early = hadal_engine::Lsn::new(11);
    let keys: Vec<String> = memory
        .list("", None)
        .map(|info| info.expect("list").key)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter(|k| k.starts_with("seg/") || k.starts_with("manifest/") || k.starts_with("snap/"))
        .collect();
    assert!(keys.iter().any(|k| k.starts_with("snap/")), "{keys:?}");
    let latest_manifest = keys
        .iter()
        .filter(|k| k.starts_with("manifest/"))
        .max()
        .expect("manifests")
        .clone();
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
            let mut refused = 0;
            for (target, lsn) in [(Target::Head, head), (Target::Lsn(early), early)] {
                let out = dir.path().join("out");
                match restore(bucket.clone(), &out, target, None).await {
                    Ok(restored) => {
                        assert_eq!(restored.lsn, lsn, "{key} at {offset}");
                        assert_eq!(
                            Some(&restored.checksum),
                            checksums.get(&lsn),
                            "{key} at {offset}: a restore that succeeds is exact"
                        );
                        std::fs::remove_dir_all(&out).expect("clean up");
                    }
                    Err(err) => {
                        refused += 1;
                        assert_eq!(err.kind(), ErrorKind::Corrupt, "{key} at {offset}: {err}");
                        assert!(
                            err.to_string().contains(key.as_str()),
                            "{key} at {offset}: the error must name the object: {err}"
                        );
                        assert!(!out.exists(), "no restored folder may be left behind");
                    }
                }
            }
            let needed = !key.starts_with("manifest/") || *key == latest_manifest;
            assert!(
                refused > 0 || !needed,
                "{key} at {offset}: no restore noticed the flip"
            );
        }
        memory.put(key, original).await.expect("restore original");
    }
    let out = dir.path().join("intact");
    restore(bucket, &out, Target::Head, None)
        .await
        .expect("the intact bucket restores");
}

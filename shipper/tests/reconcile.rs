//! Restart reconciliation: reopening a writer on an existing local folder whose state is behind
//! the bucket (catch up), ahead of it with unshipped commits of the same history (ship them
//! after the fence), or diverged (another writer moved on: refuse with `Diverged`, naming both
//! LSNs, so the caller restores from the bucket).

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hadal_engine::{Batch, DEFAULT_TABLE, Database, Durability, Options};
use hadal_replica::{Target, restore};
use hadal_shipper::{ErrorKind, Mode, Shipper, ShipperOptions, commit_hook};
use hadal_transports::{DynBucket, MemoryBucket};
use tokio::sync::Notify;

async fn writer(
    bucket: &DynBucket,
    dir: &Path,
    mode: Mode,
) -> hadal_shipper::Result<(Database, Shipper)> {
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    // A dropped shipper releases the folder when its task ends: wait as a restarted process would.
    let db = loop {
        match Database::open(dir, options.clone()) {
            Ok(db) => break db,
            Err(e) if e.kind() == hadal_engine::ErrorKind::Busy => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("open: {e}"),
        }
    };
    let shipper_options = ShipperOptions {
        mode,
        interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let shipper = Shipper::start(db.clone(), bucket.clone(), shipper_options, wake).await?;
    Ok((db, shipper))
}

async fn commit_durably(db: &Database, shipper: &Shipper, prefix: &str, n: usize) {
    for i in 0..n {
        let lsn = db
            .apply(
                Batch::new()
                    .put(format!("{prefix}{i:03}"), prefix)
                    .durability(Durability::NoSync),
            )
            .expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
    }
}

fn commit_locally(db: &Database, prefix: &str, n: usize) {
    for i in 0..n {
        db.apply(Batch::new().put(format!("{prefix}{i:03}"), prefix))
            .expect("apply");
    }
}

async fn restored_keys(bucket: &DynBucket, out: &Path) -> Vec<String> {
    restore(bucket.clone(), out, Target::Head, None)
        .await
        .expect("restore");
    let db = Database::open(out, Options::default()).expect("open");
    let r = db.begin_read();
    r.range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .map(|i| String::from_utf8(i.expect("item").0.to_vec()).expect("utf8"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_behind_the_bucket_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket: DynBucket = Arc::new(MemoryBucket::new());
    let (a, sa) = writer(&bucket, &dir.path().join("a"), Mode::Strict)
        .await
        .expect("a");
    commit_durably(&a, &sa, "a", 10).await;
    sa.shutdown().await.expect("shutdown");
    drop(a);
    let (b, sb) = writer(&bucket, &dir.path().join("b"), Mode::Strict)
        .await
        .expect("b");
    commit_durably(&b, &sb, "b", 10).await;
    sb.shutdown().await.expect("shutdown");
    drop(b);
    let (a, sa) = writer(&bucket, &dir.path().join("a"), Mode::Strict)
        .await
        .expect("a again");
    assert!(
        a.begin_read()
            .get(DEFAULT_TABLE, b"b009")
            .expect("get")
            .is_some(),
        "caught up with b's commits"
    );
    commit_durably(&a, &sa, "c", 5).await;
    sa.shutdown().await.expect("shutdown");
    assert_eq!(
        restored_keys(&bucket, &dir.path().join("out")).await.len(),
        25
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_ahead_with_unshipped_commits_ships_them_after_the_fence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket: DynBucket = Arc::new(MemoryBucket::new());
    let (a, sa) = writer(&bucket, &dir.path().join("a"), Mode::Local)
        .await
        .expect("a");
    commit_locally(&a, "local", 7);
    // The process dies before the hour-long interval ships anything.
    drop(sa);
    drop(a);
    let (a, sa) = writer(&bucket, &dir.path().join("a"), Mode::Strict)
        .await
        .expect("a again");
    let lsn = a.lsn();
    sa.wait_durable(lsn)
        .await
        .expect("the unshipped commits ship after the fence");
    sa.shutdown().await.expect("shutdown");
    assert_eq!(
        restored_keys(&bucket, &dir.path().join("out")).await.len(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_folder_is_refused_naming_both_lsns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket: DynBucket = Arc::new(MemoryBucket::new());
    let (a, sa) = writer(&bucket, &dir.path().join("a"), Mode::Strict)
        .await
        .expect("a");
    commit_durably(&a, &sa, "shared", 3).await;
    sa.shutdown().await.expect("shutdown");
    drop(a);
    // `a` commits locally in async mode and dies before shipping; `b` takes over meanwhile.
    let (a, sa) = writer(&bucket, &dir.path().join("a"), Mode::Async)
        .await
        .expect("a async");
    commit_locally(&a, "lost", 4);
    drop(sa);
    drop(a);
    let (b, sb) = writer(&bucket, &dir.path().join("b"), Mode::Strict)
        .await
        .expect("b");
    commit_durably(&b, &sb, "b", 2).await;
    sb.shutdown().await.expect("shutdown");
    let err = writer(&bucket, &dir.path().join("a"), Mode::Strict)
        .await
        .expect_err("diverged");
    assert_eq!(err.kind(), ErrorKind::Diverged, "{err}");
    let text = err.to_string();
    assert!(text.contains("Lsn(7)") && text.contains("Lsn(5)"), "{text}");
    let keys = restored_keys(&bucket, &dir.path().join("out")).await;
    assert_eq!(keys.len(), 5, "the bucket keeps b's history: {keys:?}");
    assert!(keys.iter().all(|k| !k.starts_with("lost")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_writes_is_refused_by_name() {
    // Proves the self-test runs before takeover and names the broken primitive and store.
    use hadal_conformance::{BrokenBucket, Flaw};
    let dir = tempfile::tempdir().expect("tempdir");
    let broken: DynBucket = Arc::new(BrokenBucket::new(Flaw::IgnoresPreconditions));
    let err = writer(&broken, &dir.path().join("a"), Mode::Strict)
        .await
        .expect_err("must refuse");
    assert_eq!(err.kind(), ErrorKind::Bucket, "{err}");
    assert!(err.to_string().contains("refusing"), "{err}");
}

//! Snapshots: uploaded in parts from a read snapshot while commits go on, published in the
//! manifest only once complete and durable, used by restores and takeovers (so the log below them
//! is no longer needed for the head), and triggered by the restore budget.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hadal_engine::{Batch, Database, Durability, Lsn, Options, StateChecksum};
use hadal_replica::{Target, restore};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, DynBucket, ListStream, MemoryBucket, Nonce, Object,
    ObjectInfo, Swapped, Version, async_trait,
};
use tokio::sync::{Notify, Semaphore};

fn engine_options(wake: &Arc<Notify>) -> Options {
    Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(wake)),
        ..Options::default()
    }
}

async fn start(
    dir: &std::path::Path,
    bucket: DynBucket,
    options: ShipperOptions,
) -> (Database, Shipper) {
    let wake = Arc::new(Notify::new());
    let db = Database::open(dir, engine_options(&wake)).expect("open");
    let shipper = Shipper::start(db.clone(), bucket, options, wake)
        .await
        .expect("start");
    (db, shipper)
}

/// Commits `n` batches of a few keys each, strict: each acknowledged once durable.
async fn commit(
    db: &Database,
    shipper: &Shipper,
    from: usize,
    n: usize,
    checksums: &mut BTreeMap<Lsn, StateChecksum>,
) {
    for i in from..from + n {
        let mut batch = Batch::new().durability(Durability::NoSync);
        for j in 0..4 {
            batch = batch.put(format!("key-{:05}", (i * 7 + j) % 3000), vec![i as u8; 700]);
        }
        let lsn = db.apply(batch).expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
        checksums.insert(lsn, db.begin_read().checksum());
    }
}

async fn keys_under(bucket: &MemoryBucket, prefix: &str) -> Vec<String> {
    bucket
        .list(prefix, None)
        .map(|info| info.expect("list").key)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_start_from_the_snapshot_and_need_no_older_segments() {
    // Proves a published snapshot is exact (restores through it match the primary at every
    // target), that a head restore and a new writer's takeover use it (they succeed after the
    // segments below it are deleted), and that targets below it still replay the full log.
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let bucket: DynBucket = memory.clone();
    let (db, shipper) = start(&dir.path().join("a"), bucket.clone(), Default::default()).await;
    let mut checksums = BTreeMap::new();
    commit(&db, &shipper, 0, 300, &mut checksums).await;
    let snap = shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("something to snapshot");
    assert_eq!(Lsn::new(snap.lsn), db.lsn());
    assert!(snap.parts.iter().all(|p| p.key.starts_with(&snap.dir)));
    assert!(
        shipper.snapshot_now().await.expect("again").is_none(),
        "nothing new to snapshot"
    );
    commit(&db, &shipper, 300, 40, &mut checksums).await;
    assert_eq!(shipper.metrics().snapshots_published, 1);
    shipper.shutdown().await.expect("shutdown");

    // Below the snapshot: the full log from slot 1.
    let below = Lsn::new(snap.lsn - 7);
    let out = dir.path().join("below");
    let r = restore(bucket.clone(), &out, Target::Lsn(below), None)
        .await
        .expect("restore below the snapshot");
    assert_eq!((r.lsn, r.snapshot_lsn), (below, None));
    assert_eq!(Some(&r.checksum), checksums.get(&below));

    // Delete every segment before the one holding the snapshot's LSN.
    for key in keys_under(&memory, "seg/").await {
        let slot: u64 = key["seg/".len()..].parse().expect("slot");
        if slot < snap.slot {
            memory.delete(&key).await.expect("delete");
        }
    }
    let head = *checksums.keys().last().expect("commits");
    let out = dir.path().join("head");
    let r = restore(bucket.clone(), &out, Target::Head, None)
        .await
        .expect("head restore from the snapshot");
    assert_eq!(r.snapshot_lsn, Some(Lsn::new(snap.lsn)));
    assert_eq!((r.lsn, Some(&r.checksum)), (head, checksums.get(&head)));
    let restored = Database::open(&out, Options::default()).expect("open restored");
    restored.check_integrity().expect("integrity");
    drop(restored);

    // At exactly the snapshot's LSN, and at a time between it and the head.
    let out = dir.path().join("at");
    let r = restore(bucket.clone(), &out, Target::Lsn(Lsn::new(snap.lsn)), None)
        .await
        .expect("restore at the snapshot");
    assert_eq!(Some(&r.checksum), checksums.get(&Lsn::new(snap.lsn)));

    // A new writer with an empty folder takes over from the snapshot and carries on.
    let (db2, shipper2) = start(&dir.path().join("b"), bucket.clone(), Default::default()).await;
    assert_eq!(db2.lsn(), head);
    assert_eq!(db2.begin_read().checksum(), checksums[&head]);
    commit(&db2, &shipper2, 340, 5, &mut checksums).await;
    shipper2.shutdown().await.expect("shutdown");
    let out = dir.path().join("after-takeover");
    let r = restore(bucket, &out, Target::Head, None)
        .await
        .expect("restore after takeover");
    assert_eq!(Some(&r.checksum), checksums.get(&r.lsn));
    assert_eq!(r.lsn, db2.lsn());
}

/// A bucket whose snapshot-part uploads wait until released: the snapshot is held mid-upload.
#[derive(Debug)]
struct HeldParts {
    inner: DynBucket,
    gate: Semaphore,
    parts_started: Notify,
}

#[async_trait]
impl Bucket for HeldParts {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_if_absent(
        &self,
        key: &str,
        body: Bytes,
        nonce: Nonce,
    ) -> hadal_transports::Result<Created> {
        self.inner.put_if_absent(key, body, nonce).await
    }
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> hadal_transports::Result<Swapped> {
        self.inner.put_if_match(key, body, expected, nonce).await
    }
    async fn put(&self, key: &str, body: Bytes) -> hadal_transports::Result<Version> {
        if key.starts_with("snap/") {
            self.parts_started.notify_one();
            let _permit = self.gate.acquire().await.expect("gate open");
        }
        self.inner.put(key, body).await
    }
    async fn get(&self, key: &str) -> hadal_transports::Result<Option<Object>> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> hadal_transports::Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> hadal_transports::Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        self.inner.list(prefix, start_after)
    }
    async fn delete(&self, key: &str) -> hadal_transports::Result<()> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_on_while_a_snapshot_uploads() {
    // Proves a snapshot does not block commits: with every part upload held, strict commits
    // keep becoming durable, and the snapshot is published (at the LSN it started from) only
    // after its parts are released.
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(MemoryBucket::new());
    let held = Arc::new(HeldParts {
        inner: memory.clone(),
        gate: Semaphore::new(0),
        parts_started: Notify::new(),
    });
    let (db, shipper) = start(&dir.path().join("a"), held.clone(), Default::default()).await;
    let shipper = Arc::new(shipper);
    let mut checksums = BTreeMap::new();
    commit(&db, &shipper, 0, 50, &mut checksums).await;
    let at = db.lsn();
    let snapshotting = tokio::spawn({
        let shipper = shipper.clone();
        async move { shipper.snapshot_now().await }
    });
    held.parts_started.notified().await;
    commit(&db, &shipper, 50, 30, &mut checksums).await;
    assert_eq!(db.lsn(), Lsn::new(at.get() + 30));
    assert!(!snapshotting.is_finished(), "the parts are still held");
    assert_eq!(shipper.metrics().snapshots_published, 0);
    held.gate.add_permits(1_000);
    let snap = snapshotting
        .await
        .expect("join")
        .expect("snapshot")
        .expect("published");
    assert_eq!(Lsn::new(snap.lsn), at);
    let out = dir.path().join("at");
    let r = restore(held.clone(), &out, Target::Lsn(at), None)
        .await
        .expect("restore at the snapshot");
    assert_eq!(r.snapshot_lsn, Some(at));
    assert_eq!(Some(&r.checksum), checksums.get(&at));
    Arc::into_inner(shipper)
        .expect("one owner")
        .shutdown()
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_budget_triggers_snapshots() {
    // Proves snapshots follow the restore-time estimate, not a count: with no budget to spare a
    // growing log gets snapshotted on its own (and the estimate of the log to replay drops);
    // with an hour's budget the same workload takes none.
    for (budget, expect_snapshots) in [(Duration::ZERO, true), (Duration::from_secs(3600), false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = Arc::new(MemoryBucket::new());
        let options = ShipperOptions {
            restore_budget: budget,
            ..Default::default()
        };
        let (db, shipper) = start(&dir.path().join("a"), memory.clone(), options).await;
        let mut checksums = BTreeMap::new();
        commit(&db, &shipper, 0, 400, &mut checksums).await;
        if expect_snapshots {
            // The estimate uses measured request times, which vary with the machine's load: keep
            // the log growing (the replay estimate grows with it, the image's barely) until the
            // budget calls for a snapshot.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut next = 400;
            while shipper.metrics().snapshots_published == 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no snapshot after {next} segments: {:?}",
                    shipper.restore_estimate()
                );
                if next < 4000 {
                    commit(&db, &shipper, next, 100, &mut checksums).await;
                    next += 100;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        } else {
            assert_eq!(
                shipper.metrics().snapshots_published,
                0,
                "{:?}",
                shipper.restore_estimate()
            );
            assert!(keys_under(&memory, "snap/").await.is_empty());
        }
        shipper.shutdown().await.expect("shutdown");
        let out = dir.path().join("head");
        let r = restore(memory.clone(), &out, Target::Head, None)
            .await
            .expect("restore");
        assert_eq!(Some(&r.checksum), checksums.get(&r.lsn));
        assert_eq!(r.snapshot_lsn.is_some(), expect_snapshots);
    }
}

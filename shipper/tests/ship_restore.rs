//! End to end on `memory://` and `file://`: a strict-mode workload ships every commit; restores
//! to the head, to a random LSN and to a random time give exactly the primary's image at that
//! LSN (state checksum, contents, `check_integrity`; page for page at the head).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use hadal_engine::{
    Batch, DEFAULT_TABLE, Database, Durability, Lsn, Options, PageNo, StateChecksum,
};
use hadal_replica::{Target, restore};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

struct Recorded {
    checksum: StateChecksum,
    time_ms: u64,
    contents: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn contents(db: &Database) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.begin_read()
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .map(|item| {
            item.map(|(k, e)| (k.to_vec(), e.value.to_vec()))
                .expect("item")
        })
        .collect()
}

async fn run(url: &str, seed: u64) {
    let bucket = hadal_transports::open(url).await.expect("open bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db = Database::open(dir.path().join("primary"), options).expect("open");
    let shipper = Arc::new(
        Shipper::start(db.clone(), bucket.clone(), ShipperOptions::default(), wake)
            .await
            .expect("start"),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut recorded: BTreeMap<Lsn, Recorded> = BTreeMap::new();
    // Sequential commits, each acknowledged only once durable in the bucket.
    for i in 0..40 {
        let mut batch = Batch::new().durability(Durability::NoSync);
        for _ in 0..rng.random_range(1..30) {
            let key = format!("k{:04}", rng.random_range(0..500));
            if rng.random_bool(0.2) {
                batch = batch.delete(key);
            } else {
                let len = if rng.random_bool(0.05) {
                    20_000
                } else {
                    rng.random_range(1..300)
                };
                batch = batch.put(key, vec![i as u8; len]);
            }
        }
        let lsn = db.apply(batch).expect("apply");
        shipper.wait_durable(lsn).await.expect("durable");
        let r = db.begin_read();
        recorded.insert(
            lsn,
            Recorded {
                checksum: r.checksum(),
                time_ms: r.commit_time_ms(),
                contents: contents(&db),
            },
        );
        if i % 10 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    }
    // Concurrent committers: group commit locally, group shipping into segments.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (db, shipper) = (db.clone(), shipper.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let lsn = db
                    .apply(
                        Batch::new()
                            .put(format!("c{t:02}-{i}"), "v")
                            .durability(Durability::NoSync),
                    )
                    .expect("apply");
                shipper.wait_durable(lsn).await.expect("durable");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let head = db.lsn();
    let r = db.begin_read();
    recorded.insert(
        head,
        Recorded {
            checksum: r.checksum(),
            time_ms: r.commit_time_ms(),
            contents: contents(&db),
        },
    );
    let metrics = shipper.metrics();
    assert!(
        metrics.commits_shipped as usize >= recorded.len(),
        "{metrics:?}"
    );
    assert!(
        metrics.segments_uploaded < head.get(),
        "group shipping must batch commits: {metrics:?}"
    );

    // Head: page for page.
    let out = dir.path().join("head");
    let restored = restore(bucket.clone(), &out, Target::Head, None)
        .await
        .expect("restore head");
    assert_eq!(restored.lsn, head);
    let copy = Database::open(&out, Options::default()).expect("open restored");
    let (a, b) = (db.begin_read(), copy.begin_read());
    assert_eq!(
        (a.page_count(), a.checksum()),
        (b.page_count(), b.checksum())
    );
    for p in 0..a.page_count() {
        assert_eq!(
            a.page_image(PageNo::new(p)).expect("page"),
            b.page_image(PageNo::new(p)).expect("page")
        );
    }
    assert!(copy.check_integrity().expect("check").is_ok());
    drop(copy);

    // A random LSN and a random time.
    let lsns: Vec<Lsn> = recorded.keys().copied().collect();
    for round in 0..3 {
        let lsn = lsns[rng.random_range(0..lsns.len())];
        let out = dir.path().join(format!("lsn-{round}"));
        let restored = restore(bucket.clone(), &out, Target::Lsn(lsn), None)
            .await
            .expect("restore lsn");
        assert_eq!(
            (restored.lsn, restored.checksum),
            (lsn, recorded[&lsn].checksum)
        );
        let copy = Database::open(&out, Options::default()).expect("open");
        assert!(
            contents(&copy) == recorded[&lsn].contents,
            "contents at {lsn:?}"
        );
        assert!(copy.check_integrity().expect("check").is_ok());

        let t = recorded[&lsn].time_ms;
        let out = dir.path().join(format!("time-{round}"));
        let restored = restore(bucket.clone(), &out, Target::Time(t), None)
            .await
            .expect("restore time");
        assert!(
            restored.time_ms <= t && restored.lsn >= lsn,
            "time {t}: got {restored:?}"
        );
        let copy = Database::open(&out, Options::default()).expect("open");
        assert!(copy.begin_read().checksum() == restored.checksum);
    }
    let err = restore(
        bucket.clone(),
        &dir.path().join("beyond"),
        Target::Lsn(Lsn::new(head.get() + 5)),
        None,
    )
    .await
    .expect_err("beyond the log");
    assert!(err.to_string().contains("beyond the end"), "{err}");
    assert!(
        !dir.path().join("beyond").exists(),
        "a failed restore leaves nothing behind"
    );
    Arc::try_unwrap(shipper)
        .expect("sole owner")
        .shutdown()
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_workload_restores_exactly_on_memory() {
    run("memory://ship-restore", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_workload_restores_exactly_on_file() {
    let bucket_dir = tempfile::tempdir().expect("tempdir");
    run(&format!("file://{}", bucket_dir.path().display()), 2).await;
}

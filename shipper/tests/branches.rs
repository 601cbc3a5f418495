//! Branches (issue 5, Done when 3): a branch copies nothing, starts from its parent's image at
//! the branch point, and from then on writes to either never appear in the other; restores of
//! a branch read the parent's history up to the point (recursively for branches of branches);
//! GC of the parent never breaks a branch it pins; deleting a branch releases the pin.
//!
//! Databases live in `file://` buckets, since a branch reads its parent through the URL its
//! manifest records.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use hadal_engine::{
    Batch, Clock, DEFAULT_TABLE, Database, Durability, Lsn, ManualClock, Options, StateChecksum,
};
use hadal_replica::{FollowOptions, Follower, Target, restore, verify};
use hadal_shipper::gc::{GcOptions, collect};
use hadal_shipper::{Shipper, ShipperOptions, branch};
use hadal_transports::DynBucket;

mod writer;

const T0: u64 = 1_770_000_000_000;

struct Writer {
    db: Database,
    shipper: Shipper,
}

async fn open(url: &str) -> DynBucket {
    hadal_transports::open(url).await.expect("open bucket")
}

async fn writer(dir: &Path, url: &str, clock: &ManualClock) -> Writer {
    let (db, shipper) =
        writer::start(dir, open(url).await, Some(clock), ShipperOptions::default()).await;
    Writer { db, shipper }
}

impl Writer {
    /// Commits one put and waits until it is durable; returns the LSN and the state there.
    async fn put(&self, clock: &ManualClock, key: &str, value: &str) -> (Lsn, StateChecksum, u64) {
        clock.advance(1000);
        let lsn = self
            .db
            .apply(
                Batch::new()
                    .put(key, value.as_bytes().to_vec())
                    .durability(Durability::NoSync),
            )
            .expect("apply");
        self.shipper.wait_durable(lsn).await.expect("durable");
        let r = self.db.begin_read();
        (lsn, r.checksum(), r.commit_time_ms())
    }

    fn get(&self, key: &str) -> Option<Bytes> {
        self.db
            .begin_read()
            .get(DEFAULT_TABLE, key.as_bytes())
            .expect("get")
    }

    fn checksum(&self) -> StateChecksum {
        self.db.begin_read().checksum()
    }
}

fn url_of(dir: &Path, name: &str) -> String {
    format!("file://{}", dir.join(name).display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_are_isolated_restorable_and_survive_parent_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let p_url = url_of(dir.path(), "bucket-p");
    let c1_url = url_of(dir.path(), "bucket-c1");
    let c2_url = url_of(dir.path(), "bucket-c2");
    let c3_url = url_of(dir.path(), "bucket-c3");

    // The parent: 30 commits with a snapshot after the 10th and the 40th.
    let p = writer(&dir.path().join("p"), &p_url, &clock).await;
    let mut p_history: BTreeMap<Lsn, (StateChecksum, u64)> = BTreeMap::new();
    for i in 0..30 {
        let (lsn, c, t) = p
            .put(&clock, &format!("k{:02}", i % 12), &format!("p{i}"))
            .await;
        p_history.insert(lsn, (c, t));
        if i == 9 {
            p.shipper
                .snapshot_now()
                .await
                .expect("snapshot")
                .expect("new");
        }
    }
    let point = Lsn::new(20);
    let created = branch::create(
        open(&p_url).await,
        &p_url,
        open(&c1_url).await,
        &c1_url,
        Target::Lsn(point),
        clock.now_ms(),
    )
    .await
    .expect("create c1");
    assert_eq!(created.point.parent.url, p_url);
    assert_eq!(created.point.parent.lsn, 20);
    let listed = branch::list(open(&p_url).await).await.expect("list");
    assert_eq!(
        listed
            .pins
            .iter()
            .map(|p| (p.name.as_str(), p.lsn))
            .collect::<Vec<_>>(),
        vec![(c1_url.as_str(), 20)]
    );
    assert_eq!(
        branch::list(open(&c1_url).await)
            .await
            .expect("list c1")
            .parent
            .map(|p| p.lsn),
        Some(20)
    );
    // A second branch at an occupied location is refused, and so is a branch onto its parent.
    let err = branch::create(
        open(&p_url).await,
        &p_url,
        open(&c1_url).await,
        &c1_url,
        Target::Head,
        clock.now_ms(),
    )
    .await
    .expect_err("occupied");
    assert!(
        err.to_string().contains("already holds a database"),
        "{err}"
    );
    let err = branch::create(
        open(&p_url).await,
        &p_url,
        open(&p_url).await,
        &p_url,
        Target::Head,
        clock.now_ms(),
    )
    .await
    .expect_err("onto itself");
    assert!(err.to_string().contains("its own location"), "{err}");

    // The branch's writer starts from the parent's image at lsn 20, copying nothing.
    let c1 = writer(&dir.path().join("c1"), &c1_url, &clock).await;
    assert_eq!(c1.db.lsn(), point);
    assert_eq!(c1.checksum(), p_history[&point].0);
    assert_eq!(c1.get("k07").as_deref(), Some(&b"p19"[..]));
    // Isolation both ways.
    let mut c1_history: BTreeMap<Lsn, (StateChecksum, u64)> = BTreeMap::new();
    for i in 0..10 {
        let (lsn, c, t) = c1.put(&clock, &format!("c1-{i}"), "child").await;
        c1_history.insert(lsn, (c, t));
        let (lsn, c, t) = p.put(&clock, &format!("p-after-{i}"), "parent").await;
        p_history.insert(lsn, (c, t));
    }
    assert_eq!(
        c1.db.lsn(),
        Lsn::new(30),
        "the branch's LSNs continue the parent's"
    );
    assert!(
        c1.get("p-after-3").is_none(),
        "parent writes never reach the branch"
    );
    assert!(
        p.get("c1-3").is_none(),
        "branch writes never reach the parent"
    );
    assert_eq!(c1.get("k07").as_deref(), Some(&b"p19"[..]));
    assert_eq!(p.get("k07").as_deref(), Some(&b"p19"[..]));

    // A snapshot of the parent after the branch point; then GC with a zero window: the pin
    // holds the base at the snapshot below lsn 20, so the branch stays restorable.
    p.shipper
        .snapshot_now()
        .await
        .expect("snapshot")
        .expect("new");
    for i in 0..5 {
        let (lsn, c, t) = p.put(&clock, &format!("p-late-{i}"), "parent").await;
        p_history.insert(lsn, (c, t));
    }
    set_retention(&p_url, 0, clock.now_ms()).await;
    let report = collect(
        open(&p_url).await,
        clock.now_ms(),
        &GcOptions {
            grace: std::time::Duration::ZERO,
            dry_run: false,
        },
    )
    .await
    .expect("gc parent");
    assert_eq!(
        report.base.map(|b| b.0),
        Some(10),
        "the pin keeps the base below it"
    );
    assert!(
        !report.deleted.is_empty(),
        "GC collected the parent's oldest history"
    );

    // Restores of the branch: its head, points in its own history, points in the parent's.
    let out = dir.path().join("r-c1-head");
    let r = restore(open(&c1_url).await, &out, Target::Head, None)
        .await
        .expect("restore c1");
    assert_eq!(r.checksum, c1.checksum());
    for (lsn, (checksum, time)) in c1_history.iter().step_by(3) {
        let out = dir.path().join(format!("r-c1-{}", lsn.get()));
        let r = restore(open(&c1_url).await, &out, Target::Lsn(*lsn), None)
            .await
            .expect("restore c1 at lsn");
        assert_eq!(r.checksum, *checksum);
        let out = dir.path().join(format!("r-c1-t{}", lsn.get()));
        let r = restore(open(&c1_url).await, &out, Target::Time(*time), None)
            .await
            .expect("restore c1 at time");
        assert_eq!((r.lsn, r.checksum), (*lsn, *checksum));
    }
    for lsn in [12u64, 17, 20] {
        let lsn = Lsn::new(lsn);
        let out = dir.path().join(format!("r-c1-in-parent-{}", lsn.get()));
        let r = restore(open(&c1_url).await, &out, Target::Lsn(lsn), None)
            .await
            .expect("restore a branch point inside the parent's history");
        assert_eq!(r.checksum, p_history[&lsn].0);
    }
    verify(open(&c1_url).await, None).await.expect("verify c1");
    verify(open(&p_url).await, None)
        .await
        .expect("verify parent");

    // A branch of the branch (at its head), and one at a point before c1 branched, which
    // resolves to (and pins) the parent itself.
    let c2 = branch::create(
        open(&c1_url).await,
        &c1_url,
        open(&c2_url).await,
        &c2_url,
        Target::Head,
        clock.now_ms(),
    )
    .await
    .expect("create c2");
    assert_eq!(c2.point.parent.url, c1_url);
    let c3 = branch::create(
        open(&c1_url).await,
        &c1_url,
        open(&c3_url).await,
        &c3_url,
        Target::Lsn(Lsn::new(15)),
        clock.now_ms(),
    )
    .await
    .expect("create c3");
    assert_eq!(
        c3.point.parent.url, p_url,
        "a point in the parent's history pins the parent"
    );
    let w2 = writer(&dir.path().join("c2"), &c2_url, &clock).await;
    assert_eq!(w2.checksum(), c1.checksum());
    let (_, c2_checksum, _) = w2.put(&clock, "c2-only", "grandchild").await;
    assert!(c1.get("c2-only").is_none());
    let out = dir.path().join("r-c2-head");
    let r = restore(open(&c2_url).await, &out, Target::Head, None)
        .await
        .expect("restore c2");
    assert_eq!(r.checksum, c2_checksum);
    let out = dir.path().join("r-c3-head");
    let r = restore(open(&c3_url).await, &out, Target::Head, None)
        .await
        .expect("restore c3");
    assert_eq!(r.checksum, p_history[&Lsn::new(15)].0);
    verify(open(&c2_url).await, None).await.expect("verify c2");

    // A follower of the branch reaches the branch writer's image.
    let follower = Follower::start(
        dir.path().join("f-c1"),
        Options::default(),
        open(&c1_url).await,
        FollowOptions::default(),
    )
    .await
    .expect("follow c1");
    let (lsn, checksum, _) = c1.put(&clock, "c1-late", "child").await;
    follower
        .wait_for(lsn, std::time::Duration::from_secs(20))
        .await
        .expect("the follower catches up");
    assert_eq!(follower.db().begin_read().checksum(), checksum);
    follower.stop().await;

    // Deletion: refused while c1 has a branch of its own; then c2, c3 and c1 go and their pins
    // are released, after which parent GC moves its base past the old branch point.
    w2.shipper.shutdown().await.expect("shutdown c2");
    c1.shipper.shutdown().await.expect("shutdown c1");
    let err = branch::delete(open(&c1_url).await, &c1_url, clock.now_ms())
        .await
        .expect_err("c1 has a branch");
    assert!(err.to_string().contains("branches of its own"), "{err}");
    let err = branch::delete(open(&p_url).await, &p_url, clock.now_ms())
        .await
        .expect_err("a root database");
    assert!(err.to_string().contains("not a branch"), "{err}");
    for url in [&c2_url, &c3_url, &c1_url] {
        let deleted = branch::delete(open(url).await, url, clock.now_ms())
            .await
            .expect("delete");
        assert!(deleted.unpinned.is_some(), "{url}: {deleted:?}");
        assert!(deleted.objects.get("manifest").copied().unwrap_or(0) >= 1);
        let left = hadal_transports::list_all(open(url).await.as_ref(), "", None)
            .await
            .expect("list");
        assert!(left.is_empty(), "{url} still holds {left:?}");
    }
    assert!(
        branch::list(open(&p_url).await)
            .await
            .expect("list")
            .pins
            .is_empty()
    );
    let report = collect(
        open(&p_url).await,
        clock.now_ms(),
        &GcOptions {
            grace: std::time::Duration::ZERO,
            dry_run: false,
        },
    )
    .await
    .expect("gc parent again");
    assert!(
        report.base.is_some_and(|b| b.0 > 20),
        "without the pins the base moves past lsn 20: {:?}",
        report.base
    );
    let out = dir.path().join("r-p-head");
    let r = restore(open(&p_url).await, &out, Target::Head, None)
        .await
        .expect("restore parent");
    assert_eq!(r.checksum, p.checksum());
    p.shipper.shutdown().await.expect("shutdown p");
    verify(open(&p_url).await, None)
        .await
        .expect("verify parent at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_point_by_time_and_of_the_empty_database() {
    // Proves `--time` resolves to the newest commit at or before it, and a branch of a database
    // with no commits starts empty and takes writes.
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let p_url = url_of(dir.path(), "p");
    let p = writer(&dir.path().join("pw"), &p_url, &clock).await;
    let empty_url = url_of(dir.path(), "empty");
    branch::create(
        open(&p_url).await,
        &p_url,
        open(&empty_url).await,
        &empty_url,
        Target::Head,
        clock.now_ms(),
    )
    .await
    .expect("branch of the empty database");
    let mut times = Vec::new();
    for i in 0..8 {
        let (lsn, checksum, time) = p.put(&clock, &format!("k{i}"), "v").await;
        times.push((lsn, checksum, time));
    }
    let (lsn, checksum, time) = times[4];
    let by_time_url = url_of(dir.path(), "by-time");
    let created = branch::create(
        open(&p_url).await,
        &p_url,
        open(&by_time_url).await,
        &by_time_url,
        Target::Time(time + 500),
        clock.now_ms(),
    )
    .await
    .expect("branch by time");
    assert_eq!(created.point.parent.lsn, lsn.get());
    let w = writer(&dir.path().join("tw"), &by_time_url, &clock).await;
    assert_eq!(w.checksum(), checksum);
    w.shipper.shutdown().await.expect("shutdown");
    let e = writer(&dir.path().join("ew"), &empty_url, &clock).await;
    assert_eq!(e.db.lsn(), Lsn::ZERO);
    let (lsn, checksum, _) = e.put(&clock, "only-in-empty-branch", "x").await;
    assert_eq!(lsn, Lsn::new(1));
    e.shipper.shutdown().await.expect("shutdown");
    let out = dir.path().join("r-empty");
    let r = restore(open(&empty_url).await, &out, Target::Head, None)
        .await
        .expect("restore");
    assert_eq!(r.checksum, checksum);
    verify(open(&empty_url).await, None).await.expect("verify");
    assert!(p.get("only-in-empty-branch").is_none());
    p.shipper.shutdown().await.expect("shutdown");
}

/// Sets the retention window of the database at `url` (a manifest update, as an operator would).
async fn set_retention(url: &str, retention_ms: u64, now_ms: u64) {
    hadal_shipper::gc::set_retention(open(url).await, retention_ms, now_ms)
        .await
        .expect("set retention");
}

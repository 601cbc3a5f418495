//! Replacing a non-empty image (`install_image` on a replica that fell behind the bucket's GC):
//! the result is the new image byte for byte and it keeps following; reads of the old image are
//! refused rather than mixed; a wrong image leaves an empty database; and a crash at any storage
//! operation of the replacement reopens as the old image, its checkpoint, an empty database or
//! the new image, never anything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hadal_engine::{
    Batch, DEFAULT_TABLE, Database, Durability, ErrorKind, FaultPlan, ImageHeader, Lsn,
    ManualClock, MemStorage, Options, PageNo, ReadTxn, StateChecksum,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn options(clock: &ManualClock, retain_unshipped: bool) -> Options {
    Options {
        background: false,
        retain_unshipped,
        clock: Arc::new(clock.clone()),
        ..Options::default()
    }
}

type Checksums = BTreeMap<Lsn, StateChecksum>;

/// A primary with `n` commits (see [`write`]); returns the checksum at every LSN.
fn primary(clock: &ManualClock, n: u32) -> (Database, Checksums) {
    let db = Database::open_storage(
        Arc::new(MemStorage::new("pm")),
        Arc::new(MemStorage::new("pw")),
        options(clock, true),
    )
    .expect("open primary");
    let mut checksums = BTreeMap::new();
    write(clock, &db, 0..n, &mut checksums);
    (db, checksums)
}

/// Commits `range.len()` overwrites, some with deletes, recording each LSN's checksum.
fn write(clock: &ManualClock, db: &Database, range: std::ops::Range<u32>, into: &mut Checksums) {
    for i in range {
        clock.advance(1000);
        let mut batch =
            Batch::new().put(format!("k{:03}", i % 70), vec![i as u8; 300 + i as usize]);
        if i % 9 == 0 && i > 0 {
            batch = batch.delete(format!("k{:03}", (i * 7) % 70));
        }
        let lsn = db.apply(batch).expect("apply");
        into.insert(lsn, db.begin_read().checksum());
    }
}

fn image_of(r: &ReadTxn) -> ImageHeader {
    ImageHeader {
        lsn: r.lsn(),
        page_count: r.page_count(),
        checksum: r.checksum(),
        time_ms: r.commit_time_ms(),
    }
}

fn pages(r: &ReadTxn) -> Vec<hadal_engine::Result<(PageNo, Bytes)>> {
    (0..r.page_count())
        .map(|p| r.page_image(PageNo::new(p)).map(|b| (PageNo::new(p), b)))
        .collect()
}

/// Applies the primary's commits `after+1..=upto` to `follower`, synced.
fn follow(primary: &Database, follower: &Database, after: Lsn, upto: u64) {
    for c in primary.commits_since(after, usize::MAX).expect("commits") {
        if c.lsn.get() > upto {
            break;
        }
        follower.apply_commit(&c, Durability::Sync).expect("apply");
    }
}

fn assert_same_pages(a: &ReadTxn, b: &ReadTxn) {
    assert_eq!(
        (a.lsn(), a.page_count(), a.checksum()),
        (b.lsn(), b.page_count(), b.checksum())
    );
    for p in 0..a.page_count() {
        let p = PageNo::new(p);
        assert_eq!(
            a.page_image(p).expect("page"),
            b.page_image(p).expect("page"),
            "page {p}"
        );
    }
}

#[test]
fn a_replica_behind_takes_a_newer_image_and_reads_of_the_old_one_are_refused() {
    // Proves a non-empty database takes a newer image byte for byte, keeps applying commits
    // after it and reopens at it; a read snapshot of the old image is refused with Retry (never
    // served from the new pages); an image that is not newer is refused and changes nothing.
    let clock = ManualClock::new(1_000_000);
    let (primary, mut checksums) = primary(&clock, 40);
    // The primary's image at 40 stands in for the bucket's newest snapshot.
    let at40 = primary.begin_read();
    write(&clock, &primary, 40..60, &mut checksums);
    let (main, wal) = (MemStorage::new("fm"), MemStorage::new("fw"));
    let follower = Database::open_storage(
        Arc::new(main.clone()),
        Arc::new(wal.clone()),
        options(&clock, false),
    )
    .expect("open follower");
    follow(&primary, &follower, Lsn::ZERO, 12);
    follower.checkpoint().expect("checkpoint");
    follow(&primary, &follower, Lsn::new(12), 15);
    let old = follower.begin_read();
    assert!(old.get(DEFAULT_TABLE, b"k001").expect("read").is_some());

    assert_eq!(Some(&at40.checksum()), checksums.get(&Lsn::new(40)));
    let stale = follower.begin_read();
    let err = follower
        .install_image(image_of(&stale), pages(&stale))
        .expect_err("not newer");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    drop(stale);
    follower
        .install_image(image_of(&at40), pages(&at40))
        .expect("replace");

    let err = old
        .get(DEFAULT_TABLE, b"k001")
        .expect_err("the old image is gone");
    assert_eq!(err.kind(), ErrorKind::Retry, "{err}");
    drop(old);
    assert_same_pages(&follower.begin_read(), &at40);
    follow(&primary, &follower, Lsn::new(40), 60);
    assert_same_pages(&follower.begin_read(), &primary.begin_read());
    assert!(follower.check_integrity().expect("check").is_ok());
    follower
        .checkpoint()
        .expect("checkpoint after the replacement");
    drop(follower);
    let reopened = Database::open_storage(Arc::new(main), Arc::new(wal), options(&clock, false))
        .expect("reopen");
    assert_same_pages(&reopened.begin_read(), &primary.begin_read());
    assert!(reopened.check_integrity().expect("check").is_ok());
}

#[test]
fn a_wrong_image_over_a_non_empty_database_leaves_it_empty() {
    // Proves a replacement whose pages do not give the claimed checksum leaves the database
    // empty (on disk and for readers) instead of half old, half new, and that a right image
    // then installs.
    let clock = ManualClock::new(1_000_000);
    let (primary, _) = primary(&clock, 30);
    let (main, wal) = (MemStorage::new("fm"), MemStorage::new("fw"));
    let follower = Database::open_storage(
        Arc::new(main.clone()),
        Arc::new(wal.clone()),
        options(&clock, false),
    )
    .expect("open follower");
    follow(&primary, &follower, Lsn::ZERO, 10);
    let head = primary.begin_read();
    let wrong = ImageHeader {
        checksum: StateChecksum::from_raw(7),
        ..image_of(&head)
    };
    let err = follower
        .install_image(wrong, pages(&head))
        .expect_err("wrong checksum");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(follower.lsn(), Lsn::ZERO);
    assert_eq!(follower.begin_read().page_count(), 0);
    drop(follower);
    let reopened = Database::open_storage(
        Arc::new(main.clone()),
        Arc::new(wal.clone()),
        options(&clock, false),
    )
    .expect("reopen");
    assert_eq!(reopened.lsn(), Lsn::ZERO, "empty on disk too");
    reopened
        .install_image(image_of(&head), pages(&head))
        .expect("install");
    assert_same_pages(&reopened.begin_read(), &head);
}

#[test]
fn a_crash_anywhere_in_a_replacement_leaves_a_whole_image() {
    // Proves the order of the replacement (WAL truncated, empty superblock, pages, superblock):
    // a crash at every storage operation, with torn unsynced writes, reopens at the old head,
    // its checkpoint, an empty database or the new image, each intact.
    let clock = ManualClock::new(1_000_000);
    let (primary, checksums) = primary(&clock, 50);
    let head = primary.begin_read();
    let mut outcomes = BTreeMap::new();
    for crash_at in 0.. {
        let plan = FaultPlan::never();
        let main = MemStorage::with_plan("fm", plan.clone());
        let wal = MemStorage::with_plan("fw", plan.clone());
        let follower = Database::open_storage(
            Arc::new(main.clone()),
            Arc::new(wal.clone()),
            options(&clock, false),
        )
        .expect("open follower");
        follow(&primary, &follower, Lsn::ZERO, 12);
        follower.checkpoint().expect("checkpoint");
        follow(&primary, &follower, Lsn::new(12), 20);
        plan.lock().fail_in(crash_at);
        let installed = follower.install_image(image_of(&head), pages(&head));
        let crashed = plan.lock().is_dead();
        drop(follower);
        let mut rng = StdRng::seed_from_u64(crash_at);
        main.crash(&mut rng, 0.5);
        wal.crash(&mut rng, 0.5);
        let reboot = FaultPlan::never();
        let db = Database::open_storage(
            Arc::new(main.reopen(reboot.clone())),
            Arc::new(wal.reopen(reboot)),
            options(&clock, false),
        )
        .unwrap_or_else(|e| panic!("crash at op {crash_at}: reopen failed: {e}"));
        let r = db.begin_read();
        let lsn = r.lsn().get();
        assert!(
            [0, 12, 20, head.lsn().get()].contains(&lsn),
            "crash at op {crash_at}: reopened at lsn {lsn}"
        );
        if lsn == 0 {
            assert_eq!(r.page_count(), 0);
        } else {
            assert_eq!(
                Some(&r.checksum()),
                checksums.get(&r.lsn()),
                "op {crash_at}"
            );
            assert!(
                db.check_integrity().expect("check").is_ok(),
                "op {crash_at}"
            );
        }
        *outcomes.entry(lsn).or_insert(0) += 1;
        if !crashed {
            installed.expect("no crash: installed");
            assert_same_pages(&r, &head);
            break;
        }
    }
    // Every intermediate state was reached by some crash point.
    for lsn in [0, 12, 20, head.lsn().get()] {
        assert!(outcomes.contains_key(&lsn), "{outcomes:?}");
    }
}

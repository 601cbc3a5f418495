//! Concurrency and failure behaviour: group commit from many threads, snapshot isolation
//! while writers and checkpoints run, poisoning after a failed WAL write, and the follower
//! path reproducing the primary's image byte for byte after random workloads.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use hadal_engine::{
    Batch, DEFAULT_TABLE, Database, Durability, ErrorKind, FaultPlan, ManualClock, MemStorage,
    Options, PageNo,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn mem_db(clock: &ManualClock, retain_unshipped: bool) -> Database {
    let options = Options {
        background: false,
        retain_unshipped,
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    Database::open_storage(
        Arc::new(MemStorage::new("main")),
        Arc::new(MemStorage::new("wal")),
        options,
    )
    .expect("open")
}

#[test]
fn group_commit_from_many_threads_loses_nothing() {
    // Proves every concurrently applied batch is committed exactly once, with dense LSNs,
    // and that groups form (fewer commits than batches).
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::open(dir.path(), Options::default()).expect("open");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut lsns = Vec::new();
                for i in 0..100 {
                    let lsn = db
                        .apply(Batch::new().put(format!("t{t}-{i:03}"), format!("{i}")))
                        .expect("apply");
                    lsns.push(lsn);
                }
                lsns
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("thread"));
    }
    let r = db.begin_read();
    let count = r
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .count();
    assert_eq!(count, 800);
    all.sort();
    all.dedup();
    assert_eq!(all.last().copied(), Some(db.lsn()));
    assert!(db.lsn().get() <= 800, "at most one commit per batch");
    eprintln!("800 batches in {} commits", db.lsn().get());
}

#[test]
fn apply_group_commits_the_batches_that_hold_as_one_commit() {
    // Proves `apply_group` answers every batch in order: the ones whose assertions hold share
    // one LSN and are visible, a failed assertion or a malformed batch writes nothing and only
    // fails itself, and an empty group commits nothing.
    let clock = ManualClock::new(1_000);
    let db = mem_db(&clock, false);
    db.apply(Batch::new().put("taken", "x")).expect("seed");
    let results = db.apply_group(vec![
        Batch::new().put("a", "1"),
        Batch::new()
            .assert(hadal_engine::Assertion::Absent {
                table: DEFAULT_TABLE.into(),
                key: b"taken".to_vec(),
            })
            .put("b", "2"),
        Batch::new().put(vec![b'k'; 10_000], "too long a key"),
        Batch::new().put("c", "3"),
    ]);
    assert_eq!(results.len(), 4);
    let lsn = *results[0].as_ref().expect("a commits");
    assert_eq!(results[3].as_ref().expect("c commits"), &lsn);
    assert_eq!(lsn.get(), 2, "one commit for the whole group");
    assert!(matches!(
        results[1],
        Err(hadal_engine::Error::AssertionFailed { .. })
    ));
    assert_eq!(
        results[2].as_ref().expect_err("malformed").kind(),
        ErrorKind::Invalid
    );
    let read = db.begin_read();
    assert_eq!(
        read.get(DEFAULT_TABLE, b"a").expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        read.get(DEFAULT_TABLE, b"c").expect("get").as_deref(),
        Some(&b"3"[..])
    );
    assert_eq!(read.get(DEFAULT_TABLE, b"b").expect("get"), None);
    assert!(db.apply_group(Vec::new()).is_empty());
    assert_eq!(db.lsn().get(), 2);
}

#[test]
fn snapshots_do_not_move_under_writers_and_checkpoints() {
    // Proves a read snapshot keeps seeing its LSN's contents while later commits and
    // checkpoints run, and that the checkpoint does not pass it.
    let clock = ManualClock::new(0);
    let db = mem_db(&clock, false);
    let mut tx = db.begin_write().expect("write");
    for i in 0..3000u32 {
        tx.put(DEFAULT_TABLE, format!("k{i:05}").as_bytes(), b"old")
            .expect("put");
    }
    tx.commit().expect("commit");
    let snapshot = db.begin_read();
    for round in 0..5 {
        let mut tx = db.begin_write().expect("write");
        for i in (round..3000u32).step_by(3) {
            tx.put(DEFAULT_TABLE, format!("k{i:05}").as_bytes(), b"new")
                .expect("put");
        }
        tx.commit().expect("commit");
        let reached = db.checkpoint().expect("checkpoint");
        assert!(
            reached.is_none_or(|l| l <= snapshot.lsn()),
            "checkpoint passed a live reader"
        );
    }
    let olds = snapshot
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .filter(|item| item.as_ref().expect("item").1.value.as_ref() == b"old")
        .count();
    assert_eq!(olds, 3000);
    drop(snapshot);
    assert_eq!(db.checkpoint().expect("checkpoint"), Some(db.lsn()));
    assert!(db.check_integrity().expect("check").is_ok());
}

#[test]
fn failed_wal_write_poisons_until_reopen() {
    // Proves that after a WAL failure the database refuses writes (Closed) and a reopen
    // recovers the durable state.
    let clock = ManualClock::new(0);
    let plan = FaultPlan::never();
    let (main, wal) = (MemStorage::new("main"), MemStorage::new("wal"));
    let options = || Options {
        background: false,
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    let db = Database::open_storage(
        Arc::new(main.reopen(plan.clone())),
        Arc::new(wal.reopen(plan.clone())),
        options(),
    )
    .expect("open");
    db.apply(Batch::new().put("a", "1")).expect("apply");
    // Kill the storage at its next operation: the next commit fails.
    plan.lock().fail_in(0);
    let err = db
        .apply(Batch::new().put("b", "2"))
        .expect_err("the WAL is dead");
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    let err = db.apply(Batch::new().put("c", "3")).expect_err("poisoned");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    drop(db);
    let db = Database::open_storage(
        Arc::new(main.reopen(FaultPlan::never())),
        Arc::new(wal.reopen(FaultPlan::never())),
        options(),
    )
    .expect("reopen after failure");
    assert_eq!(
        db.begin_read()
            .get(DEFAULT_TABLE, b"a")
            .expect("get")
            .as_deref(),
        Some(&b"1"[..])
    );
    assert!(
        db.begin_read()
            .get(DEFAULT_TABLE, b"b")
            .expect("get")
            .is_none()
    );
}

#[test]
fn follower_image_is_byte_identical_after_random_workloads() {
    // Proves commits_since → apply_commit reproduces the primary's image and state checksum
    // at every LSN, across deletes, TTLs, overflow values, sweeps and checkpoints (with
    // shipping retention, so the WAL keeps what the follower has not taken yet).
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let clock = ManualClock::new(1_000);
        let primary = mem_db(&clock, true);
        let follower = mem_db(&clock, false);
        let mut model = BTreeMap::new();
        for _ in 0..30 {
            let mut tx = primary.begin_write().expect("write");
            for _ in 0..rng.random_range(1..120) {
                let key = format!("k{:04}", rng.random_range(0..800)).into_bytes();
                if rng.random_bool(0.25) {
                    tx.delete(DEFAULT_TABLE, &key).expect("delete");
                    model.remove(&key);
                } else {
                    let len = if rng.random_bool(0.03) {
                        rng.random_range(5000..40_000)
                    } else {
                        rng.random_range(0..400)
                    };
                    let ttl = rng
                        .random_bool(0.1)
                        .then(|| clock_now(&clock) + rng.random_range(1..50));
                    tx.put_with_expiry(DEFAULT_TABLE, &key, &vec![rng.random(); len], ttl)
                        .expect("put");
                    model.insert(key, ());
                }
            }
            tx.commit_with(Durability::NoSync).expect("commit");
            clock.advance(rng.random_range(0..20));
            if rng.random_bool(0.2) {
                primary.sweep_expired(usize::MAX).expect("sweep");
            }
            if rng.random_bool(0.3) {
                for c in primary
                    .commits_since(follower.lsn(), usize::MAX)
                    .expect("commits")
                {
                    follower
                        .apply_commit(&c, Durability::NoSync)
                        .expect("apply");
                }
                primary.set_lsn_shipped(follower.lsn());
                primary.checkpoint().expect("checkpoint");
                assert_same_image(&primary, &follower, seed);
            }
        }
        for c in primary
            .commits_since(follower.lsn(), usize::MAX)
            .expect("commits")
        {
            follower
                .apply_commit(&c, Durability::NoSync)
                .expect("apply");
        }
        assert_same_image(&primary, &follower, seed);
        assert!(follower.check_integrity().expect("check").is_ok());
    }
}

fn clock_now(clock: &ManualClock) -> u64 {
    use hadal_engine::Clock;
    clock.now_ms()
}

fn assert_same_image(a: &Database, b: &Database, seed: u64) {
    let (ra, rb) = (a.begin_read(), b.begin_read());
    assert_eq!(
        (ra.lsn(), ra.page_count(), ra.checksum()),
        (rb.lsn(), rb.page_count(), rb.checksum()),
        "seed {seed}"
    );
    for p in 0..ra.page_count() {
        let p = PageNo::new(p);
        assert_eq!(
            ra.page_image(p).expect("page"),
            rb.page_image(p).expect("page"),
            "seed {seed}: page {p}"
        );
    }
}

#[test]
fn follower_refuses_a_commit_that_does_not_continue_its_image() {
    // Proves apply_commit checks LSN order, checksum_before and the claimed checksum_after.
    let clock = ManualClock::new(0);
    let primary = mem_db(&clock, true);
    let follower = mem_db(&clock, false);
    primary.apply(Batch::new().put("a", "1")).expect("apply");
    primary.apply(Batch::new().put("b", "2")).expect("apply");
    let commits = primary
        .commits_since(hadal_engine::Lsn::ZERO, 10)
        .expect("commits");
    let err = follower
        .apply_commit(&commits[1], Durability::NoSync)
        .expect_err("gap");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let mut forged = commits[0].clone();
    forged.checksum_after = hadal_engine::StateChecksum::from_raw(42);
    let err = follower
        .apply_commit(&forged, Durability::NoSync)
        .expect_err("forged checksum");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    follower
        .apply_commit(&commits[0], Durability::NoSync)
        .expect("the real one applies");
    assert_eq!(follower.lsn(), commits[0].lsn);
}

#[test]
fn a_follower_seeded_from_an_image_continues_with_commits_and_survives_reopen() {
    // Proves install_image + apply_commit reproduce the primary (the restore path), that the
    // result survives a reopen, and that an image whose checksum is wrong installs nothing.
    let clock = ManualClock::new(0);
    let primary = mem_db(&clock, true);
    for i in 0..40u32 {
        primary
            .apply(Batch::new().put(format!("k{i:03}"), vec![i as u8; 700]))
            .expect("apply");
    }
    let snapshot = primary.begin_read();
    let image = hadal_engine::ImageHeader {
        lsn: snapshot.lsn(),
        page_count: snapshot.page_count(),
        checksum: snapshot.checksum(),
        time_ms: snapshot.commit_time_ms(),
    };
    let pages = |r: &hadal_engine::ReadTxn| {
        (0..r.page_count())
            .map(|p| r.page_image(PageNo::new(p)).map(|b| (PageNo::new(p), b)))
            .collect::<Vec<_>>()
    };
    for i in 40..60u32 {
        primary
            .apply(
                Batch::new()
                    .put(format!("k{i:03}"), vec![i as u8; 700])
                    .delete(format!("k{:03}", i - 40)),
            )
            .expect("apply");
    }
    let (main, wal) = (MemStorage::new("fm"), MemStorage::new("fw"));
    let options = || Options {
        background: false,
        clock: Arc::new(clock.clone()),
        ..Options::default()
    };
    let follower = Database::open_storage(Arc::new(main.clone()), Arc::new(wal.clone()), options())
        .expect("open");
    let wrong = hadal_engine::ImageHeader {
        checksum: hadal_engine::StateChecksum::from_raw(1),
        ..image
    };
    let err = follower
        .install_image(wrong, pages(&snapshot))
        .expect_err("wrong checksum");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(follower.lsn(), hadal_engine::Lsn::ZERO);
    follower
        .install_image(image, pages(&snapshot))
        .expect("install");
    for c in primary
        .commits_since(image.lsn, usize::MAX)
        .expect("commits")
    {
        follower
            .apply_commit(&c, Durability::NoSync)
            .expect("apply");
    }
    assert_same_image(&primary, &follower, 0);
    drop(follower);
    let follower =
        Database::open_storage(Arc::new(main), Arc::new(wal), options()).expect("reopen");
    assert_same_image(&primary, &follower, 0);
    assert!(follower.check_integrity().expect("check").is_ok());
}

#[test]
fn an_image_installs_from_runs_of_many_pages_and_a_broken_run_installs_nothing() {
    // Proves install_image takes runs of consecutive pages (as a restore passes whole snapshot
    // parts) and gives the primary's image, and that a run out of order, a run of a partial
    // page or a run with one damaged page is refused with no superblock written.
    let clock = ManualClock::new(0);
    let primary = mem_db(&clock, true);
    for i in 0..60u32 {
        primary
            .apply(Batch::new().put(format!("k{i:03}"), vec![i as u8; 700]))
            .expect("apply");
    }
    let snapshot = primary.begin_read();
    let image = hadal_engine::ImageHeader {
        lsn: snapshot.lsn(),
        page_count: snapshot.page_count(),
        checksum: snapshot.checksum(),
        time_ms: snapshot.commit_time_ms(),
    };
    // Runs of 1, 2, 3, … pages, each the images back to back.
    let mut runs = Vec::new();
    let (mut first, mut len) = (0u32, 1u32);
    while first < snapshot.page_count() {
        let end = (first + len).min(snapshot.page_count());
        let mut bytes = Vec::new();
        for p in first..end {
            bytes.extend_from_slice(&snapshot.page_image(PageNo::new(p)).expect("page"));
        }
        runs.push((PageNo::new(first), bytes::Bytes::from(bytes)));
        (first, len) = (end, len + 1);
    }
    assert!(runs.len() >= 3, "the image needs several runs");
    let fresh = || {
        let options = Options {
            background: false,
            clock: Arc::new(clock.clone()),
            ..Options::default()
        };
        Database::open_storage(
            Arc::new(MemStorage::new("rm")),
            Arc::new(MemStorage::new("rw")),
            options,
        )
        .expect("open")
    };
    let refused = |broken: Vec<(PageNo, bytes::Bytes)>| {
        let db = fresh();
        let err = db
            .install_image(image, broken.into_iter().map(Ok))
            .expect_err("a broken run");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert_eq!(db.lsn(), hadal_engine::Lsn::ZERO);
    };
    let mut swapped = runs.clone();
    swapped.swap(1, 2);
    refused(swapped);
    let mut partial = runs.clone();
    partial[1].1 = partial[1].1.slice(..partial[1].1.len() - 1);
    refused(partial);
    let mut damaged = runs.clone();
    let mut page = damaged[2].1.to_vec();
    let last = page.len() - 1;
    page[last] ^= 1;
    damaged[2].1 = bytes::Bytes::from(page);
    refused(damaged);
    let db = fresh();
    db.install_image(image, runs.into_iter().map(Ok))
        .expect("install");
    assert_same_image(&primary, &db, 0);
    assert!(db.check_integrity().expect("check").is_ok());
}

#[test]
fn sustained_writes_keep_the_wal_bounded() {
    // Proves the background checkpoint restarts the WAL under a steady write load (it catches
    // up under the writer slot) and triggers on new frames only, not on the whole generation.
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        checkpoint_wal_bytes: 4 * 1024 * 1024,
        ..Options::default()
    };
    let db = Database::open(dir.path(), options).expect("open");
    let mut checkpoints_seen = std::collections::BTreeSet::new();
    for round in 0..300u32 {
        let mut tx = db.begin_write().expect("write");
        for i in 0..200u32 {
            let key = format!("k{:07}", (round * 7919 + i * 104_729) % 1_000_000);
            tx.put(DEFAULT_TABLE, key.as_bytes(), &[round as u8; 100])
                .expect("put");
        }
        tx.commit_with(Durability::NoSync).expect("commit");
        checkpoints_seen.insert(db.info().lsn_checkpoint);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let info = db.info();
    let wal_len = std::fs::metadata(dir.path().join(hadal_engine::WAL_FILE_NAME))
        .expect("wal")
        .len();
    assert!(
        info.lsn_checkpoint.get() > 0,
        "the background thread checkpointed"
    );
    assert!(
        wal_len <= 64 * 1024 * 1024,
        "the WAL restarted instead of growing: {wal_len} bytes"
    );
    assert!(
        checkpoints_seen.len() < 150,
        "checkpoints ran back to back: {}",
        checkpoints_seen.len()
    );
}

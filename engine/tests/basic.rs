//! End-to-end behaviour of the engine's public API on real files and in memory.

use std::ops::Bound;
use std::sync::Arc;

use hadal_engine::{
    Assertion, Batch, DEFAULT_TABLE, Database, Durability, ErrorKind, ManualClock, MemStorage,
    Options,
};

fn mem_options(clock: &ManualClock) -> Options {
    Options {
        background: false,
        clock: Arc::new(clock.clone()),
        ..Options::default()
    }
}

fn open_mem(main: &MemStorage, wal: &MemStorage, clock: &ManualClock) -> Database {
    Database::open_storage(
        Arc::new(main.clone()),
        Arc::new(wal.clone()),
        mem_options(clock),
    )
    .expect("open")
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

#[test]
fn put_get_delete_survive_reopen_and_checkpoint() {
    // Proves the basic write path, reads, deletes (with merges) and recovery agree.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Database::open(dir.path(), Options::default()).expect("open");
        let mut tx = db.begin_write().expect("write");
        for i in 0..5000 {
            tx.put(DEFAULT_TABLE, &key(i), format!("value {i}").as_bytes())
                .expect("put");
        }
        tx.commit().expect("commit");
        let mut tx = db.begin_write().expect("write");
        for i in (0..5000).step_by(2) {
            assert!(tx.delete(DEFAULT_TABLE, &key(i)).expect("delete"));
        }
        tx.commit().expect("commit");
        let report = db.check_integrity().expect("check");
        assert!(report.is_ok(), "{report}");
        db.checkpoint().expect("checkpoint");
    }
    let db = Database::open(dir.path(), Options::default()).expect("reopen");
    let r = db.begin_read();
    assert_eq!(
        r.get(DEFAULT_TABLE, &key(1)).expect("get").as_deref(),
        Some(&b"value 1"[..])
    );
    assert_eq!(r.get(DEFAULT_TABLE, &key(2)).expect("get"), None);
    let all: Vec<_> = r
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .map(|x| x.expect("item").0)
        .collect();
    assert_eq!(all.len(), 2500);
    let rev: Vec<_> = r
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, true)
        .expect("range")
        .map(|x| x.expect("item").0)
        .collect();
    assert_eq!(rev.iter().rev().cloned().collect::<Vec<_>>(), all);
    let report = db.check_integrity().expect("check");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys, 2500);
}

#[test]
fn large_values_use_overflow_chains_and_are_freed() {
    // Proves values up to many pages round-trip and their pages return to the free list.
    let (main, wal, clock) = (
        MemStorage::new("main"),
        MemStorage::new("wal"),
        ManualClock::new(1000),
    );
    let db = open_mem(&main, &wal, &clock);
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut tx = db.begin_write().expect("write");
    tx.put(DEFAULT_TABLE, b"big", &big).expect("put");
    tx.commit().expect("commit");
    assert_eq!(
        db.begin_read()
            .get(DEFAULT_TABLE, b"big")
            .expect("get")
            .as_deref(),
        Some(big.as_slice())
    );
    let mut tx = db.begin_write().expect("write");
    tx.put(DEFAULT_TABLE, b"big", b"small").expect("put");
    tx.commit().expect("commit");
    let report = db.check_integrity().expect("check");
    assert!(report.is_ok(), "{report}");
    assert!(report.free_pages >= 240, "{report}");
}

#[test]
fn ttl_hides_expired_keys_and_the_sweeper_deletes_them() {
    // Proves expiry is exact for readers and the sweeper removes keys through a commit.
    let (main, wal, clock) = (
        MemStorage::new("main"),
        MemStorage::new("wal"),
        ManualClock::new(1000),
    );
    let db = open_mem(&main, &wal, &clock);
    let mut tx = db.begin_write().expect("write");
    tx.put_with_expiry(DEFAULT_TABLE, b"a", b"1", Some(2000))
        .expect("put");
    tx.put(DEFAULT_TABLE, b"b", b"2").expect("put");
    tx.commit().expect("commit");
    assert!(
        db.begin_read()
            .get(DEFAULT_TABLE, b"a")
            .expect("get")
            .is_some()
    );
    clock.set(2000);
    assert!(
        db.begin_read()
            .get(DEFAULT_TABLE, b"a")
            .expect("get")
            .is_none()
    );
    assert_eq!(db.sweep_expired(100).expect("sweep"), 1);
    let report = db.check_integrity().expect("check");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keys, 1);
}

#[test]
fn batches_commit_atomically_or_name_the_failed_assertion() {
    // Proves apply() checks assertions and reports the failing one without writing.
    let (main, wal, clock) = (
        MemStorage::new("main"),
        MemStorage::new("wal"),
        ManualClock::new(1000),
    );
    let db = open_mem(&main, &wal, &clock);
    let lsn = db.apply(Batch::new().put("x", "1")).expect("apply");
    let err = db
        .apply(
            Batch::new()
                .assert(Assertion::Absent {
                    table: DEFAULT_TABLE.into(),
                    key: b"x".to_vec(),
                })
                .put("y", "2"),
        )
        .expect_err("assertion must fail");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(
        db.begin_read()
            .get(DEFAULT_TABLE, b"y")
            .expect("get")
            .is_none()
    );
    db.apply(
        Batch::new()
            .assert(Assertion::LastWriteAtMost {
                table: DEFAULT_TABLE.into(),
                key: b"x".to_vec(),
                lsn,
            })
            .put("y", "2")
            .durability(Durability::NoSync),
    )
    .expect("apply");
    assert!(
        db.begin_read()
            .get(DEFAULT_TABLE, b"y")
            .expect("get")
            .is_some()
    );
}

#[test]
fn follower_reproduces_the_image() {
    // Proves commits_since → apply_commit yields a byte-identical image and equal checksum.
    let clock = ManualClock::new(5);
    let primary = open_mem(&MemStorage::new("m1"), &MemStorage::new("w1"), &clock);
    let follower = open_mem(&MemStorage::new("m2"), &MemStorage::new("w2"), &clock);
    for round in 0..20u32 {
        let mut tx = primary.begin_write().expect("write");
        for i in 0..200 {
            tx.put(
                DEFAULT_TABLE,
                &key(i * 7 + round),
                &vec![round as u8; (i as usize * 13) % 3000],
            )
            .expect("put");
        }
        tx.commit().expect("commit");
    }
    for c in primary
        .commits_since(follower.lsn(), usize::MAX)
        .expect("commits")
    {
        follower
            .apply_commit(&c, Durability::NoSync)
            .expect("apply");
    }
    let (a, b) = (primary.begin_read(), follower.begin_read());
    assert_eq!(
        (a.lsn(), a.page_count(), a.checksum()),
        (b.lsn(), b.page_count(), b.checksum())
    );
    for p in 0..a.page_count() {
        let p = hadal_engine::PageNo::new(p);
        assert_eq!(
            a.page_image(p).expect("page"),
            b.page_image(p).expect("page")
        );
    }
}

#[test]
fn values_up_to_64_mib_round_trip_and_larger_ones_are_refused() {
    // Proves the value limit is reachable through overflow chains and enforced with Invalid.
    let (main, wal, clock) = (
        MemStorage::new("main"),
        MemStorage::new("wal"),
        ManualClock::new(1000),
    );
    let db = open_mem(&main, &wal, &clock);
    let max = hadal_format::limits::VALUE_BYTES_MAX;
    let big: Vec<u8> = (0..max).map(|i| (i % 253) as u8).collect();
    let mut tx = db.begin_write().expect("write");
    tx.put(DEFAULT_TABLE, b"max", &big).expect("put 64 MiB");
    let err = tx
        .put(DEFAULT_TABLE, b"too-big", &vec![0u8; max + 1])
        .expect_err("over the limit");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("limit"), "{err}");
    tx.commit().expect("commit");
    let got = db
        .begin_read()
        .get(DEFAULT_TABLE, b"max")
        .expect("get")
        .expect("present");
    assert!(got.as_ref() == big.as_slice());
}

#[test]
fn an_empty_database_stays_empty_under_the_background_thread() {
    // Proves the sweeper never creates the first commit (a follower must receive LSN 1).
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        sweep_interval: Some(std::time::Duration::from_millis(1)),
        ..Options::default()
    };
    let db = Database::open(dir.path(), options).expect("open");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(db.lsn(), hadal_engine::Lsn::ZERO);
}

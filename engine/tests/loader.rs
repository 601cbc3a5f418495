//! The loader (`Database::loader`): a restore builds an empty database's image in one pass from
//! a snapshot and the commits after it, straight into the main file. The result is the
//! primary's image byte for byte and follows on through the WAL; every check of the follower
//! path still holds; nothing is visible or durable before `finish`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hadal_engine::{
    Batch, Commit, DEFAULT_TABLE, Database, Durability, ErrorKind, ImageHeader, Lsn, ManualClock,
    MemStorage, Options, PageNo, ReadTxn, StateChecksum,
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

/// A primary with `n` commits of overwrites, inserts and deletes.
fn primary(clock: &ManualClock, n: u32) -> Database {
    let db = Database::open_storage(
        Arc::new(MemStorage::new("pm")),
        Arc::new(MemStorage::new("pw")),
        options(clock, true),
    )
    .expect("open primary");
    write(clock, &db, 0..n);
    db
}

fn write(clock: &ManualClock, db: &Database, range: std::ops::Range<u32>) {
    for i in range {
        clock.advance(1000);
        let mut batch = Batch::new()
            .put(
                format!("k{:03}", i % 90),
                vec![i as u8; 200 + i as usize * 7],
            )
            .put(format!("n{i:05}"), vec![1; 50]);
        if i % 7 == 0 && i > 0 {
            batch = batch.delete(format!("k{:03}", (i * 11) % 90));
        }
        db.apply(batch).expect("apply");
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

/// The image as runs of up to `run` pages, as snapshot parts arrive.
fn runs(r: &ReadTxn, run: u32) -> Vec<hadal_engine::Result<(PageNo, Bytes)>> {
    (0..r.page_count())
        .step_by(run as usize)
        .map(|first| {
            let mut bytes = Vec::new();
            for p in first..(first + run).min(r.page_count()) {
                bytes.extend_from_slice(&r.page_image(PageNo::new(p)).expect("page"));
            }
            Ok((PageNo::new(first), Bytes::from(bytes)))
        })
        .collect()
}

fn commits(primary: &Database, after: Lsn, upto: u64) -> Vec<Commit> {
    primary
        .commits_since(after, usize::MAX)
        .expect("commits")
        .into_iter()
        .filter(|c| c.lsn.get() <= upto)
        .collect()
}

fn assert_same_pages(a: &ReadTxn, b: &ReadTxn) {
    assert_eq!(
        (a.lsn(), a.page_count(), a.checksum(), a.commit_time_ms()),
        (b.lsn(), b.page_count(), b.checksum(), b.commit_time_ms())
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
fn an_image_and_the_commits_after_it_load_to_the_primarys_image_and_survive_a_reopen() {
    // Proves a loader fed a snapshot at 25 and the commits 26..=60 builds the primary's image
    // at 60 byte for byte, shows readers nothing before `finish`, leaves nothing in the WAL,
    // follows on through `apply_commit`, and reopens at the same image.
    let clock = ManualClock::new(1_000_000);
    let primary = primary(&clock, 25);
    let at25 = primary.begin_read();
    write(&clock, &primary, 25..80);
    let (main, wal) = (MemStorage::new("lm"), MemStorage::new("lw"));
    let db = Database::open_storage(
        Arc::new(main.clone()),
        Arc::new(wal.clone()),
        options(&clock, false),
    )
    .expect("open");
    let mut loader = db.loader().expect("loader");
    loader
        .image(image_of(&at25), runs(&at25, 5))
        .expect("image");
    for c in commits(&primary, Lsn::new(25), 60) {
        loader.commit(&c).expect("commit");
    }
    assert_eq!(loader.lsn(), Lsn::new(60));
    assert_eq!(db.lsn(), Lsn::ZERO, "nothing is published before finish");
    assert_eq!(db.begin_read().page_count(), 0);
    let at60 = {
        let replay = Database::open_storage(
            Arc::new(MemStorage::new("rm")),
            Arc::new(MemStorage::new("rw")),
            options(&clock, false),
        )
        .expect("open");
        for c in commits(&primary, Lsn::ZERO, 60) {
            replay.apply_commit(&c, Durability::Sync).expect("apply");
        }
        replay
    };
    loader.finish().expect("finish");
    assert_eq!(
        loader.finish().expect_err("once").kind(),
        ErrorKind::Invalid
    );
    assert_same_pages(&db.begin_read(), &at60.begin_read());
    assert!(db.check_integrity().expect("check").is_ok());
    assert_eq!(db.info().wal_bytes, 0, "the WAL holds nothing");

    for c in commits(&primary, Lsn::new(60), 80) {
        db.apply_commit(&c, Durability::Sync).expect("follow on");
    }
    assert_same_pages(&db.begin_read(), &primary.begin_read());
    drop(db);
    let reopened = Database::open_storage(Arc::new(main), Arc::new(wal), options(&clock, false))
        .expect("reopen");
    assert_same_pages(&reopened.begin_read(), &primary.begin_read());
    assert_eq!(
        reopened
            .begin_read()
            .get(DEFAULT_TABLE, b"n00079")
            .expect("get")
            .as_deref(),
        Some(&[1u8; 50][..])
    );
}

#[test]
fn commits_load_from_an_empty_start_and_a_compacted_delta_loads_in_place_of_them() {
    // Proves a loader with no image takes the log from its first commit, and that the newest
    // image of every page a run of commits changed (what a compacted run holds) takes the
    // loader to the same image as the commits one by one.
    let clock = ManualClock::new(1_000_000);
    let primary = primary(&clock, 50);
    let head = primary.begin_read();
    let db = Database::open_storage(
        Arc::new(MemStorage::new("m")),
        Arc::new(MemStorage::new("w")),
        options(&clock, false),
    )
    .expect("open");
    let mut loader = db.loader().expect("loader");
    let all = commits(&primary, Lsn::ZERO, 50);
    for c in &all[..20] {
        loader.commit(c).expect("commit");
    }
    let mut newest: BTreeMap<PageNo, Bytes> = BTreeMap::new();
    for c in &all[20..] {
        for (p, b) in &c.pages {
            newest.insert(*p, b.clone());
        }
    }
    let pages: Vec<(PageNo, Bytes)> = newest.into_iter().collect();
    let before = loader.checksum();
    let wrong = loader
        .delta(image_of(&head), StateChecksum::from_raw(5), &pages)
        .expect_err("wrong checksum_before");
    assert_eq!(wrong.kind(), ErrorKind::Corrupt, "{wrong}");
    loader
        .delta(image_of(&head), before, &pages)
        .expect("delta");
    loader.finish().expect("finish");
    assert_same_pages(&db.begin_read(), &head);
}

#[test]
fn bad_commits_are_refused_and_change_nothing() {
    // Proves the loader refuses what the follower path refuses, without writing: a commit out
    // of order, one whose checksum_before or checksum_after is wrong, one with a damaged page;
    // the right commit then applies.
    let clock = ManualClock::new(1_000_000);
    let primary = primary(&clock, 12);
    let db = Database::open_storage(
        Arc::new(MemStorage::new("m")),
        Arc::new(MemStorage::new("w")),
        options(&clock, false),
    )
    .expect("open");
    let mut loader = db.loader().expect("loader");
    let all = commits(&primary, Lsn::ZERO, 12);
    for c in &all[..5] {
        loader.commit(c).expect("commit");
    }
    let next = all[5].clone();
    let kind = |r: hadal_engine::Result<()>| r.expect_err("refused").kind();
    assert_eq!(kind(loader.commit(&all[6])), ErrorKind::Invalid);
    let mut c = next.clone();
    c.checksum_before = StateChecksum::from_raw(1);
    assert_eq!(kind(loader.commit(&c)), ErrorKind::Corrupt);
    let mut c = next.clone();
    c.checksum_after = StateChecksum::from_raw(1);
    assert_eq!(kind(loader.commit(&c)), ErrorKind::Corrupt);
    let mut c = next.clone();
    let mut page = c.pages[0].1.to_vec();
    page[100] ^= 1;
    c.pages[0].1 = Bytes::from(page);
    assert_eq!(kind(loader.commit(&c)), ErrorKind::Corrupt);
    assert_eq!(loader.lsn(), Lsn::new(5));
    for c in &all[5..] {
        loader.commit(c).expect("commit");
    }
    loader.finish().expect("finish");
    assert_same_pages(&db.begin_read(), &primary.begin_read());
}

#[test]
fn a_wrong_image_is_refused_and_a_load_cut_short_leaves_an_empty_database() {
    // Proves an image whose pages do not give its checksum is refused; a loader dropped
    // before `finish` (a failed or crashed restore) leaves an empty database on disk, also
    // after a crash that tears unsynced writes; and a database written to meanwhile, or not
    // empty, refuses the loader.
    let clock = ManualClock::new(1_000_000);
    let primary = primary(&clock, 30);
    let head = primary.begin_read();
    let (main, wal) = (MemStorage::new("m"), MemStorage::new("w"));
    let db = Database::open_storage(
        Arc::new(main.clone()),
        Arc::new(wal.clone()),
        options(&clock, false),
    )
    .expect("open");
    let mut loader = db.loader().expect("loader");
    let wrong = ImageHeader {
        checksum: StateChecksum::from_raw(3),
        ..image_of(&head)
    };
    assert_eq!(
        loader
            .image(wrong, runs(&head, 4))
            .expect_err("wrong")
            .kind(),
        ErrorKind::Corrupt
    );
    loader
        .image(image_of(&head), runs(&head, 4))
        .expect("image");
    drop(loader);
    drop(db);
    let mut rng = StdRng::seed_from_u64(7);
    main.crash(&mut rng, 0.5);
    wal.crash(&mut rng, 0.5);
    let db = Database::open_storage(
        Arc::new(main.clone()),
        Arc::new(wal.clone()),
        options(&clock, false),
    )
    .expect("reopen");
    assert_eq!((db.lsn(), db.begin_read().page_count()), (Lsn::ZERO, 0));

    let mut loader = db.loader().expect("loader");
    loader
        .image(image_of(&head), runs(&head, 64))
        .expect("image");
    db.apply(Batch::new().put("local", "write"))
        .expect("a local write");
    assert_eq!(
        loader.finish().expect_err("written meanwhile").kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        db.loader().expect_err("not empty").kind(),
        ErrorKind::Invalid
    );
}

//! The embedded facade `hadal::Database`, in process, on `file://` buckets in temporary folders:
//! local-only use, each durability mode, the output gate (`handle.durable()`), scans, batches
//! with assertions, the folder's bucket binding, reopening a folder that is behind or ahead of
//! its bucket, recovery of a diverged folder, and two databases racing on one bucket.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hadal::{Assertion, Batch, Database, Durability, ErrorKind, Options, Scan};

fn bucket_url(root: &Path, name: &str) -> String {
    format!("file://{}", root.join(name).display())
}

fn options(dir: &Path, url: Option<&str>, durability: Durability) -> Options {
    let mut o = Options::new(dir).durability(durability);
    o.bucket_url = url.map(str::to_owned);
    o.interval = Duration::from_millis(50);
    o.manifest_poll = Duration::from_millis(100);
    o
}

/// Opens, retrying while a dropped database's shipper task still holds the folder (a real
/// restarted process would not see that).
async fn open_retrying(o: Options) -> hadal::Result<Database> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Database::open(o.clone()).await {
            Err(e) if e.kind() == ErrorKind::Busy && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => return other,
        }
    }
}

/// Restores the bucket's head into a new folder and returns its contents.
async fn restored(url: &str, out: &Path) -> Vec<(String, String)> {
    let bucket = hadal_transports::open(url).await.expect("open bucket");
    hadal_replica::restore(bucket, out, hadal_replica::Target::Head, None)
        .await
        .expect("restore verifies the chain");
    let db = Database::open(Options::new(out).read_only(true))
        .await
        .expect("open restored");
    let all = db
        .scan(Scan::all())
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.to_vec()).expect("utf8"),
                String::from_utf8(v.to_vec()).expect("utf8"),
            )
        })
        .collect();
    db.close().await.expect("close");
    all
}

fn keys(pairs: &[(String, String)]) -> Vec<&str> {
    pairs.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_only_database_reads_writes_scans_and_reopens() {
    // Proves the local-only facade: writes are durable at the local commit, scans honour
    // prefix, range, reverse, limit and paging, a failed assertion writes nothing, TTLs hide
    // keys, close refuses later calls, and a reopen sees everything.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("db");
    let db = Database::open(Options::new(&data)).await.expect("open");
    assert_eq!(db.epoch(), None);
    for (k, v) in [("a1", "x"), ("a2", "y"), ("b1", "z"), ("c1", "w")] {
        let h = db.put(k, v).await.expect("put");
        h.durable().await.expect("durable at once");
        assert_eq!(db.lsn_durable(), h.lsn);
    }
    assert_eq!(db.get("a2").await.expect("get").as_deref(), Some(&b"y"[..]));
    let prefix = db.scan(Scan::prefix("a")).await.expect("scan");
    assert_eq!(prefix.len(), 2);
    let reverse = db.scan(Scan::all().reverse().limit(2)).await.expect("scan");
    assert_eq!(&reverse[0].0[..], b"c1");
    assert_eq!(&reverse[1].0[..], b"b1");
    let page2 = db
        .scan(Scan::all().limit(2).resume_after(b"a2"))
        .await
        .expect("scan");
    assert_eq!(&page2[0].0[..], b"b1");
    assert_eq!(&page2[1].0[..], b"c1");
    let range = db
        .scan(Scan::range(
            Bound::Excluded(b"a1".to_vec()),
            Bound::Included(b"b1".to_vec()),
        ))
        .await
        .expect("scan");
    assert_eq!(range.len(), 2);
    let before = db.lsn();
    let err = db
        .apply(
            Batch::new()
                .assert(Assertion::Absent {
                    table: hadal::DEFAULT_TABLE.into(),
                    key: b"a1".to_vec(),
                })
                .put("a1", "overwritten"),
        )
        .await
        .expect_err("a1 exists");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(db.lsn(), before, "a failed assertion commits nothing");
    assert_eq!(db.get("a1").await.expect("get").as_deref(), Some(&b"x"[..]));
    db.delete("b1").await.expect("delete");
    assert_eq!(db.get("b1").await.expect("get"), None);
    db.put_with_ttl("gone", "soon", Duration::from_millis(1))
        .await
        .expect("ttl put");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(db.get("gone").await.expect("get"), None, "expired");
    let head = db.lsn();
    db.close().await.expect("close");
    assert_eq!(db.lsn(), head);
    let err = db.put("late", "x").await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    let db = Database::open(Options::new(&data)).await.expect("reopen");
    assert_eq!(db.lsn(), head);
    assert_eq!(db.get("c1").await.expect("get").as_deref(), Some(&b"w"[..]));
    db.close().await.expect("close");
}

/// Writes through a bucket in `mode` and checks what that mode promises.
async fn exercise_mode(mode: Durability) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = bucket_url(dir.path(), "bucket");
    let mut o = options(&dir.path().join("db"), Some(&url), mode);
    if mode != Durability::Strict {
        // Long enough that only `close` can ship.
        o.interval = Duration::from_secs(3600);
    }
    let db = Database::open(o).await.expect("open");
    assert!(db.epoch().is_some());
    let mut handles = Vec::new();
    for i in 0..20 {
        handles.push(
            db.put(format!("k{i:02}"), format!("v{i}"))
                .await
                .expect("put"),
        );
    }
    let last = handles.last().expect("handles").clone();
    match mode {
        Durability::Strict => {
            for h in &handles {
                h.durable().await.expect("durable");
            }
            assert!(db.lsn_durable() >= last.lsn);
            let m = db.shipper_metrics().expect("metrics");
            assert!(m.commits_shipped >= 20, "{m:?}");
        }
        Durability::Local | Durability::Async => {
            let waited = tokio::time::timeout(Duration::from_millis(300), last.durable()).await;
            assert!(
                waited.is_err(),
                "{mode:?}: nothing ships before the interval"
            );
            assert!(db.lsn_durable() < last.lsn);
        }
    }
    db.close().await.expect("close ships everything");
    last.durable()
        .await
        .expect("durable after close in every mode");
    assert!(db.lsn_durable() >= last.lsn);
    let got = restored(&url, &dir.path().join("out")).await;
    assert_eq!(got.len(), 20, "{mode:?}");
    assert!(got.contains(&("k07".into(), "v7".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_handles_resolve_when_the_bucket_holds_the_commit() {
    // Proves strict mode: handles resolve as segments land; everything restores.
    exercise_mode(Durability::Strict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_ships_on_its_interval_or_at_close() {
    // Proves local mode holds commits until the interval (or close) and then ships them all.
    exercise_mode(Durability::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_ships_on_its_interval_or_at_close() {
    // Proves async mode holds commits until the interval (or close) and then ships them all.
    exercise_mode(Durability::Async).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_folder_refuses_writes_without_its_bucket_and_other_buckets() {
    // Proves the binding: after a bucket write, the folder names its bucket; opening it for
    // writes without that bucket, or with another, fails naming the bound bucket; reads work.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = bucket_url(dir.path(), "bucket");
    let other = bucket_url(dir.path(), "other");
    let data = dir.path().join("db");
    let db = Database::open(options(&data, Some(&url), Durability::Strict))
        .await
        .expect("open");
    db.put("k", "v")
        .await
        .expect("put")
        .durable()
        .await
        .expect("durable");
    db.close().await.expect("close");
    let recorded = std::fs::read_to_string(data.join(hadal::BINDING_FILE_NAME)).expect("binding");
    assert!(
        recorded.starts_with("file:///") && recorded.trim_end().ends_with("/bucket"),
        "{recorded}"
    );

    let err = Database::open(options(&data, None, Durability::Strict))
        .await
        .expect_err("bound");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains(&url), "{err}");
    let err = Database::open(options(&data, Some(&other), Durability::Strict))
        .await
        .expect_err("other bucket");
    assert!(
        err.to_string().contains(&url) && err.to_string().contains(&other),
        "{err}"
    );
    let err = Database::open(options(&data, Some(&other), Durability::Strict).read_only(true))
        .await
        .expect_err("other bucket, even to read");
    assert!(err.to_string().contains(&other), "{err}");

    let reader = Database::open(options(&data, None, Durability::Strict).read_only(true))
        .await
        .expect("read-only");
    assert_eq!(
        reader.get("k").await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
    let err = reader.put("k", "w").await.expect_err("read-only");
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert!(err.to_string().contains(&url), "{err}");
    reader.close().await.expect("close");

    // A relative file URL naming the same folder is the same bucket.
    let relative = format!(
        "file://./{}",
        pathdiff(
            &dir.path().join("bucket"),
            &std::env::current_dir().expect("cwd")
        )
    );
    let db = Database::open(options(&data, Some(&relative), Durability::Strict))
        .await
        .expect("same bucket, relative URL");
    db.close().await.expect("close");
}

/// `path` relative to `base` (both absolute), with `..` steps.
fn pathdiff(path: &Path, base: &Path) -> String {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_folder_with_another_history_is_refused_and_left_unbound() {
    // Proves a local-only database is never set aside by binding it to a bucket that holds a
    // different database: the open fails, names both, and the folder stays unbound and intact.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = bucket_url(dir.path(), "bucket");
    let shipped = Database::open(options(
        &dir.path().join("a"),
        Some(&url),
        Durability::Strict,
    ))
    .await
    .expect("open a");
    for i in 0..3 {
        shipped.put(format!("a{i}"), "a").await.expect("put");
    }
    shipped.close().await.expect("close");
    let local = dir.path().join("local");
    let db = Database::open(Options::new(&local)).await.expect("local");
    for i in 0..5 {
        db.put(format!("l{i}"), "l").await.expect("put");
    }
    db.close().await.expect("close");
    let err = Database::open(options(&local, Some(&url), Durability::Strict))
        .await
        .expect_err("foreign history");
    assert!(
        matches!(err, hadal::Error::ForeignHistory { .. }),
        "{err:?}"
    );
    assert!(!local.join(hadal::BINDING_FILE_NAME).exists());
    let db = Database::open(Options::new(&local))
        .await
        .expect("still local");
    assert_eq!(db.get("l4").await.expect("get").as_deref(), Some(&b"l"[..]));
    db.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_open_leaves_the_folder_unbound() {
    // Proves a binding is undone when the first open with a bucket fails (here: the bucket's
    // database uses another page size), so the folder is not bound to a bucket it never
    // shipped to, and the failure names the cause.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = bucket_url(dir.path(), "bucket");
    let db = Database::open(options(
        &dir.path().join("a"),
        Some(&url),
        Durability::Strict,
    ))
    .await
    .expect("a");
    db.put("k", "v").await.expect("put");
    db.close().await.expect("close");
    let other = dir.path().join("other");
    let mut o = options(&other, Some(&url), Durability::Strict);
    o.engine.page_size = 8192;
    let err = Database::open(o).await.expect_err("page size mismatch");
    assert!(err.to_string().contains("8192"), "{err}");
    assert!(!other.join(hadal::BINDING_FILE_NAME).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_folder_catches_up_when_behind_and_ships_when_ahead() {
    // Proves close-then-reopen continues: a folder behind the bucket (another folder wrote
    // meanwhile) catches up; a folder ahead (it crashed before shipping) ships its commits.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = bucket_url(dir.path(), "bucket");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let db = Database::open(options(&a, Some(&url), Durability::Strict))
        .await
        .expect("a");
    for i in 0..5 {
        db.put(format!("a{i}"), "a").await.expect("put");
    }
    db.close().await.expect("close a");
    let db = Database::open(options(&b, Some(&url), Durability::Strict))
        .await
        .expect("b");
    for i in 0..5 {
        db.put(format!("b{i}"), "b").await.expect("put");
    }
    let epoch_b = db.epoch().expect("epoch");
    db.close().await.expect("close b");

    // Behind: `a` catches up with b's commits and continues after them.
    let db = Database::open(options(&a, Some(&url), Durability::Strict))
        .await
        .expect("a again");
    assert!(db.epoch().expect("epoch") > epoch_b);
    assert_eq!(db.get("b4").await.expect("get").as_deref(), Some(&b"b"[..]));
    assert_eq!(db.lsn().get(), 10);
    let h = db.put("a5", "a").await.expect("put");
    assert_eq!(h.lsn.get(), 11);
    h.durable().await.expect("durable");

    // Ahead: async commits with an hour-long interval, then a crash (drop without close).
    db.close().await.expect("close");
    let mut slow = options(&a, Some(&url), Durability::Async);
    slow.interval = Duration::from_secs(3600);
    let db = Database::open(slow).await.expect("a async");
    for i in 0..4 {
        db.put(format!("unshipped{i}"), "u").await.expect("put");
    }
    let head = db.lsn();
    assert!(db.lsn_durable() < head);
    drop(db);
    let db = open_retrying(options(&a, Some(&url), Durability::Strict))
        .await
        .expect("a strict");
    assert_eq!(db.lsn(), head);
    db.put("after", "x")
        .await
        .expect("put")
        .durable()
        .await
        .expect("the unshipped commits ship after the fence, then this one");
    db.close().await.expect("close");
    let got = restored(&url, &dir.path().join("out")).await;
    assert_eq!(got.len(), 16, "{:?}", keys(&got));
    assert!(keys(&got).contains(&"unshipped3"));
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_folder_is_set_aside_logged_and_restored_from_the_bucket() {
    // Proves the diverged path: a folder whose unshipped commits lost to another writer is
    // renamed to DIR.diverged-<secs> (kept, not deleted), an error log names the discarded LSN
    // range and that folder, and DIR is restored from the bucket and keeps writing.
    let log = Capture(Arc::new(Mutex::new(Vec::new())));
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let url = bucket_url(dir.path(), "bucket");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let db = Database::open(options(&a, Some(&url), Durability::Strict))
        .await
        .expect("a");
    for i in 0..3 {
        db.put(format!("shared{i}"), "s").await.expect("put");
    }
    db.close().await.expect("close");
    let mut slow = options(&a, Some(&url), Durability::Async);
    slow.interval = Duration::from_secs(3600);
    let db = Database::open(slow).await.expect("a async");
    for i in 0..4 {
        db.put(format!("lost{i}"), "l").await.expect("put");
    }
    assert_eq!(db.lsn().get(), 7);
    drop(db);
    let other = open_retrying(options(&b, Some(&url), Durability::Strict))
        .await
        .expect("b");
    for i in 0..2 {
        other
            .put(format!("b{i}"), "b")
            .await
            .expect("put")
            .durable()
            .await
            .expect("durable");
    }
    other.close().await.expect("close b");

    let db = open_retrying(options(&a, Some(&url), Durability::Strict))
        .await
        .expect("a recovers by restoring from the bucket");
    assert_eq!(db.lsn().get(), 5);
    assert_eq!(db.get("b1").await.expect("get").as_deref(), Some(&b"b"[..]));
    assert_eq!(db.get("lost0").await.expect("get"), None);
    db.put("c", "c")
        .await
        .expect("put")
        .durable()
        .await
        .expect("durable");
    db.close().await.expect("close");
    assert!(a.join(hadal::BINDING_FILE_NAME).exists(), "still bound");

    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("a.diverged-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = Database::open(Options::new(&aside[0]).read_only(true))
        .await
        .expect("the old folder is kept intact");
    assert_eq!(
        kept.get("lost3").await.expect("get").as_deref(),
        Some(&b"l"[..])
    );
    kept.close().await.expect("close");

    let text = String::from_utf8(log.0.lock().expect("log").clone()).expect("utf8");
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("diverged"), "{text}");
    assert!(
        text.contains(&aside[0].display().to_string()),
        "names the kept folder: {text}"
    );
    assert!(text.contains("4..=7"), "names the discarded range: {text}");
    let got = restored(&url, &dir.path().join("out")).await;
    assert_eq!(
        keys(&got),
        ["b0", "b1", "c", "shared0", "shared1", "shared2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_on_one_bucket_the_first_is_fenced_and_no_ack_is_lost() {
    // Proves fencing through the facade: while A commits with pipelined handles, B opens on
    // the same bucket; A's later writes are refused with Fenced, none of A's handles resolves
    // after the fence, and every write either acknowledged is in the restored bucket.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = bucket_url(dir.path(), "bucket");
    let a = Database::open(options(
        &dir.path().join("a"),
        Some(&url),
        Durability::Strict,
    ))
    .await
    .expect("a");
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut pending = std::collections::VecDeque::new();
            let mut i = 0u64;
            let refusal = loop {
                match a.put(format!("a{i:06}"), format!("va{i}")).await {
                    Ok(h) => pending.push_back((h, i)),
                    Err(e) => break e,
                }
                i += 1;
                while pending.len() > 32 {
                    let (h, n): (hadal::WriteHandle, u64) = pending.pop_front().expect("non-empty");
                    if h.durable().await.is_ok() {
                        acked.push((h.lsn, n));
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let mut failed = 0;
            for (h, n) in pending {
                match h.durable().await {
                    Ok(()) => acked.push((h.lsn, n)),
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
                        failed += 1;
                    }
                }
            }
            (acked, refusal, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = Database::open(options(
        &dir.path().join("b"),
        Some(&url),
        Durability::Strict,
    ))
    .await
    .expect("b takes over");
    let fence_lsn = b.lsn();
    let (acked_a, refusal, _) = writer.await.expect("writer");
    assert_eq!(refusal.kind(), ErrorKind::Fenced, "{refusal}");
    assert!(a.stopped().is_some());
    assert!(acked_a.len() > 10, "A acknowledged {}", acked_a.len());
    assert!(
        acked_a.iter().all(|(lsn, _)| *lsn <= fence_lsn),
        "A acknowledged a commit after B's fence at {fence_lsn:?}"
    );
    let err = a.close().await.expect_err("A could not ship its tail");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    let mut acked_b = Vec::new();
    for i in 0..20 {
        let h = b
            .put(format!("b{i:06}"), format!("vb{i}"))
            .await
            .expect("put");
        h.durable().await.expect("durable");
        acked_b.push(h.lsn);
    }
    assert!(acked_b[0] > fence_lsn);
    b.close().await.expect("close b");
    let got = restored(&url, &dir.path().join("out")).await;
    for (_, n) in &acked_a {
        assert!(
            got.contains(&(format!("a{n:06}"), format!("va{n}"))),
            "acknowledged a{n:06} is missing"
        );
    }
    for i in 0..20 {
        assert!(got.contains(&(format!("b{i:06}"), format!("vb{i}"))));
    }
}

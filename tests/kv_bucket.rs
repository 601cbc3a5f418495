//! `hadal kv --bucket` run as a user would, as real processes on `file://` buckets: writes ship
//! to the bucket and restore elsewhere; the folder's binding refuses bucket-less writes and
//! other buckets; `import` pipelines commits and acknowledges them only when durable; and two
//! importing processes on one bucket fence each other without losing an acknowledged write.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn hadal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hadal"))
        .args(args)
        .env_remove("HADAL_DATA")
        .env_remove("HADAL_BUCKET")
        .output()
        .expect("run hadal")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Restores the bucket's head with `hadal restore` and reads every key with the engine:
/// key → (value, lsn of its last write).
fn restore_all(url: &str, out: &Path) -> BTreeMap<String, (String, u64)> {
    let o = hadal(&["restore", "--bucket", url, "--out", path(out)]);
    assert!(o.status.success(), "restore: {}", text(&o.stderr));
    let db = hadal_engine::Database::open(out, hadal_engine::Options::default()).expect("open");
    db.begin_read()
        .range(
            hadal_engine::DEFAULT_TABLE,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            false,
        )
        .expect("range")
        .map(|item| {
            let (k, e) = item.expect("item");
            (text(&k), (text(&e.value), e.lsn.get()))
        })
        .collect()
}

#[test]
fn kv_with_a_bucket_round_trips_restores_and_guards_its_binding() {
    // Proves kv --bucket writes land in the bucket (a restore elsewhere reads them), the bound
    // folder refuses a bucket-less write naming the bucket and the flag, reads work without the
    // bucket, another bucket is refused, and every durability mode writes.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("bucket").display());
    let other = format!("file://{}", dir.path().join("other").display());
    let data = dir.path().join("db");
    let kv = |extra: &[&str]| {
        let mut args = vec!["kv", "--data", path(&data)];
        args.extend_from_slice(extra);
        hadal(&args)
    };
    for (k, v) in [
        ("apple", "red"),
        ("banana", "yellow"),
        ("cherry", "dark red"),
    ] {
        let o = kv(&["--bucket", &url, "put", k, v]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains(&url), "{}", text(&o.stderr));
    }
    let o = kv(&["--bucket", &url, "get", "banana"]);
    assert_eq!(text(&o.stdout), "yellow", "{}", text(&o.stderr));
    let o = kv(&[
        "--bucket",
        &url,
        "--durability",
        "local",
        "put",
        "date",
        "brown",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = kv(&["--bucket", &url, "--durability", "async", "del", "apple"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = kv(&["--bucket", &url, "del", "apple"]);
    assert_eq!(o.status.code(), Some(1), "deleting a missing key");
    let o = kv(&[
        "--bucket",
        &url,
        "--durability",
        "sometimes",
        "put",
        "k",
        "v",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("strict, local or async"),
        "{}",
        text(&o.stderr)
    );

    let copy = dir.path().join("copy");
    let o = hadal(&["restore", "--bucket", &url, "--out", path(&copy)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = hadal(&["kv", "--data", path(&copy), "get", "cherry"]);
    assert_eq!(text(&o.stdout), "dark red", "{}", text(&o.stderr));
    let o = hadal(&["kv", "--data", path(&copy), "scan"]);
    assert_eq!(
        text(&o.stdout),
        "banana\tyellow\ncherry\tdark red\ndate\tbrown\n"
    );

    let o = kv(&["put", "fig", "purple"]);
    assert!(!o.status.success(), "a bucket-less write must be refused");
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("--bucket {url}")) && err.contains("bound to bucket"),
        "{err}"
    );
    let o = kv(&["get", "banana"]);
    assert_eq!(
        text(&o.stdout),
        "yellow",
        "reads work without the bucket: {}",
        text(&o.stderr)
    );
    let o = kv(&["--bucket", &other, "put", "fig", "purple"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains(&url) && err.contains(&other), "{err}");
    let o = kv(&["get", "fig"]);
    assert_eq!(o.status.code(), Some(1), "no refused write landed");
}

#[test]
fn import_acknowledges_every_line_in_order_and_stops_at_a_bad_line() {
    // Proves `import FILE --print-acks` commits one transaction per line, prints one ack per
    // line in LSN order once durable, and that a malformed line stops the import with its
    // number while the lines before it are still acknowledged and restorable.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("bucket").display());
    let data = dir.path().join("db");
    let input = dir.path().join("lines.tsv");
    let lines: String = (0..300)
        .map(|i| format!("key{i:04}\tvalue {i}\twith tab\n"))
        .collect();
    std::fs::write(&input, &lines).expect("write input");
    let o = hadal(&[
        "kv",
        "--data",
        path(&data),
        "--bucket",
        &url,
        "import",
        path(&input),
        "--print-acks",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let acks: Vec<(u64, String)> = text(&o.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            assert_eq!(f.next(), Some("ack"), "{l}");
            let lsn = f.next().expect("lsn").parse().expect("number");
            (lsn, f.next().expect("key").to_owned())
        })
        .collect();
    assert_eq!(acks.len(), 300);
    assert!(
        acks.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "one commit per line, in order"
    );
    let restored = restore_all(&url, &dir.path().join("out"));
    for (lsn, key) in &acks {
        let (value, written) = &restored[key];
        assert_eq!(written, lsn, "{key}");
        assert!(value.ends_with("\twith tab"), "{value:?}");
    }

    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "more1\tx\nmore2\tx\nno tab on line three\nmore4\tx\n").expect("write");
    let o = hadal(&[
        "kv",
        "--data",
        path(&data),
        "--bucket",
        &url,
        "import",
        path(&bad),
        "--print-acks",
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("line 3"), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 2, "{}", text(&o.stdout));
    let restored = restore_all(&url, &dir.path().join("out2"));
    assert!(restored.contains_key("more2") && !restored.contains_key("more4"));
}

/// One `hadal kv import - --print-acks` process fed a stream of distinct keys.
struct Importer {
    child: Child,
    acks: Arc<Mutex<Vec<(u64, String)>>>,
    ack_count: Arc<AtomicUsize>,
    stop_feeding: Arc<AtomicBool>,
    feeder: JoinHandle<usize>,
    reader: JoinHandle<()>,
    stderr: JoinHandle<String>,
}

fn value_of(key: &str) -> String {
    format!("value-of-{key}")
}

impl Importer {
    /// Starts the process and a feeder writing `name-NNNNNN<TAB>value` lines, paced, until
    /// `lines` are written (then stdin closes) or the process stops reading.
    fn start(data: &Path, url: &str, name: &str, lines: Option<usize>) -> Importer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hadal"))
            .args([
                "kv",
                "--data",
                path(data),
                "--bucket",
                url,
                "import",
                "-",
                "--print-acks",
            ])
            .env_remove("HADAL_DATA")
            .env_remove("HADAL_BUCKET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hadal");
        let mut stdin = child.stdin.take().expect("stdin");
        let stop_feeding = Arc::new(AtomicBool::new(false));
        let stop = stop_feeding.clone();
        let name = name.to_owned();
        let feeder = std::thread::spawn(move || {
            let mut written = 0;
            while !stop.load(Ordering::SeqCst) && lines.is_none_or(|n| written < n) {
                let key = format!("{name}-{written:06}");
                if writeln!(stdin, "{key}\t{}", value_of(&key))
                    .and_then(|()| stdin.flush())
                    .is_err()
                {
                    break;
                }
                written += 1;
                if written % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            written
        });
        let acks = Arc::new(Mutex::new(Vec::new()));
        let ack_count = Arc::new(AtomicUsize::new(0));
        let stdout = child.stdout.take().expect("stdout");
        let (sink, count) = (acks.clone(), ack_count.clone());
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.expect("stdout line");
                let mut f = line.split('\t');
                assert_eq!(f.next(), Some("ack"), "{line}");
                let lsn: u64 = f.next().expect("lsn").parse().expect("lsn number");
                let key = f.next().expect("key").to_owned();
                sink.lock().expect("acks").push((lsn, key));
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Importer {
            child,
            acks,
            ack_count,
            stop_feeding,
            feeder,
            reader,
            stderr,
        }
    }

    fn wait_for_acks(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.ack_count.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} acks in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit (bounded), then returns (success, stderr, acks, lines fed).
    fn finish(mut self, within: Duration) -> (bool, String, Vec<(u64, String)>, usize) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("hadal import did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stop_feeding.store(true, Ordering::SeqCst);
        let fed = self.feeder.join().expect("feeder");
        self.reader.join().expect("reader");
        let stderr = self.stderr.join().expect("stderr");
        let acks = self.acks.lock().expect("acks").clone();
        (status.success(), stderr, acks, fed)
    }
}

#[test]
fn two_importing_processes_on_one_bucket_fence_without_losing_an_ack() {
    // Proves issue 4's two-process fencing: while process A streams writes into a bucket,
    // process B (another folder) takes the bucket over. A stops with a fenced error and prints
    // no ack after B's fence (all its acks precede B's); B finishes its input; a restore
    // (which verifies slots, epochs and the hash chain) holds every key either acknowledged,
    // with its value, written at the acknowledged LSN. Repeated with different timings, on
    // one bucket, so later rounds also take over from a writer that closed cleanly.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("bucket").display());
    for (round, delay_ms) in [0u64, 150, 700].into_iter().enumerate() {
        let a = Importer::start(
            &dir.path().join(format!("a{round}")),
            &url,
            &format!("a{round}"),
            None,
        );
        a.wait_for_acks(20, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(delay_ms));
        let b_lines = 400;
        let b = Importer::start(
            &dir.path().join(format!("b{round}")),
            &url,
            &format!("b{round}"),
            Some(b_lines),
        );
        let (a_ok, a_err, a_acks, a_fed) = a.finish(Duration::from_secs(120));
        let (b_ok, b_err, b_acks, _) = b.finish(Duration::from_secs(120));
        assert!(!a_ok, "round {round}: A must stop when fenced");
        let a_error = a_err
            .lines()
            .find(|l| l.starts_with("hadal: error:"))
            .unwrap_or_else(|| panic!("round {round}: A printed no error: {a_err}"));
        assert!(
            a_error.contains("fenced") && a_error.contains("import stopped"),
            "round {round}: {a_error}"
        );
        if round == 0 {
            eprintln!("A's error: {a_error}");
        }
        assert!(b_ok, "round {round}: B failed: {b_err}");
        assert_eq!(
            b_acks.len(),
            b_lines,
            "round {round}: B acknowledges all its input"
        );
        assert!(a_acks.len() >= 20, "round {round}");
        assert!(
            a_fed > a_acks.len(),
            "round {round}: A was still being fed when fenced ({a_fed} fed, {} acked)",
            a_acks.len()
        );
        let a_last = a_acks.iter().map(|(l, _)| *l).max().expect("A acked");
        let b_first = b_acks.iter().map(|(l, _)| *l).min().expect("B acked");
        assert!(
            a_last < b_first,
            "round {round}: A acknowledged lsn {a_last} at or after B's first commit {b_first}"
        );
        let restored = restore_all(&url, &dir.path().join(format!("restored{round}")));
        for (lsn, key) in a_acks.iter().chain(&b_acks) {
            let Some((value, written)) = restored.get(key) else {
                panic!("round {round}: acknowledged {key} (lsn {lsn}) is missing after restore");
            };
            assert_eq!(value, &value_of(key), "round {round}: {key}");
            assert_eq!(
                written, lsn,
                "round {round}: {key} was acknowledged at another lsn"
            );
        }
        eprintln!(
            "round {round}: A acked {} of {a_fed} fed, B acked {}; restored {} keys",
            a_acks.len(),
            b_acks.len(),
            restored.len()
        );
    }
}

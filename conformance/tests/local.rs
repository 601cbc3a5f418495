//! The contract suite against the two local transports (`memory://`, `file://`) and against
//! the deliberately broken buckets, whose failures are what prove the suite has teeth.

use std::sync::Arc;

use hadal_conformance::{BrokenBucket, Flaw, SuiteOptions, SuiteReport, bucket_check, run_suite};
use hadal_transports::{DynBucket, ErrorKind, FileBucket, MemoryBucket, Nonce, open, self_test};

fn assert_all_passed(report: &SuiteReport) {
    println!("{report}");
    assert!(report.passed(), "contract suite failed:\n{report}");
    assert_eq!(report.cases.len(), hadal_conformance::CASES.len());
}

// Proves the in-memory bucket honours the whole contract at full size (32 racers × 20 rounds,
// 16 MiB objects, 1,050 keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_passes_the_contract() {
    let factory = |case: &'static str| async move {
        Ok(Arc::new(MemoryBucket::named(&format!(
            "suite-{case}-{}",
            Nonce::random()
        ))) as DynBucket)
    };
    assert_all_passed(&run_suite(factory, &SuiteOptions::full()).await);
}

// Proves the local-folder bucket honours the whole contract, including cross-task races that
// go through link(2) and flock, at full size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_passes_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let factory = move |case: &'static str| {
        let root = root.join(case);
        async move { Ok(Arc::new(FileBucket::open(root)?) as DynBucket) }
    };
    assert_all_passed(&run_suite(factory, &SuiteOptions::full()).await);
}

// Proves file:// URLs open a bucket that keeps its objects across reopen (the folder is the
// store) and that memory:// names are shared within a process.
#[tokio::test]
async fn urls_open_shared_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("b").display());
    let first = open(&url).await.expect("open file");
    first
        .put("k", bytes::Bytes::from_static(b"v"))
        .await
        .expect("put");
    let second = open(&url).await.expect("reopen file");
    assert_eq!(
        second
            .get("k")
            .await
            .expect("get")
            .expect("present")
            .bytes
            .as_ref(),
        b"v"
    );

    let a = open("memory://shared-test").await.expect("open memory");
    a.put("k", bytes::Bytes::from_static(b"m"))
        .await
        .expect("put");
    let b = open("memory://shared-test")
        .await
        .expect("open memory again");
    assert!(b.get("k").await.expect("get").is_some());
}

// Proves the race cases have teeth: a bucket that checks, yields, then writes without a lock
// lets several racers win, and the suite says so — while the sequential cases still pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racy_bucket_fails_the_race_cases() {
    let factory = |_: &'static str| async {
        Ok(Arc::new(BrokenBucket::new(Flaw::RacyCheckThenWrite)) as DynBucket)
    };
    let options = SuiteOptions::full().only(&[
        "create-if-absent",
        "compare-and-swap",
        "race-create",
        "race-swap",
    ]);
    let report = run_suite(factory, &options).await;
    println!("{report}");
    for sequential in ["create-if-absent", "compare-and-swap"] {
        assert!(
            report.case(sequential).expect("ran").passed,
            "{sequential} should pass alone:\n{report}"
        );
    }
    for race in ["race-create", "race-swap"] {
        let case = report.case(race).expect("ran");
        assert!(
            !case.passed,
            "{race} passed against a racy bucket:\n{report}"
        );
        assert!(case.detail.contains("racers won"), "{}", case.detail);
    }
}

// Proves a store that ignores preconditions fails the suite's create and swap cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precondition_ignoring_bucket_fails_the_suite() {
    let factory = |_: &'static str| async {
        Ok(Arc::new(BrokenBucket::new(Flaw::IgnoresPreconditions)) as DynBucket)
    };
    let report = run_suite(factory, &SuiteOptions::smoke()).await;
    println!("{report}");
    for case in [
        "create-if-absent",
        "compare-and-swap",
        "race-create",
        "race-swap",
    ] {
        assert!(
            !report.case(case).expect("ran").passed,
            "{case} passed:\n{report}"
        );
    }
}

// Proves the self-test refuses a store that ignores preconditions, naming the store and the
// failed primitive, and that `bucket check` reports the refusal without running the smoke.
#[tokio::test]
async fn self_test_refuses_a_broken_store_by_name() {
    let broken = BrokenBucket::new(Flaw::IgnoresPreconditions);
    let err = self_test(&broken)
        .await
        .expect_err("a broken store must be refused");
    assert_eq!(err.kind(), ErrorKind::Fatal);
    let message = err.to_string();
    assert!(
        message.contains("broken://IgnoresPreconditions"),
        "{message}"
    );
    assert!(message.contains("create-if-absent is broken"), "{message}");

    let report = bucket_check(Arc::new(broken), &SuiteOptions::smoke()).await;
    let table = report.to_string();
    println!("{table}");
    assert!(!report.passed());
    assert!(
        table.contains("REFUSED") && table.contains("create-if-absent"),
        "{table}"
    );
    assert!(
        report.rows.iter().all(|r| r.stage == "self-test"),
        "{table}"
    );
}

// Proves `bucket check` passes a correct store, prints every contract case, and leaves no
// scratch keys behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_check_passes_a_good_store_and_cleans_up() {
    let bucket = MemoryBucket::new();
    let report = bucket_check(Arc::new(bucket.clone()), &SuiteOptions::smoke()).await;
    let table = report.to_string();
    println!("{table}");
    assert!(report.passed(), "{table}");
    assert!(
        table.contains("race-create") && table.starts_with("bucket check: memory://"),
        "{table}"
    );
    assert_eq!(bucket.object_count(), 0, "scratch keys left behind");
}

//! What a strict-mode acknowledgement means, checked at the store itself:
//!
//! 1. Under injected faults (responses lost after the write applied, writes applied late after
//!    the client gave up, 409 ConditionalRequestConflict and 503 bursts, phantom 404s), every
//!    acknowledged commit's segment had been confirmed by the store *before* the commit was
//!    acknowledged, is readable there, and survives into a restore of the head.
//! 2. Concurrent committers share segments (group commit: fewer segments than commits) while the
//!    shipper never has more than one segment create in flight.
//!
//! Both run on `memory://` and on moto (the faults layered over the real server). Each check
//! has a negative control proving it can fail. Reproduce a fault run with
//! `HADAL_FAULT_SEED=<seed>` (printed at the start).

mod observed;
// Only the moto store is used here; the other stores serve `ship_restore.rs`.
#[allow(dead_code)]
mod stores;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hadal_engine::{Batch, DEFAULT_TABLE, Database, Durability, Lsn, Options};
use hadal_replica::{Target, restore};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::{
    Bucket, DynBucket, Fault, FaultConfig, FaultEvent, FaultRule, FaultyBucket, MemoryBucket,
    Nonce, Op,
};
use observed::{InFlight, SegmentLedger};
use parking_lot::Mutex;
use stores::Store;
use tokio::sync::Notify;

/// Committers running at once in the fault runs.
const FAULT_COMMITTERS: usize = 4;
/// A fault run keeps committing until every fault kind fired and this many commits were
/// acknowledged.
const FAULT_ACKS_MIN: usize = 100;
/// A fault run that has not seen every fault kind by then fails (never reached on a healthy
/// run; it only bounds a broken one).
const FAULT_RUN_DEADLINE: Duration = Duration::from_secs(120);

async fn start_strict(bucket: DynBucket, dir: &Path) -> (Database, Arc<Shipper>) {
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db = Database::open(dir, options).expect("open");
    let shipper = Shipper::start(db.clone(), bucket, ShipperOptions::default(), wake)
        .await
        .expect("start shipper");
    (db, Arc::new(shipper))
}

/// Commits one put off the async threads (the engine's commit blocks on the writer slot).
async fn put(db: &Database, key: String) -> Lsn {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        db.apply(
            Batch::new()
                .put(key.clone(), key)
                .durability(Durability::NoSync),
        )
    })
    .await
    .expect("apply task")
    .expect("apply")
}

/// Restores the head of `bucket` and checks every acknowledged key is there with its value.
async fn assert_acknowledged_survive(bucket: DynBucket, out: &Path, acked: &[(String, Lsn)]) {
    let restored = restore(bucket, out, Target::Head, None)
        .await
        .expect("restore verifies the whole chain");
    let db = Database::open(out, Options::default()).expect("open restored");
    let r = db.begin_read();
    let keys: BTreeMap<Vec<u8>, Vec<u8>> = r
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .map(|i| {
            let (k, e) = i.expect("item");
            (k.to_vec(), e.value.to_vec())
        })
        .collect();
    for (key, lsn) in acked {
        assert!(
            restored.lsn >= *lsn,
            "acknowledged lsn {lsn:?} is past the restored head {:?}",
            restored.lsn
        );
        assert_eq!(
            keys.get(key.as_bytes()).map(Vec::as_slice),
            Some(key.as_bytes()),
            "acknowledged commit {key} (lsn {lsn:?}) is missing after restore"
        );
    }
    let report = db.check_integrity().expect("check integrity");
    assert!(report.is_ok(), "{report:?}");
}

fn fault_seed() -> u64 {
    let seed = std::env::var("HADAL_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(42);
    eprintln!("fault seed {seed} (reproduce with HADAL_FAULT_SEED={seed})");
    seed
}

/// The faults of a run: each kind a real store shows, on segment creates and reads.
fn faults(seed: u64) -> FaultConfig {
    let seg = hadal_format::keys::SEGMENT_PREFIX;
    FaultConfig {
        seed,
        rules: vec![
            FaultRule::always(&[Op::PutIfAbsent], Fault::LostResponse)
                .with_prefix(seg)
                .with_probability(0.1),
            FaultRule::always(
                &[Op::PutIfAbsent],
                Fault::AppliedLate {
                    delay: Duration::from_millis(20),
                },
            )
            .with_prefix(seg)
            .with_probability(0.05),
            FaultRule::always(&[Op::PutIfAbsent], Fault::Status(409))
                .with_prefix(seg)
                .with_probability(0.05)
                .with_burst(3),
            FaultRule::always(&[Op::PutIfAbsent, Op::Get], Fault::Status(503))
                .with_probability(0.03)
                .with_burst(3),
            FaultRule::always(&[Op::Get], Fault::PhantomNotFound)
                .with_prefix(seg)
                .with_probability(0.1),
        ],
        ..FaultConfig::default()
    }
}

/// The fault kinds a run must inject on segment creates before it may stop.
const FAULT_KINDS: [&str; 4] = ["lost response", "applied late", "409 burst", "503 burst"];

fn fault_kind(fault: &Fault) -> Option<&'static str> {
    match fault {
        Fault::LostResponse => Some(FAULT_KINDS[0]),
        Fault::AppliedLate { .. } => Some(FAULT_KINDS[1]),
        Fault::Status(409) => Some(FAULT_KINDS[2]),
        Fault::Status(503) => Some(FAULT_KINDS[3]),
        _ => None,
    }
}

/// The kinds of [`FAULT_KINDS`] not yet injected on a segment create.
fn missing_kinds(events: &[FaultEvent]) -> Vec<&'static str> {
    let seg = hadal_format::keys::SEGMENT_PREFIX;
    let fired: Vec<&str> = events
        .iter()
        .filter(|e| e.op == Op::PutIfAbsent && e.key.starts_with(seg))
        .filter_map(|e| fault_kind(&e.fault))
        .collect();
    FAULT_KINDS
        .into_iter()
        .filter(|kind| !fired.contains(kind))
        .collect()
}

/// Strict-mode load over `base` behind the ledger and the faults; checks every acknowledgement
/// against the ledger at the moment it happened, then restores.
async fn acknowledgements_under_faults(base: DynBucket, seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(SegmentLedger::new(base.clone()));
    let faulty = Arc::new(FaultyBucket::wrap(ledger.clone(), faults(seed)));
    // The takeover runs through the faults too.
    let (db, shipper) = start_strict(faulty.clone(), &dir.path().join("primary")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..FAULT_COMMITTERS)
        .map(|t| {
            let (db, shipper, ledger) = (db.clone(), shipper.clone(), ledger.clone());
            let (stop, acked, violations) = (stop.clone(), acked.clone(), violations.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let key = format!("f{t}-{i:05}");
                    let lsn = put(&db, key.clone()).await;
                    if let Err(e) = shipper.wait_durable(lsn).await {
                        violations
                            .lock()
                            .push(format!("lsn {lsn:?} failed with a single writer: {e}"));
                        return;
                    }
                    let mark = ledger.mark();
                    if let Err(e) = ledger.check_acknowledged(lsn, mark).await {
                        violations.lock().push(e);
                    }
                    acked.lock().push((key, lsn));
                }
            })
        })
        .collect();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let missing = missing_kinds(&faulty.events());
        let count = acked.lock().len();
        if missing.is_empty() && count >= FAULT_ACKS_MIN {
            break;
        }
        if started.elapsed() > FAULT_RUN_DEADLINE || !violations.lock().is_empty() {
            stop.store(true, Ordering::SeqCst);
            panic!(
                "after {:?}: {count} acknowledged, fault kinds never injected: {missing:?}, \
                 violations: {:?}",
                started.elapsed(),
                violations.lock()
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("committer");
    }
    let violations = violations.lock().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    Arc::try_unwrap(shipper)
        .expect("the committers are done")
        .shutdown()
        .await
        .expect("shutdown ships the rest");
    let acked = acked.lock().clone();
    eprintln!(
        "{} commits acknowledged, {} segments confirmed, {} faults injected",
        acked.len(),
        ledger.confirmed().len(),
        faulty.events().len()
    );
    // Restore from the store itself, without the faults: what is there is what counts.
    assert_acknowledged_survive(base, &dir.path().join("restored"), &acked).await;
}

// Proves the ledger check can fail: a mark taken before a commit existed cannot have seen its
// segment, and an LSN no segment holds is reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_catches_an_acknowledgement_ahead_of_its_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(SegmentLedger::new(Arc::new(MemoryBucket::new())));
    let (db, shipper) = start_strict(ledger.clone(), dir.path()).await;
    let before = ledger.mark();
    let lsn = put(&db, "k".into()).await;
    shipper.wait_durable(lsn).await.expect("durable");
    let err = ledger
        .check_acknowledged(lsn, before)
        .await
        .expect_err("a mark from before the commit");
    assert!(err.contains("before the store confirmed"), "{err}");
    ledger
        .check_acknowledged(lsn, ledger.mark())
        .await
        .expect("a mark from after the acknowledgement");
    let err = ledger
        .check_acknowledged(Lsn::new(lsn.get() + 1), ledger.mark())
        .await
        .expect_err("an LSN never committed");
    assert!(err.contains("no segment holds it"), "{err}");
}

// Proves every strict acknowledgement follows its segment into the store, under lost
// responses, late writes, 409/503 bursts and phantom 404s, on the in-process store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_acknowledgements_follow_their_segments_under_faults_on_memory() {
    acknowledgements_under_faults(Arc::new(MemoryBucket::new()), fault_seed()).await;
}

// Proves the same with the faults layered over moto, so real HTTP round trips and the S3
// transport's answers sit between the shipper and the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_acknowledgements_follow_their_segments_under_faults_on_moto() {
    let test = "strict_acknowledgements_follow_their_segments_under_faults_on_moto";
    let Some(store) = Store::moto(test).await else {
        return;
    };
    let bucket = store.bucket("faults").await;
    acknowledgements_under_faults(bucket, fault_seed()).await;
}

/// Concurrent strict committers over `base` behind the in-flight counter.
async fn group_commit(base: DynBucket) {
    let dir = tempfile::tempdir().expect("tempdir");
    let in_flight = InFlight::new(base.clone());
    let (db, shipper) = start_strict(in_flight.clone(), &dir.path().join("primary")).await;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (db, shipper) = (db.clone(), shipper.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..8 {
                    let key = format!("g{t:02}-{i}");
                    let lsn = put(&db, key.clone()).await;
                    shipper.wait_durable(lsn).await.expect("durable");
                    acked.push((key, lsn));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("committer"));
    }
    let head = db.lsn();
    let metrics = shipper.metrics();
    assert_eq!(metrics.commits_shipped, head.get(), "{metrics:?}");
    assert!(
        metrics.segments_uploaded < head.get(),
        "commits arriving during an upload must share the next segment: {metrics:?}"
    );
    assert!(in_flight.calls() >= metrics.segments_uploaded);
    assert_eq!(
        in_flight.max(),
        1,
        "more than one segment create in flight ({} creates)",
        in_flight.calls()
    );
    eprintln!(
        "{} commits acknowledged at {} LSNs in {} segments",
        acked.len(),
        head.get(),
        metrics.segments_uploaded
    );
    Arc::try_unwrap(shipper)
        .expect("the committers are done")
        .shutdown()
        .await
        .expect("shutdown");
    assert_acknowledged_survive(base, &dir.path().join("restored"), &acked).await;
}

// Proves the in-flight counter can fail: two creates started together are both counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_counter_sees_overlapping_creates() {
    let slow = FaultConfig {
        latency_base: Duration::from_millis(50),
        ..FaultConfig::default()
    };
    let bucket: DynBucket = Arc::new(FaultyBucket::new(MemoryBucket::new(), slow));
    let in_flight = InFlight::new(bucket);
    let create = |key: &'static str| in_flight.put_if_absent(key, Bytes::new(), Nonce::random());
    let (a, b) = tokio::join!(
        create("seg/00000000000000000001"),
        create("seg/00000000000000000002")
    );
    a.expect("create a");
    b.expect("create b");
    assert_eq!((in_flight.max(), in_flight.calls()), (2, 2));
}

// Proves group commit with one upload in flight on the in-process store, with upload latency
// so commits pile up behind each upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_strict_committers_share_segments_one_upload_at_a_time_on_memory() {
    let slow = FaultConfig {
        latency_base: Duration::from_millis(5),
        latency_jitter: Duration::from_millis(5),
        ..FaultConfig::default()
    };
    group_commit(Arc::new(FaultyBucket::new(MemoryBucket::new(), slow))).await;
}

// Proves the same against moto, whose uploads are real HTTP requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_strict_committers_share_segments_one_upload_at_a_time_on_moto() {
    let test = "concurrent_strict_committers_share_segments_one_upload_at_a_time_on_moto";
    let Some(store) = Store::moto(test).await else {
        return;
    };
    group_commit(store.bucket("group-commit").await).await;
}

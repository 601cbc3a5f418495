//! Two and more writers on one bucket, racing through takeovers under load, one of them stalled
//! mid-upload; and strict-mode load under injected faults (lost responses, late applies,
//! 409/503 bursts, phantom 404s). After everything, a restore of the head must contain every
//! commit any writer acknowledged; a fenced writer acknowledges nothing after its fence; the
//! restore itself verifies slots, epochs and the hash chain.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hadal_engine::{Batch, DEFAULT_TABLE, Database, Durability, Options};
use hadal_replica::{Target, restore};
use hadal_shipper::{ErrorKind, Shipper, ShipperOptions, commit_hook};
use hadal_transports::{DynBucket, Fault, FaultConfig, FaultRule, FaultyBucket, MemoryBucket, Op};
use parking_lot::Mutex;
use tokio::sync::Notify;

async fn start_writer(bucket: DynBucket, dir: &Path) -> (Database, Arc<Shipper>) {
    let wake = Arc::new(Notify::new());
    let options = Options {
        retain_unshipped: true,
        on_commit: Some(commit_hook(&wake)),
        ..Options::default()
    };
    let db = Database::open(dir, options).expect("open");
    let shipper = Shipper::start(
        db.clone(),
        bucket,
        ShipperOptions {
            manifest_poll: Duration::from_millis(50),
            ..Default::default()
        },
        wake,
    )
    .await
    .expect("takeover");
    (db, Arc::new(shipper))
}

/// Committers that record every acknowledged key and stop at the first failure.
fn load(
    db: &Database,
    shipper: &Arc<Shipper>,
    name: &str,
    acked: &Arc<Mutex<Vec<String>>>,
    fenced: &Arc<Mutex<u32>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|t| {
            let (db, shipper, acked, fenced) =
                (db.clone(), shipper.clone(), acked.clone(), fenced.clone());
            let name = format!("{name}-{t}");
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("{name}-{i:05}");
                    let Ok(lsn) = db.apply(
                        Batch::new()
                            .put(key.clone(), "v")
                            .durability(Durability::NoSync),
                    ) else {
                        return;
                    };
                    match shipper.wait_durable(lsn).await {
                        Ok(()) => acked.lock().push(key),
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
                            *fenced.lock() += 1;
                            return;
                        }
                    }
                    // Paced like a service's clients, so the log stays a realistic length.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = i;
                }
            })
        })
        .collect()
}

async fn assert_restore_holds(bucket: DynBucket, dir: &Path, acked: &[String]) -> usize {
    let out = dir.join("restored");
    restore(bucket, &out, Target::Head, None)
        .await
        .expect("restore verifies the whole chain");
    let db = Database::open(&out, Options::default()).expect("open restored");
    let r = db.begin_read();
    let keys: std::collections::BTreeSet<Vec<u8>> = r
        .range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)
        .expect("range")
        .map(|i| i.expect("item").0.to_vec())
        .collect();
    for k in acked {
        assert!(
            keys.contains(k.as_bytes()),
            "acknowledged commit {k} is missing after restore"
        );
    }
    assert!(db.check_integrity().expect("check").is_ok());
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_through_takeovers_lose_no_acknowledged_commit() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("hadal_shipper=info")
        .with_test_writer()
        .try_init();
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let memory: Arc<MemoryBucket> = Arc::new(MemoryBucket::new());
    // The first writer's uploads stall: slow PUTs of segments, so takeovers land mid-upload.
    let stalled = FaultConfig {
        seed: 7,
        latency_base: Duration::from_millis(20),
        latency_jitter: Duration::from_millis(30),
        ..FaultConfig::default()
    };
    let slow: DynBucket = Arc::new(FaultyBucket::wrap(memory.clone(), stalled));
    let fast: DynBucket = memory.clone();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let fenced = Arc::new(Mutex::new(0));
    let mut previous: Option<(Database, Arc<Shipper>, Vec<tokio::task::JoinHandle<()>>)> = None;
    for round in 0..5 {
        let bucket = if round % 2 == 0 {
            slow.clone()
        } else {
            fast.clone()
        };
        let (db, shipper) = start_writer(bucket, &dir.path().join(format!("w{round}"))).await;
        eprintln!("{:?} round {round}: took over", started.elapsed());
        if let Some((_, old, tasks)) = previous.take() {
            for t in tasks {
                t.await.expect("committer");
            }
            assert!(
                old.stopped().is_some_and(|e| e.kind() == ErrorKind::Fenced),
                "the old writer must know it is fenced"
            );
            eprintln!("{:?} round {round}: old writer stopped", started.elapsed());
            let late = old
                .wait_durable(hadal_engine::Lsn::new(u64::MAX))
                .await
                .expect_err("fenced");
            assert_eq!(late.kind(), ErrorKind::Fenced);
        }
        let tasks = load(&db, &shipper, &format!("r{round}"), &acked, &fenced);
        tokio::time::sleep(Duration::from_millis(400)).await;
        previous = Some((db, shipper, tasks));
    }
    let (_, last, tasks) = previous.expect("last writer");
    // Stop the last writer's committers by taking over once more with a quiet writer.
    let (_, quiet) = start_writer(fast.clone(), &dir.path().join("quiet")).await;
    for t in tasks {
        t.await.expect("committer");
    }
    assert!(last.stopped().is_some());
    Arc::try_unwrap(quiet)
        .expect("sole")
        .shutdown()
        .await
        .expect("shutdown");
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 100,
        "the load should acknowledge many commits, got {}",
        acked.len()
    );
    assert!(
        *fenced.lock() >= 5 * 4 - 4,
        "every committer of a fenced writer saw Fenced"
    );
    assert_restore_holds(fast, dir.path(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_under_faults_acknowledges_only_what_the_bucket_holds() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("hadal_shipper=debug,hadal_replica=debug")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let memory: Arc<MemoryBucket> = Arc::new(MemoryBucket::new());
    let seg = hadal_format::keys::SEGMENT_PREFIX;
    let seed: u64 = std::env::var("HADAL_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(42);
    eprintln!("fault seed {seed} (reproduce with HADAL_FAULT_SEED={seed})");
    let faults = FaultConfig {
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
                .with_burst(2),
            FaultRule::always(&[Op::PutIfAbsent, Op::Get], Fault::Status(503))
                .with_probability(0.03)
                .with_burst(2),
            FaultRule::always(&[Op::Get], Fault::PhantomNotFound)
                .with_prefix(seg)
                .with_probability(0.1),
        ],
        latency_base: Duration::from_millis(1),
        latency_jitter: Duration::from_millis(3),
        ..FaultConfig::default()
    };
    let faulty = Arc::new(FaultyBucket::wrap(memory.clone(), faults));
    // Takeover itself must survive faults too, so start on the faulty bucket.
    let (db, shipper) = start_writer(faulty.clone(), &dir.path().join("w")).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let fenced = Arc::new(Mutex::new(0));
    let tasks = load(&db, &shipper, "f", &acked, &fenced);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, quiet) = start_writer(memory.clone(), &dir.path().join("quiet")).await;
    for t in tasks {
        t.await.expect("committer");
    }
    Arc::try_unwrap(quiet)
        .expect("sole")
        .shutdown()
        .await
        .expect("shutdown");
    let events = faulty.events();
    assert!(
        events.len() > 20,
        "faults must actually fire: {}",
        events.len()
    );
    let acked = acked.lock().clone();
    assert!(acked.len() > 50, "acknowledged {}", acked.len());
    assert_restore_holds(memory, dir.path(), &acked).await;
}

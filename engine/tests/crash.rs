//! Seeded crash cycles against the crash-modelling storage. Each cycle runs a random workload
//! (Sync and NoSync commits, aborts, big values, deletes, checkpoints) on `MemStorage`, kills
//! the simulated process at a random storage operation, drops every unsynced write except
//! (sometimes) one torn at a random byte, reopens, and checks:
//! - nothing durable was lost: the recovered LSN is at least the last LSN known durable;
//! - nothing undurable was resurrected: it is exactly that LSN, unless the crash hit a
//!   checkpoint (whose WAL sync may have made later commits durable before it died);
//! - the recovered contents equal the model at the recovered LSN, and `check_integrity` passes;
//! - the database accepts and keeps a new commit.
//!
//! 1,000 cycles by default (`HADAL_CRASH_CYCLES` overrides, `HADAL_CRASH_FIRST_SEED` shifts).
//! A failure prints its seed.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use hadal_engine::{
    DEFAULT_TABLE, Database, Durability, FaultPlan, ManualClock, MemStorage, Options,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn options(clock: &ManualClock) -> Options {
    Options {
        background: false,
        cache_bytes: 64 * 4096,
        clock: Arc::new(clock.clone()),
        ..Options::default()
    }
}

fn contents(db: &Database) -> hadal_engine::Result<State> {
    let r = db.begin_read();
    r.range(DEFAULT_TABLE, Bound::Unbounded, Bound::Unbounded, false)?
        .map(|item| item.map(|(k, e)| (k.to_vec(), e.value.to_vec())))
        .collect()
}

struct Outcome {
    /// Model state after each committed LSN (index = LSN).
    states: Vec<State>,
    durable: u64,
    crashed_in_checkpoint: bool,
}

/// Runs a random workload until the storage "dies" or the workload ends.
fn workload(db: &Database, rng: &mut StdRng, states: &mut Vec<State>, durable: &mut u64) -> bool {
    let txns = rng.random_range(5..40);
    for _ in 0..txns {
        if rng.random_bool(0.15) {
            match db.checkpoint() {
                Ok(_) => *durable = (states.len() - 1) as u64,
                Err(_) => return true,
            }
            continue;
        }
        let mut state = states.last().cloned().unwrap_or_default();
        let Ok(mut tx) = db.begin_write() else {
            return false;
        };
        let writes = rng.random_range(1..60);
        for _ in 0..writes {
            let key = format!("k{:04}", rng.random_range(0..600)).into_bytes();
            if rng.random_bool(0.3) {
                if tx.delete(DEFAULT_TABLE, &key).is_err() {
                    return false;
                }
                state.remove(&key);
            } else {
                let len = if rng.random_bool(0.05) {
                    rng.random_range(4000..30_000)
                } else {
                    rng.random_range(0..300)
                };
                let value: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if tx.put(DEFAULT_TABLE, &key, &value).is_err() {
                    return false;
                }
                state.insert(key, value);
            }
        }
        if rng.random_bool(0.1) {
            drop(tx);
            continue;
        }
        let sync = rng.random_bool(0.5);
        let durability = if sync {
            Durability::Sync
        } else {
            Durability::NoSync
        };
        match tx.commit_with(durability) {
            Ok(lsn) if lsn.get() as usize + 1 == states.len() => {
                // Nothing changed (only deletes of absent keys): nothing was committed.
                assert!(
                    states.last() == Some(&state),
                    "an unchanged commit changed state"
                );
            }
            Ok(lsn) => {
                assert_eq!(lsn.get() as usize, states.len(), "LSNs are dense");
                states.push(state);
                if sync {
                    *durable = lsn.get();
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn cycle(seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = ManualClock::new(1_000);
    let (main, wal) = (MemStorage::new("main"), MemStorage::new("wal"));
    // Build some history without faults, so crashes also hit checkpoints and WAL restarts of
    // an established database.
    let mut states = vec![State::new()];
    let mut durable = 0;
    {
        let db = Database::open_storage(
            Arc::new(main.clone()),
            Arc::new(wal.clone()),
            options(&clock),
        )
        .expect("open");
        workload(&db, &mut rng, &mut states, &mut durable);
        db.checkpoint().expect("checkpoint");
        durable = (states.len() - 1) as u64;
    }
    let plan = FaultPlan::fail_at(rng.random_range(0..400));
    let (m, w) = (main.reopen(plan.clone()), wal.reopen(plan.clone()));
    let crashed_in_checkpoint =
        match Database::open_storage(Arc::new(m), Arc::new(w), options(&clock)) {
            Ok(db) => workload(&db, &mut rng, &mut states, &mut durable),
            Err(_) => false,
        };
    let tear = rng.random_bool(0.7);
    main.crash(&mut rng, if tear { 0.5 } else { 0.0 });
    wal.crash(&mut rng, if tear { 0.5 } else { 0.0 });
    Outcome {
        states,
        durable,
        crashed_in_checkpoint,
    }
    .verify(seed, &main, &wal, &clock)
}

impl Outcome {
    fn verify(
        self,
        seed: u64,
        main: &MemStorage,
        wal: &MemStorage,
        clock: &ManualClock,
    ) -> Outcome {
        let db = Database::open_storage(
            Arc::new(main.reopen(FaultPlan::never())),
            Arc::new(wal.reopen(FaultPlan::never())),
            options(clock),
        )
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
        let recovered = db.lsn().get();
        let committed = (self.states.len() - 1) as u64;
        assert!(
            recovered >= self.durable,
            "seed {seed}: lost durable commits: recovered {recovered}, durable {}",
            self.durable
        );
        assert!(
            recovered <= committed,
            "seed {seed}: recovered {recovered} beyond the last commit {committed}"
        );
        if !self.crashed_in_checkpoint {
            assert_eq!(
                recovered, self.durable,
                "seed {seed}: resurrected unsynced commits"
            );
        }
        let got = contents(&db).unwrap_or_else(|e| panic!("seed {seed}: read failed: {e}"));
        assert!(
            got == self.states[recovered as usize],
            "seed {seed}: contents differ from the model at lsn {recovered}"
        );
        let report = db
            .check_integrity()
            .unwrap_or_else(|e| panic!("seed {seed}: integrity check failed: {e}"));
        assert!(report.is_ok(), "seed {seed}: {report}");
        let mut tx = db.begin_write().expect("write after recovery");
        tx.put(DEFAULT_TABLE, b"after-crash", b"1").expect("put");
        let lsn = tx.commit().expect("commit after recovery");
        drop(db);
        let db = Database::open_storage(
            Arc::new(main.reopen(FaultPlan::never())),
            Arc::new(wal.reopen(FaultPlan::never())),
            options(clock),
        )
        .expect("reopen");
        assert_eq!(
            db.lsn(),
            lsn,
            "seed {seed}: the commit after recovery was lost"
        );
        self
    }
}

#[test]
fn recovery_yields_exactly_the_durable_prefix() {
    let cycles: u64 = std::env::var("HADAL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let first: u64 = std::env::var("HADAL_CRASH_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut in_checkpoint = 0;
    for seed in first..first + cycles {
        let outcome = std::panic::catch_unwind(|| cycle(seed)).unwrap_or_else(|_| {
            panic!("crash cycle failed; reproduce with HADAL_CRASH_FIRST_SEED={seed} HADAL_CRASH_CYCLES=1")
        });
        in_checkpoint += u64::from(outcome.crashed_in_checkpoint);
    }
    eprintln!("{cycles} crash cycles passed ({in_checkpoint} crashed inside a checkpoint)");
}

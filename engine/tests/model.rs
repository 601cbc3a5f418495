//! Model-based property test: random sequences of transactions (puts with and without TTL,
//! deletes, reads inside the transaction, commit or abort), reads, ranges in both directions,
//! clock moves, sweeps, checkpoints and reopens, checked against a `BTreeMap` model after every
//! step, with `check_integrity` after every commit. Runs 500 cases by default
//! (`HADAL_MODEL_CASES` overrides).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use hadal_engine::{Assertion, Batch, Database, Durability, ManualClock, MemStorage, Options};
use proptest::prelude::*;

const TABLES: [&str; 2] = ["default", "second"];

#[derive(Debug, Clone)]
enum Write {
    Put {
        table: usize,
        key: u16,
        value: (usize, u8),
        ttl_ms: Option<u64>,
    },
    Delete {
        table: usize,
        key: u16,
    },
    Get {
        table: usize,
        key: u16,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Txn {
        writes: Vec<Write>,
        commit: Option<Durability>,
    },
    Apply {
        absent: Option<u16>,
        key: u16,
        value: (usize, u8),
    },
    Get {
        table: usize,
        key: u16,
    },
    Range {
        table: usize,
        lo: Option<u16>,
        hi: Option<u16>,
        reverse: bool,
    },
    Advance(u64),
    Sweep,
    Checkpoint,
    Reopen {
        cache_pages: usize,
    },
}

fn key_bytes(k: u16) -> Vec<u8> {
    // Varying lengths, shared prefixes and a few long keys exercise separators and splits.
    let mut v = format!("k{:03}", k % 400).into_bytes();
    if k.is_multiple_of(7) {
        v.extend(std::iter::repeat_n(b'x', (k as usize * 13) % 700));
    }
    v
}

fn value_bytes((len, seed): (usize, u8)) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn value_strategy() -> impl Strategy<Value = (usize, u8)> {
    (
        prop_oneof![8 => 0usize..60, 3 => 200usize..1200, 1 => 3000usize..20_000],
        any::<u8>(),
    )
}

fn write_strategy() -> impl Strategy<Value = Write> {
    prop_oneof![
        6 => (0..2usize, 0..400u16, value_strategy(), prop::option::weighted(0.2, 1..40u64))
            .prop_map(|(table, key, value, ttl_ms)| Write::Put { table, key, value, ttl_ms }),
        3 => (0..2usize, 0..400u16).prop_map(|(table, key)| Write::Delete { table, key }),
        1 => (0..2usize, 0..400u16).prop_map(|(table, key)| Write::Get { table, key }),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (prop::collection::vec(write_strategy(), 1..80),
               prop_oneof![4 => Just(Some(Durability::Sync)), 4 => Just(Some(Durability::NoSync)), 1 => Just(None)])
            .prop_map(|(writes, commit)| Step::Txn { writes, commit }),
        2 => (prop::option::of(0..400u16), 0..400u16, value_strategy())
            .prop_map(|(absent, key, value)| Step::Apply { absent, key, value }),
        3 => (0..2usize, 0..400u16).prop_map(|(table, key)| Step::Get { table, key }),
        3 => (0..2usize, prop::option::of(0..400u16), prop::option::of(0..400u16), any::<bool>())
            .prop_map(|(table, lo, hi, reverse)| Step::Range { table, lo, hi, reverse }),
        2 => (1..30u64).prop_map(Step::Advance),
        1 => Just(Step::Sweep),
        2 => Just(Step::Checkpoint),
        2 => prop_oneof![Just(16usize), Just(64), Just(4096)].prop_map(|cache_pages| Step::Reopen { cache_pages }),
    ]
}

type Model = BTreeMap<(usize, Vec<u8>), (Vec<u8>, Option<u64>)>;

fn visible(model: &Model, table: usize, key: &[u8], now: u64) -> Option<Vec<u8>> {
    model
        .get(&(table, key.to_vec()))
        .filter(|(_, e)| e.is_none_or(|e| e > now))
        .map(|(v, _)| v.clone())
}

struct World {
    main: MemStorage,
    wal: MemStorage,
    clock: ManualClock,
    db: Option<Database>,
    model: Model,
}

impl World {
    fn open(&mut self, cache_pages: usize) {
        self.db = None;
        let options = Options {
            background: false,
            cache_bytes: cache_pages * 4096,
            clock: Arc::new(self.clock.clone()),
            ..Options::default()
        };
        let db = Database::open_storage(
            Arc::new(self.main.clone()),
            Arc::new(self.wal.clone()),
            options,
        )
        .expect("reopen");
        self.db = Some(db);
    }

    fn db(&self) -> &Database {
        self.db.as_ref().expect("database is open")
    }

    fn check_integrity(&self) {
        let report = self.db().check_integrity().expect("integrity check runs");
        assert!(report.is_ok(), "{report}");
    }

    fn run(&mut self, step: &Step) {
        let now = self.clock.now();
        match step {
            Step::Txn { writes, commit } => {
                let mut pending = self.model.clone();
                let db = self.db().clone();
                let mut tx = db.begin_write().expect("begin_write");
                for w in writes {
                    match w {
                        Write::Put {
                            table,
                            key,
                            value,
                            ttl_ms,
                        } => {
                            let expires = ttl_ms.map(|t| now + t);
                            tx.put_with_expiry(
                                TABLES[*table],
                                &key_bytes(*key),
                                &value_bytes(*value),
                                expires,
                            )
                            .expect("put");
                            pending
                                .insert((*table, key_bytes(*key)), (value_bytes(*value), expires));
                        }
                        Write::Delete { table, key } => {
                            let had = visible(&pending, *table, &key_bytes(*key), now).is_some();
                            assert_eq!(
                                tx.delete(TABLES[*table], &key_bytes(*key)).expect("delete"),
                                had
                            );
                            pending.remove(&(*table, key_bytes(*key)));
                        }
                        Write::Get { table, key } => {
                            let got = tx
                                .get(TABLES[*table], &key_bytes(*key))
                                .expect("get in txn");
                            assert_eq!(
                                got.map(|b| b.to_vec()),
                                visible(&pending, *table, &key_bytes(*key), now)
                            );
                        }
                    }
                }
                match commit {
                    Some(d) => {
                        tx.commit_with(*d).expect("commit");
                        self.model = pending;
                        self.check_integrity();
                    }
                    None => drop(tx),
                }
            }
            Step::Apply { absent, key, value } => {
                let mut batch = Batch::new().put(key_bytes(*key), value_bytes(*value));
                let mut ok = true;
                if let Some(a) = absent {
                    batch = batch.assert(Assertion::Absent {
                        table: TABLES[0].into(),
                        key: key_bytes(*a),
                    });
                    ok = visible(&self.model, 0, &key_bytes(*a), now).is_none();
                }
                let result = self.db().apply(batch);
                assert_eq!(result.is_ok(), ok, "{result:?}");
                if ok {
                    self.model
                        .insert((0, key_bytes(*key)), (value_bytes(*value), None));
                }
            }
            Step::Get { table, key } => {
                let got = self
                    .db()
                    .begin_read()
                    .get(TABLES[*table], &key_bytes(*key))
                    .expect("get");
                assert_eq!(
                    got.map(|b| b.to_vec()),
                    visible(&self.model, *table, &key_bytes(*key), now)
                );
            }
            Step::Range {
                table,
                lo,
                hi,
                reverse,
            } => {
                let lo = lo.map(key_bytes);
                let hi = hi.map(key_bytes);
                let start = lo.clone().map_or(Bound::Unbounded, Bound::Included);
                let end = hi.clone().map_or(Bound::Unbounded, Bound::Excluded);
                let r = self.db().begin_read();
                let got: Vec<(Vec<u8>, Vec<u8>)> = r
                    .range(TABLES[*table], start, end, *reverse)
                    .expect("range")
                    .map(|item| {
                        item.map(|(k, e)| (k.to_vec(), e.value.to_vec()))
                            .expect("range item")
                    })
                    .collect();
                let mut want: Vec<(Vec<u8>, Vec<u8>)> = self
                    .model
                    .iter()
                    .filter(|((t, k), (_, e))| {
                        *t == *table
                            && e.is_none_or(|e| e > now)
                            && lo.as_ref().is_none_or(|lo| k >= lo)
                            && hi.as_ref().is_none_or(|hi| k < hi)
                    })
                    .map(|((_, k), (v, _))| (k.clone(), v.clone()))
                    .collect();
                if *reverse {
                    want.reverse();
                }
                assert_eq!(got, want);
            }
            Step::Advance(ms) => self.clock.advance(*ms),
            Step::Sweep => {
                self.db().sweep_expired(usize::MAX).expect("sweep");
                self.model.retain(|_, (_, e)| e.is_none_or(|e| e > now));
                self.check_integrity();
            }
            Step::Checkpoint => {
                self.db().checkpoint().expect("checkpoint");
            }
            Step::Reopen { cache_pages } => {
                let lsn = self.db().lsn();
                self.open(*cache_pages);
                assert_eq!(self.db().lsn(), lsn, "reopen lost or invented commits");
                self.check_integrity();
            }
        }
    }
}

trait Now {
    fn now(&self) -> u64;
}

impl Now for ManualClock {
    fn now(&self) -> u64 {
        use hadal_engine::Clock;
        self.now_ms()
    }
}

fn cases() -> u32 {
    std::env::var("HADAL_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_btreemap_model(steps in prop::collection::vec(step_strategy(), 1..40)) {
        let mut world = World {
            main: MemStorage::new("main"),
            wal: MemStorage::new("wal"),
            clock: ManualClock::new(1_000_000),
            db: None,
            model: Model::new(),
        };
        world.open(4096);
        for step in &steps {
            world.run(step);
        }
    }
}

//! The data every engine is fed: pairs, the read order and the scan starts, all drawn from fixed
//! seeds so every engine (and every run) sees byte-identical input.
//!
//! Invariants this module owns:
//! 1. The first `loaded` pairs are the ones workload (a) inserts; the `SINGLE_COMMITS` pairs after
//!    them are the ones workload (c) inserts, one per commit.
//! 2. `read_order` is a permutation of `0..loaded`, so workload (b) hits every loaded key once.
//! 3. The expected tallies are computed here from the data alone, never from an engine, so an
//!    engine that returns a wrong or missing value is caught rather than compared to itself.

use std::ops::Range;

/// Key size of every pair, in bytes (issue 2, item 5).
pub const KEY_BYTES: usize = 16;
/// Value size of every pair, in bytes.
pub const VALUE_BYTES: usize = 100;
/// Pairs per durable transaction in workload (a).
pub const BATCH_KEYS: usize = 1_000;
/// Durable single-key commits in workload (c).
pub const SINGLE_COMMITS: usize = 1_000;
/// Range scans in workload (d).
pub const SCAN_COUNT: usize = 100_000;
/// Keys per range scan in workload (d).
pub const SCAN_KEYS: usize = 10;

/// Seed of the pair stream (the reference measurements in anchors-engine.md §5 used 42).
const SEED_PAIRS: u64 = 42;
/// Seed of the read permutation (the reference used 7).
const SEED_READ_ORDER: u64 = 7;
/// Seed of the scan start keys.
const SEED_SCAN_STARTS: u64 = 9;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to make keys uniform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `out` with random bytes, eight at a time.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    /// A uniform index in `0..bound` (Lemire's multiply-shift; the bias is below 2^-32 here).
    pub fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}

/// What a read workload saw: how many entries, and the sum of each value's first byte (the
/// black-boxed result that keeps the compiler from skipping the reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub entries: u64,
    pub byte_sum: u64,
}

impl Tally {
    pub fn add(&mut self, value: &[u8]) {
        self.entries += 1;
        self.byte_sum += u64::from(value.first().copied().unwrap_or(0));
    }
}

/// All input of one benchmark run, generated once and shared by every engine.
#[derive(Debug)]
pub struct Dataset {
    /// `loaded + SINGLE_COMMITS` keys, `KEY_BYTES` each, back to back.
    keys: Vec<u8>,
    /// The matching values, `VALUE_BYTES` each.
    values: Vec<u8>,
    /// Pairs inserted by workload (a).
    pub loaded: usize,
    /// Workload (b): a permutation of `0..loaded`.
    pub read_order: Vec<u32>,
    /// Workload (d): indices of the keys each scan starts at (any key in the database then).
    pub scan_starts: Vec<u32>,
}

impl Dataset {
    pub fn generate(loaded: usize) -> Self {
        assert!(loaded > 0, "at least one key");
        let total = loaded + SINGLE_COMMITS;
        assert!(u32::try_from(total).is_ok(), "pair indices fit in u32");
        let mut rng = SplitMix64::new(SEED_PAIRS);
        let mut keys = vec![0u8; total * KEY_BYTES];
        let mut values = vec![0u8; total * VALUE_BYTES];
        for (key, value) in keys
            .chunks_exact_mut(KEY_BYTES)
            .zip(values.chunks_exact_mut(VALUE_BYTES))
        {
            rng.fill(key);
            rng.fill(value);
        }
        let mut read_order: Vec<u32> = (0..loaded as u32).collect();
        let mut rng = SplitMix64::new(SEED_READ_ORDER);
        for i in (1..read_order.len()).rev() {
            read_order.swap(i, rng.below(i + 1));
        }
        let mut rng = SplitMix64::new(SEED_SCAN_STARTS);
        let scan_starts = (0..SCAN_COUNT).map(|_| rng.below(total) as u32).collect();
        Self {
            keys,
            values,
            loaded,
            read_order,
            scan_starts,
        }
    }

    pub fn key(&self, index: usize) -> &[u8] {
        &self.keys[index * KEY_BYTES..(index + 1) * KEY_BYTES]
    }

    pub fn value(&self, index: usize) -> &[u8] {
        &self.values[index * VALUE_BYTES..(index + 1) * VALUE_BYTES]
    }

    /// Pair index ranges of workload (a)'s transactions, in commit order.
    pub fn load_batches(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.loaded)
            .step_by(BATCH_KEYS)
            .map(|start| start..(start + BATCH_KEYS).min(self.loaded))
    }

    /// Pair indices of workload (c)'s single-key commits.
    pub fn single_commits(&self) -> Range<usize> {
        self.loaded..self.loaded + SINGLE_COMMITS
    }

    /// What workload (b) must return.
    pub fn expected_reads(&self) -> Tally {
        let mut tally = Tally::default();
        for &i in &self.read_order {
            tally.add(self.value(i as usize));
        }
        tally
    }

    /// What workload (d) must return: it runs after (c), so every generated pair is in the
    /// database, and a scan starting near the largest key returns fewer than `SCAN_KEYS`.
    pub fn expected_scans(&self) -> Tally {
        let total = self.loaded + SINGLE_COMMITS;
        let mut sorted: Vec<u32> = (0..total as u32).collect();
        sorted.sort_unstable_by(|&a, &b| self.key(a as usize).cmp(self.key(b as usize)));
        let mut rank = vec![0usize; total];
        for (r, &i) in sorted.iter().enumerate() {
            rank[i as usize] = r;
        }
        let mut tally = Tally::default();
        for &start in &self.scan_starts {
            let r = rank[start as usize];
            for &i in &sorted[r..(r + SCAN_KEYS).min(total)] {
                tally.add(self.value(i as usize));
            }
        }
        tally
    }
}

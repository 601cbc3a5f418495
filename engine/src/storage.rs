//! The narrow seam between the engine and local files: [`Storage`] is a byte-addressed file with
//! positional reads and writes, `sync`, `len` and `set_len`. Nothing else in the engine touches
//! the file system, so crash and fault injection plug in here.
//!
//! [`MemStorage`] models a disk with a volatile write cache: writes are visible at once but
//! durable only after `sync`. [`MemStorage::crash`] drops every unsynced write except, at
//! random, a prefix of one of them (a write torn at a random byte), and a fault plan can make the
//! N-th operation fail (the process "dies" there: every later operation fails too).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

/// A file the engine can read, write and make durable.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length is a size, not a collection's count"
)]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset`, growing the file if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Human-readable name for error messages.
    fn name(&self) -> &str;
}

/// A [`Storage`] backed by a real file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
    name: String,
}

impl FileStorage {
    /// Opens or creates `path` for reading and writing.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            name: path.display().to_string(),
        })
    }

    /// Takes the process-exclusive lock on this file; fails at once if another process has it.
    pub fn try_lock(&self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage for FileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct MemFile {
    /// What a reader sees now.
    live: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Operations since the last sync, in order.
    pending: Vec<PendingOp>,
}

/// Shared across the files of one simulated disk: counts operations and decides when the
/// simulated process dies.
#[derive(Debug, Default)]
pub struct FaultPlan {
    ops: u64,
    fail_at: Option<u64>,
    dead: bool,
}

impl FaultPlan {
    /// A plan that kills the process at the `n`-th storage operation (0-based) from now on.
    pub fn fail_at(n: u64) -> Arc<Mutex<FaultPlan>> {
        Arc::new(Mutex::new(FaultPlan {
            ops: 0,
            fail_at: Some(n),
            dead: false,
        }))
    }

    /// A plan that never fails.
    pub fn never() -> Arc<Mutex<FaultPlan>> {
        Arc::new(Mutex::new(FaultPlan::default()))
    }

    /// Arms the plan to kill the process `n` operations from now (0: the next one).
    pub fn fail_in(&mut self, n: u64) {
        self.fail_at = Some(self.ops + n);
    }

    /// Whether the simulated process has died.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Operations counted so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    fn step(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("simulated crash: process is dead"));
        }
        if self.fail_at == Some(self.ops) {
            self.dead = true;
            return Err(io::Error::other("simulated crash at this operation"));
        }
        self.ops += 1;
        Ok(())
    }
}

/// An in-memory [`Storage`] that models a volatile write cache, crashes and torn writes.
#[derive(Debug, Clone)]
pub struct MemStorage {
    file: Arc<Mutex<MemFile>>,
    plan: Arc<Mutex<FaultPlan>>,
    name: String,
}

impl MemStorage {
    pub fn new(name: &str) -> Self {
        Self::with_plan(name, FaultPlan::never())
    }

    /// A file whose operations count against (and can be killed by) `plan`.
    pub fn with_plan(name: &str, plan: Arc<Mutex<FaultPlan>>) -> Self {
        Self {
            file: Arc::default(),
            plan,
            name: name.to_string(),
        }
    }

    /// A file whose durable and live contents are `bytes` (for corruption tests).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Self {
        let file = MemFile {
            live: bytes.clone(),
            durable: bytes,
            pending: Vec::new(),
        };
        Self {
            file: Arc::new(Mutex::new(file)),
            plan: FaultPlan::never(),
            name: name.to_string(),
        }
    }

    /// A handle to the same bytes with a different fault plan (a "rebooted" process).
    pub fn reopen(&self, plan: Arc<Mutex<FaultPlan>>) -> Self {
        Self {
            file: self.file.clone(),
            plan,
            name: self.name.clone(),
        }
    }

    /// Simulates power loss: unsynced operations are dropped, except that with probability
    /// `tear_probability` one of them (chosen at random) is torn: a random strict prefix of it
    /// reaches the disk. Afterwards the live view equals the durable one.
    pub fn crash(&self, rng: &mut impl Rng, tear_probability: f64) {
        let mut f = self.file.lock();
        let pending = std::mem::take(&mut f.pending);
        let writes: Vec<_> = pending
            .iter()
            .filter_map(|op| match op {
                PendingOp::Write { offset, data } if !data.is_empty() => Some((*offset, data)),
                _ => None,
            })
            .collect();
        if !writes.is_empty() && rng.random_bool(tear_probability) {
            let (offset, data) = writes[rng.random_range(0..writes.len())];
            // Tear before the last byte that differs from the disk, so the torn write really
            // is incomplete (a tail equal to what was there would make it whole).
            let on_disk = |i: usize| f.durable.get(offset as usize + i).copied();
            if let Some(last_diff) = (0..data.len()).rev().find(|&i| on_disk(i) != Some(data[i])) {
                let keep = rng.random_range(0..=last_diff);
                apply_write(&mut f.durable, offset, &data[..keep]);
            }
        }
        f.live = f.durable.clone();
    }

    /// Flips one bit of the durable and live bytes at `offset` (corruption injection).
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut f = self.file.lock();
        let at = offset as usize;
        if at < f.live.len() {
            f.live[at] ^= 1 << (bit % 8);
        }
        if at < f.durable.len() {
            f.durable[at] ^= 1 << (bit % 8);
        }
    }

    /// A copy of what a reader sees now.
    pub fn snapshot(&self) -> Vec<u8> {
        self.file.lock().live.clone()
    }
}

fn apply_write(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[offset as usize..end].copy_from_slice(data);
}

impl Storage for MemStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.plan.lock().step()?;
        let f = self.file.lock();
        let start = offset as usize;
        let end = start + buf.len();
        if end > f.live.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        buf.copy_from_slice(&f.live[start..end]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.plan.lock().step()?;
        let mut f = self.file.lock();
        apply_write(&mut f.live, offset, data);
        f.pending.push(PendingOp::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.plan.lock().step()?;
        let mut f = self.file.lock();
        for op in std::mem::take(&mut f.pending) {
            match op {
                PendingOp::Write { offset, data } => apply_write(&mut f.durable, offset, &data),
                PendingOp::SetLen(len) => f.durable.resize(len as usize, 0),
            }
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.plan.lock().step()?;
        Ok(self.file.lock().live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.plan.lock().step()?;
        let mut f = self.file.lock();
        f.live.resize(len as usize, 0);
        f.pending.push(PendingOp::SetLen(len));
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crash_keeps_synced_and_drops_unsynced() {
        // Proves the crash model: synced bytes survive, unsynced ones vanish (no tearing here).
        let s = MemStorage::new("t");
        s.write_at(0, b"hello").expect("write");
        s.sync().expect("sync");
        s.write_at(5, b" world").expect("write");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        s.crash(&mut rng, 0.0);
        assert_eq!(s.snapshot(), b"hello");
    }

    #[test]
    fn torn_write_is_a_strict_prefix() {
        // Proves a torn write persists fewer bytes than were written, never more.
        for seed in 0..50 {
            let s = MemStorage::new("t");
            s.write_at(0, &[1u8; 100]).expect("write");
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            s.crash(&mut rng, 1.0);
            let snap = s.snapshot();
            assert!(snap.len() < 100 && snap.iter().all(|&b| b == 1));
        }
    }

    #[test]
    fn fault_plan_kills_the_process_for_good() {
        // Proves that after the planned failure every later operation fails too.
        let plan = FaultPlan::fail_at(1);
        let s = MemStorage::with_plan("t", plan.clone());
        s.write_at(0, b"a").expect("first op succeeds");
        assert!(s.write_at(0, b"b").is_err());
        assert!(s.sync().is_err());
        assert!(plan.lock().is_dead());
    }
}

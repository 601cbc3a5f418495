//! LMDB through heed 0.23 with default environment flags (the data file is synced on every
//! commit), a 4 GiB map and one named `Bytes -> Bytes` database.
//!
//! The only `unsafe` in the crate lives here, because heed marks `EnvOpenOptions::open` unsafe:
//! the map is undefined behaviour if the file is changed behind LMDB's back.

use std::hint::black_box;
use std::ops::{Bound, Range};
use std::path::Path;

use anyhow::{Result, anyhow};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions};

use super::Engine;
use crate::workload::{Dataset, Tally};

/// Map size: room for the 1M-pair run (about 200 MiB of pages) with a wide margin.
const MAP_BYTES: usize = 4 << 30;

#[derive(Debug)]
pub struct Lmdb {
    env: Env,
    db: Database<'static, Bytes, Bytes>,
}

impl Engine for Lmdb {
    const NAME: &'static str = "lmdb";

    #[allow(unsafe_code)]
    fn open(dir: &Path) -> Result<Self> {
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_BYTES).max_dbs(1);
        // SAFETY: `dir` is a fresh temporary folder that only this process knows about and that
        // this `Env` is the only opener of; nothing else maps, truncates or writes its files
        // while the environment is open, and no unsafe flags (NO_SYNC, NO_LOCK, …) are set.
        let env = unsafe { options.open(dir)? };
        let wtxn = env.write_txn()?;
        let db = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                opener
                    .create_database::<Bytes, Bytes>(wtxn, Some("bench"))
                    .map(CommitOrAbort::<_, ()>::Commit)
            })?
            .commit()
            .ok_or_else(|| anyhow!("lmdb: creating the database was aborted"))?;
        Ok(Self { env, db })
    }

    fn commit(&mut self, data: &Dataset, pairs: Range<usize>) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        for i in pairs {
            self.db.put(&mut wtxn, data.key(i), data.value(i))?;
        }
        wtxn.commit()?;
        Ok(())
    }

    fn get_all(&self, data: &Dataset, order: &[u32]) -> Result<Tally> {
        let rtxn = self.env.read_txn()?;
        let mut tally = Tally::default();
        for &i in order {
            if let Some(value) = self.db.get(&rtxn, data.key(i as usize))? {
                tally.add(black_box(value));
            }
        }
        Ok(black_box(tally))
    }

    fn scan_all(&self, data: &Dataset, starts: &[u32], len: usize) -> Result<Tally> {
        let rtxn = self.env.read_txn()?;
        let mut tally = Tally::default();
        for &i in starts {
            let range = (Bound::Included(data.key(i as usize)), Bound::Unbounded);
            for item in self.db.range(&rtxn, &range)?.take(len) {
                let (_key, value) = item?;
                tally.add(black_box(value));
            }
        }
        Ok(black_box(tally))
    }
}

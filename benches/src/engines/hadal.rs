//! Hadal's engine with its default options: background checkpoints on, `commit()` =
//! `Durability::Sync` (the WAL is fdatasynced before it returns).

use std::hint::black_box;
use std::ops::{Bound, Range};
use std::path::Path;

use anyhow::Result;
use hadal_engine::{DEFAULT_TABLE, Database, Options};

use super::Engine;
use crate::workload::{Dataset, Tally};

#[derive(Debug)]
pub struct Hadal {
    db: Database,
}

impl Engine for Hadal {
    const NAME: &'static str = "hadal";

    fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            db: Database::open(dir, Options::default())?,
        })
    }

    fn commit(&mut self, data: &Dataset, pairs: Range<usize>) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        for i in pairs {
            tx.put(DEFAULT_TABLE, data.key(i), data.value(i))?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_all(&self, data: &Dataset, order: &[u32]) -> Result<Tally> {
        let snapshot = self.db.begin_read();
        let table = snapshot.table(DEFAULT_TABLE)?;
        let mut tally = Tally::default();
        for &i in order {
            if let Some(value) = table.get(data.key(i as usize))? {
                tally.add(black_box(&value));
            }
        }
        Ok(black_box(tally))
    }

    fn scan_all(&self, data: &Dataset, starts: &[u32], len: usize) -> Result<Tally> {
        let snapshot = self.db.begin_read();
        let table = snapshot.table(DEFAULT_TABLE)?;
        let mut tally = Tally::default();
        for &i in starts {
            let start = Bound::Included(data.key(i as usize).to_vec());
            for item in table.range(start, Bound::Unbounded, false).take(len) {
                let (_key, entry) = item?;
                tally.add(black_box(&entry.value));
            }
        }
        Ok(black_box(tally))
    }
}

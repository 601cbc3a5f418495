//! redb 4.x with its defaults: `Durability::Immediate` (fsync on commit), a 1 GiB cache, one
//! `&[u8] -> &[u8]` table.

use std::hint::black_box;
use std::ops::Range;
use std::path::Path;

use ::redb::{Database, ReadableDatabase, TableDefinition};
use anyhow::Result;

use super::Engine;
use crate::workload::{Dataset, Tally};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

#[derive(Debug)]
pub struct Redb {
    db: Database,
}

impl Engine for Redb {
    const NAME: &'static str = "redb";

    fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            db: Database::create(dir.join("bench.redb"))?,
        })
    }

    fn commit(&mut self, data: &Dataset, pairs: Range<usize>) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            for i in pairs {
                table.insert(data.key(i), data.value(i))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get_all(&self, data: &Dataset, order: &[u32]) -> Result<Tally> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TABLE)?;
        let mut tally = Tally::default();
        for &i in order {
            if let Some(value) = table.get(data.key(i as usize))? {
                tally.add(black_box(value.value()));
            }
        }
        Ok(black_box(tally))
    }

    fn scan_all(&self, data: &Dataset, starts: &[u32], len: usize) -> Result<Tally> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TABLE)?;
        let mut tally = Tally::default();
        for &i in starts {
            for item in table.range(data.key(i as usize)..)?.take(len) {
                let (_key, value) = item?;
                tally.add(black_box(value.value()));
            }
        }
        Ok(black_box(tally))
    }
}

//! One-shot atomic batches with assertions, the unit of group commit.
//!
//! A batch's assertions are checked against the state that includes every batch committed
//! before it (also earlier batches of the same group); if one fails, the batch writes nothing
//! and its caller learns which assertion failed. Otherwise its operations apply atomically.

use bytes::Bytes;
use hadal_format::Lsn;

use crate::db::Durability;
use crate::error::{Error, Result};
use crate::txn::{DEFAULT_TABLE, WriteTxn, validate_key, validate_table_name, validate_value};

/// A condition a batch needs to hold before it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assertion {
    /// The key has a visible value.
    Exists { table: String, key: Vec<u8> },
    /// The key has no visible value.
    Absent { table: String, key: Vec<u8> },
    /// The key's visible value equals `value`.
    Equals {
        table: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// The key was last written at or before `lsn` (an absent key passes).
    LastWriteAtMost {
        table: String,
        key: Vec<u8>,
        lsn: Lsn,
    },
}

/// A change a batch makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        table: String,
        key: Vec<u8>,
        value: Vec<u8>,
        expires_ms: Option<u64>,
    },
    Delete {
        table: String,
        key: Vec<u8>,
    },
}

/// Assertions and operations that commit together or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub assertions: Vec<Assertion>,
    pub ops: Vec<Op>,
    pub durability: Durability,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            assertions: Vec::new(),
            ops: Vec::new(),
            durability: Durability::Sync,
        }
    }
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Puts into the default table.
    pub fn put(self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.put_in(DEFAULT_TABLE, key, value, None)
    }

    pub fn put_in(
        mut self,
        table: &str,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        expires_ms: Option<u64>,
    ) -> Self {
        self.ops.push(Op::Put {
            table: table.to_string(),
            key: key.into(),
            value: value.into(),
            expires_ms,
        });
        self
    }

    /// Deletes from the default table.
    pub fn delete(self, key: impl Into<Vec<u8>>) -> Self {
        self.delete_in(DEFAULT_TABLE, key)
    }

    pub fn delete_in(mut self, table: &str, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Delete {
            table: table.to_string(),
            key: key.into(),
        });
        self
    }

    pub fn assert(mut self, assertion: Assertion) -> Self {
        self.assertions.push(assertion);
        self
    }

    /// Rejects malformed batches before they reach the writer.
    pub fn validate(&self) -> Result<()> {
        for a in &self.assertions {
            let (table, key) = match a {
                Assertion::Exists { table, key }
                | Assertion::Absent { table, key }
                | Assertion::Equals { table, key, .. }
                | Assertion::LastWriteAtMost { table, key, .. } => (table, key),
            };
            validate_table_name(table)?;
            validate_key(key)?;
        }
        for op in &self.ops {
            match op {
                Op::Put {
                    table, key, value, ..
                } => {
                    validate_table_name(table)?;
                    validate_key(key)?;
                    validate_value(value)?;
                }
                Op::Delete { table, key } => {
                    validate_table_name(table)?;
                    validate_key(key)?;
                }
            }
        }
        Ok(())
    }

    /// Checks every assertion against `txn`; the first that fails is reported.
    pub(crate) fn check(&self, txn: &WriteTxn<'_>) -> Result<()> {
        for (index, a) in self.assertions.iter().enumerate() {
            let fail = |detail: String| Err(Error::AssertionFailed { index, detail });
            match a {
                Assertion::Exists { table, key } => {
                    if txn.get(table, key)?.is_none() {
                        return fail(format!("key {} in table {table} does not exist", show(key)));
                    }
                }
                Assertion::Absent { table, key } => {
                    if txn.get(table, key)?.is_some() {
                        return fail(format!("key {} in table {table} exists", show(key)));
                    }
                }
                Assertion::Equals { table, key, value } => {
                    let current: Option<Bytes> = txn.get(table, key)?;
                    if current.as_deref() != Some(value.as_slice()) {
                        return fail(format!(
                            "key {} in table {table} does not have the expected value",
                            show(key)
                        ));
                    }
                }
                Assertion::LastWriteAtMost { table, key, lsn } => {
                    if let Some(e) = txn.get_entry(table, key)?
                        && e.lsn > *lsn
                    {
                        return fail(format!(
                            "key {} in table {table} was written at {:?}, after {lsn:?}",
                            show(key),
                            e.lsn
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn apply_to(&self, txn: &mut WriteTxn<'_>) -> Result<()> {
        for op in &self.ops {
            match op {
                Op::Put {
                    table,
                    key,
                    value,
                    expires_ms,
                } => txn.put_with_expiry(table, key, value, *expires_ms)?,
                Op::Delete { table, key } => {
                    txn.delete(table, key)?;
                }
            }
        }
        Ok(())
    }
}

/// A key for messages: text if printable, else hex.
pub(crate) fn show(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!(
            "0x{}",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

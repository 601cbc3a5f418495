//! `hadal kv` and `hadal check`: direct access to a local data folder. Values print raw, so
//! `hadal kv get` can be piped; a missing key exits 1 with a message on stderr.

use std::io::{IsTerminal, Write};
use std::ops::Bound;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use hadal_engine::{Database, Options};

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Store VALUE under KEY (durably: the command returns after fdatasync).
    Put {
        key: String,
        value: String,
        /// Expire the key after this long (e.g. 30s, 5m, 2h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Print the value of KEY.
    Get { key: String },
    /// Delete KEY.
    Del { key: String },
    /// List keys and values in order, one `key<TAB>value` per line.
    Scan {
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<usize>,
        /// Newest-first (descending key order).
        #[arg(long)]
        reverse: bool,
    },
}

fn open(data: &Path) -> anyhow::Result<Database> {
    let options = Options {
        background: false,
        ..Options::default()
    };
    Database::open(data, options).with_context(|| format!("opening data folder {}", data.display()))
}

fn finish_line(out: &mut impl Write) -> std::io::Result<()> {
    if std::io::stdout().is_terminal() {
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub fn run(data: &Path, table: &str, verb: Verb) -> anyhow::Result<ExitCode> {
    let db = open(data)?;
    let mut out = std::io::stdout().lock();
    match verb {
        Verb::Put { key, value, ttl } => {
            let expires_ms = ttl.map(|t| {
                use hadal_engine::Clock;
                hadal_engine::SystemClock.now_ms() + t.as_millis() as u64
            });
            let mut tx = db.begin_write()?;
            tx.put_with_expiry(table, key.as_bytes(), value.as_bytes(), expires_ms)?;
            let lsn = tx.commit()?;
            eprintln!("ok (lsn {})", lsn.get());
        }
        Verb::Get { key } => match db.begin_read().get(table, key.as_bytes())? {
            Some(value) => {
                out.write_all(&value)?;
                finish_line(&mut out)?;
            }
            None => {
                eprintln!("hadal: key {key:?} not found in table {table}");
                return Ok(ExitCode::from(1));
            }
        },
        Verb::Del { key } => {
            let mut tx = db.begin_write()?;
            let existed = tx.delete(table, key.as_bytes())?;
            tx.commit()?;
            if !existed {
                eprintln!("hadal: key {key:?} not found in table {table}");
                return Ok(ExitCode::from(1));
            }
            eprintln!("ok");
        }
        Verb::Scan {
            prefix,
            limit,
            reverse,
        } => {
            let r = db.begin_read();
            let range = if prefix.is_empty() {
                r.range(table, Bound::Unbounded, Bound::Unbounded, reverse)?
            } else {
                r.prefix(table, prefix.as_bytes(), reverse)?
            };
            for item in range.take(limit.unwrap_or(usize::MAX)) {
                let (key, entry) = item?;
                out.write_all(&key)?;
                out.write_all(b"\t")?;
                out.write_all(&entry.value)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn check(data: &Path) -> anyhow::Result<ExitCode> {
    if !data.join(hadal_engine::MAIN_FILE_NAME).exists() {
        anyhow::bail!(
            "{} holds no Hadal database (no {} file)",
            data.display(),
            hadal_engine::MAIN_FILE_NAME
        );
    }
    let db = match open(data) {
        Ok(db) => db,
        Err(e) => {
            println!("{}: cannot be opened: {e:#}", data.display());
            return Ok(ExitCode::from(1));
        }
    };
    let report = db.check_integrity()?;
    println!("{}: {report}", data.display());
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

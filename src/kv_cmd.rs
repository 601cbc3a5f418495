//! `hadal kv` and `hadal check`: keys in a data folder through the embedded facade
//! ([`hadal::Database`]), so `kv --bucket URL` writes ship to the bucket exactly as an embedding
//! application's would. Values print raw, so `hadal kv get` can be piped; a missing key exits 1
//! with a message on stderr.
//!
//! With `--url`, the same verbs go to a running server instead (`kv_remote.rs`).
//!
//! Reads (`get`, `scan`) open the folder read-only: they never take over the bucket, which would
//! fence its running writer, and they read what the folder holds.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use hadal::{Assertion, Batch, Durability, ErrorKind, Scan};

use crate::{kv_import, kv_remote};

#[derive(Debug, clap::Args)]
pub struct KvArgs {
    /// The data folder (created if missing).
    #[arg(long, env = "HADAL_DATA", default_value = "./hadal-data")]
    data: PathBuf,
    /// The bucket that is the database's durable home (file://, s3://, gs://, az://). Writes
    /// take over its log (fencing any other writer) and ship every commit; the folder is then
    /// bound to it. Reads only check the binding.
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: Option<String>,
    /// When a write counts as done: strict (in the bucket), local (fsynced locally, shipped
    /// every --interval) or async (written locally, shipped every --interval).
    #[arg(long, default_value = "strict")]
    durability: Durability,
    /// In local and async modes: how often commits are shipped.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// With --bucket, how often the writer deletes what the retention window no longer needs,
    /// in the background (first pass one interval after start; e.g. 30m, 1h), or `off` to leave
    /// it to `hadal gc`.
    #[arg(long, default_value = "1h", value_parser = parse_gc_interval)]
    gc_interval: GcInterval,
    /// The table to use.
    #[arg(long, default_value = hadal::DEFAULT_TABLE)]
    table: String,
    /// Talk to a running `hadal serve` or `hadal replica` at this address (e.g.
    /// http://127.0.0.1:7600) instead of a local data folder.
    #[arg(long, env = "HADAL_URL", conflicts_with = "bucket")]
    url: Option<String>,
    /// With --url: the API key to present (`Authorization: Bearer KEY`).
    #[arg(long, env = "HADAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Store VALUE under KEY. Returns once durable: in the bucket with --bucket, else fsynced.
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
    /// Commit `key<TAB>value` lines from FILE (`-` for stdin), one transaction per line.
    /// Commits are pipelined: line N+1 is committed while line N is shipping. Exits non-zero
    /// with the reason if the writer stops (for example fenced by another writer).
    Import {
        /// The input file, or `-` for stdin.
        file: String,
        /// Print `ack<TAB>LSN<TAB>KEY` on stdout for each line once it is durable, in order.
        #[arg(long)]
        print_acks: bool,
    },
}

/// `--gc-interval`: a duration, or `off`.
#[derive(Debug, Clone, Copy)]
struct GcInterval(Option<Duration>);

fn parse_gc_interval(s: &str) -> Result<GcInterval, String> {
    if s == "off" {
        return Ok(GcInterval(None));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("use `off` to turn background gc off, not 0".into()),
        Ok(d) => Ok(GcInterval(Some(d))),
        Err(e) => Err(format!("{e} (a duration like 30m or 1h, or `off`)")),
    }
}

/// Keys per page of `scan`: each page is one snapshot read.
const SCAN_PAGE_KEYS: usize = 1000;

fn finish_line(out: &mut impl Write) -> std::io::Result<()> {
    if std::io::stdout().is_terminal() {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Turns facade errors into messages that name the flag to pass.
fn explain(e: hadal::Error) -> anyhow::Error {
    match e {
        hadal::Error::BucketRequired { dir, bucket } => anyhow::anyhow!(
            "data folder {dir} is bound to bucket {bucket}: pass --bucket {bucket} (or set HADAL_BUCKET) to write to it; reads work without it"
        ),
        hadal::Error::WrongBucket { dir, bound, given } => anyhow::anyhow!(
            "data folder {dir} is bound to bucket {bound}, not {given}: pass --bucket {bound}, or use another --data folder for {given}"
        ),
        other => other.into(),
    }
}

async fn open(args: &KvArgs, read_only: bool, background: bool) -> anyhow::Result<hadal::Database> {
    let mut options = hadal::Options::new(&args.data);
    options.bucket_url = args.bucket.clone();
    options.durability = args.durability;
    options.interval = args.interval;
    options.gc_interval = args.gc_interval.0;
    options.read_only = read_only;
    options.engine.background = background;
    hadal::Database::open(options)
        .await
        .map_err(explain)
        .with_context(|| format!("opening data folder {}", args.data.display()))
}

pub fn run(args: KvArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_verb(args))
}

async fn run_verb(args: KvArgs) -> anyhow::Result<ExitCode> {
    let table = args.table.clone();
    if let Some(url) = &args.url {
        return kv_remote::run(url, args.api_key.clone(), &table, &args.verb).await;
    }
    match &args.verb {
        Verb::Put { key, value, ttl } => {
            let db = open(&args, false, false).await?;
            let expires_ms = ttl.map(|t| {
                use hadal_engine::Clock;
                hadal_engine::SystemClock
                    .now_ms()
                    .saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            });
            let committed = db
                .apply(Batch::new().put_in(&table, key.as_str(), value.as_str(), expires_ms))
                .await;
            let handle = finish(&db, committed).await?;
            report_ok(&args, handle.lsn);
        }
        Verb::Del { key } => {
            let db = open(&args, false, false).await?;
            let batch = Batch::new()
                .assert(Assertion::Exists {
                    table: table.clone(),
                    key: key.as_bytes().to_vec(),
                })
                .delete_in(&table, key.as_str());
            let committed = db.apply(batch).await;
            if matches!(&committed, Err(e) if e.kind() == ErrorKind::Conflict) {
                db.close().await.map_err(explain)?;
                eprintln!("hadal: key {key:?} not found in table {table}");
                return Ok(ExitCode::from(1));
            }
            let handle = finish(&db, committed).await?;
            report_ok(&args, handle.lsn);
        }
        Verb::Get { key } => {
            let db = open(&args, true, false).await?;
            let value = db.get_in(&table, key.as_str()).await;
            db.close().await.map_err(explain)?;
            let mut out = std::io::stdout().lock();
            match value.map_err(explain)? {
                Some(value) => {
                    out.write_all(&value)?;
                    finish_line(&mut out)?;
                    out.flush()?;
                }
                None => {
                    eprintln!("hadal: key {key:?} not found in table {table}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Verb::Scan {
            prefix,
            limit,
            reverse,
        } => {
            let db = open(&args, true, false).await?;
            let mut scan = if prefix.is_empty() {
                Scan::all()
            } else {
                Scan::prefix(prefix.as_str())
            }
            .in_table(table.as_str());
            if *reverse {
                scan = scan.reverse();
            }
            let printed = print_scan(&db, scan, limit.unwrap_or(usize::MAX)).await;
            db.close().await.map_err(explain)?;
            printed?;
        }
        Verb::Import { file, print_acks } => {
            let db = open(&args, false, true).await?;
            let imported = kv_import::import(&db, &table, file, *print_acks).await;
            let closed = db.close().await;
            let summary = imported?;
            closed
                .map_err(explain)
                .context("closing the database after the import")?;
            eprintln!(
                "imported {} lines; every one is durable{} (lsn {})",
                summary.lines,
                in_bucket(&args),
                summary.lsn_last.get()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Closes the database after a write and returns the write's handle, or the first error.
async fn finish(
    db: &hadal::Database,
    committed: hadal::Result<hadal::WriteHandle>,
) -> anyhow::Result<hadal::WriteHandle> {
    let handle = match committed {
        Ok(h) => h,
        Err(e) => {
            let _ = db.close().await;
            return Err(explain(e));
        }
    };
    // `close` ships every commit before it returns (in every mode), so the write is durable.
    db.close().await.map_err(explain)?;
    handle.durable().await.map_err(explain)?;
    Ok(handle)
}

fn in_bucket(args: &KvArgs) -> String {
    match &args.bucket {
        Some(url) => format!(" in {url}"),
        None => String::new(),
    }
}

fn report_ok(args: &KvArgs, lsn: hadal::Lsn) {
    eprintln!("ok (lsn {}{})", lsn.get(), in_bucket(args));
}

async fn print_scan(db: &hadal::Database, mut scan: Scan, limit: usize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut remaining = limit;
    while remaining > 0 {
        let want = remaining.min(SCAN_PAGE_KEYS);
        let page = db.scan(scan.clone().limit(want)).await.map_err(explain)?;
        for (key, value) in &page {
            out.write_all(key)?;
            out.write_all(b"\t")?;
            out.write_all(value)?;
            out.write_all(b"\n")?;
        }
        remaining -= page.len();
        match page.last() {
            Some((last, _)) if page.len() == want => scan = scan.resume_after(last),
            _ => break,
        }
    }
    out.flush()?;
    Ok(())
}

pub fn check(data: &Path) -> anyhow::Result<ExitCode> {
    if !data.join(hadal_engine::MAIN_FILE_NAME).exists() {
        anyhow::bail!(
            "{} holds no Hadal database (no {} file)",
            data.display(),
            hadal_engine::MAIN_FILE_NAME
        );
    }
    let options = hadal_engine::Options {
        background: false,
        sweep_interval: None,
        ..hadal_engine::Options::default()
    };
    let db = match hadal_engine::Database::open(data, options) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_interval_takes_a_duration_or_off() {
        // Proves `--gc-interval` reads humantime durations, `off` turns background GC off, and
        // zero or garbage is refused with a hint instead of silently disabling it.
        assert_eq!(
            parse_gc_interval("30m").expect("30m").0,
            Some(Duration::from_secs(1800))
        );
        assert_eq!(parse_gc_interval("off").expect("off").0, None);
        assert!(parse_gc_interval("0s").expect_err("zero").contains("off"));
        assert!(
            parse_gc_interval("hourly")
                .expect_err("garbage")
                .contains("off")
        );
    }
}

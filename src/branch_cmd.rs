//! `hadal branch`: zero-copy branches (DESIGN.md §3 "Branches").
//!
//! `create` pins the branch point in the parent's manifest and writes the branch's manifest 1
//! naming its parent; no data is copied. `list` shows a database's parent and the branches it
//! pins (and whether each still exists). `delete` removes the pin and the branch's objects.
//! URLs are recorded in canonical form (`file://` paths made absolute), since a branch reads its
//! parent's history through the URL its manifest records.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hadal_format::Lsn;
use hadal_replica::{BucketLog, Target};
use hadal_transports::DynBucket;

#[derive(Debug, clap::Subcommand)]
pub enum BranchCommand {
    /// Create a branch of --from at its head, an LSN (--lsn) or a time (--time), at --to (an
    /// empty location). Writes to either never appear in the other.
    Create {
        /// The parent database's bucket URL.
        #[arg(long)]
        from: String,
        /// Where the branch lives: a new, empty bucket URL (another prefix or folder).
        #[arg(long)]
        to: String,
        /// Branch at exactly this commit of the parent.
        #[arg(long, conflicts_with = "time")]
        lsn: Option<u64>,
        /// Branch at the newest commit at or before this time (RFC 3339).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        time: Option<SystemTime>,
    },
    /// Show a database's parent (if it is a branch) and the branches it pins.
    List {
        /// The database's bucket URL.
        #[arg(long, env = "HADAL_BUCKET")]
        bucket: String,
    },
    /// Delete a branch: remove its pin from its parent, then its objects. Stop its writer first.
    Delete {
        /// The branch's bucket URL.
        #[arg(long, env = "HADAL_BUCKET")]
        bucket: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

async fn open(url: &str) -> anyhow::Result<DynBucket> {
    hadal_transports::open(url)
        .await
        .with_context(|| format!("opening {url}"))
}

fn canonical(url: &str) -> anyhow::Result<String> {
    hadal::normalize_bucket_url(url).with_context(|| format!("reading the URL {url}"))
}

pub fn run(cmd: BranchCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cmd {
        BranchCommand::Create {
            from,
            to,
            lsn,
            time,
        } => {
            let (from, to) = (canonical(&from)?, canonical(&to)?);
            let target = match (lsn, time) {
                (Some(l), _) => Target::Lsn(Lsn::new(l)),
                (None, Some(t)) => Target::Time(
                    t.duration_since(UNIX_EPOCH)
                        .context("time before 1970")?
                        .as_millis() as u64,
                ),
                (None, None) => Target::Head,
            };
            let created = runtime.block_on(async {
                let (parent, child) = (open(&from).await?, open(&to).await?);
                hadal_shipper::branch::create(parent, &from, child, &to, target, now_ms())
                    .await
                    .with_context(|| format!("creating the branch {to} of {from}"))
            })?;
            let p = &created.point.parent;
            println!(
                "created branch {to} (database {}) of {} at lsn {} (slot {}, committed {}); no data was copied",
                created.db_id,
                p.url,
                p.lsn,
                p.slot,
                if created.point.time_ms == 0 {
                    "never: the empty database".to_owned()
                } else {
                    rfc3339(created.point.time_ms)
                }
            );
            if p.url != from {
                println!(
                    "(that point is before {from} branched, so the pin is on {})",
                    p.url
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BranchCommand::List { bucket } => {
            let url = canonical(&bucket)?;
            runtime.block_on(async {
                let branches = hadal_shipper::branch::list(open(&url).await?)
                    .await
                    .with_context(|| format!("reading {url}"))?;
                match &branches.parent {
                    Some(p) => println!("parent  {} at lsn {} (slot {})", p.url, p.lsn, p.slot),
                    None => println!("parent  none (a root database)"),
                }
                if branches.pins.is_empty() {
                    println!("pins    none");
                }
                for pin in &branches.pins {
                    let state = match child_state(&pin.name).await {
                        Ok(true) => "exists",
                        Ok(false) => "missing: its manifest is gone (delete it to release the pin)",
                        Err(_) => "unknown: not openable from here",
                    };
                    println!(
                        "branch  {} at lsn {} (pinned {}) [{state}]",
                        pin.name,
                        pin.lsn,
                        rfc3339(pin.created_ms)
                    );
                }
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        BranchCommand::Delete { bucket } => {
            let url = canonical(&bucket)?;
            let deleted = runtime.block_on(async {
                hadal_shipper::branch::delete(open(&url).await?, &url, now_ms())
                    .await
                    .with_context(|| format!("deleting the branch {url}"))
            })?;
            match &deleted.unpinned {
                Some(parent) => println!("released the pin on {parent}"),
                None => println!("no pin to release"),
            }
            let total: u64 = deleted.objects.values().sum();
            println!("deleted {total} objects of {url}: {:?}", deleted.objects);
            if !deleted.foreign.is_empty() {
                println!(
                    "left {} keys that are not Hadal's in place, e.g. {}",
                    deleted.foreign.len(),
                    deleted.foreign[0]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether the branch a pin names still has a manifest.
async fn child_state(url: &str) -> anyhow::Result<bool> {
    let log = BucketLog::new(open(url).await?);
    Ok(log.latest_manifest(None).await?.is_some())
}

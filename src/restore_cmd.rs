//! `hadal restore`: rebuild a database from its bucket alone, at its head, at an LSN or at a
//! time, into a new folder (moved into place only when complete).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use hadal_replica::{Progress, Target, restore};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The database's bucket URL (file://, s3://, gs://, az://, memory://).
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: String,
    /// The new data folder to create (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Restore exactly this commit.
    #[arg(long, conflicts_with = "time")]
    lsn: Option<u64>,
    /// Restore the newest commit at or before this time (RFC 3339, e.g. 2026-11-23T09:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    time: Option<std::time::SystemTime>,
}

pub fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.lsn, args.time) {
        (Some(lsn), _) => Target::Lsn(hadal_format::Lsn::new(lsn)),
        (None, Some(t)) => Target::Time(
            t.duration_since(std::time::UNIX_EPOCH)
                .context("time before 1970")?
                .as_millis() as u64,
        ),
        (None, None) => Target::Head,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let shown = bar.clone();
    let report = move |p: Progress| {
        shown.set_message(format!(
            "lsn {} · {} segments · {:.1} MiB",
            p.lsn.get(),
            p.segments,
            p.bytes as f64 / 1048576.0
        ));
    };
    let restored = runtime.block_on(async {
        let bucket = hadal_transports::open(&args.bucket)
            .await
            .with_context(|| format!("opening {}", args.bucket))?;
        let bucket: hadal_transports::DynBucket = Arc::new(bucket);
        restore(bucket, &args.out, target, Some(&report))
            .await
            .with_context(|| format!("restoring {} into {}", args.bucket, args.out.display()))
    });
    bar.finish_and_clear();
    let restored = restored?;
    let when = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(restored.time_ms),
    );
    println!(
        "restored {} at lsn {} (committed {when}, state checksum {}) into {}: {} segments, {:.1} MiB{}",
        args.bucket,
        restored.lsn.get(),
        restored.checksum,
        args.out.display(),
        restored.segments,
        restored.bytes as f64 / 1048576.0,
        restored
            .snapshot_lsn
            .map(|l| format!(", from the snapshot at lsn {}", l.get()))
            .unwrap_or_default(),
    );
    Ok(ExitCode::SUCCESS)
}

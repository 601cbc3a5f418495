//! Bucket administration: `hadal verify` (prove the history intact), `hadal gc` (collect what
//! the retention window and pins no longer need) and `hadal info` (what is in a bucket, what it
//! costs).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use hadal_format::Slot;
use hadal_format::segment::SegmentKind;
use hadal_replica::BucketLog;
use hadal_transports::{CostModel, DynBucket, Provider};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The database's bucket URL.
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: String,
    /// Also restore the head into a temporary folder and run the engine's integrity check.
    #[arg(long)]
    deep: bool,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The database's bucket URL.
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: String,
    /// Print what would be deleted and why, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep unreachable objects younger than this (a margin for readers mid-restore).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// First set the database's retention window (recorded in its manifest; default 7 days):
    /// every point inside it stays restorable.
    #[arg(long, value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// The database's bucket URL.
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: String,
    /// Fold a run once it holds at least this many segments.
    #[arg(long, default_value_t = 64)]
    min_segments: u64,
    /// Print the runs it would fold, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The writer's data folder (no server may be running on it).
    #[arg(long, env = "HADAL_DATA", default_value = "./hadal-data")]
    data: std::path::PathBuf,
    /// The database's bucket URL.
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: String,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The database's bucket URL.
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

async fn open(url: &str) -> anyhow::Result<DynBucket> {
    hadal_transports::open(url)
        .await
        .with_context(|| format!("opening {url}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `hadal snapshot`: opens the folder as the writer (taking the bucket over, as `hadal kv put
/// --bucket` does), uploads a snapshot of its head with a progress bar, publishes it and
/// closes.
pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let options = hadal::Options::new(&args.data).bucket(&args.bucket);
        let db = hadal::Database::open(options)
            .await
            .with_context(|| format!("opening data folder {}", args.data.display()))?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} snapshot parts {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = std::time::Instant::now();
        let taking = db.snapshot_now();
        tokio::pin!(taking);
        let taken = loop {
            tokio::select! {
                taken = &mut taking => break taken,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(m) = db.shipper_metrics() {
                        bar.set_length(m.snapshot_parts_total);
                        bar.set_position(m.snapshot_parts_done);
                    }
                }
            }
        };
        bar.finish_and_clear();
        let head = db.lsn().get();
        let closed = db.close().await;
        let taken = taken.with_context(|| format!("taking a snapshot into {}", args.bucket))?;
        closed.with_context(|| format!("closing data folder {}", args.data.display()))?;
        match taken {
            Some(snap) => {
                let bytes: u64 = snap.parts.iter().map(|p| p.bytes).sum();
                println!(
                    "snapshot at lsn {} (slot {}): {} pages in {} parts, {:.1} MiB, in {:.1?}; restores, takeovers and replicas now start from it",
                    snap.lsn,
                    snap.slot,
                    snap.page_count,
                    snap.parts.len(),
                    bytes as f64 / (1024.0 * 1024.0),
                    started.elapsed()
                );
            }
            None if head == 0 => println!("nothing to snapshot: the database is empty"),
            None => println!(
                "nothing new to snapshot: the newest snapshot is already at the head (lsn {head})"
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} segments {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let progress = move |done: u64, total: u64| {
        shown.set_length(total);
        shown.set_position(done);
    };
    let outcome = runtime()?.block_on(async {
        let bucket = open(&args.bucket).await?;
        let report = hadal_replica::verify(bucket.clone(), Some(&progress)).await;
        let deep = match (&report, args.deep) {
            (Ok(_), true) => Some(deep_check(bucket).await),
            _ => None,
        };
        Ok::<_, anyhow::Error>((report, deep))
    });
    bar.finish_and_clear();
    let (report, deep) = outcome?;
    match report {
        Ok(r) => {
            println!(
                "verified {}: {} manifests, slots {}..{} ({} segments, {} fences, {} commits, head lsn {}, epoch {}), {} snapshots ({} parts), {:.1} MiB read",
                args.bucket,
                r.manifests,
                r.first_slot,
                r.first_slot + r.segments.saturating_sub(1),
                r.segments,
                r.fences,
                r.commits,
                r.head_lsn,
                r.head_epoch,
                r.snapshots,
                r.snapshot_parts,
                r.bytes as f64 / 1048576.0
            );
            match deep {
                Some(Err(e)) => {
                    println!("FAILED (deep): {e:#}");
                    Ok(ExitCode::FAILURE)
                }
                Some(Ok(line)) => {
                    println!("{line}");
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(ExitCode::SUCCESS),
            }
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Restores the head into a temporary folder and checks the engine's integrity there.
async fn deep_check(bucket: DynBucket) -> anyhow::Result<String> {
    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    let out = scratch.path().join("restored");
    let restored = hadal_replica::restore(bucket, &out, hadal_replica::Target::Head, None)
        .await
        .context("restoring the head")?;
    let db = hadal_engine::Database::open(&out, hadal_engine::Options::default())
        .context("opening the restored database")?;
    let report = db.check_integrity().context("integrity check")?;
    Ok(format!(
        "deep: restored the head (lsn {}, state checksum {}) and checked it: {report:?}",
        restored.lsn.get(),
        restored.checksum
    ))
}

pub fn gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let options = hadal_shipper::gc::GcOptions {
        grace: args.grace,
        dry_run: args.dry_run,
    };
    let report = runtime()?.block_on(async {
        let bucket = open(&args.bucket).await?;
        if let Some(window) = args.retention {
            let window_ms = window.as_millis() as u64;
            if args.dry_run {
                println!(
                    "dry run: the retention window is not changed; planning with the current one"
                );
            } else {
                let before = hadal_shipper::gc::set_retention(bucket.clone(), window_ms, now_ms())
                    .await
                    .with_context(|| format!("setting the retention window of {}", args.bucket))?;
                println!(
                    "retention window: {} (was {})",
                    humantime::format_duration(window),
                    humantime::format_duration(Duration::from_millis(before))
                );
            }
        }
        hadal_shipper::gc::collect(bucket, now_ms(), &options)
            .await
            .with_context(|| format!("collecting garbage in {}", args.bucket))
    })?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for d in &report.deleted {
        println!("{verb} {}: {}", d.key, d.reason);
    }
    match report.base {
        Some((lsn, slot, time)) => println!(
            "base snapshot: lsn {lsn} (slot {slot}, {}); oldest restorable time now {}",
            rfc3339(time),
            rfc3339(report.oldest_restorable_ms.unwrap_or(time))
        ),
        None => println!(
            "no snapshot is older than the retention window's start (or a pin's point): the whole log is kept"
        ),
    }
    println!(
        "{verb} {} objects; kept {} fences and {} objects inside the grace age",
        report.deleted.len(),
        report.kept_fences,
        report.kept_in_grace
    );
    Ok(ExitCode::SUCCESS)
}

pub fn compact(args: CompactArgs) -> anyhow::Result<ExitCode> {
    if args.min_segments < 2 {
        anyhow::bail!("--min-segments must be at least 2: folding one segment saves nothing");
    }
    let options = hadal_shipper::compact::CompactOptions {
        min_segments: args.min_segments,
        dry_run: args.dry_run,
        ..hadal_shipper::compact::CompactOptions::default()
    };
    let report = runtime()?.block_on(async {
        let bucket = open(&args.bucket).await?;
        hadal_shipper::compact::compact(bucket, now_ms(), &options)
            .await
            .with_context(|| format!("compacting {}", args.bucket))
    })?;
    let verb = if args.dry_run { "would fold" } else { "folded" };
    for r in &report.runs {
        println!(
            "{verb} slots {}..={} (lsn {}..={}) into {} ({} bytes)",
            r.slot_first, r.slot_last, r.lsn_first, r.lsn_last, r.key, r.bytes
        );
    }
    println!(
        "{verb} {} segments into {} runs; restores of later points now read the runs instead",
        report.segments_folded,
        report.runs.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let info = runtime()?.block_on(gather(&args.bucket))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).context("encoding JSON")?
        );
    } else {
        print_info(&args.bucket, &info);
    }
    Ok(ExitCode::SUCCESS)
}

/// The cost model that prices `url`: its own provider's, or S3's for local and memory buckets
/// (what the same objects would cost there).
fn cost_model(url: &str) -> (CostModel, bool) {
    let provider = match url.split("://").next() {
        Some("gs") => Some(Provider::Gcs),
        Some("az") => Some(Provider::Azure),
        Some("s3") if url.contains("r2.cloudflarestorage.com") => Some(Provider::R2),
        Some("s3") => Some(Provider::S3),
        _ => None,
    };
    (
        CostModel::for_provider(provider.unwrap_or(Provider::S3)),
        provider.is_some(),
    )
}

async fn gather(url: &str) -> anyhow::Result<serde_json::Value> {
    let bucket = open(url).await?;
    let log = BucketLog::new(bucket.clone());
    let latest = log
        .latest_manifest(None)
        .await?
        .with_context(|| format!("no database in {url}"))?;
    let m = &latest.manifest;
    let newest_snapshot = m.snapshots.iter().max_by_key(|s| s.lsn);
    let known = newest_snapshot.map_or(m.replay_start_slot.saturating_sub(1), |s| s.slot);
    let frontier = log.frontier(Slot::new(known)).await?;
    let head = match frontier.prev().filter(|s| *s != Slot::ZERO) {
        Some(slot) => log.segment_header(slot).await?.map(|(h, _)| (slot, h)),
        None => None,
    };
    let mut objects: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut listing = bucket.list("", None);
    while let Some(item) = listing.next().await {
        let item = item?;
        let kind = ["seg/", "manifest/", "snap/", "gc/", "compact/"]
            .into_iter()
            .find(|p| item.key.starts_with(p))
            .unwrap_or("other");
        let entry = objects.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += item.size_bytes;
    }
    drop(listing);
    let total_bytes: u64 = objects.values().map(|(_, b)| b).sum();
    let (model, priced_here) = cost_model(url);
    let oldest_restorable = if m.replay_start_slot <= 1 {
        serde_json::json!({"lsn": 1, "note": "the whole log is kept"})
    } else {
        let oldest = m.snapshots.iter().min_by_key(|s| s.lsn);
        serde_json::json!({
            "lsn": oldest.map(|s| s.lsn),
            "time": oldest.map(|s| rfc3339(s.time_ms)),
        })
    };
    let window_start = now_ms().saturating_sub(m.retention_ms);
    Ok(serde_json::json!({
        "bucket": url,
        "db_id": m.db_id,
        "page_size": m.page_size,
        "manifest_id": m.id,
        "writer_epoch": m.writer_epoch,
        "head": head.as_ref().map(|(slot, h)| serde_json::json!({
            "slot": slot.get(),
            "lsn": h.lsn_last.get(),
            "epoch": h.epoch.get(),
            "kind": if h.kind == SegmentKind::Fence { "fence" } else { "commits" },
            "writer_nonce": hex_of(&h.writer_nonce),
            "newest_commit_time": h.commits.last().map(|c| rfc3339(c.time_ms)),
        })),
        "snapshots": m.snapshots.iter().map(|s| serde_json::json!({
            "lsn": s.lsn,
            "slot": s.slot,
            "time": rfc3339(s.time_ms),
            "pages": s.page_count,
            "parts": s.parts.len(),
            "bytes": s.parts.iter().map(|p| p.bytes).sum::<u64>(),
        })).collect::<Vec<_>>(),
        "retention": humantime::format_duration(Duration::from_millis(m.retention_ms)).to_string(),
        "window_start": rfc3339(window_start),
        "replay_start_slot": m.replay_start_slot,
        "oldest_restorable": oldest_restorable,
        "compacted_runs": m.compactions.iter().map(|r| serde_json::json!({
            "slots": [r.slot_first, r.slot_last], "lsns": [r.lsn_first, r.lsn_last], "bytes": r.bytes,
        })).collect::<Vec<_>>(),
        "pins": m.pins.iter().map(|p| serde_json::json!({
            "name": p.name, "lsn": p.lsn, "created": rfc3339(p.created_ms),
        })).collect::<Vec<_>>(),
        "parent": m.parent.as_ref().map(|p| serde_json::json!({
            "url": p.url, "lsn": p.lsn, "slot": p.slot,
        })),
        "objects": objects.iter().map(|(k, (n, b))| (k.trim_end_matches('/').to_owned(), serde_json::json!({"count": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "storage_bytes": total_bytes,
        "storage_usd_per_month": model.storage_usd_per_month(total_bytes),
        "priced_as": if priced_here { format!("{:?}: {}", model.provider, model.basis) } else { format!("{:?} (this is not a cloud bucket; what the same objects would cost there): {}", model.provider, model.basis) },
    }))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_info(url: &str, info: &serde_json::Value) {
    let get = |k: &str| info.get(k).cloned().unwrap_or(serde_json::Value::Null);
    println!("bucket        {url}");
    println!(
        "database      {} ({} B pages)",
        get("db_id"),
        get("page_size")
    );
    println!(
        "writer        epoch {} (manifest {})",
        get("writer_epoch"),
        get("manifest_id")
    );
    match info.get("head").filter(|h| !h.is_null()) {
        Some(h) => println!(
            "head          slot {} lsn {} ({}, epoch {}, writer {}), newest commit {}",
            h["slot"], h["lsn"], h["kind"], h["epoch"], h["writer_nonce"], h["newest_commit_time"]
        ),
        None => println!("head          empty log"),
    }
    let snaps = get("snapshots");
    let snaps = snaps.as_array().cloned().unwrap_or_default();
    println!("snapshots     {}", snaps.len());
    for s in &snaps {
        println!(
            "              lsn {} slot {} at {} ({} pages, {} parts, {} bytes)",
            s["lsn"], s["slot"], s["time"], s["pages"], s["parts"], s["bytes"]
        );
    }
    println!(
        "retention     {} (window starts {}); oldest restorable {}",
        get("retention"),
        get("window_start"),
        get("oldest_restorable")
    );
    println!("compacted     {}", get("compacted_runs"));
    println!("pins          {}", get("pins"));
    println!("parent        {}", get("parent"));
    println!("objects       {}", get("objects"));
    println!(
        "storage       {} bytes ≈ ${:.4}/month, priced as {}",
        get("storage_bytes"),
        get("storage_usd_per_month").as_f64().unwrap_or(0.0),
        get("priced_as")
    );
}

//! Opening a data folder as the writer of a bucket: check or record the folder's binding, open
//! the engine with shipping retention, take over the bucket's log, and, if the folder's history
//! diverged from the bucket's, set the folder aside and restore it from the bucket.
//!
//! Why a diverged folder is restored rather than refused: the bucket is the database's durable
//! home, and a diverged folder holds only commits that were never acknowledged as durable (a
//! `local`/`async` writer that lost a takeover, or a strict writer's unshipped tail). Keeping
//! them would fork the history, so they are discarded, but loudly: the error log names the LSN
//! range and the folder they are kept in, which is renamed, never deleted.
//!
//! Invariants:
//! 1. The binding is on disk before the shipper may upload anything from the folder.
//! 2. A folder that was not bound before this open and turns out to hold another history is
//!    refused and unbound again, never moved aside: its data was never the bucket's. Any other
//!    failed first open unbinds it too, as nothing was shipped from it.
//! 3. At most one set-aside per open: a folder freshly restored from the bucket cannot diverge
//!    from it, so a second `Diverged` is returned as an error instead of looping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hadal_engine::{Database as Engine, Lsn, Options as EngineOptions, StateChecksum};
use hadal_format::Slot;
use hadal_replica::{BucketLog, Target};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};
use hadal_transports::DynBucket;
use tokio::sync::Notify;

use crate::binding;
use crate::database::blocking;
use crate::error::{Error, Result};

/// An engine with its shipper, ready to accept writes.
pub(crate) struct Attached {
    pub engine: Engine,
    pub shipper: Shipper,
}

/// Opens `dir` as the writer of the database in the bucket at `url`.
pub(crate) async fn attach(
    dir: &Path,
    url: &str,
    engine_options: &EngineOptions,
    shipper_options: &ShipperOptions,
) -> Result<Attached> {
    let bucket = hadal_transports::open(url)
        .await
        .map_err(|source| Error::Bucket {
            url: url.to_owned(),
            source: Box::new(source),
        })?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
    let newly_bound = match binding::read(dir)? {
        Some(bound) if binding::same_bucket(&bound, url)? => false,
        Some(bound) => {
            return Err(Error::WrongBucket {
                dir: dir.display().to_string(),
                bound,
                given: url.to_owned(),
            });
        }
        None => {
            binding::write(dir, url)?;
            true
        }
    };
    let attached = take_over(
        dir,
        url,
        bucket,
        newly_bound,
        engine_options,
        shipper_options,
    )
    .await;
    if attached.is_err() && newly_bound {
        // A failed start shipped nothing from the folder (the upload loop starts only after a
        // successful takeover), so the binding this open made is not needed (invariant 2).
        binding::remove(dir)?;
    }
    attached
}

/// Opens the engine and starts the shipper, setting a diverged folder aside at most once.
async fn take_over(
    dir: &Path,
    url: &str,
    bucket: DynBucket,
    newly_bound: bool,
    engine_options: &EngineOptions,
    shipper_options: &ShipperOptions,
) -> Result<Attached> {
    let mut set_aside = false;
    loop {
        let wake = Arc::new(Notify::new());
        let options = EngineOptions {
            retain_unshipped: true,
            on_commit: Some(commit_hook(&wake)),
            ..engine_options.clone()
        };
        let path = dir.to_path_buf();
        let engine = blocking(move || Engine::open(&path, options).map_err(Error::from)).await?;
        let started = Shipper::start(
            engine.clone(),
            bucket.clone(),
            shipper_options.clone(),
            wake,
        )
        .await;
        let (local_lsn, bucket_lsn, detail) = match started {
            Ok(shipper) => return Ok(Attached { engine, shipper }),
            Err(hadal_shipper::Error::Diverged {
                local_lsn,
                bucket_lsn,
                detail,
            }) if !set_aside => (local_lsn, bucket_lsn, detail),
            Err(e) => return Err(e.into()),
        };
        if newly_bound {
            drop(engine);
            if local_lsn == Lsn::ZERO {
                return Err(Error::Shipper(hadal_shipper::Error::Diverged {
                    local_lsn,
                    bucket_lsn,
                    detail,
                }));
            }
            return Err(Error::ForeignHistory {
                dir: dir.display().to_string(),
                bucket: url.to_owned(),
                local_lsn: local_lsn.get(),
                bucket_lsn: bucket_lsn.get(),
                detail,
            });
        }
        // Reads the local WAL on the runtime thread: a rare recovery path, bounded by the
        // unshipped tail, not worth a blocking-pool hop.
        let lsn_shared = shared_prefix(&engine, &bucket).await;
        // Close the engine (its background thread is joined) before touching the folder.
        drop(engine);
        let discarded = Discarded {
            lsn_shared,
            lsn_last: local_lsn,
            bucket_lsn,
            detail,
        };
        set_aside_and_restore(dir, url, bucket.clone(), &discarded).await?;
        set_aside = true;
    }
}

/// What a set-aside discards, for the log.
struct Discarded {
    /// The last commit both histories hold, and whether that was established exactly.
    lsn_shared: Shared,
    lsn_last: Lsn,
    bucket_lsn: Lsn,
    detail: String,
}

/// The end of the history a local folder shares with its bucket.
enum Shared {
    /// Found by comparing the local commits' state checksums with the bucket's.
    Exact(Lsn),
    /// The bucket could not be read to compare; only the local checkpoint is known to be
    /// shared (a bound folder never checkpoints past what was shipped).
    AtLeast(Lsn, String),
}

/// Finds the last LSN at which the local folder and the bucket hold the same state, by a
/// binary search over segment headers (each lists its commits' checksums): a slot is shared
/// when the local commit at its last LSN has the same `checksum_after`. Commits at or below the
/// local checkpoint count as shared (see [`Shared::AtLeast`]).
async fn shared_prefix(engine: &Engine, bucket: &DynBucket) -> Shared {
    let checkpoint = engine.info().lsn_checkpoint;
    let local: BTreeMap<Lsn, StateChecksum> = match engine.commits_since(checkpoint, usize::MAX) {
        Ok(commits) => commits
            .into_iter()
            .map(|c| (c.lsn, c.checksum_after))
            .collect(),
        Err(e) => return Shared::AtLeast(checkpoint, format!("reading the local log: {e}")),
    };
    match search_shared(&BucketLog::new(bucket.clone()), &local, checkpoint).await {
        Ok(lsn) => Shared::Exact(lsn),
        Err(e) => Shared::AtLeast(checkpoint, format!("reading the bucket's log: {e}")),
    }
}

async fn search_shared(
    log: &BucketLog,
    local: &BTreeMap<Lsn, StateChecksum>,
    checkpoint: Lsn,
) -> hadal_replica::Result<Lsn> {
    let Some(latest) = log.latest_manifest(None).await? else {
        return Ok(checkpoint);
    };
    let start = latest.manifest.replay_start();
    let frontier = log
        .frontier(Slot::new(start.get().saturating_sub(1)))
        .await?;
    let header = |slot: Slot| async move {
        log.segment_header(slot)
            .await?
            .map(|(h, _)| h)
            .ok_or_else(|| {
                hadal_replica::Error::Invalid(format!("{slot:?} vanished below the frontier"))
            })
    };
    let agrees =
        |lsn: Lsn, checksum: StateChecksum| lsn <= checkpoint || local.get(&lsn) == Some(&checksum);
    // The first slot whose last commit the local folder does not share.
    let (mut lo, mut hi) = (start.get(), frontier.get());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let h = header(Slot::new(mid)).await?;
        if agrees(h.lsn_last, h.checksum_last) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut shared = checkpoint;
    if lo > start.get() {
        shared = shared.max(header(Slot::new(lo - 1)).await?.lsn_last);
    }
    if lo < frontier.get() {
        for c in header(Slot::new(lo)).await?.commits {
            if !agrees(c.lsn, c.checksum_after) {
                break;
            }
            shared = shared.max(c.lsn);
        }
    }
    Ok(shared)
}

/// Renames the diverged folder to `DIR.diverged-<unix seconds>`, restores the bucket's head
/// into `DIR` and binds it again.
async fn set_aside_and_restore(
    dir: &Path,
    url: &str,
    bucket: DynBucket,
    discarded: &Discarded,
) -> Result<()> {
    let aside = aside_path(dir)?;
    let (first, how) = match &discarded.lsn_shared {
        Shared::Exact(lsn) => (lsn.next(), String::new()),
        Shared::AtLeast(lsn, why) => (
            lsn.next(),
            format!(" (at most: the shared history could not be compared: {why})"),
        ),
    };
    let range = if first <= discarded.lsn_last {
        format!("{}..={}{how}", first.get(), discarded.lsn_last.get())
    } else {
        format!("none{how}")
    };
    tracing::error!(
        dir = %dir.display(),
        bucket = url,
        local_lsn = discarded.lsn_last.get(),
        bucket_lsn = discarded.bucket_lsn.get(),
        discarded_lsns = %range,
        kept_in = %aside.display(),
        detail = %discarded.detail,
        "the data folder's history diverged from its bucket: discarding the local commits the bucket does not hold (lsns {range}, local lsn {}, bucket lsn {}); the old folder is kept at {} and the database is restored from the bucket",
        discarded.lsn_last.get(),
        discarded.bucket_lsn.get(),
        aside.display(),
    );
    std::fs::rename(dir, &aside).map_err(|e| Error::io("rename", dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        binding::sync_dir(parent)?;
    }
    hadal_replica::restore(bucket, dir, Target::Head, None)
        .await
        .map_err(|source| Error::Restore {
            dir: dir.display().to_string(),
            bucket: url.to_owned(),
            source: Box::new(source),
        })?;
    binding::write(dir, url)
}

/// `DIR.diverged-<unix seconds>`, with `-2`, `-3`, … appended if that exists already.
fn aside_path(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::io(
                "set aside",
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the data folder path has no final component",
                ),
            )
        })?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{name}.diverged-{secs}");
    let mut candidate = dir.with_file_name(&base);
    let mut n = 2;
    while candidate.exists() {
        candidate = dir.with_file_name(format!("{base}-{n}"));
        n += 1;
    }
    Ok(candidate)
}

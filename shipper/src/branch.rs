//! Branches (DESIGN.md §3 "Branches"): a new database prefix whose history starts inside
//! another's, without copying a byte.
//!
//! Creating one:
//! 1. resolve the branch point (an LSN or a time; the head by default) to the segment holding
//!    its commit, in the database that really holds that history (a point at or below a
//!    branch's own branch point is in that branch's parent);
//! 2. add a **pin** (named by the branch's URL) to that database's manifest, in the same
//!    manifest update that checks the point is still restorable: from then on GC keeps what a
//!    restore of the point needs (`gc::base_snapshot`);
//! 3. create the branch's manifest 1 naming its parent (URL, LSN, slot, segment hash, state
//!    checksum). If another database took the destination meanwhile, the pin is removed again.
//!
//! The branch's first writer fences its slot 1 chained to the parent's segment, and its LSNs
//! continue the parent's. Deleting a branch removes the pin first, then the branch's objects
//! (manifests last, so a deletion cut short can simply be run again).

use std::collections::BTreeMap;

use futures::StreamExt;
use hadal_format::manifest::{Manifest, Parent, Pin};
use hadal_format::{Slot, keys};
use hadal_replica::{BucketLog, ResolvedPoint, Target, open_parent, resolve_point, restorable};
use hadal_transports::DynBucket;

use crate::error::{Error, Result};
use crate::manifest;

/// Deletes issued at once by [`delete`].
const PARALLEL_DELETES: usize = 16;

/// A branch that [`create`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Where the branch starts: the database holding the point (it carries the pin) and where.
    pub point: ResolvedPoint,
    /// Hex id of the new database.
    pub db_id: String,
}

/// Creates the branch `to_url` (an empty location, opened as `to`) of the database `from_url`
/// (opened as `from`) at `target`. URLs are recorded as given: pass them in canonical form
/// (absolute paths for `file://`), since the branch reads its parent through its URL.
pub async fn create(
    from: DynBucket,
    from_url: &str,
    to: DynBucket,
    to_url: &str,
    target: Target,
    now_ms: u64,
) -> Result<Created> {
    if from_url == to_url {
        return Err(Error::Invalid(format!(
            "a branch needs its own location: {to_url} is the parent itself"
        )));
    }
    let to_log = BucketLog::new(crate::with_retries(to));
    if to_log.latest_manifest(None).await?.is_some() || to_log.segment_exists(Slot::new(1)).await? {
        return Err(Error::Invalid(format!(
            "{to_url} already holds a database; choose an empty location for the branch"
        )));
    }
    let from_log = BucketLog::new(crate::with_retries(from));
    let point = resolve_point(&from_log, from_url, target).await?;
    let holder_url = point.parent.url.clone();
    let holder = if holder_url == from_url {
        from_log
    } else {
        open_parent(&holder_url).await?
    };
    let lsn = hadal_format::Lsn::new(point.parent.lsn);
    let pinned = manifest::update(&holder, now_ms, |m| {
        if !restorable(m, lsn) {
            return Err(Error::Invalid(format!(
                "lsn {} of {holder_url} was collected by GC while the branch was being created; choose a later point",
                lsn.get()
            )));
        }
        match m.pins.iter().find(|p| p.name == to_url) {
            Some(p) if p.lsn == lsn.get() => {}
            Some(p) => {
                return Err(Error::Invalid(format!(
                    "{holder_url} already pins lsn {} for {to_url}; delete that branch first",
                    p.lsn
                )));
            }
            None => m.pins.push(Pin {
                name: to_url.to_owned(),
                lsn: lsn.get(),
                created_ms: now_ms,
            }),
        }
        Ok(())
    })
    .await?;
    let mut first = Manifest::first(rand::random(), pinned.manifest.page_size, now_ms);
    first.retention_ms = pinned.manifest.retention_ms;
    first.parent = Some(point.parent.clone());
    match manifest::create(&to_log, &mut first).await {
        Ok(Some(_)) => {
            tracing::info!(
                parent = %holder_url,
                lsn = lsn.get(),
                branch = to_url,
                "branch created"
            );
            Ok(Created {
                point,
                db_id: first.db_id,
            })
        }
        outcome => {
            unpin(&holder, to_url, now_ms).await?;
            match outcome {
                Err(e) => Err(e),
                _ => Err(Error::Invalid(format!(
                    "another database was created at {to_url} meanwhile; the pin was removed"
                ))),
            }
        }
    }
}

/// Removes the pin named `name` from the database in `log`, if it is there.
async fn unpin(log: &BucketLog, name: &str, now_ms: u64) -> Result<bool> {
    let Some(latest) = log.latest_manifest(None).await? else {
        return Ok(false);
    };
    if !latest.manifest.pins.iter().any(|p| p.name == name) {
        return Ok(false);
    }
    manifest::update(log, now_ms, |m| {
        m.pins.retain(|p| p.name != name);
        Ok(())
    })
    .await?;
    Ok(true)
}

/// What a database's manifest says about branches: its parent, and the branches it pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branches {
    pub parent: Option<Parent>,
    pub pins: Vec<Pin>,
}

/// The parent and pins of the database in `bucket`.
pub async fn list(bucket: DynBucket) -> Result<Branches> {
    let log = BucketLog::new(crate::with_retries(bucket));
    let latest = log
        .latest_manifest(None)
        .await?
        .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?;
    Ok(Branches {
        parent: latest.manifest.parent,
        pins: latest.manifest.pins,
    })
}

/// What [`delete`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The parent whose pin was removed (`None`: no parent, or the pin was already gone).
    pub unpinned: Option<String>,
    /// Objects deleted, by kind (`seg`, `snap`, `gc`, `manifest`).
    pub objects: BTreeMap<String, u64>,
    /// Keys under the prefix that are not Hadal's, left in place.
    pub foreign: Vec<String>,
}

/// Deletes the branch at `url` (opened as `bucket`): removes its pin from its parent, then all
/// its objects. Refused while the branch has branches of its own. Stop the branch's writer
/// first: a writer still running would keep creating segments in the deleted location.
pub async fn delete(bucket: DynBucket, url: &str, now_ms: u64) -> Result<Deleted> {
    let log = BucketLog::new(crate::with_retries(bucket));
    let mut out = Deleted::default();
    match log.latest_manifest(None).await? {
        Some(latest) => {
            let m = latest.manifest;
            let Some(parent) = m.parent else {
                return Err(Error::Invalid(format!(
                    "{url} is not a branch (its manifest names no parent); refusing to delete a root database"
                )));
            };
            if !m.pins.is_empty() {
                let names: Vec<&str> = m.pins.iter().map(|p| p.name.as_str()).collect();
                return Err(Error::Invalid(format!(
                    "{url} has branches of its own ({}); delete them first",
                    names.join(", ")
                )));
            }
            let parent_log = open_parent(&parent.url).await?;
            if unpin(&parent_log, url, now_ms).await? {
                out.unpinned = Some(parent.url);
            }
        }
        None => tracing::warn!(
            url,
            "no manifest left: finishing an earlier deletion of the branch's objects"
        ),
    }
    let mut later = Vec::new();
    let mut listing = log.bucket().list("", None);
    let mut keys_now = Vec::new();
    while let Some(info) = listing.next().await {
        let key = info?.key;
        let kind = [
            keys::SEGMENT_PREFIX,
            keys::SNAPSHOT_PREFIX,
            keys::GC_PREFIX,
            keys::MANIFEST_PREFIX,
        ]
        .into_iter()
        .find(|p| key.starts_with(p));
        match kind {
            Some(keys::MANIFEST_PREFIX) => later.push(key),
            Some(p) => keys_now.push((p.trim_end_matches('/').to_owned(), key)),
            None => out.foreign.push(key),
        }
    }
    drop(listing);
    delete_all(&log, &keys_now, &mut out).await?;
    let manifests: Vec<(String, String)> = later
        .into_iter()
        .map(|k| ("manifest".to_owned(), k))
        .collect();
    delete_all(&log, &manifests, &mut out).await?;
    if !out.foreign.is_empty() {
        tracing::warn!(
            count = out.foreign.len(),
            "left keys that are not Hadal's in place"
        );
    }
    Ok(out)
}

async fn delete_all(log: &BucketLog, doomed: &[(String, String)], out: &mut Deleted) -> Result<()> {
    let bucket = log.bucket();
    let results: Vec<Result<()>> = futures::stream::iter(doomed)
        .map(|(_, key)| async move {
            bucket
                .delete(key)
                .await
                .map_err(|e| Error::Bucket(format!("deleting {key}: {e}")))
        })
        .buffer_unordered(PARALLEL_DELETES)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    for (kind, _) in doomed {
        *out.objects.entry(kind.clone()).or_default() += 1;
    }
    Ok(())
}

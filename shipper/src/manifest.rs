//! Manifest updates: read the latest, modify, create it at the next id (DESIGN.md §3). On a
//! conflict the update is re-read and re-applied; an ambiguous create is resolved by reading
//! the object back and comparing its nonce.

use bytes::Bytes;
use hadal_format::boundary::{Boundary, MANIFEST_BOUNDARY};
use hadal_format::keys;
use hadal_format::manifest::Manifest;
use hadal_replica::{BucketLog, ManifestAt};
use hadal_transports::{Created, Nonce};

use crate::error::{Error, Result};

/// Creates `key` if absent. Returns whether the object there now is ours: created by this
/// call, or by an earlier attempt of it whose answer was lost (same nonce and bytes); `false`
/// if another writer's object holds the key (or it vanished when read back, which settles
/// nothing: callers re-read and retry).
pub(crate) async fn create_resolved(
    log: &BucketLog,
    key: &str,
    bytes: Bytes,
    nonce: Nonce,
) -> Result<bool> {
    Ok(
        match log
            .bucket()
            .put_if_absent(key, bytes.clone(), nonce)
            .await?
        {
            Created::Created(_) => true,
            Created::Exists => log
                .bucket()
                .get(key)
                .await?
                .is_some_and(|o| o.is_ours(nonce, &bytes)),
        },
    )
}

/// Attempts before a manifest update gives up on contention (F6: never livelock silently).
pub const MANIFEST_UPDATE_ATTEMPTS_MAX: usize = 32;

/// Creates `manifest` at its id. Returns whether it is now there (ours), or `false` if another
/// writer's manifest took the id.
pub(crate) async fn create(log: &BucketLog, manifest: &mut Manifest) -> Result<Option<ManifestAt>> {
    let nonce = Nonce::random();
    manifest.nonce = nonce.to_string();
    let (bytes, hash) = manifest
        .encode()
        .map_err(|e| Error::Invalid(format!("encoding manifest: {e}")))?;
    let key = keys::manifest(manifest.manifest_id());
    let bytes = Bytes::from(bytes);
    let ours = create_resolved(log, &key, bytes, nonce).await?;
    if ours && below_boundary(log, manifest.id).await? {
        tracing::warn!(
            key,
            "created a manifest id that GC had already collected (a stale writer): treating it as a conflict"
        );
        return Ok(None);
    }
    Ok(ours.then(|| ManifestAt {
        manifest: manifest.clone(),
        hash,
    }))
}

/// Whether manifest `id` is at or below `gc/manifest.boundary` (DESIGN.md §3): then our create
/// recreated a name GC had deleted, and must count as a conflict.
async fn below_boundary(log: &BucketLog, id: u64) -> Result<bool> {
    let key = keys::gc_boundary(MANIFEST_BOUNDARY);
    let Some(object) = log.bucket().get(&key).await? else {
        return Ok(false);
    };
    let boundary =
        Boundary::decode(&object.bytes).map_err(|e| Error::Corrupt(format!("{key}: {e}")))?;
    Ok(id <= boundary.value)
}

/// Applies `modify` to the latest manifest and publishes the result as the next one.
pub(crate) async fn update(
    log: &BucketLog,
    now_ms: u64,
    modify: impl Fn(&mut Manifest) -> Result<()>,
) -> Result<ManifestAt> {
    let mut hint = None;
    for _ in 0..MANIFEST_UPDATE_ATTEMPTS_MAX {
        let latest = log
            .latest_manifest(hint)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no database in {}", log.bucket().name())))?;
        hint = Some(latest.manifest.manifest_id());
        let mut next = latest.manifest.successor(latest.hash, now_ms);
        modify(&mut next)?;
        if let Some(created) = create(log, &mut next).await? {
            return Ok(created);
        }
    }
    Err(Error::Bucket(format!(
        "gave up updating the manifest of {} after {MANIFEST_UPDATE_ATTEMPTS_MAX} conflicts",
        log.bucket().name()
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hadal_transports::{Bucket, MemoryBucket};

    use super::*;

    #[tokio::test]
    async fn a_create_at_or_below_the_gc_boundary_is_a_conflict() {
        // Proves a stale writer that recreates a collected manifest id is told it lost: manifests
        // 1..=3 exist, GC advanced the boundary to 2 and deleted 1 and 2; a create of id 2 lands
        // (the name is free) but must count as a conflict, while id 4 is ours.
        let memory = Arc::new(MemoryBucket::new());
        let log = BucketLog::new(memory.clone());
        let mut m = Manifest::first([1; 16], 4096, 0);
        for _ in 0..3 {
            let at = create(&log, &mut m).await.expect("create").expect("ours");
            m = at.manifest.successor(at.hash, 0);
        }
        let boundary = Boundary::new(MANIFEST_BOUNDARY, 2, 0)
            .encode()
            .expect("encode");
        memory
            .put(&keys::gc_boundary(MANIFEST_BOUNDARY), boundary.into())
            .await
            .expect("boundary");
        for id in [1, 2] {
            memory
                .delete(&keys::manifest(hadal_format::ManifestId::new(id)))
                .await
                .expect("delete");
        }
        let mut stale = Manifest::first([1; 16], 4096, 0);
        stale.id = 2;
        stale.prev_hash = Some(hadal_format::ObjectHash::ZERO.to_hex());
        assert!(create(&log, &mut stale).await.expect("create").is_none());
        assert!(create(&log, &mut m).await.expect("create").is_some());
    }
}

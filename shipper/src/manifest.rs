//! Manifest updates: read the latest, modify, create it at the next id (DESIGN.md §3). On a
//! conflict the update is re-read and re-applied; an ambiguous create is resolved by reading
//! the object back and comparing its nonce.

use bytes::Bytes;
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
    Ok(ours.then(|| ManifestAt {
        manifest: manifest.clone(),
        hash,
    }))
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

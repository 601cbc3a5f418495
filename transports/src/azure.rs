//! `az://CONTAINER/PREFIX`: Azure Blob Storage (and Azurite) through `object_store`'s Azure
//! backend.
//!
//! Conditional writes: create-if-absent is a `Put Blob` with `If-None-Match: *`; Azure answers
//! 412 and Azurite 409 when the blob exists, and object_store maps both to `AlreadyExists`
//! (accepted as "exists"). CAS is `If-Match: <ETag>` (412 = mismatch). The nonce is stored as
//! `x-ms-meta-hadal-nonce`.
//!
//! Invariants:
//! 1. object_store's internal retries are off (`max_retries = 0`) and, because it maps *every*
//!    HTTP 409 to `AlreadyExists`, an "exists"/"precondition" answer is confirmed by reading the
//!    blob back: our nonce means the write was ours (`Created`/`Swapped`).
//! 2. Listing uses object_store's folder-style prefix (the part of our prefix up to its last
//!    `/`) and filters by the full string prefix and `start_after` itself, because Azurite
//!    ignores `startFrom` and object_store prefixes match whole path segments only.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, ListStream, NONCE_METADATA_KEY, Nonce, Object,
    ObjectInfo, Swapped, Version, validate_key,
};
use crate::error::{Error, Op, Result};

/// Azurite's well-known development account and key (published by Microsoft; not a secret).
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
pub const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureConfig {
    pub container: String,
    pub prefix: String,
    /// Storage account; `None` reads `AZURE_STORAGE_ACCOUNT_NAME` (or the emulator's).
    pub account: Option<String>,
    /// Blob service URL including the account for path-style endpoints
    /// (`http://127.0.0.1:10000/devstoreaccount1`); `None` for `https://ACCOUNT.blob.core…`.
    pub endpoint: Option<String>,
    /// Azurite: use the well-known development account and key, allow plain HTTP, and filter
    /// listings client-side.
    pub emulator: bool,
}

#[derive(Debug)]
pub struct AzureBucket {
    store: MicrosoftAzure,
    base: String,
    name: String,
    emulator: bool,
}

fn store_error(op: Op, key: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Error::not_found(op, key),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::fatal(op, key, e),
        E::NotSupported { .. } | E::NotImplemented { .. } => Error::fatal(op, key, e),
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => Error::invalid(op, key, e),
        E::AlreadyExists { .. } | E::Precondition { .. } => Error::conflict(op, key, e),
        other => {
            let detail = other.to_string();
            match http_status_in(&detail) {
                Some(status) => Error::from_status(op, key, status, detail),
                None => Error::transient(op, key, detail),
            }
        }
    }
}

/// object_store keeps the HTTP status of a failed request private; its message carries it as
/// "status code: 400". Without it every 4xx would be resent as if transient.
fn http_status_in(message: &str) -> Option<u16> {
    let at = message.find("status code: ")? + "status code: ".len();
    message.get(at..at + 3)?.parse().ok()
}

impl AzureBucket {
    pub fn connect(config: AzureConfig) -> Result<AzureBucket> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let no_retries = RetryConfig {
            max_retries: 0,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        };
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_container_name(&config.container)
            .with_retry(no_retries);
        let account = config
            .account
            .clone()
            .or_else(|| env("AZURE_STORAGE_ACCOUNT_NAME"));
        if config.emulator {
            builder = builder
                .with_account(account.unwrap_or_else(|| EMULATOR_ACCOUNT.to_owned()))
                .with_access_key(EMULATOR_KEY)
                .with_allow_http(true);
        } else if let Some(account) = account {
            builder = builder.with_account(account);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let store = builder
            .build()
            .map_err(|e| Error::fatal(Op::Connect, &config.container, format!("azure: {e}")))?;
        let base = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        let name = format!("az://{}/{}", config.container, config.prefix);
        Ok(AzureBucket {
            store,
            base,
            name,
            emulator: config.emulator,
        })
    }

    fn path(&self, op: Op, key: &str) -> Result<Path> {
        validate_key(op, key)?;
        Ok(Path::from(format!("{}{key}", self.base)))
    }

    async fn read(&self, op: Op, key: &str) -> Result<Option<Object>> {
        let path = self.path(op, key)?;
        let result = match self.store.get_opts(&path, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(op, key, e)),
        };
        let version = version(op, key, result.meta.e_tag.clone())?;
        let metadata = result
            .attributes
            .iter()
            .filter_map(|(attribute, value)| match attribute {
                Attribute::Metadata(name) => Some((name.to_string(), value.to_string())),
                _ => None,
            })
            .collect();
        let bytes = result.bytes().await.map_err(|e| store_error(op, key, e))?;
        Ok(Some(Object {
            bytes,
            version,
            metadata,
        }))
    }

    /// Puts with a precondition; `Ok(None)` when the precondition failed for someone else's
    /// object, `Ok(Some(version))` when the object is (now) ours.
    async fn conditional_put(
        &self,
        op: Op,
        key: &str,
        body: Bytes,
        nonce: Nonce,
        mode: PutMode,
    ) -> Result<Option<Version>> {
        let path = self.path(op, key)?;
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(NONCE_METADATA_KEY.into()),
            nonce.to_string().into(),
        );
        let options = PutOptions {
            mode,
            attributes,
            ..PutOptions::default()
        };
        let payload = PutPayload::from_bytes(body.clone());
        match self.store.put_opts(&path, payload, options).await {
            Ok(result) => Ok(Some(version(op, key, result.e_tag)?)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => match self.read(op, key).await? {
                Some(object) if object.is_ours(nonce, &body) => Ok(Some(object.version)),
                _ => Ok(None),
            },
            Err(e) => Err(store_error(op, key, e)),
        }
    }
}

fn version(op: Op, key: &str, e_tag: Option<String>) -> Result<Version> {
    e_tag.map(Version::new).ok_or_else(|| {
        Error::fatal(
            op,
            key,
            "the store returned no ETag: cannot compare-and-swap",
        )
    })
}

#[async_trait]
impl Bucket for AzureBucket {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            compose: false,
            append: false,
            user_metadata: true,
        }
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        Ok(
            match self
                .conditional_put(Op::PutIfAbsent, key, body, nonce, PutMode::Create)
                .await?
            {
                Some(version) => Created::Created(version),
                None => Created::Exists,
            },
        )
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(expected.as_str().to_owned()),
            version: None,
        });
        Ok(
            match self
                .conditional_put(Op::PutIfMatch, key, body, nonce, mode)
                .await
            {
                Ok(Some(version)) => Swapped::Swapped(version),
                Ok(None) => Swapped::Mismatch,
                // If-Match on a missing blob: Azure answers 404 or 412 depending on the service.
                Err(e) if e.kind() == crate::ErrorKind::NotFound => Swapped::Mismatch,
                Err(e) => return Err(e),
            },
        )
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        let path = self.path(Op::Put, key)?;
        match self.store.put(&path, PutPayload::from_bytes(body)).await {
            Ok(result) => version(Op::Put, key, result.e_tag),
            Err(e) => Err(store_error(Op::Put, key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.read(Op::Get, key).await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        const OP: Op = Op::GetRange;
        let path = self.path(OP, key)?;
        range.validate(OP, key)?;
        // Resolve against the size first: object_store and the service disagree on the edges
        // (empty objects, suffixes longer than the object), and the contract is HTTP's.
        let size = match self.store.head(&path).await {
            Ok(meta) => meta.size,
            Err(e) => return Err(store_error(OP, key, e)),
        };
        let r = range.resolve(OP, key, size)?;
        let options = GetOptions {
            range: Some(GetRange::Bounded(r)),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&path, options)
            .await
            .map_err(|e| store_error(OP, key, e))?;
        result.bytes().await.map_err(|e| store_error(OP, key, e))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path(Op::Head, key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size_bytes: meta.size,
                version: Some(version(Op::Head, key, meta.e_tag)?),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(Op::Head, key, e)),
        }
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let full_prefix = format!("{}{prefix}", self.base);
        let folder = full_prefix
            .rfind('/')
            .map(|i| Path::from(&full_prefix[..i]));
        let base_len = self.base.len();
        let inner = match (start_after, self.emulator) {
            (Some(after), false) => {
                let offset = Path::from(format!("{}{after}", self.base));
                self.store.list_with_offset(folder.as_ref(), &offset)
            }
            _ => self.store.list(folder.as_ref()),
        };
        let after = start_after.map(str::to_owned);
        let owned_prefix = prefix.to_owned();
        let listed = inner.filter_map(move |meta| {
            let item = match meta {
                Err(e) => Some(Err(store_error(Op::List, &owned_prefix, e))),
                Ok(meta) => {
                    let full = meta.location.to_string();
                    let key = full.get(base_len..).unwrap_or_default().to_owned();
                    let wanted = full.starts_with(&full_prefix)
                        && after.as_deref().is_none_or(|a| key.as_str() > a);
                    wanted.then(|| {
                        Ok(ObjectInfo {
                            key,
                            size_bytes: meta.size,
                            version: meta.e_tag.map(Version::new),
                        })
                    })
                }
            };
            futures::future::ready(item)
        });
        crate::paging::checked(
            prefix.to_owned(),
            start_after.map(str::to_owned),
            listed.boxed(),
        )
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(Op::Delete, key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(Op::Delete, key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the HTTP status is recovered from object_store's message, so a 400 is not retried.
    #[test]
    fn status_from_message() {
        let text = "Error performing PUT http://x in 2ms - Server returned non-2xx status code: \
                    400 Bad Request: <Error>";
        assert_eq!(http_status_in(text), Some(400));
        assert_eq!(http_status_in("connection reset"), None);
        let e = store_error(
            Op::Put,
            "k",
            object_store::Error::Generic {
                store: "MicrosoftAzure",
                source: text.into(),
            },
        );
        assert_eq!(e.kind(), crate::ErrorKind::Invalid);
    }
}

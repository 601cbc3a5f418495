//! `ObjectStoreBucket`: Hadal's `Bucket` trait over any `Arc<dyn ObjectStore>`, so Hadal ships
//! through the very same latency-injected in-memory store SlateDB writes to (object_store 0.14 is
//! the one version in the graph: SlateDB 0.18 needs `^0.14.2`, and so does `transports`' Azure
//! backend).
//!
//! It follows `hadal_transports::azure` (the other object_store-backed bucket):
//! 1. Create-if-absent is `PutMode::Create`, CAS is `PutMode::Update` on the ETag; the nonce goes
//!    into object metadata (`Attribute::Metadata`), which `InMemory` keeps. An "exists" or
//!    "precondition" answer is confirmed by reading the object back: our nonce and bytes mean
//!    the write was ours.
//! 2. Listing asks the store for the folder part of the prefix (object_store prefixes match
//!    whole path segments) and filters by the full string prefix and `start_after` itself; the
//!    order check of `hadal_transports::checked` guards the contract's byte order.
//!
//! `hadal-conformance`'s contract suite runs against it in this crate's tests.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, Error, ListStream, NONCE_METADATA_KEY, Nonce, Object,
    ObjectInfo, Op, Result, Swapped, Version, validate_key,
};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, UpdateVersion,
};
use std::sync::Arc;

#[derive(Debug)]
pub struct ObjectStoreBucket {
    store: Arc<dyn ObjectStore>,
    /// `prefix/`, prepended to every key.
    base: String,
    name: String,
}

impl ObjectStoreBucket {
    /// A bucket holding its keys under `prefix/` in `store`; `name` names it in errors.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, name: &str) -> Self {
        Self {
            store,
            base: format!("{prefix}/"),
            name: name.to_owned(),
        }
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

    /// Puts with a precondition; `Ok(None)` when it failed for someone else's object,
    /// `Ok(Some(version))` when the object is (now) ours.
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
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(body.clone()), options)
            .await
        {
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

fn store_error(op: Op, key: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Error::not_found(op, key),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::fatal(op, key, e),
        E::NotSupported { .. } | E::NotImplemented { .. } => Error::fatal(op, key, e),
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => Error::invalid(op, key, e),
        E::AlreadyExists { .. } | E::Precondition { .. } => Error::conflict(op, key, e),
        other => Error::transient(op, key, other),
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
impl Bucket for ObjectStoreBucket {
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
                // `InMemory` answers an update of a missing object with NotFound.
                Err(e) if e.kind() == hadal_transports::ErrorKind::NotFound => Swapped::Mismatch,
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
        // Resolve against the size first: the contract's edges are HTTP's, object_store's differ
        // (empty objects, suffixes longer than the object).
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
        let inner = match start_after {
            Some(after) => {
                let offset = Path::from(format!("{}{after}", self.base));
                self.store.list_with_offset(folder.as_ref(), &offset)
            }
            None => self.store.list(folder.as_ref()),
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
        hadal_transports::checked(
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
    use hadal_conformance::{SuiteOptions, run_suite};
    use hadal_transports::DynBucket;

    // Proves the adapter keeps the whole Bucket contract (create-if-absent and CAS races, nonces,
    // listing order and pagination, ranges, deletes, ambiguous writes) over object_store's
    // `InMemory`, so the shipper's guarantees hold on the store the benchmark uses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_contract_suite() {
        let factory = |_case: &'static str| async {
            let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            let bucket: DynBucket = Arc::new(ObjectStoreBucket::new(store, "hadal", "bench"));
            Ok(bucket)
        };
        let report = run_suite(factory, &SuiteOptions::full()).await;
        assert!(report.passed(), "{report}");
    }

    // Proves the shipper's conditional-write self-test accepts the adapter, through the latency
    // store the benchmark puts in front of it.
    #[tokio::test]
    async fn passes_the_self_test_through_the_latency_store() {
        let model = super::super::latency::LatencyModel {
            mean: std::time::Duration::from_millis(1),
            jitter: std::time::Duration::ZERO,
            seed: 3,
        };
        let store: Arc<dyn ObjectStore> = Arc::new(super::super::latency::LatencyStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            model,
            "hadal/seg/",
        ));
        let bucket = ObjectStoreBucket::new(store, "hadal", "bench");
        let report = hadal_transports::self_test(&bucket)
            .await
            .expect("self-test");
        assert!(report.passed(), "{report:?}");
    }
}

//! The four stores the end-to-end tests ship to: `memory://`, `file://`, moto (S3 API) and
//! Azurite (Azure Blob API). The two servers are started by the test itself through the
//! conformance crate's harness (loopback only, health-checked, killed by PID on drop, also on
//! failure), with the conformance tests' own skip rule: a server that is not installed skips the
//! test with a printed reason on a developer's machine and fails it under `CI=true`.
//!
//! moto runs single-threaded (the harness starts it so, for its create race) and serves one
//! connection at a time. A request future that has connected but is parked unpolled — a restore's
//! read-ahead while the restore asks something else — then holds moto's only thread, and every
//! other request waits behind it until its attempt times out. So the moto bucket drives each
//! request to completion on its own task ([`DrivenRequests`]), as a multi-threaded server would
//! let it finish; what the tests prove about the shipper and the restore is unchanged.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use hadal_conformance::servers::{Azurite, Moto};
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, DynBucket, Error, ListStream, Nonce, Object,
    ObjectInfo, Op, Result, Swapped, Version, async_trait,
};

/// The conformance tests' skip rule, compiled from the same file so the two cannot drift.
#[path = "../../../conformance/tests/common/mod.rs"]
mod conformance_common;

/// A started store; every [`Store::bucket`] call gives a fresh, empty database prefix in it.
pub enum Store {
    Memory,
    File(tempfile::TempDir),
    Moto(Moto),
    Azurite(Azurite),
}

/// Container (Azure) and bucket (S3) name the tests create on the servers.
const SERVER_BUCKET: &str = "hadal-e2e";

impl Store {
    pub fn memory() -> Store {
        Store::Memory
    }

    pub fn file() -> Store {
        Store::File(tempfile::tempdir().expect("tempdir for the file:// bucket"))
    }

    /// moto, or `None` (after printing why) when it is not installed outside CI.
    pub async fn moto(test: &str) -> Option<Store> {
        conformance_common::started_or_skip(Moto::start().await, test).map(Store::Moto)
    }

    /// Azurite, or `None` (after printing why) when it is not installed outside CI.
    pub async fn azurite(test: &str) -> Option<Store> {
        conformance_common::started_or_skip(Azurite::start().await, test).map(Store::Azurite)
    }

    /// A fresh prefix named `name` (plus a random run tag, so reruns never collide).
    pub async fn bucket(&self, name: &str) -> DynBucket {
        let prefix = format!("{name}-{}", Nonce::random());
        match self {
            Store::Memory => hadal_transports::open(&format!("memory://{prefix}"))
                .await
                .expect("open memory bucket"),
            Store::File(dir) => {
                hadal_transports::open(&format!("file://{}/{prefix}", dir.path().display()))
                    .await
                    .expect("open file bucket")
            }
            Store::Moto(moto) => Arc::new(DrivenRequests(Arc::new(
                moto.bucket(SERVER_BUCKET, &prefix)
                    .await
                    .unwrap_or_else(|e| panic!("moto bucket: {e}\n{}", moto.process.log_tail())),
            ))),
            Store::Azurite(azurite) => Arc::new(
                azurite
                    .bucket(SERVER_BUCKET, &prefix)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("azurite container: {e}\n{}", azurite.process.log_tail())
                    }),
            ),
        }
    }

    /// The server's last log lines, for failure messages (empty for the local stores).
    pub fn log_tail(&self) -> String {
        match self {
            Store::Memory | Store::File(_) => String::new(),
            Store::Moto(moto) => moto.process.log_tail(),
            Store::Azurite(azurite) => azurite.process.log_tail(),
        }
    }
}

/// Runs every request of the wrapped bucket on its own task, so it completes even while its
/// caller's future is parked (see the module comment).
#[derive(Debug)]
struct DrivenRequests(DynBucket);

impl DrivenRequests {
    async fn drive<T, F, Fut>(&self, op: Op, key: &str, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(DynBucket) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        tokio::spawn(call(self.0.clone()))
            .await
            .unwrap_or_else(|e| Err(Error::fatal(op, key, format!("request task failed: {e}"))))
    }
}

#[async_trait]
impl Bucket for DrivenRequests {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        let k = key.to_owned();
        self.drive(Op::PutIfAbsent, key, move |b| async move {
            b.put_if_absent(&k, body, nonce).await
        })
        .await
    }
    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        let (k, expected) = (key.to_owned(), expected.clone());
        self.drive(Op::PutIfMatch, key, move |b| async move {
            b.put_if_match(&k, body, &expected, nonce).await
        })
        .await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        let k = key.to_owned();
        self.drive(Op::Put, key, move |b| async move { b.put(&k, body).await })
            .await
    }
    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let k = key.to_owned();
        self.drive(Op::Get, key, move |b| async move { b.get(&k).await })
            .await
    }
    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let k = key.to_owned();
        self.drive(Op::GetRange, key, move |b| async move {
            b.get_range(&k, range).await
        })
        .await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let k = key.to_owned();
        self.drive(Op::Head, key, move |b| async move { b.head(&k).await })
            .await
    }
    /// The whole listing is read on one task (test listings are small), then replayed.
    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let (p, after) = (prefix.to_owned(), start_after.map(str::to_owned));
        let listing = tokio::spawn({
            let bucket = self.0.clone();
            async move { hadal_transports::list_all(bucket.as_ref(), &p, after.as_deref()).await }
        });
        let prefix = prefix.to_owned();
        futures::stream::once(async move {
            let items = listing.await.unwrap_or_else(|e| {
                Err(Error::fatal(
                    Op::List,
                    &prefix,
                    format!("request task failed: {e}"),
                ))
            });
            match items {
                Ok(items) => futures::stream::iter(items.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            }
        })
        .flatten()
        .boxed()
    }
    async fn delete(&self, key: &str) -> Result<()> {
        let k = key.to_owned();
        self.drive(Op::Delete, key, move |b| async move { b.delete(&k).await })
            .await
    }
}

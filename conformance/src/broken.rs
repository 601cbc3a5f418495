//! Deliberately broken buckets: the negative controls that prove the contract suite and the
//! self-test have teeth. A race test that passes against `Flaw::RacyCheckThenWrite` is not
//! testing anything; a self-test that accepts `Flaw::IgnoresPreconditions` would let F11 (a
//! store that ignores conditional headers) corrupt a log.
//!
//! Invariant: the flaw is the only difference from `MemoryBucket`; reads, listing and deletes
//! are the real thing, so a failing case points at the primitive, not at the harness.

use bytes::Bytes;
use hadal_transports::async_trait;
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, ListStream, MemoryBucket, Nonce, Object, ObjectInfo,
    Result, Swapped, Version,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Conditional writes check, yield to other tasks, then write without a lock: correct when
    /// alone, several winners under concurrency (moto's large-body bug, s3s-fs).
    RacyCheckThenWrite,
    /// Conditional writes always overwrite (Garage, some gateways).
    IgnoresPreconditions,
}

#[derive(Debug, Clone)]
pub struct BrokenBucket {
    inner: MemoryBucket,
    flaw: Flaw,
    name: String,
}

impl BrokenBucket {
    pub fn new(flaw: Flaw) -> BrokenBucket {
        let name = format!("broken://{flaw:?}");
        BrokenBucket {
            inner: MemoryBucket::new(),
            flaw,
            name,
        }
    }

    /// Replaces whatever is at `key` (the unlocked write both flaws end with).
    async fn overwrite(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Version> {
        self.inner.delete(key).await?;
        match self.inner.put_if_absent(key, body, nonce).await? {
            Created::Created(version) => Ok(version),
            // Another racer's overwrite landed between our delete and create; report success
            // anyway, as a store without a lock would.
            Created::Exists => Ok(Version::new(Nonce::random().to_string())),
        }
    }
}

#[async_trait]
impl Bucket for BrokenBucket {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        if self.flaw == Flaw::RacyCheckThenWrite {
            if self.inner.head(key).await?.is_some() {
                return Ok(Created::Exists);
            }
            tokio::task::yield_now().await;
        }
        Ok(Created::Created(self.overwrite(key, body, nonce).await?))
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        if self.flaw == Flaw::RacyCheckThenWrite {
            let current = self.inner.head(key).await?.and_then(|info| info.version);
            if current.as_ref() != Some(expected) {
                return Ok(Swapped::Mismatch);
            }
            tokio::task::yield_now().await;
        }
        Ok(Swapped::Swapped(self.overwrite(key, body, nonce).await?))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        self.inner.put(key, body).await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        self.inner.list(prefix, start_after)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

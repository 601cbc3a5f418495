//! A bucket scoped to a key prefix inside another: how the suite gives every case an empty
//! bucket on a shared server, and how `hadal bucket check` tests a user's bucket without
//! touching anything outside `_hadal/check/<nonce>/`.
//!
//! Invariant: the prefix ends with `/` and is added to every key on the way in and removed on
//! the way out, so the wrapped bucket sees only keys under it and callers never see it.

use bytes::Bytes;
use futures::StreamExt;
use hadal_transports::async_trait;
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, DynBucket, Error, ListStream, Nonce, Object,
    ObjectInfo, Op, Result, Swapped, Version, validate_key,
};

#[derive(Debug, Clone)]
pub struct PrefixedBucket {
    inner: DynBucket,
    prefix: String,
    name: String,
}

impl PrefixedBucket {
    /// `prefix` must be a valid key path; a trailing `/` is added if missing.
    pub fn new(inner: DynBucket, prefix: &str) -> Result<PrefixedBucket> {
        let prefix = prefix.trim_end_matches('/');
        validate_key(Op::Connect, prefix)?;
        let name = format!("{} (under {prefix}/)", inner.name());
        Ok(PrefixedBucket {
            inner,
            prefix: format!("{prefix}/"),
            name,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Bucket for PrefixedBucket {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        validate_key(Op::PutIfAbsent, key)?;
        self.inner.put_if_absent(&self.full(key), body, nonce).await
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        validate_key(Op::PutIfMatch, key)?;
        self.inner
            .put_if_match(&self.full(key), body, expected, nonce)
            .await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        validate_key(Op::Put, key)?;
        self.inner.put(&self.full(key), body).await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        validate_key(Op::Get, key)?;
        self.inner.get(&self.full(key)).await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        validate_key(Op::GetRange, key)?;
        self.inner.get_range(&self.full(key), range).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        validate_key(Op::Head, key)?;
        Ok(self.inner.head(&self.full(key)).await?.map(|mut info| {
            info.key = key.to_owned();
            info
        }))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let full_after = start_after.map(|a| self.full(a));
        let strip = self.prefix.len();
        let scope = self.prefix.clone();
        self.inner
            .list(&self.full(prefix), full_after.as_deref())
            .map(move |item| {
                let mut info = item?;
                match info.key.get(strip..) {
                    Some(key) if info.key.starts_with(&scope) => {
                        info.key = key.to_owned();
                        Ok(info)
                    }
                    _ => Err(Error::fatal(
                        Op::List,
                        &scope,
                        "listed a key outside the prefix",
                    )),
                }
            })
            .boxed()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(Op::Delete, key)?;
        self.inner.delete(&self.full(key)).await
    }
}

//! `RequestLog`: a `Bucket` decorator that records every request passing through it (operation,
//! key, body bytes received), so the restore benchmark can download exactly the objects a
//! restore read, and count what each side asked the store for.
//!
//! Invariant: every request is recorded once it has completed; `objects_read` keeps only the GETs
//! that found their object, so it is the set of objects whose bodies crossed the wire.

use std::collections::BTreeMap;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use hadal_transports::{
    Bucket, ByteRange, Capabilities, Created, DynBucket, ListStream, Nonce, Object, ObjectInfo, Op,
    Result, Swapped, Version,
};
use parking_lot::Mutex;

/// One request as seen by the decorator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub key: String,
    /// Whether the object existed (GET, HEAD); true for every other operation.
    pub found: bool,
    /// Body bytes received (GET, ranged GET); 0 otherwise.
    pub bytes: u64,
    /// When the request was sent and when its answer was back.
    pub started: Instant,
    pub completed: Instant,
}

/// Wraps a bucket and records its requests.
#[derive(Debug)]
pub struct RequestLog {
    inner: DynBucket,
    requests: Mutex<Vec<Request>>,
}

impl RequestLog {
    pub fn new(inner: DynBucket) -> Self {
        Self {
            inner,
            requests: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, op: Op, key: &str, found: bool, bytes: u64, started: Instant) {
        self.requests.lock().push(Request {
            op,
            key: key.to_owned(),
            found,
            bytes,
            started,
            completed: Instant::now(),
        });
    }

    /// Every request so far, in the order they completed.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().clone()
    }

    /// Requests so far by operation.
    pub fn counts(&self) -> BTreeMap<Op, u64> {
        let mut counts = BTreeMap::new();
        for r in self.requests.lock().iter() {
            *counts.entry(r.op).or_default() += 1;
        }
        counts
    }

    /// Body bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.requests.lock().iter().map(|r| r.bytes).sum()
    }

    /// When the first GET of an object under `prefix` was sent and when the last one that
    /// found its object was answered; `None` if there was none.
    pub fn span(&self, prefix: &str) -> Option<(Instant, Instant)> {
        let requests = self.requests.lock();
        let gets = requests
            .iter()
            .filter(|r| r.op == Op::Get && r.key.starts_with(prefix));
        let first = gets.clone().map(|r| r.started).min()?;
        let last = gets.filter(|r| r.found).map(|r| r.completed).max()?;
        Some((first, last))
    }

    /// The objects read whole (found GETs) whose key starts with `prefix`, with their sizes, in
    /// key order (bucket keys sort numerically); each key once.
    pub fn objects_read(&self, prefix: &str) -> Vec<(String, u64)> {
        let read: BTreeMap<String, u64> = self
            .requests
            .lock()
            .iter()
            .filter(|r| r.op == Op::Get && r.found && r.key.starts_with(prefix))
            .map(|r| (r.key.clone(), r.bytes))
            .collect();
        read.into_iter().collect()
    }
}

#[async_trait]
impl Bucket for RequestLog {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        let started = Instant::now();
        let result = self.inner.put_if_absent(key, body, nonce).await;
        self.record(Op::PutIfAbsent, key, true, 0, started);
        result
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        let started = Instant::now();
        let result = self.inner.put_if_match(key, body, expected, nonce).await;
        self.record(Op::PutIfMatch, key, true, 0, started);
        result
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        let started = Instant::now();
        let result = self.inner.put(key, body).await;
        self.record(Op::Put, key, true, 0, started);
        result
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        let (found, bytes) = match &result {
            Ok(Some(object)) => (true, object.bytes.len() as u64),
            _ => (false, 0),
        };
        self.record(Op::Get, key, found, bytes, started);
        result
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let started = Instant::now();
        let result = self.inner.get_range(key, range).await;
        let bytes = result.as_ref().map_or(0, |b| b.len() as u64);
        self.record(Op::GetRange, key, result.is_ok(), bytes, started);
        result
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let started = Instant::now();
        let result = self.inner.head(key).await;
        let found = matches!(result, Ok(Some(_)));
        self.record(Op::Head, key, found, 0, started);
        result
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        // The listing is lazy: recorded when asked for, as sent and answered at once.
        self.record(Op::List, prefix, true, 0, Instant::now());
        self.inner.list(prefix, start_after)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.delete(key).await;
        self.record(Op::Delete, key, true, 0, started);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    // Proves found GETs are listed once each with their sizes, in key order and filtered by
    // prefix, while misses, HEADs and LISTs are only counted.
    #[tokio::test]
    async fn records_objects_read_and_counts_the_rest() {
        let memory: DynBucket = Arc::new(hadal_transports::MemoryBucket::new());
        memory
            .put("seg/2", Bytes::from_static(b"two"))
            .await
            .expect("put");
        memory
            .put("seg/1", Bytes::from_static(b"one!"))
            .await
            .expect("put");
        memory
            .put("snap/1", Bytes::from_static(b"snapshot"))
            .await
            .expect("put");
        let log = RequestLog::new(memory);
        log.get("snap/1").await.expect("get");
        log.get("seg/2").await.expect("get");
        log.get("seg/1").await.expect("get");
        log.get("seg/2").await.expect("get again");
        assert!(log.get("seg/3").await.expect("miss").is_none());
        log.head("seg/2").await.expect("head");
        let _ = log.list("seg/", None);
        assert_eq!(
            log.objects_read("seg/"),
            vec![("seg/1".to_owned(), 4), ("seg/2".to_owned(), 3)]
        );
        assert_eq!(log.objects_read("snap/"), vec![("snap/1".to_owned(), 8)]);
        assert_eq!(log.bytes(), 8 + 3 + 4 + 3);
        let counts = log.counts();
        assert_eq!(counts.get(&Op::Get), Some(&5));
        assert_eq!(counts.get(&Op::Head), Some(&1));
        assert_eq!(counts.get(&Op::List), Some(&1));
    }
}

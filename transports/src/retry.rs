//! The retry decorator: a `Bucket` that resends transient failures with exponential backoff and
//! jitter (backon), under a per-attempt timeout and a per-operation deadline, and resolves
//! ambiguous conditional writes by reading the object back.
//!
//! Invariants:
//! 1. Only errors of kind `Retry` (and attempt timeouts) are resent. A lost race (`Exists`,
//!    `Mismatch`) is an answer, never resent; `Conflict`, `Invalid`, `Fatal` are returned as is.
//! 2. A conditional write is resent with the same bytes, the same key and the same nonce.
//! 3. Once any attempt of a conditional write failed in a way that might have been applied, the
//!    write is *ambiguous*. An ambiguous `Exists`/`Mismatch` is resolved by reading the object:
//!    our nonce and bytes mean success (F2: the response was lost), anything else means conflict.
//!    An ambiguous write that cannot be resolved ends as `Indeterminate`, never as failure.
//! 4. Listings resume after the last key they yielded, so a retried page never repeats or skips.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, ListStream, Nonce, Object, ObjectInfo, Swapped,
    Version,
};
use crate::error::{Error, ErrorKind, Op, Result};

/// How hard to try. Every field has a unit; `Default` suits a cloud store.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Total attempts, the first included.
    pub attempts_max: u32,
    /// One attempt that takes longer than this is abandoned (and, if it was a conditional
    /// write, makes the write ambiguous).
    pub attempt_timeout: Duration,
    /// No new attempt starts after this much time since the operation began.
    pub op_deadline: Duration,
    /// `Some` makes the jitter reproducible (simulation); `None` draws it from the OS.
    pub jitter_seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            delay_min: Duration::from_millis(50),
            delay_max: Duration::from_secs(5),
            attempts_max: 8,
            attempt_timeout: Duration::from_secs(60),
            op_deadline: Duration::from_secs(180),
            jitter_seed: None,
        }
    }
}

impl RetryPolicy {
    /// Short delays and timeouts for tests against in-process faults.
    pub fn fast() -> RetryPolicy {
        RetryPolicy {
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(20),
            attempts_max: 6,
            attempt_timeout: Duration::from_secs(5),
            op_deadline: Duration::from_secs(30),
            jitter_seed: Some(7),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.delay_min)
            .with_max_delay(self.delay_max)
            .with_max_times(self.attempts_max.saturating_sub(1) as usize);
        match self.jitter_seed {
            Some(seed) => builder.with_jitter().with_jitter_seed(seed),
            None => builder.with_jitter(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryingBucket<B> {
    inner: B,
    policy: Arc<RetryPolicy>,
}

/// What happened across the attempts of one operation.
#[derive(Debug, Default)]
struct Attempts {
    count: AtomicU32,
    ambiguous: AtomicBool,
}

impl<B: Bucket> RetryingBucket<B> {
    pub fn new(inner: B, policy: RetryPolicy) -> RetryingBucket<B> {
        RetryingBucket {
            inner,
            policy: Arc::new(policy),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Runs `attempt` until it succeeds, fails with a kind other than `Retry`, or the attempts
    /// or the deadline run out. Marks `track` ambiguous after any failed attempt that might
    /// have been applied.
    async fn run<T, F, Fut>(&self, op: Op, key: &str, track: &Attempts, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let policy = &self.policy;
        let one = || {
            track.count.fetch_add(1, Ordering::Relaxed);
            let left = policy.op_deadline.saturating_sub(started.elapsed());
            let limit = policy
                .attempt_timeout
                .min(left)
                .max(Duration::from_millis(1));
            let future = attempt();
            async move {
                let result = match tokio::time::timeout(limit, future).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout {
                        op,
                        key: key.to_owned(),
                        after: limit,
                    }),
                };
                if let Err(e) = &result
                    && e.kind() == ErrorKind::Retry
                {
                    track.ambiguous.store(true, Ordering::Relaxed);
                }
                result
            }
        };
        let result = one
            .retry(policy.backoff())
            .sleep(tokio::time::sleep)
            .when(|e: &Error| {
                e.kind() == ErrorKind::Retry && started.elapsed() < policy.op_deadline
            })
            .notify(|e: &Error, delay: Duration| {
                tracing::debug!(error = %e, ?delay, "retrying bucket operation");
            })
            .await;
        result.map_err(|last| {
            let attempts = track.count.load(Ordering::Relaxed);
            if attempts > 1 && last.kind() == ErrorKind::Retry {
                let elapsed = started.elapsed();
                Error::GaveUp {
                    op,
                    key: key.to_owned(),
                    attempts,
                    elapsed,
                    last: Box::new(last),
                }
            } else {
                last
            }
        })
    }

    /// Reads `key` back to decide whether an ambiguous write was ours.
    async fn read_back(&self, op: Op, key: &str) -> Result<Option<Object>> {
        let track = Attempts::default();
        self.run(Op::Get, key, &track, || self.inner.get(key))
            .await
            .map_err(|e| Error::Indeterminate {
                op,
                key: key.to_owned(),
                attempts: track.count.load(Ordering::Relaxed),
                detail: format!("reading the object back to resolve the outcome failed: {e}"),
            })
    }
}

#[async_trait]
impl<B: Bucket> Bucket for RetryingBucket<B> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        const OP: Op = Op::PutIfAbsent;
        let track = Attempts::default();
        let result = self
            .run(OP, key, &track, || {
                self.inner.put_if_absent(key, body.clone(), nonce)
            })
            .await;
        if !track.ambiguous.load(Ordering::Relaxed) {
            return result;
        }
        let attempts = track.count.load(Ordering::Relaxed);
        match (result, self.read_back(OP, key).await?) {
            (Ok(Created::Created(version)), _) => Ok(Created::Created(version)),
            (_, Some(object)) if object.is_ours(nonce, &body) => {
                tracing::info!(key, %nonce, "ambiguous create resolved: the object is ours");
                Ok(Created::Created(object.version))
            }
            (_, Some(_)) => Ok(Created::Exists),
            (Ok(Created::Exists), None) => Ok(Created::Exists),
            (Err(e), None) => Err(Error::Indeterminate {
                op: OP,
                key: key.to_owned(),
                attempts,
                detail: format!("no object yet, but an attempt may still land: {e}"),
            }),
        }
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        const OP: Op = Op::PutIfMatch;
        let track = Attempts::default();
        let result = self
            .run(OP, key, &track, || {
                self.inner.put_if_match(key, body.clone(), expected, nonce)
            })
            .await;
        if !track.ambiguous.load(Ordering::Relaxed) {
            return result;
        }
        let attempts = track.count.load(Ordering::Relaxed);
        match (result, self.read_back(OP, key).await?) {
            (Ok(Swapped::Swapped(version)), _) => Ok(Swapped::Swapped(version)),
            (_, Some(object)) if object.is_ours(nonce, &body) => {
                tracing::info!(key, %nonce, "ambiguous swap resolved: the object is ours");
                Ok(Swapped::Swapped(object.version))
            }
            // The expected version is still there: an attempt may yet be applied.
            (Err(e), Some(object)) if &object.version == expected => Err(Error::Indeterminate {
                op: OP,
                key: key.to_owned(),
                attempts,
                detail: format!("the old version is still current and an attempt may land: {e}"),
            }),
            (_, _) => Ok(Swapped::Mismatch),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        let track = Attempts::default();
        self.run(Op::Put, key, &track, || self.inner.put(key, body.clone()))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let track = Attempts::default();
        self.run(Op::Get, key, &track, || self.inner.get(key)).await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let track = Attempts::default();
        self.run(Op::GetRange, key, &track, || {
            self.inner.get_range(key, range)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let track = Attempts::default();
        self.run(Op::Head, key, &track, || self.inner.head(key))
            .await
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        struct State<'a> {
            inner: ListStream<'a>,
            last: Option<String>,
            failures: u32,
            started: Instant,
            done: bool,
        }
        let state = State {
            inner: self.inner.list(prefix, start_after),
            last: start_after.map(str::to_owned),
            failures: 0,
            started: Instant::now(),
            done: false,
        };
        let policy = self.policy.clone();
        let prefix = prefix.to_owned();
        stream::unfold(state, move |mut state| {
            let (policy, prefix) = (policy.clone(), prefix.clone());
            async move {
                loop {
                    if state.done {
                        return None;
                    }
                    match state.inner.next().await {
                        None => return None,
                        Some(Ok(info)) => {
                            state.last = Some(info.key.clone());
                            return Some((Ok(info), state));
                        }
                        Some(Err(e)) => {
                            state.failures += 1;
                            let retry = e.kind() == ErrorKind::Retry
                                && state.failures < policy.attempts_max
                                && state.started.elapsed() < policy.op_deadline;
                            if !retry {
                                state.done = true;
                                return Some((Err(e), state));
                            }
                            let exp = policy.delay_min.saturating_mul(1 << state.failures.min(16));
                            tokio::time::sleep(exp.min(policy.delay_max)).await;
                            state.inner = self.inner.list(&prefix, state.last.as_deref());
                        }
                    }
                }
            }
        })
        .boxed()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let track = Attempts::default();
        self.run(Op::Delete, key, &track, || self.inner.delete(key))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{Fault, FaultConfig, FaultRule, FaultyBucket};
    use crate::memory::MemoryBucket;

    fn faulty(
        rules: Vec<FaultRule>,
    ) -> (
        Arc<FaultyBucket<MemoryBucket>>,
        RetryingBucket<Arc<FaultyBucket<MemoryBucket>>>,
    ) {
        let faults = Arc::new(FaultyBucket::new(
            MemoryBucket::new(),
            FaultConfig {
                rules,
                ..FaultConfig::default()
            },
        ));
        (
            faults.clone(),
            RetryingBucket::new(faults, RetryPolicy::fast()),
        )
    }

    fn body(nonce: Nonce) -> Bytes {
        Bytes::from(format!("segment nonce={nonce}"))
    }

    // Proves (issue 3, done-when 3) a create whose response was lost resolves to success when
    // the object is ours: one resend, then a read-back that finds our nonce.
    #[tokio::test]
    async fn lost_response_resolves_to_ours() {
        let (faults, bucket) = faulty(vec![
            FaultRule::always(&[Op::PutIfAbsent], Fault::LostResponse).times(1),
        ]);
        let nonce = Nonce::random();
        let outcome = bucket
            .put_if_absent("seg/1", body(nonce), nonce)
            .await
            .expect("resolved");
        assert!(matches!(outcome, Created::Created(_)), "{outcome:?}");
        assert_eq!(faults.calls(Op::PutIfAbsent), 2);
        assert_eq!(faults.calls(Op::Get), 1, "resolved by reading back");
    }

    // Proves (done-when 3) an ambiguous create resolves to conflict when the object is not
    // ours: the first attempt is refused (503), another writer wins, our resend sees theirs.
    #[tokio::test]
    async fn lost_race_after_ambiguity_resolves_to_conflict() {
        let (faults, bucket) = faulty(vec![
            FaultRule::always(&[Op::PutIfAbsent], Fault::Status(503)).times(1),
        ]);
        let theirs = Nonce::random();
        let inner = faults.inner().clone();
        assert!(matches!(
            inner.put_if_absent("seg/1", body(theirs), theirs).await,
            Ok(Created::Created(_))
        ));
        let ours = Nonce::random();
        let outcome = bucket
            .put_if_absent("seg/1", body(ours), ours)
            .await
            .expect("resolved");
        assert_eq!(outcome, Created::Exists);
        let stored = inner.get("seg/1").await.expect("get").expect("present");
        assert!(stored.is_ours(theirs, &body(theirs)));
    }

    // Proves (done-when 3) a plain conflict is answered at once: no resend, no read-back.
    #[tokio::test]
    async fn conflicts_are_never_retried() {
        let (faults, bucket) = faulty(Vec::new());
        let (a, b) = (Nonce::random(), Nonce::random());
        bucket
            .put_if_absent("seg/1", body(a), a)
            .await
            .expect("first");
        assert_eq!(
            bucket
                .put_if_absent("seg/1", body(b), b)
                .await
                .expect("second"),
            Created::Exists
        );
        let stale = Version::new("stale");
        assert_eq!(
            bucket
                .put_if_match("seg/1", body(b), &stale, b)
                .await
                .expect("swap"),
            Swapped::Mismatch
        );
        assert_eq!(faults.calls(Op::PutIfAbsent), 2);
        assert_eq!(faults.calls(Op::PutIfMatch), 1);
        assert_eq!(faults.calls(Op::Get), 0);
    }

    // Proves a lost swap resolves to ours and a 409 ConditionalRequestConflict burst is resent.
    #[tokio::test]
    async fn lost_swap_and_409_bursts() {
        let rules = vec![
            FaultRule::always(&[Op::PutIfMatch], Fault::LostResponse).times(1),
            FaultRule::always(&[Op::PutIfAbsent], Fault::Status(409))
                .with_burst(3)
                .times(3),
        ];
        let (faults, bucket) = faulty(rules);
        let a = Nonce::random();
        let Created::Created(v1) = bucket
            .put_if_absent("gc/b", body(a), a)
            .await
            .expect("create")
        else {
            panic!("create through a 409 burst failed");
        };
        assert_eq!(faults.calls(Op::PutIfAbsent), 4);
        let b = Nonce::random();
        let swapped = bucket
            .put_if_match("gc/b", body(b), &v1, b)
            .await
            .expect("swap");
        assert!(matches!(swapped, Swapped::Swapped(_)), "{swapped:?}");
    }

    // Proves a write that never succeeds and leaves nothing behind ends Indeterminate, not
    // failed, and that idempotent reads give up with the last error's kind.
    #[tokio::test]
    async fn unresolvable_writes_are_indeterminate() {
        let late = Fault::AppliedLate {
            delay: Duration::from_secs(3600),
        };
        let (_, bucket) = faulty(vec![
            FaultRule::always(&[Op::PutIfAbsent], late),
            FaultRule::always(&[Op::Head], Fault::Status(503)),
        ]);
        let n = Nonce::random();
        let err = bucket
            .put_if_absent("seg/9", body(n), n)
            .await
            .expect_err("cannot resolve");
        assert_eq!(err.kind(), ErrorKind::Indeterminate, "{err}");
        let err = bucket.head("seg/9").await.expect_err("always 503");
        assert_eq!(err.kind(), ErrorKind::Retry);
        assert!(
            err.to_string().contains("gave up after 6 attempts"),
            "{err}"
        );
    }
}

//! The fault-injection decorator: a `Bucket` that makes another misbehave the way real stores
//! do, reproducibly from a seed. It covers what no local server does (OBJECT-STORES.md, "gaps"):
//! 409/429/503 bursts, a write applied whose response was lost, a write applied after the
//! client gave up, a GET answering 404 for an object a LIST just showed, latency with jitter and
//! a bandwidth cap.
//!
//! Invariants:
//! 1. Same seed, same sequence of calls ⇒ same faults (the generator is a fixed splitmix64, not
//!    a library RNG whose stream may change between versions). Concurrent callers make the call
//!    order, and so the trace, depend on scheduling; the event log records what happened.
//! 2. A fault either happens *before* the inner call (nothing applied) or *after* it (applied,
//!    answer replaced), never half-way: the inner bucket stays consistent, only the caller's
//!    view is damaged, exactly like a lost HTTP response.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, ListStream, Nonce, Object, ObjectInfo, Swapped,
    Version,
};
use crate::error::{Error, Op, Result};

/// What goes wrong when a rule fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Refuse before applying, as an HTTP status: 409 is S3's `ConditionalRequestConflict`
    /// (retryable), 429 throttling, 500/503 server errors.
    Status(u16),
    /// Apply the operation, then lose the response: the caller sees a transient error.
    LostResponse,
    /// Give the caller a timeout at once and apply the operation `delay` later.
    AppliedLate { delay: Duration },
    /// Reads answer "not found" although the object exists (F5: 404 on GET after LIST).
    PhantomNotFound,
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// Operations the rule applies to; empty means all.
    pub ops: Vec<Op>,
    /// Keys the rule applies to (for `list`, the listing prefix).
    pub key_prefix: String,
    /// Chance that a matching call starts a burst, in 0.0..=1.0.
    pub probability: f64,
    /// Matching calls that fail in a row once the rule fires (1 = a single fault).
    pub burst: u32,
    /// After this many faults the rule goes quiet (`None`: never).
    pub fires_max: Option<u32>,
    pub fault: Fault,
}

impl FaultRule {
    /// A rule that fires on every matching call until `fires_max` is reached.
    pub fn always(ops: &[Op], fault: Fault) -> FaultRule {
        FaultRule {
            ops: ops.to_vec(),
            key_prefix: String::new(),
            probability: 1.0,
            burst: 1,
            fires_max: None,
            fault,
        }
    }

    pub fn with_probability(mut self, probability: f64) -> FaultRule {
        self.probability = probability;
        self
    }

    pub fn with_prefix(mut self, prefix: &str) -> FaultRule {
        self.key_prefix = prefix.to_owned();
        self
    }

    pub fn with_burst(mut self, burst: u32) -> FaultRule {
        self.burst = burst.max(1);
        self
    }

    pub fn times(mut self, fires_max: u32) -> FaultRule {
        self.fires_max = Some(fires_max);
        self
    }

    fn matches(&self, op: Op, key: &str) -> bool {
        (self.ops.is_empty() || self.ops.contains(&op)) && key.starts_with(&self.key_prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultConfig {
    pub seed: u64,
    pub rules: Vec<FaultRule>,
    /// Added to every call: `base` plus a uniform draw in `0..jitter`.
    pub latency_base: Duration,
    pub latency_jitter: Duration,
    /// Bytes per second for bodies in and out (`None`: unlimited).
    pub bandwidth_bytes_per_s: Option<u64>,
}

/// One injected fault, for assertions and for printing a failing seed's trace.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultEvent {
    pub op: Op,
    pub key: String,
    pub fault: Fault,
}

#[derive(Debug)]
struct RuleState {
    burst_left: u32,
    fires: u32,
}

#[derive(Debug)]
struct Dice {
    state: u64,
    rules: Vec<RuleState>,
}

impl Dice {
    /// splitmix64: fixed forever, so seeds stay meaningful.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug)]
pub struct FaultyBucket<B> {
    inner: Arc<B>,
    config: FaultConfig,
    dice: Mutex<Dice>,
    events: Mutex<Vec<FaultEvent>>,
    calls: [AtomicU64; 8],
}

fn op_index(op: Op) -> usize {
    Op::DATA.iter().position(|o| *o == op).unwrap_or(0)
}

impl<B: Bucket + 'static> FaultyBucket<B> {
    pub fn new(inner: B, config: FaultConfig) -> FaultyBucket<B> {
        FaultyBucket::wrap(Arc::new(inner), config)
    }

    pub fn wrap(inner: Arc<B>, config: FaultConfig) -> FaultyBucket<B> {
        let rules = config
            .rules
            .iter()
            .map(|_| RuleState {
                burst_left: 0,
                fires: 0,
            })
            .collect();
        let dice = Mutex::new(Dice {
            state: config.seed,
            rules,
        });
        FaultyBucket {
            inner,
            config,
            dice,
            events: Mutex::new(Vec::new()),
            calls: Default::default(),
        }
    }

    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    /// Faults injected so far, in order.
    pub fn events(&self) -> Vec<FaultEvent> {
        self.events.lock().clone()
    }

    /// How many calls of `op` reached this decorator (faulted or not).
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op_index(op)].load(Ordering::Relaxed)
    }

    /// Counts the call, sleeps the injected latency and picks this call's fault, if any.
    async fn enter(&self, op: Op, key: &str) -> Option<Fault> {
        self.calls[op_index(op)].fetch_add(1, Ordering::Relaxed);
        let (delay, fault) = {
            let mut dice = self.dice.lock();
            let jitter = self.config.latency_jitter.mul_f64(dice.unit());
            let mut fault = None;
            for (i, rule) in self.config.rules.iter().enumerate() {
                if fault.is_some() || !rule.matches(op, key) {
                    continue;
                }
                let quiet = rule.fires_max.is_some_and(|m| dice.rules[i].fires >= m);
                if quiet {
                    continue;
                }
                let roll = dice.unit();
                let state = &mut dice.rules[i];
                if state.burst_left == 0 && roll < rule.probability {
                    state.burst_left = rule.burst.max(1);
                }
                if state.burst_left > 0 {
                    state.burst_left -= 1;
                    state.fires += 1;
                    fault = Some(rule.fault.clone());
                }
            }
            (self.config.latency_base + jitter, fault)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(fault) = &fault {
            let event = FaultEvent {
                op,
                key: key.to_owned(),
                fault: fault.clone(),
            };
            tracing::debug!(?event, "injecting fault");
            self.events.lock().push(event);
        }
        fault
    }

    async fn transfer(&self, bytes: usize) {
        if let Some(rate) = self.config.bandwidth_bytes_per_s.filter(|r| *r > 0) {
            tokio::time::sleep(Duration::from_secs_f64(bytes as f64 / rate as f64)).await;
        }
    }

    /// The error a refused or lost call reports.
    fn refusal(op: Op, key: &str, fault: &Fault) -> Error {
        match fault {
            Fault::Status(409) => Error::transient(
                op,
                key,
                "http 409: ConditionalRequestConflict (injected), another conditional write was in flight",
            ),
            Fault::Status(status) => Error::from_status(op, key, *status, "injected"),
            Fault::LostResponse => Error::transient(
                op,
                key,
                "connection reset after the request was sent (injected)",
            ),
            Fault::AppliedLate { .. } => Error::Timeout {
                op,
                key: key.to_owned(),
                after: Duration::ZERO,
            },
            Fault::PhantomNotFound => Error::not_found(op, key),
        }
    }

    /// Applies a write according to its fault: refused, applied-and-lost, or applied later.
    async fn write<T, F, Fut>(&self, op: Op, key: &str, fault: Option<Fault>, apply: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<B>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        match fault {
            None | Some(Fault::PhantomNotFound) => apply(self.inner.clone()).await,
            Some(Fault::LostResponse) => {
                let _ = apply(self.inner.clone()).await;
                Err(Self::refusal(op, key, &Fault::LostResponse))
            }
            Some(Fault::AppliedLate { delay }) => {
                let late = apply(self.inner.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = late.await;
                });
                Err(Self::refusal(op, key, &Fault::AppliedLate { delay }))
            }
            Some(fault) => Err(Self::refusal(op, key, &fault)),
        }
    }

    /// Decides what a read answers under its fault.
    fn read_fault(op: Op, key: &str, fault: Option<Fault>) -> Result<()> {
        match fault {
            None => Ok(()),
            Some(fault) => Err(Self::refusal(op, key, &fault)),
        }
    }
}

#[async_trait]
impl<B: Bucket + 'static> Bucket for FaultyBucket<B> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        let fault = self.enter(Op::PutIfAbsent, key).await;
        self.transfer(body.len()).await;
        let k = key.to_owned();
        self.write(Op::PutIfAbsent, key, fault, move |inner| async move {
            inner.put_if_absent(&k, body, nonce).await
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
        let fault = self.enter(Op::PutIfMatch, key).await;
        self.transfer(body.len()).await;
        let (k, expected) = (key.to_owned(), expected.clone());
        self.write(Op::PutIfMatch, key, fault, move |inner| async move {
            inner.put_if_match(&k, body, &expected, nonce).await
        })
        .await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        let fault = self.enter(Op::Put, key).await;
        self.transfer(body.len()).await;
        let k = key.to_owned();
        self.write(Op::Put, key, fault, move |inner| async move {
            inner.put(&k, body).await
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let fault = self.enter(Op::Get, key).await;
        if fault == Some(Fault::PhantomNotFound) {
            return Ok(None);
        }
        Self::read_fault(Op::Get, key, fault)?;
        let object = self.inner.get(key).await?;
        self.transfer(object.as_ref().map_or(0, |o| o.bytes.len()))
            .await;
        Ok(object)
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        let fault = self.enter(Op::GetRange, key).await;
        Self::read_fault(Op::GetRange, key, fault)?;
        let bytes = self.inner.get_range(key, range).await?;
        self.transfer(bytes.len()).await;
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let fault = self.enter(Op::Head, key).await;
        if fault == Some(Fault::PhantomNotFound) {
            return Ok(None);
        }
        Self::read_fault(Op::Head, key, fault)?;
        self.inner.head(key).await
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let (prefix, start_after) = (prefix.to_owned(), start_after.map(str::to_owned));
        let first = futures::stream::once(async move {
            match self.enter(Op::List, &prefix).await {
                None | Some(Fault::PhantomNotFound) => {
                    Ok(self.inner.list(&prefix, start_after.as_deref()))
                }
                Some(fault) => Err(Self::refusal(Op::List, &prefix, &fault)),
            }
        });
        first
            .map(|listing| match listing {
                Ok(stream) => stream,
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .flatten()
            .boxed()
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let fault = self.enter(Op::Delete, key).await;
        let k = key.to_owned();
        self.write(Op::Delete, key, fault, move |inner| async move {
            inner.delete(&k).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBucket;

    fn plan(seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            rules: vec![FaultRule::always(&[Op::Get], Fault::Status(503)).with_probability(0.3)],
            ..FaultConfig::default()
        }
    }

    async fn trace(seed: u64) -> Vec<bool> {
        let bucket = FaultyBucket::new(MemoryBucket::new(), plan(seed));
        let mut out = Vec::new();
        for _ in 0..64 {
            out.push(bucket.get("k").await.is_err());
        }
        out
    }

    // Proves the same seed gives the same faults and another seed gives others.
    #[tokio::test]
    async fn seeds_are_reproducible() {
        let (a, b, c) = (trace(1).await, trace(1).await, trace(2).await);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let failures = a.iter().filter(|f| **f).count();
        assert!((5..40).contains(&failures), "{failures} of 64 at p=0.3");
    }

    // Proves a lost response leaves the write applied, and an applied-late write lands later.
    #[tokio::test]
    async fn lost_and_late_writes_are_applied() {
        let rules = vec![
            FaultRule::always(&[Op::Put], Fault::LostResponse).times(1),
            FaultRule::always(
                &[Op::Delete],
                Fault::AppliedLate {
                    delay: Duration::from_millis(20),
                },
            ),
        ];
        let bucket = FaultyBucket::new(
            MemoryBucket::new(),
            FaultConfig {
                rules,
                ..Default::default()
            },
        );
        assert!(bucket.put("a", Bytes::from_static(b"1")).await.is_err());
        assert!(bucket.inner().get("a").await.expect("get").is_some());
        assert!(bucket.delete("a").await.is_err());
        assert!(bucket.inner().get("a").await.expect("get").is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(bucket.inner().get("a").await.expect("get").is_none());
        assert_eq!(bucket.events().len(), 2);
    }

    // Proves bursts fail consecutive calls and prefixes scope rules.
    #[tokio::test]
    async fn bursts_and_prefixes() {
        let rule = FaultRule::always(&[Op::Head], Fault::Status(429))
            .with_prefix("hot/")
            .with_burst(3)
            .times(3);
        let bucket = FaultyBucket::new(
            MemoryBucket::new(),
            FaultConfig {
                rules: vec![rule],
                ..Default::default()
            },
        );
        assert!(bucket.head("cold/x").await.is_ok());
        let results: Vec<bool> = futures::future::join_all((0..5).map(|_| bucket.head("hot/x")))
            .await
            .into_iter()
            .map(|r| r.is_err())
            .collect();
        assert_eq!(results, [true, true, true, false, false]);
    }
}
